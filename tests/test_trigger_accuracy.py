"""The built-in triggers against the fleet simulator's ground truth (docs/INCIDENTS.md).

30 vehicles × 2 simulated hours with a dense incident schedule, each vehicle's recording through
`detect_recording`. An event matches an incident of the same vehicle whose `expected_triggers` hold
the trigger name and whose [start − 5 s, end + 5 s] holds the event's onset; each (incident, trigger)
pair absorbs one event, so a repeated event counts against precision. Recall per incident kind and
precision per trigger must both reach 0.95.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from fleetloop.triggers import detect_recording, load_config

sim = pytest.importorskip("fleetloop.sim")

VEHICLES, DURATION_S, INCIDENTS_PER_VEHICLE_HOUR = 30, 2 * 3600, 8.0
SLACK_MS = 5_000


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


def test_recall_and_precision_per_kind(run) -> None:
    events, incidents = run
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
    assert sum(expected.values()) > 100, "the schedule must be dense enough to measure"
    recall = {kind: hit[kind] / n for kind, n in expected.items()}
    precision = {trigger: true_positive[trigger] / n for trigger, n in fired.items()}
    low = {k: round(v, 3) for k, v in {**recall, **precision}.items() if v < 0.95}
    assert not low, f"below 0.95: {low}; recall {recall}; precision {precision}; first unmatched {unmatched[:10]}"
