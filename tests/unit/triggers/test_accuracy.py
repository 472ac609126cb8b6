"""The built-in triggers against the fleet simulator's ground truth (docs/INCIDENTS.md).

30 vehicles × 2 simulated hours with a dense incident schedule, each vehicle's recording through
`detect_recording`. An event matches an incident of the same vehicle whose `expected_triggers` hold
the trigger name and whose [start − 5 s, end + 5 s] holds the event's onset; each (incident, trigger)
pair absorbs one event, so a repeated event counts against precision. Recall per incident kind and
precision per trigger are checked separately, each against 0.95; a mutation that drops every second
hard_brake and weaving detection must fail the recall check (the test of the test).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest
from fleetloop import sim
from fleetloop.triggers import detect_recording, load_config

VEHICLES, DURATION_S, INCIDENTS_PER_VEHICLE_HOUR = 30, 2 * 3600, 8.0
SLACK_MS = 5_000
FLOOR = 0.95


@dataclass
class Score:
    recall: dict[str, float]  # incident kind -> found (incident, trigger) pairs / expected pairs
    precision: dict[str, float]  # trigger name -> matched events / fired events
    expected_pairs: int
    unmatched: list

    def recall_below(self, floor: float = FLOOR) -> dict[str, float]:
        return {kind: round(v, 3) for kind, v in self.recall.items() if v < floor}

    def precision_below(self, floor: float = FLOOR) -> dict[str, float]:
        return {trigger: round(v, 3) for trigger, v in self.precision.items() if v < floor}


def score(events: list, incidents: list) -> Score:
    """Match `events` (TriggerEvent-like: trigger, vehicle_id, onset_ms) to ground-truth `incidents`."""
    open_pairs = {(i.incident_id, t) for i in incidents if i.vehicle_id for t in i.expected_triggers}
    by_vehicle = defaultdict(list)
    for inc in incidents:
        by_vehicle[inc.vehicle_id].append(inc)
    fired, true_positive = Counter(), Counter()
    found: set[tuple[str, str]] = set()
    unmatched = []
    for e in events:
        fired[e.trigger] += 1
        match = next((i for i in by_vehicle[e.vehicle_id]
                      if e.trigger in i.expected_triggers and (i.incident_id, e.trigger) in open_pairs
                      and i.start_ms - SLACK_MS <= e.onset_ms <= i.end_ms + SLACK_MS), None)
        if match is None:
            unmatched.append((e.trigger, e.vehicle_id, e.onset_ms, dict(e.measurements)))
            continue
        open_pairs.discard((match.incident_id, e.trigger))
        found.add((match.incident_id, e.trigger))
        true_positive[e.trigger] += 1

    expected, hit = Counter(), Counter()
    for inc in incidents:
        for trigger in inc.expected_triggers if inc.vehicle_id else ():
            expected[inc.kind] += 1
            hit[inc.kind] += (inc.incident_id, trigger) in found
    return Score(recall={kind: hit[kind] / n for kind, n in expected.items()},
                 precision={trigger: true_positive[trigger] / n for trigger, n in fired.items()},
                 expected_pairs=sum(expected.values()), unmatched=unmatched)


@pytest.fixture(scope="module")
def run() -> tuple[list, list]:
    fleet = sim.FleetSimulator(sim.SimConfig(vehicles=VEHICLES, duration_s=DURATION_S, seed=11,
                                             incidents_per_vehicle_hour=INCIDENTS_PER_VEHICLE_HOUR))
    by_vehicle = defaultdict(list)
    for second in fleet.seconds():
        for _, envelope in second.messages:
            by_vehicle[envelope.vehicle_id].append(envelope)
    config = load_config()
    events = [e for vehicle_id in sorted(by_vehicle) for e in detect_recording(by_vehicle[vehicle_id], config)]
    return events, fleet.ground_truth.incidents


def test_schedule_covers_every_trigger(run) -> None:
    events, incidents = run
    s = score(events, incidents)
    assert s.expected_pairs > 100, "the schedule must be dense enough to measure"
    expected_triggers = {t for i in incidents if i.vehicle_id for t in i.expected_triggers}
    assert expected_triggers == set(load_config().triggers), "every built-in trigger needs incidents"
    assert set(s.recall) == {i.kind for i in incidents if i.vehicle_id and i.expected_triggers}


def test_recall_per_incident_kind(run) -> None:
    s = score(*run)
    assert not s.recall_below(), f"recall below {FLOOR}: {s.recall_below()}; recall {s.recall}"


def test_precision_per_trigger(run) -> None:
    s = score(*run)
    assert not s.precision_below(), (f"precision below {FLOOR}: {s.precision_below()}; "
                                     f"precision {s.precision}; first unmatched {s.unmatched[:10]}")


def test_recall_check_catches_half_the_detections_dropped(run) -> None:
    """Test of the test: drop every second hard_brake and weaving detection (recall ~0.5)."""
    events, incidents = run
    seen: Counter = Counter()
    mutated = []
    for e in events:
        if e.trigger in ("hard_brake", "weaving"):
            seen[e.trigger] += 1
            if seen[e.trigger] % 2 == 0:
                continue
        mutated.append(e)
    s = score(mutated, incidents)
    assert set(s.recall_below()) == {"hard_brake", "weaving"}, s.recall
    assert all(0.4 <= s.recall[kind] <= 0.6 for kind in ("hard_brake", "weaving")), s.recall
    assert not s.precision_below(), "dropping detections must not be read as a precision fault"
