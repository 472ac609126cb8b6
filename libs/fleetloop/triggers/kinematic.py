"""Triggers over the 10 Hz pose samples: hard_brake, phantom_stop, weaving, stop_not_go."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetloop.config import ConfigModel
from fleetloop.triggers.base import Category, Detection, Trigger, ms, nearest_in_path, register
from fleetloop.triggers.config import Count, EpisodeGaps, NonNegative, Positive, TriggerConfig, TriggerSpec
from fleetloop.triggers.episodes import Episode, EpisodeTracker
from fleetloop.triggers.frames import Frames


class _HardDecel(Trigger):
    """Hard-deceleration episodes (config section `hard_decel`), classified by the ego path.

    Input per sample (n,): `accel_lon_mps2` (m/s², + forward) with `accel_valid`; per second: the
    perceived objects. An episode is the run of samples with deceleration ≥ `decel_mps2`, lasting
    ≥ `min_duration_s`. Perception during the episode decides its name: an object within
    `ego_path.half_width_m` and the lookahead ahead (speed × `criticality.lookahead_s`, at least
    `ego_path.lookahead_m`: a slow truck 60 m ahead at highway speed is a reason to brake), or no
    perception at all → hard_brake;
    perception that saw the path clear → phantom_stop. Exactly one of the two owns each episode.
    """

    owns_phantom: bool = False

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.hd = config.hard_decel
        self.path = config.ego_path
        self.lookahead_s = config.criticality.lookahead_s
        self.ego_length_m = config.criticality.ego_length_m
        self.tracker = EpisodeTracker(
            ms(self.hd.merge_gap_s), ms(self.hd.bridge_gap_s),
            {"decel": "max", "seen": "max", "occupied": "max", "lead_m": "min", "speed": "max"}, peak="decel")

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        idx = np.flatnonzero(frames.accel_valid & (frames.accel_lon_mps2 <= -self.hd.decel_mps2))
        row = frames.row[idx]
        lead = nearest_in_path(frames, self.path.half_width_m, self.path.lookahead_m, self.lookahead_s,
                               self.ego_length_m)[row]
        values = {"decel": -frames.accel_lon_mps2[idx], "seen": frames.has_perception[row].astype(np.float64),
                  "occupied": np.isfinite(lead).astype(np.float64), "lead_m": lead,
                  "speed": frames.speed_mps[idx]}
        return self._detect(self.tracker.update(frames.t_ms, idx, values, horizon_ms))

    def finish(self) -> list[Detection]:
        return self._detect(self.tracker.close())

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        out = []
        for ep in episodes:
            if (ep.end_ms - ep.start_ms) / 1000.0 < self.hd.min_duration_s:
                continue
            phantom = ep.aggs["seen"] > 0 and ep.aggs["occupied"] == 0
            if phantom == self.owns_phantom:
                out.append(self._event(ep))
        return out

    def _event(self, ep: Episode) -> Detection:
        thr, severe = self.hd.decel_mps2, self.hd.severe_decel_mps2
        peak = ep.aggs["decel"]
        m = {"peak_decel_mps2": peak, "duration_s": (ep.end_ms - ep.start_ms) / 1000.0,
             "max_speed_mps": ep.aggs["speed"]}
        if np.isfinite(ep.aggs["lead_m"]):
            m["min_lead_distance_m"] = ep.aggs["lead_m"]
        return self.detection((peak - thr) / (severe - thr), ep.start_ms, ep.peak_ms, ep.end_ms, m,
                              category=self._category(peak, ep.aggs["lead_m"]))

    def _category(self, peak_decel: float, lead_m: float) -> Category | None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return self.tracker.snapshot()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.tracker.restore(state)


class HardBrakeParams(ConfigModel):
    """hard_brake's MPD rule: peak deceleration (m/s²) and lead distance (m) of an extreme brake."""

    mpd_decel_mps2: Positive
    mpd_lead_distance_m: Positive


@register
class HardBrake(_HardDecel):
    """Hard brake with something in the path (or no perception). MPS; MPD when the peak
    deceleration reaches `mpd_decel_mps2` with a lead within `mpd_lead_distance_m`."""

    name = "hard_brake"
    category = Category.MPS
    Params = HardBrakeParams
    p: HardBrakeParams

    def _category(self, peak_decel: float, lead_m: float) -> Category | None:
        extreme = peak_decel >= self.p.mpd_decel_mps2 and lead_m <= self.p.mpd_lead_distance_m
        return Category.MPD if extreme else None


@register
class PhantomStop(_HardDecel):
    """Hard brake while perception saw the ego path clear (braking for nothing). MPS."""

    name = "phantom_stop"
    category = Category.MPS
    owns_phantom = True


class WeavingParams(EpisodeGaps):
    """Yaw-rate swings (rad/s) at speed (m/s) and how many direction changes make weaving."""

    yaw_rate_rps: Positive
    min_speed_mps: NonNegative
    min_sign_changes: Count
    severe_yaw_rate_rps: Positive


@register
class Weaving(Trigger):
    """Yaw-rate sign oscillation ("drawing a dragon").

    Input per sample (n,): `yaw_rate_rps` (rad/s, + counter-clockwise) with `yaw_valid`,
    `speed_mps` with `speed_valid`. Active samples have |yaw rate| ≥ `yaw_rate_rps` at speed
    > `min_speed_mps`; swings closer than `merge_gap_s` chain into one episode, which fires when the
    swing direction changes at least `min_sign_changes` times. MPS.
    """

    name = "weaving"
    category = Category.MPS
    Params = WeavingParams
    p: WeavingParams

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.tracker = EpisodeTracker(ms(self.p.merge_gap_s), ms(self.p.bridge_gap_s),
                                      {"abs_yaw": "max", "sign": "changes", "speed": "max"}, peak="abs_yaw")

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        yaw = frames.yaw_rate_rps
        idx = np.flatnonzero((np.abs(yaw) >= self.p.yaw_rate_rps) & frames.yaw_valid & frames.speed_valid
                             & (frames.speed_mps > self.p.min_speed_mps))
        values = {"abs_yaw": np.abs(yaw[idx]), "sign": np.sign(yaw[idx]), "speed": frames.speed_mps[idx]}
        return self._detect(self.tracker.update(frames.t_ms, idx, values, horizon_ms))

    def finish(self) -> list[Detection]:
        return self._detect(self.tracker.close())

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        thr, severe = self.p.yaw_rate_rps, self.p.severe_yaw_rate_rps
        return [
            self.detection((ep.aggs["abs_yaw"] - thr) / (severe - thr), ep.start_ms, ep.peak_ms, ep.end_ms,
                           {"peak_yaw_rate_rps": ep.aggs["abs_yaw"], "sign_changes": ep.aggs["sign"],
                            "duration_s": (ep.end_ms - ep.start_ms) / 1000.0, "max_speed_mps": ep.aggs["speed"]})
            for ep in episodes if ep.aggs["sign"] >= self.p.min_sign_changes
        ]

    def snapshot(self) -> dict[str, Any]:
        return self.tracker.snapshot()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.tracker.restore(state)


class StopNotGoParams(EpisodeGaps):
    """A stop: speed ≤ `max_speed_mps`, steps ≤ `max_step_m`; an issue at `issue_s`, severity 1 at `severe_s`."""

    max_speed_mps: Positive
    issue_s: Positive
    max_step_m: Positive
    severe_s: Positive


@register
class StopNotGo(Trigger):
    """Stopped with the task running: fires once when the stop reaches `issue_s`.

    Input per sample (n,): `speed_mps` (m/s) with `speed_valid`, `step_m` (m moved since the
    previous sample); per second: `task_running` (heartbeat). Pose gaps up to `bridge_gap_s` are
    bridged when the vehicle did not move across them (`step_m` ≤ `max_step_m`). The event's
    onset is the start of the stop and its end the moment it became an issue. MPS.
    """

    name = "stop_not_go"
    category = Category.MPS
    Params = StopNotGoParams
    p: StopNotGoParams

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        super().__init__(spec, config)
        self.tracker = EpisodeTracker(ms(self.p.merge_gap_s), ms(self.p.bridge_gap_s), {})

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        slow = np.flatnonzero(frames.speed_valid & (frames.speed_mps <= self.p.max_speed_mps))
        idx = slow[frames.task_running[frames.row[slow]]]
        moved = frames.step_m > self.p.max_step_m
        closed = self.tracker.update(frames.t_ms, idx, {}, horizon_ms, extra_breaks=moved)
        return self._detect(closed + ([self.tracker.open] if self.tracker.open else []))

    def finish(self) -> list[Detection]:
        return self._detect(self.tracker.close())

    def _detect(self, episodes: list[Episode]) -> list[Detection]:
        issue_ms = ms(self.p.issue_s)
        out = []
        for ep in episodes:
            if not ep.fired and ep.end_ms - ep.start_ms >= issue_ms:
                ep.fired = True
                at = ep.start_ms + issue_ms
                out.append(self.detection(self.p.issue_s / self.p.severe_s, ep.start_ms, at, at,
                                          {"stopped_s": self.p.issue_s}))
        return out

    def snapshot(self) -> dict[str, Any]:
        return self.tracker.snapshot()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.tracker.restore(state)
