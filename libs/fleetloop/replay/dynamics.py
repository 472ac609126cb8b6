"""The invertible kinematic bicycle: action = (longitudinal acceleration m/s², path curvature 1/m).

One step of `dt` seconds with acceleration a and curvature κ from speed v travels the distance
ds = dt · (v + v') / 2 with v' = v + a·dt, turns the heading by κ·ds, and moves along the chord
at the mid-step heading. Because the distance and the turn are both exact functions of the
state pair, the model inverts in closed form: a = (v' − v) / dt and κ = Δheading / ds. Every
function works on tensors of any matching shape (`[..., T]` for the inverse).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_MIN_DISTANCE_M = 1e-3  # below this travel per step the heading change says nothing about curvature


@dataclass(frozen=True)
class BicycleBounds:
    """Action and speed bounds (from the `dynamics` section of replay.yaml)."""

    accel_max_mps2: float
    decel_max_mps2: float
    curvature_max_inv_m: float
    min_speed_mps: float
    inverse_residual_m: float

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> BicycleBounds:
        try:
            return cls(**{k: float(section[k]) for k in cls.__dataclass_fields__})
        except KeyError as missing:
            raise KeyError(f"replay config: dynamics.{missing.args[0]} is missing") from None


def wrap_angle(a: Tensor) -> Tensor:
    """Angle(s) wrapped to [-π, π)."""
    return torch.remainder(a + torch.pi, 2 * torch.pi) - torch.pi


def clamp_actions(accel: Tensor, curvature: Tensor, bounds: BicycleBounds) -> tuple[Tensor, Tensor]:
    """Actions clamped into the configured bounds (m/s², 1/m)."""
    return (accel.clamp(-bounds.decel_max_mps2, bounds.accel_max_mps2),
            curvature.clamp(-bounds.curvature_max_inv_m, bounds.curvature_max_inv_m))


def bicycle_step(x: Tensor, y: Tensor, heading: Tensor, speed: Tensor, accel: Tensor, curvature: Tensor,
                 dt: float, min_speed_mps: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One step of `dt` s from state (x, y m; heading rad; speed m/s) under (accel m/s², curvature 1/m).

    The speed never drops below `min_speed_mps` (0: no reversing): the acceleration that would cross it
    is reduced to the one that just reaches it. Returns (x', y', heading', speed', applied accel); the
    applied acceleration equals `accel` except where the speed floor cut it. Actions are not bounded
    here (see `clamp_actions`).
    """
    applied = torch.maximum(accel, (min_speed_mps - speed) / dt)
    new_speed = speed + applied * dt
    distance = (speed + new_speed) * (0.5 * dt)
    turn = curvature * distance
    mid = heading + 0.5 * turn
    return (x + distance * torch.cos(mid), y + distance * torch.sin(mid), wrap_angle(heading + turn), new_speed,
            applied)


def inverse_bicycle(x: Tensor, y: Tensor, heading: Tensor, speed: Tensor, valid: Tensor, dt: float,
                    bounds: BicycleBounds | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The actions that carry each logged state to the next one, `[..., T]` in, `[..., T]` out.

    Step k's action moves state k to state k+1 (the last step's action is 0 and invalid). The result
    is (accel m/s², curvature 1/m, valid bool). With `bounds` the actions are clamped into them and
    a step is valid only where both states are valid, the unclamped action lay within the bounds, and
    one model step from logged state k with the returned action lands within
    `bounds.inverse_residual_m` of logged position k+1 (a log whose speed or heading disagrees with
    its positions shows up here). Curvature is 0 where the step travels under 1 mm.
    """
    accel = torch.zeros_like(speed)
    curvature = torch.zeros_like(speed)
    ok = torch.zeros_like(valid)
    if speed.shape[-1] < 2:
        return accel, curvature, ok
    v0, v1 = speed[..., :-1], speed[..., 1:]
    a = (v1 - v0) / dt
    distance = (v0 + v1) * (0.5 * dt)
    moving = distance.abs() > _MIN_DISTANCE_M
    k = torch.where(moving, wrap_angle(heading[..., 1:] - heading[..., :-1]) / torch.where(moving, distance, 1.0),
                    0.0)
    both = valid[..., :-1] & valid[..., 1:]
    ok[..., :-1] = both
    if bounds is not None:
        ca, ck = clamp_actions(a, k, bounds)
        within = (ca == a) & (ck == k)
        # no speed floor here: the residual measures the action alone, even on a log that reverses
        px, py, _, _, _ = bicycle_step(x[..., :-1], y[..., :-1], heading[..., :-1], v0, ca, ck, dt,
                                       min_speed_mps=float("-inf"))
        residual = torch.hypot(px - x[..., 1:], py - y[..., 1:])
        ok[..., :-1] &= within & (residual <= bounds.inverse_residual_m)
        a, k = ca, ck
    accel[..., :-1] = torch.where(both, a, 0.0)
    curvature[..., :-1] = torch.where(both, k, 0.0)
    return accel, curvature, ok
