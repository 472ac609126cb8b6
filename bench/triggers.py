"""Trigger throughput: pose samples per second through every built-in trigger on one core.

Measured in one run, on the same synthetic drive (every INCIDENTS kind injected every 70 s):

- value    — the vectorised core (`Trigger.update` of all built-ins) over pre-built `Frames` arrays,
             the whole drive as one batch (cloud trigger-engine catching up, replay, recordings);
- baseline — the same rules in the shape of a classic on-vehicle recorder (Apollo smart_recorder):
             every message is pulled by every trigger's callback, and the pose triggers loop its
             samples one at a time, over the same values pre-converted to plain Python values (so
             it pays no protobuf or numpy-scalar overhead);
- extra figures: the core in 60 s batches, the whole path including protobuf → array conversion
  (`detect_recording`), and per-message `TriggerRunner.feed` (the on-vehicle call pattern).

The last line printed is one JSON object. Run: `python bench/triggers.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fleetloop.triggers import (
    FrameCarry,
    Trigger,
    TriggerRunner,
    build_frames,
    build_triggers,
    detect_recording,
    load_config,
)
from fleetloop.triggers import synthetic as syn
from fleetloop.triggers.config import TriggerConfig
from fleetloop.triggers.frames import Frames
from fleetloop.v1 import common_pb2 as pb


def best_of(repeats: int, fn: Callable[[Any], Any], setup: Callable[[], Any] = lambda: None) -> tuple[float, Any]:
    """Fastest wall time (s) of `repeats` calls of fn(setup()) (setup untimed), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        arg = setup()
        t0 = time.perf_counter()
        result = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best, result


def core(frames: list[Frames], triggers: list[Trigger]) -> list[tuple[str, int]]:
    """All built-ins over pre-built batches; returns the detections as sorted (trigger, onset epoch ms)."""
    found = []
    for f in frames:
        horizon = int(f.sec_ms[-1]) + 1000
        found += [d for t in triggers for d in t.update(f, horizon)]
    found += [d for t in triggers for d in t.finish()]
    return sorted((d.trigger, d.onset_ms) for d in found)


class Callback:
    """A classic recorder trigger: `pull` sees every message; sample triggers loop its samples."""

    def __init__(self, config: TriggerConfig, name: str) -> None:
        self.name, self.p = name, config.triggers[name].params
        self.onsets: list[int] = []  # epoch ms of each detection's onset

    def pull(self, kind: str, payload: object) -> None:
        raise NotImplementedError


class HardDecelCallback(Callback):
    def __init__(self, config: TriggerConfig, name: str) -> None:
        super().__init__(config, name)
        hd = config.section("hard_decel")
        self.thr, self.gap, self.min_ms = hd["decel_mps2"], hd["merge_gap_s"] * 1000, hd["min_duration_s"] * 1000
        self.phantom, self.ep, self.path_occupied, self.seen = name == "phantom_stop", None, True, False

    def _close(self) -> None:
        if self.ep[1] - self.ep[0] >= self.min_ms and (self.ep[4] and not self.ep[3]) == self.phantom:
            self.onsets.append(self.ep[0])
        self.ep = None

    def pull(self, kind: str, payload: object) -> None:
        if kind == "path":  # the latest perception: is the ego path occupied?
            self.seen, self.path_occupied = True, payload
            return
        if kind != "pose":
            return
        for t, _v, _vv, a, av, _w, _wv, _running, _step in payload:
            if av and -a >= self.thr:
                if self.ep is not None and t - self.ep[1] <= self.gap:
                    self.ep[1], self.ep[2] = t, max(self.ep[2], -a)
                    self.ep[3] |= self.path_occupied
                    self.ep[4] |= self.seen
                else:
                    if self.ep is not None:
                        self._close()
                    self.ep = [t, t, -a, self.path_occupied, self.seen]
            elif self.ep is not None and t - self.ep[1] > self.gap:
                self._close()


class WeavingCallback(Callback):
    def __init__(self, config: TriggerConfig, name: str) -> None:
        super().__init__(config, name)
        self.ep = None

    def pull(self, kind: str, payload: object) -> None:
        if kind != "pose":
            return
        p = self.p
        for t, v, vv, _a, _av, w, wv, _running, _step in payload:
            if wv and vv and v > p["min_speed_mps"] and abs(w) >= p["yaw_rate_rps"]:
                sign = 1 if w > 0 else -1
                if self.ep is not None and t - self.ep[1] <= p["merge_gap_s"] * 1000:
                    self.ep[2] += sign != self.ep[3]
                    self.ep[1], self.ep[3] = t, sign
                else:
                    self.ep = [t, t, 0, sign]
            elif self.ep is not None and t - self.ep[1] > p["merge_gap_s"] * 1000:
                if self.ep[2] >= p["min_sign_changes"]:
                    self.onsets.append(self.ep[0])
                self.ep = None


class StopCallback(Callback):
    def __init__(self, config: TriggerConfig, name: str) -> None:
        super().__init__(config, name)
        self.ep = None

    def pull(self, kind: str, payload: object) -> None:
        if kind != "pose":
            return
        p = self.p
        for t, v, vv, _a, _av, _w, _wv, running, step in payload:
            if vv and v <= p["max_speed_mps"] and running and step <= p["max_step_m"]:
                if self.ep is not None and t - self.ep[1] <= p["merge_gap_s"] * 1000:
                    self.ep[1] = t
                    if not self.ep[2] and t - self.ep[0] >= p["issue_s"] * 1000:
                        self.ep[2] = True
                        self.onsets.append(self.ep[0])
                else:
                    self.ep = [t, t, False]


class SummaryCallback(Callback):
    """near_miss, planner_uncertainty, scene_complexity: one check per perception summary."""

    def __init__(self, config: TriggerConfig, name: str) -> None:
        super().__init__(config, name)
        self.path, self.last_hit = config.section("ego_path"), -1e18

    def pull(self, kind: str, payload: object) -> None:
        if kind != "perception":
            return
        t, objects, ratio, turn, ego_v = payload
        p, hit = self.p, False
        if self.name == "near_miss":
            ttc = float("inf")
            for _cls, x, y, vx, _conf, _emerged in objects:
                if 0 < x <= self.path["lookahead_m"] and abs(y) <= self.path["half_width_m"] and (
                        vx <= -p["min_closing_mps"]):
                    ttc = min(ttc, x / -vx)
            hit = ttc < p["ttc_s"]
        elif self.name == "planner_uncertainty":
            hit = ratio <= p["tie_ratio"]
        else:
            oncoming = occluded = unknown = False
            for cls, x, y, vx, conf, emerged in objects:
                oncoming |= x > 0 and vx + ego_v < -p["oncoming_speed_mps"]
                occluded |= emerged and (x * x + y * y) ** 0.5 <= p["occlusion_distance_m"]
                unknown |= cls == pb.OBJECT_CLASS_UNKNOWN and conf < p["unknown_confidence"]
            hit = (turn and oncoming) or occluded or unknown
        if hit:
            if t - self.last_hit > p["merge_gap_s"] * 1000:
                self.onsets.append(t)
            self.last_hit = t


class EventCallback(Callback):
    KINDS = {"contact": pb.EVENT_KIND_CONTACT, "takeover": pb.EVENT_KIND_TAKEOVER,
             "call_for_help": pb.EVENT_KIND_CALL_FOR_HELP, "operator_speech": pb.EVENT_KIND_OPERATOR_SPEECH,
             "error_code": pb.EVENT_KIND_ERROR_CODE}

    def __init__(self, config: TriggerConfig, name: str) -> None:
        super().__init__(config, name)
        self.kind, self.errors = self.KINDS[name], {}

    def pull(self, kind: str, payload: object) -> None:
        if kind != "event" or payload[1] != self.kind:
            return
        t, _, key, text = payload
        if self.name == "operator_speech":
            if any(k in text.lower() for k in self.p["keywords"]):
                self.onsets.append(t)
        elif self.name == "error_code":
            times = [x for x in self.errors.get(key, []) if t - x <= self.p["window_s"] * 1000] + [t]
            self.errors[key] = times
            if len(times) == self.p["min_count"]:
                self.onsets.append(times[0])
        else:
            self.onsets.append(t)


CALLBACKS = {"hard_brake": HardDecelCallback, "phantom_stop": HardDecelCallback, "weaving": WeavingCallback,
             "stop_not_go": StopCallback, "near_miss": SummaryCallback, "planner_uncertainty": SummaryCallback,
             "scene_complexity": SummaryCallback}


def baseline(messages: list[tuple[str, object]], config: TriggerConfig) -> list[tuple[str, int]]:
    """The classic recorder: every message goes to every trigger's callback, one sample at a time.
    Returns the detections as sorted (trigger, onset epoch ms)."""
    callbacks = [CALLBACKS.get(name, EventCallback)(config, name) for name in config.triggers]
    for kind, payload in messages:
        for cb in callbacks:
            cb.pull(kind, payload)
    return sorted((cb.name, onset) for cb in callbacks for onset in cb.onsets)


def baseline_input(f: Frames, config: TriggerConfig) -> list[tuple[str, object]]:
    """The frames as per-second messages of plain Python values, in time order, as a recorder's
    callbacks receive them: ("path", occupied) and ("perception", …) then ("pose", samples), events."""
    path = config.section("ego_path")
    ok = f.obj_valid & (np.abs(f.obj_rel_y_m) <= path["half_width_m"]) & (f.obj_rel_x_m > 0) & (
        f.obj_rel_x_m <= path["lookahead_m"])
    occupied = (np.bincount(f.obj_row[ok], minlength=f.sec_ms.size) > 0).tolist()
    objects: list[list[tuple]] = [[] for _ in range(f.sec_ms.size)]
    for o in zip(f.obj_row.tolist(), f.obj_class.tolist(), f.obj_rel_x_m.tolist(), f.obj_rel_y_m.tolist(),
                 f.obj_rel_vx_mps.tolist(), f.obj_confidence.tolist(), f.obj_emerged.tolist(), strict=True):
        objects[o[0]].append(o[1:])
    samples: list[list[tuple]] = [[] for _ in range(f.sec_ms.size)]
    running = f.task_running[f.row].tolist()
    for i, s in enumerate(zip(f.t_ms.tolist(), f.speed_mps.tolist(), f.speed_valid.tolist(),
                              f.accel_lon_mps2.tolist(), f.accel_valid.tolist(), f.yaw_rate_rps.tolist(),
                              f.yaw_valid.tolist(), running, f.step_m.tolist(), strict=True)):
        samples[int(f.row[i])].append(s)
    events: list[list[tuple]] = [[] for _ in range(f.sec_ms.size)]
    ev_rows = np.searchsorted(f.sec_ms, f.ev_t_ms // 1000 * 1000).tolist()
    for r, t, k, m, c, x in zip(ev_rows, f.ev_t_ms.tolist(), f.ev_kind.tolist(), f.ev_module, f.ev_code,
                                f.ev_text, strict=True):
        events[r].append((t, k, f"{m}/{c}", x))
    messages: list[tuple[str, object]] = []
    for r in range(f.sec_ms.size):
        if f.has_perception[r]:
            ratio = float(np.nan_to_num(f.planner_gap_ratio[r], nan=9.0))
            messages.append(("path", occupied[r]))
            messages.append(("perception", (int(f.perception_ms[r]), objects[r], ratio, bool(f.unprotected_turn[r]),
                                            float(f.ego_speed_mps[r]))))
        messages.append(("pose", samples[r]))
        messages.extend(("event", e) for e in events[r])
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 30-minute drive, fewer repeats (< 1 min)")
    parser.add_argument("--seconds", type=int, default=None, help="drive length in seconds (default 2 h)")
    args = parser.parse_args()
    seconds = args.seconds or (1800 if args.quick else 7200)
    repeats = 3 if args.quick else 7
    config = load_config()
    drive, expected = syn.incident_drive("bench-1", seconds, seed=11)
    envelopes = drive.envelopes()
    frames, _ = build_frames(envelopes, FrameCarry(), config.section("sanity"))
    n = frames.n_samples
    chunks, carry, i = [], FrameCarry(), 0

    while i < len(envelopes):
        end_ms = envelopes[i].event_time_ms // 60_000 * 60_000 + 60_000
        j = i
        while j < len(envelopes) and envelopes[j].event_time_ms < end_ms:
            j += 1
        f, carry = build_frames(envelopes[i:j], carry, config.section("sanity"))
        chunks.append(f)
        i = j

    fresh = lambda: build_triggers(config)  # noqa: E731  (a vehicle's triggers are built once, untimed)
    t_core, found = best_of(repeats, lambda trig: core([frames], trig), fresh)
    t_chunks, found_chunks = best_of(repeats, lambda trig: core(chunks, trig), fresh)
    plain = baseline_input(frames, config)
    t_base, found_base = best_of(repeats, lambda _: baseline(plain, config))
    t_full, events = best_of(max(1, repeats // 2), lambda _: detect_recording(envelopes, config))
    runner_feed = min(len(envelopes), 3 * 600)

    def per_message(_: None) -> list:
        r = TriggerRunner(config, "bench-1")
        return [ev for e in envelopes[:runner_feed] for ev in r.feed(e)] + r.flush()
    t_feed, fed = best_of(1, per_message)
    fed_samples = 10 * sum(1 for e in envelopes[:runner_feed] if e.WhichOneof("payload") == "pose")

    # Equal counts are not equal answers: every variant must find the same (trigger, onset) pairs.
    assert found, "the drive must produce detections"
    for label, other in (("60 s batches", found_chunks), ("baseline", found_base),
                         ("detect_recording", sorted((e.trigger, e.onset_ms) for e in events))):
        assert other == found, f"{label} differs from the one-batch core: {sorted(set(other) ^ set(found))[:10]}"
    prefix = sorted((e.trigger, e.onset_ms) for e in detect_recording(envelopes[:runner_feed], config))
    assert sorted((e.trigger, e.onset_ms) for e in fed) == prefix, "per-message feed differs from detect_recording"

    value, base = n / t_core, n / t_base
    print(f"drive: {seconds} s, {n} samples, {len(envelopes)} messages, {len(expected)} injected incidents")
    print(f"vectorised core, one batch   : {value:>12,.0f} samples/s  ({len(found)} detections)")
    print(f"vectorised core, 60 s batches: {n / t_chunks:>12,.0f} samples/s  (the same {len(found_chunks)})")
    print(f"per-sample Python baseline   : {base:>12,.0f} samples/s  (the same {len(found_base)})")
    print(f"incl. protobuf -> arrays     : {n / t_full:>12,.0f} samples/s  (the same {len(events)}, detect_recording)")
    print(f"per-message feed (vehicle)   : {fed_samples / t_feed:>12,.0f} samples/s  (1 s batches, first "
          f"{runner_feed} messages: the same {len(fed)} events as detect_recording)")
    print(f"best of {repeats} runs each (detect_recording {max(1, repeats // 2)}, per-message feed 1); "
          "every variant's (trigger, onset) pairs asserted identical")
    print(f"ratio core / baseline        : {value / base:.1f}x")
    print(json.dumps({"bench": "triggers", "value": round(value), "unit": "samples/s", "baseline": round(base),
                      "ratio": round(value / base, 1), "with_conversion": round(n / t_full),
                      "batches_60s": round(n / t_chunks), "per_message_feed": round(fed_samples / t_feed)}))


if __name__ == "__main__":
    main()
