"""near_miss against the simulator's near-miss situation families and their 10 Hz truth (issue 13).

16 vehicles × 1 simulated hour with only the families scheduled (cut-in, sideswipe, crossing
pedestrian, lead braking, highway closing at 45-60 m, sub-second encounters between two summaries;
`SimConfig.near_miss_families_per_vehicle_hour`). Each family incident's truth is near_miss's rule
over the simulator's 10 Hz states (least TTC < ttc_s, or least path gap < min_distance_m at speed),
not over the summaries; about a fifth of them are safe (truth negative). An event matches an incident
of its vehicle whose [start − 5 s, end + 5 s] holds its onset; a second event for one incident, one for
a safe incident or one matching none counts against precision. Per family recall and precision must
reach 0.95. Test of the test: with the criticality fields of the contract stripped from the summaries
(what an older vehicle sends) the short encounters and braking leads are missed.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from fleetloop import sim
from fleetloop.sim.config import FAMILY_KINDS
from fleetloop.triggers import detect_recording, load_config

VEHICLES, DURATION_S, PER_VEHICLE_HOUR = 16, 3600, 40.0
SLACK_MS = 5_000
FLOOR = 0.95
HANDED = ("hard_brake", "phantom_stop")


def score(events: list, incidents: list) -> dict[str, dict[str, float]]:
    """Per family: recall (found positives / positives), precision (matched events / events), counts."""
    by_vehicle = defaultdict(list)
    for inc in incidents:
        by_vehicle[inc.vehicle_id].append(inc)
    tp, fp, used = Counter(), Counter(), set()
    for e in (e for e in events if e.trigger == "near_miss"):
        match = next((i for i in by_vehicle[e.vehicle_id]
                      if i.start_ms - SLACK_MS <= e.onset_ms <= i.end_ms + SLACK_MS), None)
        if match is None:
            fp["unmatched"] += 1
        elif "near_miss" in match.expected_triggers and match.incident_id not in used:
            used.add(match.incident_id)
            tp[match.kind] += 1
        else:
            fp[match.kind] += 1
    out = {}
    for kind in FAMILY_KINDS:
        rows = [i for i in incidents if i.kind == kind]
        pos = sum("near_miss" in i.expected_triggers for i in rows)
        out[kind] = {"incidents": len(rows), "positives": pos, "recall": tp[kind] / pos if pos else 1.0,
                     "precision": tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else 1.0}
    out["unmatched"] = {"events": fp["unmatched"]}
    return out


def strip_criticality(envelopes: list) -> list:
    """The same recording as an older vehicle sends it: no accelerations, no in-second minima."""
    out = []
    for env in envelopes:
        if env.WhichOneof("payload") == "perception":
            env = type(env).FromString(env.SerializeToString())
            p = env.perception
            for name in ("window_min_ttc_s", "window_min_distance_m"):
                p.ClearField(name)
            for o in p.objects:
                for name in ("accel_x_mps2", "accel_y_mps2", "min_ttc_s", "min_distance_m"):
                    o.ClearField(name)
        out.append(env)
    return out


@pytest.fixture(scope="module")
def run() -> tuple[dict, list, list]:
    fleet = sim.FleetSimulator(sim.SimConfig(vehicles=VEHICLES, duration_s=DURATION_S, seed=13,
                                             incidents_per_vehicle_hour=0.0,
                                             near_miss_families_per_vehicle_hour=PER_VEHICLE_HOUR))
    by_vehicle = defaultdict(list)
    for second in fleet.seconds():
        for _, envelope in second.messages:
            by_vehicle[envelope.vehicle_id].append(envelope)
    config = load_config()
    events = [e for vid in sorted(by_vehicle) for e in detect_recording(by_vehicle[vid], config)]
    return by_vehicle, events, fleet.ground_truth.incidents


def test_every_family_is_measured_with_both_outcomes(run) -> None:
    _, _, incidents = run
    s = score([], incidents)
    for kind in FAMILY_KINDS:
        assert s[kind]["positives"] >= 25, (kind, s[kind])
    assert sum(s[k]["incidents"] - s[k]["positives"] for k in FAMILY_KINDS) >= 40, "safe encounters too"
    assert all(i.detail["family"] == i.kind for i in incidents)


def test_recall_and_precision_per_family(run) -> None:
    _, events, incidents = run
    s = score(events, incidents)
    low = {k: v for k, v in s.items() if k in FAMILY_KINDS and (v["recall"] < FLOOR or v["precision"] < FLOOR)}
    assert not low, f"below {FLOOR}: {low}; all: {s}"
    assert s["unmatched"]["events"] == 0, s


def test_no_family_encounter_is_handed_to_a_hard_brake(run) -> None:
    # The ego answers at 3 m/s² (below hard_decel): each encounter is one near_miss event, nothing else.
    _, events, _ = run
    assert not [e for e in events if e.trigger in HANDED]


def test_older_summaries_miss_the_short_and_the_braking(run) -> None:
    """Test of the test: without the contract's criticality fields the 1 Hz summaries cannot show
    encounters between them or a lead's braking."""
    by_vehicle, _, incidents = run
    config = load_config()
    events = [e for vid in sorted(by_vehicle) for e in detect_recording(strip_criticality(by_vehicle[vid]), config)]
    s = score(events, incidents)
    assert s["short_encounter"]["recall"] < 0.5, s["short_encounter"]
    assert s["lead_braking"]["recall"] < FLOOR, s["lead_braking"]


if __name__ == "__main__":  # the figures of docs/BENCHMARKS.md: python -m tests.unit.triggers.test_near_miss_families
    recording, found, truth = run.__wrapped__()
    cfg = load_config()
    older = score([e for vid in sorted(recording) for e in detect_recording(strip_criticality(recording[vid]), cfg)],
                  truth)
    for kind, v in score(found, truth).items():
        if kind in FAMILY_KINDS:
            print(f"{kind:20s} incidents {v['incidents']:3d} positives {v['positives']:3d} recall {v['recall']:.3f} "
                  f"precision {v['precision']:.3f} | older summaries: recall {older[kind]['recall']:.3f} "
                  f"precision {older[kind]['precision']:.3f}")
