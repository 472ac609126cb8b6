"""Normal driving stays clear of every trigger (docs/INCIDENTS.md): one simulated hour of 20 vehicles
without injected incidents."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from fleetloop.sim import SimConfig
from fleetloop.v1 import common_pb2

from tests.support import REPO_ROOT
from tests.support.simdata import run

TRIGGERS_YAML = REPO_ROOT / "libs/fleetloop/triggers/triggers.yaml"


@pytest.fixture(scope="module")
def hour():
    return run(SimConfig(vehicles=20, duration_s=3600, seed=21, incidents=[]))


def test_decel_and_jerk_stay_comfortable(hour):
    _, traces, _ = hour
    for vid, tr in traces.items():
        cols = tr.columns()
        accel = cols["accel_lon_mps2"]
        assert accel.min() >= -2.5 - 1e-5, vid
        jerk = np.abs(np.diff(accel)) / 0.1
        assert jerk.max() <= 2.0 + 1e-3, vid
        speed = cols["speed_mps"]
        # speeds follow the road classes: parks <= 8, urban <= 14, elevated <= 16.7, highway <= 25 m/s
        assert speed.max() <= 25.0 and speed.min() >= 0.0


def test_no_incident_events_and_only_benign_speech(hour):
    _, traces, _ = hour
    keywords = yaml.safe_load(TRIGGERS_YAML.read_text())["triggers"]["operator_speech"]["params"]["keywords"]
    forbidden = {common_pb2.EVENT_KIND_CONTACT, common_pb2.EVENT_KIND_TAKEOVER, common_pb2.EVENT_KIND_CALL_FOR_HELP}
    for tr in traces.values():
        assert all(e.kind not in forbidden for _, e in tr.events)
        for _, e in tr.events:
            if e.kind == common_pb2.EVENT_KIND_OPERATOR_SPEECH:
                assert not any(k in e.text.lower() for k in keywords), e.text
        assert sum(e.kind == common_pb2.EVENT_KIND_ERROR_CODE for _, e in tr.events) <= 1
        assert all(h.mode == common_pb2.DRIVING_MODE_AUTONOMOUS for _, h in tr.heartbeats)


def test_perception_stays_calm(hour):
    _, traces, _ = hour
    leads = 0
    for tr in traces.values():
        for _, s in tr.perception:
            assert not s.unprotected_turn
            c = list(s.planner_top_costs)
            assert c == sorted(c) and (c[1] - c[0]) / c[0] >= 0.2
            for o in s.objects:
                assert not o.emerged_from_occlusion
                assert not (o.object_class == common_pb2.OBJECT_CLASS_UNKNOWN and o.confidence < 0.5)
                if abs(o.rel_y_m) <= 2.0 and o.rel_x_m > 0:
                    leads += 1
                    if o.rel_vx_mps < 0:
                        assert o.rel_x_m / -o.rel_vx_mps >= 4.0
    assert leads > 1000  # following a lead is common, so the TTC rule was really exercised


def test_standstills_with_a_running_task_are_short(hour):
    _, traces, _ = hour
    longest = 0
    paused = 0
    for tr in traces.values():
        run_s = 0
        for _, h in tr.heartbeats:
            if h.speed_mps == 0.0 and h.task_state == common_pb2.TASK_STATE_RUNNING:
                run_s += 1
                longest = max(longest, run_s)
            else:
                run_s = 0
            paused += h.task_state == common_pb2.TASK_STATE_PAUSED
    assert 0 < longest <= 45  # red lights (<= 40 s) and give-way stops
    assert paused > 0  # delivery stops set the task to PAUSED


def test_lane_changes_and_turns_do_not_weave(hour):
    """Swings beyond the weaving threshold (turns) never alternate 3+ times within 1.2 s gaps."""
    _, traces, _ = hour
    for vid, tr in traces.items():
        cols = tr.columns()
        yaw, t = cols["yaw_rate_rps"], cols["t"]
        big = np.abs(yaw) > 0.11
        idx = np.flatnonzero(big)
        if not len(idx):
            continue
        groups = np.split(idx, np.flatnonzero(np.diff(t[idx]) > 1200) + 1)
        for g in groups:
            assert (np.diff(np.sign(yaw[g])) != 0).sum() <= 2, vid
