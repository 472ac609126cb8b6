"""`fleetloop replay`: one scenario from a minilog the vehicle runtime cut from a simulated hard brake
(baseline vs solution per cost term, decisions, triggers, the pair and its OpenSCENARIO export), the
suite, the policy list, and precise errors for bad input — through typer's CliRunner."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from fleetloop import topics
from fleetloop.cli import app
from fleetloop.replay.pair import pair_from_bytes, pair_to_scenario
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig
from fleetloop.v1 import common_pb2, uploads_pb2
from fleetloop.vehicle import RingBuffer, Uploader, open_store, write_mcap
from fleetloop.vehicle.params import load_vehicle_params
from scenariogeneration import xosc
from typer.testing import CliRunner

from tests.support.fleetdata import T0_MS, drive

RUNNER = CliRunner()
VEHICLE = "veh-0001"
SIM = ["--sim-seed", "3", "--sim-vehicles", "2", "--sim-duration-s", "150"]
SMALL = ["--iterations", "1", "--candidates", "32"]


@pytest.fixture(scope="module")
def minilog(tmp_path_factory):
    """The minilog a vehicle uploads for a simulated hard brake (10 s before, 5 s after), as a file."""
    sim = FleetSimulator(SimConfig(vehicles=2, duration_s=150, seed=3,
                                   incidents=[ScheduledIncident("hard_brake", 0, 60)]))
    buffer = RingBuffer(load_vehicle_params().ring_capacity_s)
    for second in sim.seconds():
        for topic, env in second.messages:
            if env.vehicle_id == VEHICLE:
                buffer.append(topic, env)
    (incident,) = [i for i in sim.ground_truth.incidents if i.vehicle_id == VEHICLE]
    folder = tmp_path_factory.mktemp("replay-cli")
    store = open_store((folder / "objects").as_uri())
    request = uploads_pb2.UploadRequest(request_id="req-1", case_id="case-hb", tier="minilog",
                                        window_start_ms=incident.start_ms - 10_000,
                                        window_end_ms=incident.start_ms + 5_000, attempt=1)
    _, complete = Uploader(store, load_vehicle_params()).answer(VEHICLE, buffer, request)
    path = folder / "case-hb.mcap"
    path.write_bytes(store.get(complete.uri))
    return path


def hand_minilog(path, *, poses: bool = True, window: tuple[int, int] | None = None, rel_x: float = 20.0):
    """12 s of straight driving at 10 m/s with a car detected ahead every second, written to `path`."""
    items = [(env.event_time_ms, topic, env) for topic, env in drive("veh-h", 12, speed=10.0)
             if poses or topic != topics.POSE]
    for s in range(12):
        t = T0_MS + 1000 * s
        env = common_pb2.Envelope(schema_version=1, vehicle_id="veh-h", event_time_ms=t, message_id=f"veh-h/pe/{t}")
        env.perception.objects.add(track_id=5, object_class=common_pb2.OBJECT_CLASS_CAR, rel_x_m=rel_x, rel_y_m=0.0,
                                   rel_vx_mps=0.0, length_m=4.6, width_m=1.9, confidence=0.9)
        items.append((t, topics.PERCEPTION, env))
    start, end = window or (T0_MS, T0_MS + 12_000)
    path.write_bytes(write_mcap(sorted(items, key=lambda i: i[0]), {
        "case_id": "case-hand", "vehicle_id": "veh-h", "tier": "minilog", "window_start_ms": str(start),
        "window_end_ms": str(end)}).data)
    return path


def test_scenario_prints_baseline_vs_solution_and_writes_the_pair(minilog, tmp_path):
    out, xosc_path = tmp_path / "pair.bin", tmp_path / "pair.xosc"
    result = RUNNER.invoke(app, ["replay", "scenario", "--minilog", str(minilog), *SIM, *SMALL, "--out", str(out),
                                 "--xosc", str(xosc_path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "scenario case-hb@" in text and "vehicle veh-0001" in text
    assert "searched 49 candidates in 1 iteration(s) (cem, cpu)" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line and line.split()[0] in (
        "collision", "ttc", "comfort", "progress", "log_divergence", "total", "score")}
    assert set(rows) == {"collision", "ttc", "comfort", "progress", "log_divergence", "total", "score"}
    base_total, sol_total, change = (float(v) for v in rows["total"])
    assert sol_total < base_total and change == pytest.approx(sol_total - base_total, abs=2e-3)
    # the simulated hard brake: the logged ego brakes hard; the solution does not need to
    assert "triggers fired by the baseline, not by the solution: hard_brake x1" in text
    assert "decisions: " in text and "does not brake" in text
    assert "robustness: wins" in text
    pair = pair_from_bytes(out.read_bytes())
    assert pair.problem.case_id == "case-hb" and pair.problem.vehicle_id == VEHICLE
    assert pair.baseline_triggers["hard_brake"] == 1 and pair.solution_triggers["hard_brake"] == 0
    assert pair.provenance.policy_version == "rule@1" and pair.robustness.perturbations == 16
    assert {d.name for d in pair.cost_delta} >= {"collision", "comfort", "progress"}
    scen, trajectories = pair_to_scenario(pair)
    assert scen.meta[0].case_id == "case-hb" and trajectories.solution_index == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # schema-invalid output fails the test
        read = xosc.ParseOpenScenario(str(xosc_path))
    assert "ego" in {o.name for o in read.entities.scenario_objects}


def test_suite_prints_the_table_per_family_and_totals():
    result = RUNNER.invoke(app, ["replay", "suite", "--n", "7", "--iterations", "0", "--policy", "logged@1",
                                 "--json"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    families = [line.split()[0] for line in lines[2:9]]
    assert families == ["lead_brake", "cut_in", "pedestrian_occlusion", "stalled_vehicle", "unprotected_left",
                        "phantom_obstacle", "good_driving"]
    assert lines[9].startswith("total") and lines[10].startswith("solved ")
    totals = json.loads(lines[-1])
    assert totals["n"] == 7 and totals["solvable"] == 5 and totals["iterations"] == 0
    assert 0.0 <= totals["solved_fraction"] <= 1.0 and not math.isnan(totals["solved_fraction"])


def test_policies_lists_the_built_ins(tmp_path):
    result = RUNNER.invoke(app, ["replay", "policies", "--checkpoints", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {"logged@1", "rule@1"} <= set(result.output.split())


def test_bad_input_gets_precise_errors(minilog, tmp_path):
    def run(*args: str):
        return RUNNER.invoke(app, ["replay", "scenario", *args, "--no-map", "--no-robust", *SMALL])

    unknown = run("--minilog", str(minilog), "--policy", "rule@9")
    assert unknown.exit_code == 2 and "error: unknown policy 'rule@9'" in unknown.output
    no_pose = run("--minilog", str(hand_minilog(tmp_path / "no-pose.mcap", poses=False)))
    assert no_pose.exit_code == 2 and "error: minilog case-hand: no ego pose" in no_pose.output
    empty = run("--minilog", str(hand_minilog(tmp_path / "empty.mcap", window=(T0_MS + 5000, T0_MS + 5000))))
    assert empty.exit_code == 2 and "error: minilog case-hand: empty window" in empty.output
    late = run("--minilog", str(hand_minilog(tmp_path / "late.mcap")), "--at-ms", str(T0_MS + 60_000))
    assert late.exit_code == 2 and "error:" in late.output and "empty window" in late.output
    nan = run("--minilog", str(hand_minilog(tmp_path / "nan.mcap", rel_x=float("nan"))))
    assert nan.exit_code == 2 and "error:" in nan.output and "NaN" in nan.output
    missing = run("--minilog", str(tmp_path / "absent.mcap"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    suite = RUNNER.invoke(app, ["replay", "suite", "--n", "7", "--method", "sgd"])
    assert suite.exit_code == 2 and "error: replay config search.method: 'sgd'" in suite.output
