"""Observation features for the ego policies, built batched from agent states and the scenario's map.

`ObservationFeatures.compute` takes agent states shaped `[S, N, A]` — N is the candidate dimension of
a `WorldState`, or the time dimension when features are taken along a logged scenario — and returns
`[S, N, F]` float32 with F = len(FEATURES), in the order of `FEATURES`:

- `speed_mps`: ego speed (m/s, signed along its heading).
- `accel_mps2`: the ego's acceleration over the step before (m/s², (v_k - v_{k-1}) / dt; 0 where unknown).
  The fleet's speed control is jerk-limited, so this carries most of what the next acceleration will be.
- `heading_error_rad`: ego heading minus the heading of the nearest lane centre, wrapped to [-pi, pi).
- `lateral_offset_m`: signed distance of the ego from that lane centre (m, + left of the lane).
- `speed_limit_mps`: the lane's speed limit (the configured default off a lane or where the map has none).
- `preview_limit_mps`: the speed limit of the lane at the preview point (lower before a tight curve).
- `pursuit_curvature_1pm`: the pure-pursuit curvature (1/m, + left) that reaches the lane centre at the
  preview distance `lookahead_min_m + lookahead_time_s * speed` ahead along the lane.
- `lane_found`: 1 when the chosen lane centre lies within `lane_search_m`, else 0 (the lane features are then 0
  and the limits the default).
- `lead_gap_m`: bumper-to-bumper gap (m, >= 0) to the nearest valid agent ahead of the ego whose centre
  lies within the ego's corridor (half the two widths plus `corridor_margin_m` either side of its
  heading line); `lead_range_m` when there is none within that range.
- `lead_closing_mps`: ego speed minus the leader's speed along the ego heading (m/s, + closing); 0 without one.
- `lead_present`: 1 with a leader, else 0.

The nearest lane is chosen by distance plus `lane_heading_weight_m * (1 - cos(heading difference))`, so
an oncoming lane (difference pi) costs twice that weight and a crossing lane once: the ego keeps to
lanes running its way at junctions and on two-way roads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fleetloop.replay.dynamics import wrap_angle
from fleetloop.replay.scenario import EGO, MapKind, ScenarioBatch

FEATURES = ("speed_mps", "accel_mps2", "heading_error_rad", "lateral_offset_m", "speed_limit_mps", "preview_limit_mps",
            "pursuit_curvature_1pm", "lane_found", "lead_gap_m", "lead_closing_mps", "lead_present")


def logged_accel(scen: ScenarioBatch) -> torch.Tensor:
    """The ego's logged acceleration over the step before each step, `[S, T]` (m/s²; 0 at step 0 and
    where either end is unknown)."""
    v, ok = scen.speed[:, EGO], scen.valid[:, EGO]
    accel = torch.zeros_like(v)
    accel[:, 1:] = torch.where(ok[:, 1:] & ok[:, :-1], (v[:, 1:] - v[:, :-1]) / scen.dt_s, 0.0)
    return accel


@dataclass(frozen=True)
class FeatureParams:
    """The `policies.features` section of replay.yaml (metres, seconds, m/s)."""

    lane_search_m: float
    lane_heading_weight_m: float
    default_speed_limit_mps: float
    lookahead_min_m: float
    lookahead_time_s: float
    corridor_margin_m: float
    lead_range_m: float

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> FeatureParams:
        return cls(**{k: float(raw[k]) for k in cls.__dataclass_fields__})


@dataclass
class LaneQuery:
    """The nearest lane centre of each of `[S, N]` points: the closest point on it (m), its heading
    (rad), the point's signed offset from it (m, + left), its speed limit (m/s, NaN where the map has
    none) and whether one was found within the search radius."""

    px: torch.Tensor
    py: torch.Tensor
    heading: torch.Tensor
    offset: torch.Tensor
    limit: torch.Tensor
    found: torch.Tensor


class LaneMap:
    """The lane-centre segments of a scenario batch, ready for nearest-lane queries: lane polylines first
    and the other kinds cut away (so road edges and crosswalks cost nothing), with each segment's start,
    vector, length, unit direction and heading `[S, P_lane, V-1]` computed once."""

    def __init__(self, scen: ScenarioBatch, params: FeatureParams) -> None:
        self.params = params
        is_lane = scen.map_kind == MapKind.LANE_CENTRE                        # [S, P]
        n_lanes = max(int(is_lane.sum(dim=1).max()), 1) if is_lane.numel() else 1
        order = torch.argsort((~is_lane).to(torch.int8), dim=1, stable=True)[:, :n_lanes]
        xy = scen.map_xy.gather(1, order[..., None, None].expand(-1, -1, *scen.map_xy.shape[2:])) \
            if scen.map_xy.shape[1] else scen.map_xy.new_zeros(scen.n_scenarios, 1, 2, 2)
        point_ok = scen.map_valid.gather(1, order[..., None].expand(-1, -1, scen.map_valid.shape[2])) \
            if scen.map_xy.shape[1] else torch.zeros(scen.n_scenarios, 1, 2, dtype=torch.bool, device=scen.device)
        lane = is_lane.gather(1, order) if scen.map_xy.shape[1] else point_ok[:, :, 0]
        self.ax, self.ay = xy[:, :, :-1, 0], xy[:, :, :-1, 1]                  # [S, P, V-1] segment starts
        self.dx, self.dy = xy[:, :, 1:, 0] - self.ax, xy[:, :, 1:, 1] - self.ay  # segment vectors
        self.len2 = (self.dx * self.dx + self.dy * self.dy).clamp_min(1e-9)
        length = torch.sqrt(self.len2)
        self.ux, self.uy = self.dx / length, self.dy / length
        self.seg_heading = torch.atan2(self.dy, self.dx).reshape(scen.n_scenarios, -1)
        self.valid = point_ok[:, :, :-1] & point_ok[:, :, 1:] & lane[:, :, None] & (self.len2 > 1e-6)
        limits = scen.map_speed_limit_mps.gather(1, order) if scen.map_xy.shape[1] else \
            torch.full((scen.n_scenarios, 1), math.nan, device=scen.device)
        self.limit = limits                                                    # [S, P]
        self.n_segments = self.ax.shape[2]

    def nearest(self, px: torch.Tensor, py: torch.Tensor, heading: torch.Tensor) -> LaneQuery:
        """Nearest lane centre of points `px, py` `[S, N]` for a traveller heading `heading` `[S, N]`;
        `found` where the chosen lane lies within `lane_search_m`."""
        s, n = px.shape
        ax, ay, dx, dy = (v[:, None] for v in (self.ax, self.ay, self.dx, self.dy))    # [S, 1, P, V-1]
        rx, ry = px[..., None, None] - ax, py[..., None, None] - ay                    # [S, N, P, V-1]
        t = ((rx * dx + ry * dy) / self.len2[:, None]).clamp(0.0, 1.0)
        ex, ey = rx - t * dx, ry - t * dy                                              # point minus closest
        dist = torch.sqrt(ex * ex + ey * ey)
        turn = 1.0 - (torch.cos(heading)[..., None, None] * self.ux[:, None]
                      + torch.sin(heading)[..., None, None] * self.uy[:, None])
        score = torch.where(self.valid[:, None], dist + self.params.lane_heading_weight_m * turn, math.inf)
        best = score.reshape(s, n, -1).argmin(dim=-1, keepdim=True)                    # [S, N, 1] flat segment

        def pick(v: torch.Tensor) -> torch.Tensor:
            return v.reshape(s, n, -1).gather(-1, best)[..., 0]

        cross = self.ux[:, None] * ry - self.uy[:, None] * rx
        limit = self.limit.gather(1, torch.div(best[..., 0], self.n_segments, rounding_mode="floor"))
        ok = pick(self.valid[:, None].expand(-1, n, -1, -1))
        return LaneQuery(px=px - pick(ex), py=py - pick(ey), heading=self.seg_heading.gather(1, best[..., 0]),
                         offset=pick(cross), limit=limit, found=ok & (pick(dist) <= self.params.lane_search_m))


class ObservationFeatures:
    """Per-step observation features of the ego (see the module docstring for the list and units)."""

    def __init__(self, params: FeatureParams) -> None:
        self.params = params
        self._lanes: tuple[ScenarioBatch, LaneMap] | None = None  # the last scenario's lanes (plan steps reuse them)

    @classmethod
    def from_config(cls, policies_section: Mapping[str, Any]) -> ObservationFeatures:
        return cls(FeatureParams.from_mapping(policies_section["features"]))

    def along_log(self, scen: ScenarioBatch) -> torch.Tensor:
        """Features `[S, T, F]` at every logged step (time as the N dimension of `compute`)."""
        x, y, heading, speed, valid = (getattr(scen, n).transpose(1, 2) for n in ("x", "y", "heading", "speed",
                                                                                  "valid"))
        return self.compute(x, y, heading, speed, valid, logged_accel(scen), scen)

    def compute(self, x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, speed: torch.Tensor,
                valid: torch.Tensor, ego_accel: torch.Tensor, scen: ScenarioBatch) -> torch.Tensor:
        """Features `[S, N, F]` float32 from agent states `[S, N, A]` (m, rad, m/s; `valid` bool), agent
        slot 0 the ego, and the ego's acceleration over the step before `[S, N]` (m/s²); sizes and map
        from `scen`."""
        p = self.params
        ex, ey, eh, ev = x[..., EGO], y[..., EGO], heading[..., EGO], speed[..., EGO]
        if self._lanes is None or self._lanes[0] is not scen:
            self._lanes = (scen, LaneMap(scen, p))
        lanes = self._lanes[1]
        here = lanes.nearest(ex, ey, eh)
        default = torch.full_like(ev, p.default_speed_limit_mps)
        limit = torch.where(here.found & torch.isfinite(here.limit), here.limit, default)
        heading_error = torch.where(here.found, wrap_angle(eh - here.heading), torch.zeros_like(ev))
        offset = torch.where(here.found, here.offset, torch.zeros_like(ev))

        # Preview along the lane's tangent from the closest point, snapped back onto the lane there.
        look = p.lookahead_min_m + p.lookahead_time_s * ev.abs()
        qx = here.px + look * torch.cos(here.heading)
        qy = here.py + look * torch.sin(here.heading)
        ahead = lanes.nearest(qx, qy, here.heading)
        tx = torch.where(ahead.found, ahead.px, qx)
        ty = torch.where(ahead.found, ahead.py, qy)
        preview_limit = torch.where(ahead.found & torch.isfinite(ahead.limit), ahead.limit, limit)
        c, s = torch.cos(eh), torch.sin(eh)
        fx = c * (tx - ex) + s * (ty - ey)
        fy = -s * (tx - ex) + c * (ty - ey)
        dist = torch.hypot(fx, fy).clamp_min(1e-3)
        pursuit = torch.where(here.found, 2.0 * fy / (dist * dist), torch.zeros_like(ev))

        gap, closing, present = self._leader(x, y, heading, speed, valid, scen)
        return torch.stack([ev, ego_accel, heading_error, offset, limit, preview_limit, pursuit,
                            here.found.to(ev.dtype), gap, closing, present.to(ev.dtype)], dim=-1)

    def _leader(self, x: torch.Tensor, y: torch.Tensor, heading: torch.Tensor, speed: torch.Tensor,
                valid: torch.Tensor, scen: ScenarioBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gap (m), closing speed (m/s) and presence of the leader in the ego's corridor, each `[S, N]`."""
        p = self.params
        ex, ey, eh, ev = (v[..., EGO:EGO + 1] for v in (x, y, heading, speed))
        if x.shape[-1] == 1:  # the ego alone: nobody to follow
            none = torch.zeros_like(ev[..., 0])
            return none + p.lead_range_m, none, none.bool()
        c, s = torch.cos(eh), torch.sin(eh)
        rx, ry = x[..., 1:] - ex, y[..., 1:] - ey                    # [S, N, A-1]
        ahead = c * rx + s * ry
        side = -s * rx + c * ry
        length, width = scen.length[:, None], scen.width[:, None]    # [S, 1, A]
        band = 0.5 * (width[..., EGO:EGO + 1] + width[..., 1:]) + p.corridor_margin_m
        gap = ahead - 0.5 * (length[..., EGO:EGO + 1] + length[..., 1:])
        in_corridor = valid[..., 1:] & valid[..., EGO:EGO + 1] & (ahead > 0) & (side.abs() < band) \
            & (gap < p.lead_range_m)
        gap = torch.where(in_corridor, gap, torch.full_like(gap, math.inf))
        lead_gap, lead = gap.min(dim=-1)
        present = torch.isfinite(lead_gap)
        along = speed[..., 1:] * torch.cos(heading[..., 1:] - eh)
        closing = ev[..., 0] - along.gather(-1, lead[..., None])[..., 0]
        lead_gap = torch.where(present, lead_gap.clamp_min(0.0), torch.full_like(lead_gap, p.lead_range_m))
        return lead_gap, torch.where(present, closing, torch.zeros_like(closing)), present
