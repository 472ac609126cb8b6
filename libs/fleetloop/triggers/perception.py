"""Triggers over the 1 Hz perception summaries: near_miss, planner_uncertainty, scene_complexity.

Each works on the rows of `Frames` that carry a summary (`has_perception`), timed by
`perception_ms`, and tracks episodes across batches like the pose triggers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetloop.triggers import criticality
from fleetloop.triggers.base import (
    REGISTRY,
    Category,
    Detection,
    Trigger,
    ego_length_per_object,
    ms,
    per_row_min,
    register,
)
from fleetloop.triggers.config import Count, EpisodeGaps, Fraction, NonNegative, Positive, TriggerConfig, TriggerSpec
from fleetloop.triggers.episodes import Episode, EpisodeTracker
from fleetloop.triggers.frames import Frames
from fleetloop.v1 import common_pb2


class _SummaryTrigger(Trigger):
    """Base for triggers over summary rows: one EpisodeTracker, `merge_gap_s`/`bridge_gap_s` params."""

    AGGS: Mapping[str, str] = {}
    PEAK: str | None = None
    p: EpisodeGaps

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.tracker = EpisodeTracker(ms(self.p.merge_gap_s), ms(self.p.bridge_gap_s), self.AGGS, self.PEAK)

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        rows = np.flatnonzero(frames.has_perception)
        active, values = self.rows(frames, rows)
        idx = np.flatnonzero(active)
        values = {k: v[idx] for k, v in values.items()}
        return self._detect(self.tracker.update(frames.perception_ms[rows], idx, values, horizon_ms))

    def finish(self) -> list[Detection]:
        return self._detect(self.tracker.close())

    def rows(self, frames: Frames, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Active mask (r,) and aggregate inputs (r,) for the summary rows `rows`."""
        raise NotImplementedError

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return self.tracker.snapshot()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.tracker.restore(state)


class NearMissParams(EpisodeGaps):
    """TTC below `ttc_s` (s) at a relative speed ≥ `min_closing_mps`, or an object in the path nearer
    than `min_distance_m` while moving faster than `min_speed_mps` (m/s)."""

    ttc_s: Positive
    min_closing_mps: NonNegative
    min_distance_m: NonNegative
    min_speed_mps: NonNegative
    yield_to_hard_brake: bool


def object_criticality(frames: Frames, config: TriggerConfig, min_closing_mps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per object (k,): time to collision (s) and bumper gap in the ego's path (m), by
    `criticality`, each the lesser of the value at the summary's instant and the vehicle's in-second
    minimum (`min_ttc_s` / `min_distance_m`); inf where it does not apply or the object is invalid.

    The instant's TTC: first overlap of the boxes within `criticality.horizon_s`, the object moving
    with its relative velocity and its own acceleration estimate, the ego holding its velocity (what
    happens if the ego does not react), for objects whose centre is ahead of the ego's. The gap
    counts for objects whose box is laterally within `path_margin_m` of the ego's and whose gap is
    within the lookahead (speed × `lookahead_s`, at least `ego_path.lookahead_m`).
    """
    def compute() -> tuple[np.ndarray, np.ndarray]:
        c = config.criticality
        r = frames.obj_row

        def per_object(sent: np.ndarray, default: float) -> np.ndarray | float:
            # most summaries leave the ego box out: one number then, not a column
            return default if np.isnan(sent).all() else np.where(np.isnan(sent), default, sent)[r]

        ego_l = ego_length_per_object(frames, c.ego_length_m)
        ego_w = per_object(frames.ego_width_m, c.ego_width_m)
        bumper = True if frames.bumper_gap.all() else frames.bumper_gap[r]
        cx = criticality.box_offsets(frames.obj_rel_x_m, frames.obj_length_m, ego_l, bumper)
        hx, hy = 0.5 * (frames.obj_length_m + ego_l), 0.5 * (frames.obj_width_m + ego_w)
        ahead = frames.obj_valid & (cx > 0)
        # Only objects that can reach the ego's box within the horizon need the exact first overlap.
        h = c.horizon_s
        vx, vy, ax, ay = frames.obj_rel_vx_mps, frames.obj_rel_vy_mps, frames.obj_accel_x_mps2, frames.obj_accel_y_mps2
        near = ahead & (cx - hx <= np.abs(vx) * h + 0.5 * np.abs(ax) * h * h) \
            & (np.abs(frames.obj_rel_y_m) - hy <= np.abs(vy) * h + 0.5 * np.abs(ay) * h * h)
        ttc = frames.obj_min_ttc_s.copy()
        if near.any():
            ttc[near] = np.minimum(ttc[near], criticality.forward_ttc(
                cx[near], frames.obj_rel_y_m[near], vx[near], vy[near], hx[near], hy[near], h, min_closing_mps,
                ax[near], ay[near]))
        reach = criticality.lookahead_m(frames.ego_speed_mps, c.lookahead_s, config.ego_path.lookahead_m)[r]
        gap = criticality.path_gap_m(cx, frames.obj_rel_y_m, hx, hy, c.path_margin_m, reach)
        dist = np.minimum(np.where(frames.obj_valid, gap, np.inf), frames.obj_min_distance_m)
        return ttc, dist

    return frames.memo(("object_criticality", min_closing_mps), compute)


@register
class NearMiss(_SummaryTrigger):
    """Time to collision or distance envelope below threshold (`criticality`, the one definition).

    A summary is active when the least TTC of its objects, or the summary's own in-second minimum
    (`window_min_ttc_s`: objects already gone), is below `ttc_s`; or when an object in the path is
    nearer than `min_distance_m` (the same with `window_min_distance_m`) while the ego moves faster
    than `min_speed_mps` (see `object_criticality`). MPD.

    Hand-over: with `yield_to_hard_brake`, an encounter is left to hard_brake only when hard_brake
    fires on it. near_miss runs hard_brake's own class on the same samples (by construction the
    same episodes and the same verdict) and holds an encounter until that verdict is known: a
    hard-brake event overlapping the encounter (± 1 s, the summary period) takes it, otherwise
    near_miss fires. So each encounter yields exactly one of the two events.
    """

    name = "near_miss"
    category = Category.MPD
    Params = NearMissParams
    p: NearMissParams
    AGGS = {"neg_ttc": "max", "min_dist": "min", "decel": "max", "speed": "max"}
    PEAK = "neg_ttc"
    SLACK_MS = 1000  # summaries are 1 s apart: an encounter reaches a second either side of its rows

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.config = config
        hb = config.triggers.get("hard_brake")
        self.shadow = (REGISTRY["hard_brake"](hb, config)
                       if self.p.yield_to_hard_brake and hb is not None and hb.enabled else None)
        self.pending: list[Episode] = []
        self.brakes: list[tuple[int, int]] = []  # (onset, end) ms of the hard_brake events not yet outdated
        self.seen_ms = -1

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        if self.shadow is not None:
            self.brakes += [(d.onset_ms, d.end_ms) for d in self.shadow.update(frames, horizon_ms)]
        self.seen_ms = max(self.seen_ms, horizon_ms)
        return super().update(frames, horizon_ms)

    def finish(self) -> list[Detection]:
        if self.shadow is not None:
            self.brakes += [(d.onset_ms, d.end_ms) for d in self.shadow.finish()]
            self.shadow = None  # every verdict is in
        return self._detect(self.tracker.close())

    def rows(self, frames: Frames, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ttc_obj, dist_obj = object_criticality(frames, self.config, self.p.min_closing_mps)
        ttc = np.minimum(per_row_min(frames, np.isfinite(ttc_obj), ttc_obj), frames.window_min_ttc_s)
        dist = np.minimum(per_row_min(frames, np.isfinite(dist_obj), dist_obj), frames.window_min_distance_m)
        moving = frames.ego_speed_mps > self.p.min_speed_mps
        active = ((ttc < self.p.ttc_s) | ((dist < self.p.min_distance_m) & moving))[rows]
        values = {"neg_ttc": -ttc[rows], "min_dist": dist[rows], "decel": frames.max_decel_mps2[rows],
                  "speed": frames.ego_speed_mps[rows]}
        return active, values

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        self.pending += episodes
        out, keep = [], []
        for ep in self.pending:
            lo, hi = ep.start_ms - self.SLACK_MS, ep.end_ms + self.SLACK_MS
            if any(onset <= hi and end >= lo for onset, end in self.brakes):
                continue  # hard_brake fired on this encounter: its event is the one
            if self.shadow is not None and not self._settled(hi):
                keep.append(ep)
                continue
            out.append(self._event(ep))
        self.pending = keep
        starts = [ep.start_ms for ep in keep] + ([self.tracker.open.start_ms] if self.tracker.open else [])
        first = min(starts, default=self.seen_ms) - self.SLACK_MS
        self.brakes = [(onset, end) for onset, end in self.brakes if end >= first]
        return out

    def _settled(self, until_ms: int) -> bool:
        """Whether hard_brake's verdict on everything up to `until_ms` is known: its samples were seen
        and no hard-deceleration episode that began by then is still open."""
        open_ep = self.shadow.tracker.open
        return until_ms <= self.seen_ms and (open_ep is None or open_ep.start_ms > until_ms)

    def _event(self, ep: Episode) -> Detection:
        min_ttc = -ep.aggs["neg_ttc"]
        m = {"max_speed_mps": ep.aggs["speed"], "max_decel_mps2": max(ep.aggs["decel"], 0.0)}
        if np.isfinite(min_ttc):
            m["min_ttc_s"] = min_ttc
        if np.isfinite(ep.aggs["min_dist"]):
            m["min_distance_m"] = ep.aggs["min_dist"]
        severity = 1.0 - min_ttc / self.p.ttc_s if np.isfinite(min_ttc) else 1.0
        return self.detection(severity, ep.start_ms, ep.peak_ms, ep.end_ms, m)

    def snapshot(self) -> dict[str, Any]:
        return {**self.tracker.snapshot(), "pending": [ep.snapshot() for ep in self.pending],
                "brakes": self.brakes, "seen": self.seen_ms,
                "shadow": self.shadow.snapshot() if self.shadow is not None else None}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.tracker.restore(state)
        self.pending = [Episode.restore(d) for d in state["pending"]]
        self.brakes = [(int(a), int(b)) for a, b in state["brakes"]]
        self.seen_ms = int(state["seen"])
        if self.shadow is not None and state["shadow"] is not None:
            self.shadow.restore(state["shadow"])


class PlannerUncertaintyParams(EpisodeGaps):
    """Tied costs (gap ratio ≤ `tie_ratio`) for `min_tied_s` summaries, or `min_flips` returns within
    `flip_window_s` (s)."""

    tie_ratio: Positive
    min_tied_s: Count
    min_flips: Count
    flip_window_s: Positive


@register
class PlannerUncertainty(_SummaryTrigger):
    """The planner hesitates: its two best costs nearly tie, or its maneuver flip-flops.

    Per summary: `planner_gap_ratio` = (c2 − c1)/|c1| (tied when ≤ `tie_ratio`) and the `maneuver`
    code. A flip is a change back to the maneuver before the previous change (A→B→A) when B lasted
    at most `flip_window_s`. An episode fires with ≥ `min_tied_s` tied summaries or ≥ `min_flips`
    flips. INFO (replay queue).
    """

    name = "planner_uncertainty"
    category = Category.INFO
    Params = PlannerUncertaintyParams
    p: PlannerUncertaintyParams
    AGGS = {"tied": "sum", "flips": "sum", "neg_ratio": "max"}
    PEAK = "neg_ratio"

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.recent = [0, 0, 0]  # the maneuver before the last change, the current one, when it began (ms)

    def rows(self, frames: Frames, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ratio = frames.planner_gap_ratio[rows]
        tied = np.isfinite(ratio) & (ratio <= self.p.tie_ratio)
        flips = np.zeros(rows.size, dtype=bool)
        # Few summaries change maneuver, so walking only the changes stays cheap.
        man, t_ms = frames.maneuver[rows], frames.perception_ms[rows]
        prev = np.concatenate(([self.recent[1]], man[:-1]))
        window_ms = ms(self.p.flip_window_s)
        for i in np.flatnonzero((man != prev) & (man != 0)):
            flips[i] = man[i] == self.recent[0] and t_ms[i] - self.recent[2] <= window_ms
            self.recent = [self.recent[1], int(man[i]), int(t_ms[i])]
        values = {"tied": tied.astype(np.float64), "flips": flips.astype(np.float64),
                  "neg_ratio": np.where(np.isfinite(ratio), -ratio, -np.inf)}
        return tied | flips, values

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        out = []
        for ep in episodes:
            if ep.aggs["tied"] >= self.p.min_tied_s or ep.aggs["flips"] >= self.p.min_flips:
                gap = -ep.aggs["neg_ratio"]
                m = {"tied_s": ep.aggs["tied"], "flips": ep.aggs["flips"]}
                if np.isfinite(gap):
                    m["min_cost_gap_ratio"] = gap
                severity = 1.0 - gap / self.p.tie_ratio if np.isfinite(gap) else 0.5
                out.append(self.detection(severity, ep.start_ms, ep.peak_ms, ep.end_ms, m,
                                          "tied" if ep.aggs["tied"] >= self.p.min_tied_s else "flip"))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {**self.tracker.snapshot(), "recent": self.recent}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.tracker.restore(state)
        self.recent = list(state["recent"])


class SceneComplexityParams(EpisodeGaps):
    """Oncoming above `oncoming_speed_mps` (m/s), emergence within `occlusion_distance_m` (m), UNKNOWN
    objects below `unknown_confidence` (0..1)."""

    oncoming_speed_mps: NonNegative
    occlusion_distance_m: Positive
    unknown_confidence: Fraction


@register
class SceneComplexity(_SummaryTrigger):
    """A scene worth replaying: unprotected turn with an oncoming agent, an object emerging from
    occlusion within `occlusion_distance_m`, or an UNKNOWN-class object below `unknown_confidence`.

    Oncoming: a valid object ahead whose ground speed along ego's axis (`rel_vx_mps` + ego speed) is
    below −`oncoming_speed_mps`. INFO (replay queue).
    """

    name = "scene_complexity"
    category = Category.INFO
    Params = SceneComplexityParams
    p: SceneComplexityParams
    AGGS = {"turn": "max", "occluded": "max", "unknown": "max"}
    REASONS = ("turn", "occluded", "unknown")
    DETAIL = {"turn": "unprotected_turn_oncoming", "occluded": "emerged_from_occlusion",
              "unknown": "unknown_low_confidence"}

    def rows(self, frames: Frames, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = frames.sec_ms.size
        r = frames.obj_row
        ego_v = frames.ego_speed_mps[r]
        oncoming = (frames.obj_valid & (frames.obj_rel_x_m > 0)
                    & (frames.obj_rel_vx_mps + ego_v < -self.p.oncoming_speed_mps))
        near = np.hypot(frames.obj_rel_x_m, frames.obj_rel_y_m) <= self.p.occlusion_distance_m
        flags = {
            "turn": frames.unprotected_turn & (np.bincount(r[oncoming], minlength=m) > 0),
            "occluded": np.bincount(r[frames.obj_valid & frames.obj_emerged & near], minlength=m) > 0,
            "unknown": np.bincount(r[frames.obj_valid & (frames.obj_class == common_pb2.OBJECT_CLASS_UNKNOWN)
                                     & (frames.obj_confidence < self.p.unknown_confidence)], minlength=m) > 0,
        }
        values = {k: v[rows].astype(np.float64) for k, v in flags.items()}
        active = (flags["turn"] | flags["occluded"] | flags["unknown"])[rows]
        return active, values

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        out = []
        for ep in episodes:
            reasons = [k for k in self.REASONS if ep.aggs[k] > 0]
            out.append(self.detection(0.3 + 0.2 * len(reasons), ep.start_ms, ep.start_ms, ep.end_ms,
                                      {f"{k}": ep.aggs[k] for k in reasons},
                                      ",".join(self.DETAIL[k] for k in reasons)))
        return out
