"""Triggers over the 1 Hz perception summaries: near_miss, planner_uncertainty, scene_complexity.

Each works on the rows of `Frames` that carry a summary (`has_perception`), timed by
`perception_ms`, and tracks episodes across batches like the pose triggers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetloop.triggers.base import (
    Category,
    Detection,
    Trigger,
    in_path,
    ms,
    nearest_in_path,
    per_row_min,
    register,
)
from fleetloop.triggers.config import Count, EpisodeGaps, Fraction, NonNegative, Positive, TriggerConfig, TriggerSpec
from fleetloop.triggers.criticality import time_to_collision
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
    """TTC below `ttc_s` (s) at closing ≥ `min_closing_mps`, or an in-path object nearer than
    `min_distance_m` while moving faster than `min_speed_mps` (m/s)."""

    ttc_s: Positive
    min_closing_mps: NonNegative
    min_distance_m: NonNegative
    min_speed_mps: NonNegative
    yield_to_hard_brake: bool


@register
class NearMiss(_SummaryTrigger):
    """Time-to-collision or distance envelope below threshold against objects in the ego path.

    Per object: TTC (s) = `rel_x_m` / −`rel_vx_mps` for valid objects ahead within
    `ego_path.half_width_m` that close faster than `min_closing_mps` (`criticality.time_to_collision`,
    the one TTC definition, shared with the replay). A summary is active when its
    minimum TTC is below `ttc_s`, or an in-path object is nearer than `min_distance_m` while the ego
    moves faster than `min_speed_mps`. With `yield_to_hard_brake`, an encounter during which the
    ego braked beyond `hard_decel.decel_mps2` is left to hard_brake (one event per incident). MPD.
    """

    name = "near_miss"
    category = Category.MPD
    Params = NearMissParams
    p: NearMissParams
    AGGS = {"neg_ttc": "max", "min_dist": "min", "decel": "max", "speed": "max"}
    PEAK = "neg_ttc"

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.path = config.ego_path
        self.hard_decel_mps2 = config.hard_decel.decel_mps2

    def rows(self, frames: Frames, rows: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        hw, la = self.path.half_width_m, self.path.lookahead_m
        ttc = per_row_min(frames, in_path(frames, hw, la),
                          time_to_collision(frames.obj_rel_x_m, -frames.obj_rel_vx_mps, self.p.min_closing_mps))
        dist = nearest_in_path(frames, hw, la)
        moving = frames.ego_speed_mps > self.p.min_speed_mps
        active = ((ttc < self.p.ttc_s) | ((dist < self.p.min_distance_m) & moving))[rows]
        values = {"neg_ttc": -ttc[rows], "min_dist": dist[rows], "decel": frames.max_decel_mps2[rows],
                  "speed": frames.ego_speed_mps[rows]}
        return active, values

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        out = []
        for ep in episodes:
            if self.p.yield_to_hard_brake and ep.aggs["decel"] >= self.hard_decel_mps2:
                continue
            min_ttc = -ep.aggs["neg_ttc"]
            m = {"max_speed_mps": ep.aggs["speed"], "max_decel_mps2": max(ep.aggs["decel"], 0.0)}
            if np.isfinite(min_ttc):
                m["min_ttc_s"] = min_ttc
            if np.isfinite(ep.aggs["min_dist"]):
                m["min_distance_m"] = ep.aggs["min_dist"]
            severity = 1.0 - min_ttc / self.p.ttc_s if np.isfinite(min_ttc) else 1.0
            out.append(self.detection(severity, ep.start_ms, ep.peak_ms, ep.end_ms, m))
        return out


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
