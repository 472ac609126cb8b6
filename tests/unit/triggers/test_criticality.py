"""The one TTC definition: known answers, numpy and torch alike, and the near_miss trigger built on it."""

from __future__ import annotations

import math

import numpy as np
import torch
from fleetloop.triggers import detect_recording, load_config
from fleetloop.triggers import synthetic as syn
from fleetloop.triggers.criticality import time_to_collision

GAP = [10.0, 10.0, 10.0, 4.0, -1.0, 0.0]
CLOSING = [5.0, 0.4, -3.0, 0.5, 2.0, 0.0]
EXPECTED = [2.0, math.inf, math.inf, 8.0, 0.0, math.inf]  # 0.4 < min closing 0.5; opening; overlap = 0 gap


def test_known_answers_numpy() -> None:
    out = time_to_collision(np.array(GAP), np.array(CLOSING), 0.5)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, EXPECTED)


def test_torch_matches_numpy() -> None:
    out = time_to_collision(torch.tensor(GAP), torch.tensor(CLOSING), 0.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), np.array(EXPECTED, dtype=np.float32))


def test_zero_min_closing_never_negative() -> None:
    # A standing object with min closing 0 is not on a collision course (no −inf from −0.0).
    assert time_to_collision(np.array([5.0]), -np.array([0.0]), 0.0)[0] == math.inf


def test_near_miss_fires_through_the_shared_definition() -> None:
    # 9 m ahead closing at 6 m/s: TTC 1.5 s < 2 s fires; the same closing from 15 m (2.5 s) stays silent.
    cfg = load_config()
    d = syn.cruise("veh-1", 120, seed=3)
    syn.close_object(d, 50, rel_x_m=9.0, closing_mps=6.0)
    events = [e for e in detect_recording(d.envelopes(), cfg) if e.trigger == "near_miss"]
    assert len(events) == 1 and abs(events[0].measurements["min_ttc_s"] - 1.5) < 1e-5
    d = syn.cruise("veh-1", 120, seed=3)
    syn.close_object(d, 50, seconds=5, rel_x_m=15.0, closing_mps=6.0)
    assert not [e for e in detect_recording(d.envelopes(), cfg) if e.trigger == "near_miss"]


def test_near_miss_ignores_closing_below_its_minimum() -> None:
    # Creeping in a queue at 2 m/s (below min_speed_mps, so only TTC can fire): 0.9 m ahead closing at
    # 0.6 m/s (TTC 1.5 s) fires; 0.6 m ahead closing at 0.4 m/s (TTC 1.5 s too) is below min_closing_mps.
    cfg = load_config()
    d = syn.cruise("veh-1", 120, speed_mps=2.0, seed=3)
    syn.close_object(d, 50, rel_x_m=0.9, closing_mps=0.6)
    assert [e.trigger for e in detect_recording(d.envelopes(), cfg)].count("near_miss") == 1
    d = syn.cruise("veh-1", 120, speed_mps=2.0, seed=3)
    syn.close_object(d, 50, rel_x_m=0.6, closing_mps=0.4)
    assert "near_miss" not in [e.trigger for e in detect_recording(d.envelopes(), cfg)]


def test_replay_ttc_term_reads_the_near_miss_numbers() -> None:
    # One definition needs one set of numbers: replay.yaml's TTC term repeats triggers.yaml's near_miss.
    from fleetloop.replay.config import load_config as load_replay_config

    replay = load_replay_config().section("costs")["terms"]["ttc"]["params"]
    triggers = load_config()
    near_miss = triggers.triggers["near_miss"].params
    assert replay["ttc_s"] == near_miss["ttc_s"] and replay["min_closing_mps"] == near_miss["min_closing_mps"]
    assert replay["lookahead_m"] == triggers.section("ego_path")["lookahead_m"]
