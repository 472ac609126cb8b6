"""Criticality measures: the one definition shared by the vehicle, the cloud triggers, the labels
and the counterfactual replay.

Every function takes numpy arrays or torch tensors (CPU or CUDA) of one broadcastable shape and
returns the same type; no function loops over objects. Conventions, the same everywhere:

- **Frame**: the ego's frame at the moment of the measurement: x along the ego's heading (+ ahead),
  y to its left; the origin is the centre of the ego's box.
- **Boxes, not centres**: an object is its box, aligned with the ego's axes (1 Hz perception carries
  no object heading); `half_x_m` / `half_y_m` are the *sums* of the ego's and the object's half
  extents along x / y, so the two boxes overlap exactly where |x| ≤ half_x_m and |y| ≤ half_y_m
  (the Minkowski sum of the boxes). `box_offsets` turns a perception object into these numbers.
- **Relative motion**: `rel_v*` (m/s) and `rel_a*` (m/s²) are the object's velocity and acceleration
  minus the ego's, in the ego frame; both are held constant over the horizon (the constant-
  acceleration "MTTC" of Ozbay et al. 2008; with zero acceleration the classic constant-velocity
  TTC of Hayward 1972). A stopping object is not held at rest after it stops, so beyond its stopping
  time the prediction errs on the side of danger.
- **Validity**: a result is `inf` (TTC, headway, PET) or 0 (required deceleration) where the measure
  does not apply (not closing, no overlap within the horizon, ego standing); NaN inputs give those
  same "does not apply" values, never NaN, so callers mask invalid objects before reducing.

Measures (sources as in triggers.yaml's `criticality` section):

- `time_to_collision`: the first time within `horizon_s` at which the predicted boxes overlap (0 if
  they overlap now), counted only when the relative speed then is at least `min_closing_mps`;
- `box_offsets`: perception's `rel_x_m` read by the summary's position reference (bumper gap or box
  centre), as the box centre's x or as the bumper gap, the one conversion between the two;
- `forward_ttc`, `path_gap_m`: TTC of objects ahead and the bumper gap of objects in the path, what
  near_miss and the vehicle's in-second minima measure;
- `longitudinal_ttc`: its one-dimensional case (gap ahead and closing speed only), the form the
  labels' lead TTC and the replay's bumper-gap TTC take;
- `time_headway`: bumper gap over the ego's speed;
- `post_encroachment_time`: predicted time between the object leaving the ego's path and the ego
  reaching the place it crossed (or the reverse), for crossing objects;
- `required_deceleration`: the constant deceleration the ego needs to avoid contact with an object
  ahead, given the object's own braking;
- `lookahead_m`: how far ahead a path check must look: speed × horizon, at least a floor.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import numpy as np

Array = TypeVar("Array", np.ndarray, Any)  # numpy arrays or torch tensors (torch is imported only by its users)
_TOL_M = 2e-3  # m: a root lands on a box edge up to float32 rounding; 2 mm decides nothing physical


class _Ops:
    """The handful of array operations the measures need, for numpy or torch alike."""

    def __init__(self, like: Any) -> None:
        torch = sys.modules.get("torch")
        self.torch = torch if torch is not None and isinstance(like, torch.Tensor) else None
        self.like = like

    def asarray(self, x: Any) -> Any:
        if self.torch is not None:
            if isinstance(x, self.torch.Tensor):
                return x
            return self.torch.as_tensor(x, dtype=self.like.dtype, device=self.like.device)
        return np.asarray(x, dtype=np.float64)

    def full(self, like: Any, value: float) -> Any:
        """`value` shaped like `like` where an operand needs it (torch); numpy broadcasts the scalar."""
        return self.torch.full_like(like, value) if self.torch is not None else value

    def zeros(self, like: Any) -> Any:
        return self.torch.zeros_like(like) if self.torch is not None else np.zeros(np.shape(like))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        if self.torch is not None:
            return self.torch.where(cond, a, b)
        return np.where(cond, a, b)

    def sqrt(self, x: Any) -> Any:
        return self.torch.sqrt(x) if self.torch is not None else np.sqrt(x)

    def stack(self, xs: list[Any]) -> Any:
        if self.torch is not None:
            return self.torch.stack(self.torch.broadcast_tensors(*xs), dim=-1)
        return np.stack(np.broadcast_arrays(*xs), axis=-1)

    def amin_last(self, x: Any) -> Any:
        return x.amin(dim=-1) if self.torch is not None else x.min(axis=-1)

    def hypot(self, a: Any, b: Any) -> Any:
        return self.torch.hypot(a, b) if self.torch is not None else np.hypot(a, b)


def _ops(*xs: Any) -> _Ops:
    torch = sys.modules.get("torch")
    for x in xs:
        if torch is not None and isinstance(x, torch.Tensor):
            return _Ops(x)
    return _Ops(np.zeros(()))


def _roots(ops: _Ops, a2: Any, b: Any, c: Any) -> tuple[Any, Any]:
    """Real roots of a2 t² + b t + c = 0 (NaN where none); linear where a2 is (nearly) 0."""
    nan = float("nan")
    linear = abs(a2) < 1e-9
    safe_b = ops.where(b == 0, ops.full(b, 1.0), b)
    t_lin = ops.where(b == 0, ops.full(b, nan), -c / safe_b)
    disc = b * b - 4.0 * a2 * c
    sq = ops.sqrt(ops.where(disc >= 0, disc, ops.full(disc, nan)))
    sign = ops.where(b >= 0, ops.full(b, 1.0), ops.full(b, -1.0))
    q = -0.5 * (b + sign * sq)
    safe_a = ops.where(linear, ops.full(a2, 1.0), a2)
    safe_q = ops.where(q == 0, ops.full(q, 1.0), q)
    r1 = ops.where(linear, t_lin, q / safe_a)
    r2 = ops.where(linear, ops.full(t_lin, nan), ops.where(q == 0, ops.full(q, nan), c / safe_q))
    return r1, r2


def time_to_collision(rel_x_m: Array, rel_y_m: Array, rel_vx_mps: Array, rel_vy_mps: Array,
                      half_x_m: Array, half_y_m: Array, horizon_s: float, min_closing_mps: float = 0.0,
                      rel_ax_mps2: Array | float = 0.0, rel_ay_mps2: Array | float = 0.0) -> Array:
    """Time to collision (s): the first t in [0, `horizon_s`] at which the object's predicted box
    overlaps the ego's, under constant relative velocity and acceleration; `inf` when they do not
    overlap within the horizon, or when the relative speed at that moment is below `min_closing_mps`
    (creeping in a queue: no collision course worth the name). 0 when the boxes overlap now.

    Inputs (broadcastable, numpy or torch): `rel_x_m`, `rel_y_m` the object box centre minus the ego
    box centre (m, ego frame); `rel_v*` (m/s), `rel_a*` (m/s²) relative motion; `half_x_m`,
    `half_y_m` the summed half extents (m). The earliest overlap is at t = 0 or where one axis
    enters its band (a root of x(t) = ±half_x or y(t) = ±half_y), so those nine candidates are
    checked and the least that lies inside both bands wins: exact, no time stepping. Objects moving
    along x only (no lateral velocity, no acceleration: most of them) take the same answer in closed
    form.
    """
    ops = _ops(rel_x_m, rel_y_m, rel_vx_mps, rel_vy_mps, half_x_m, half_y_m, rel_ax_mps2, rel_ay_mps2)
    args = [ops.asarray(v) for v in (rel_x_m, rel_y_m, rel_vx_mps, rel_vy_mps, half_x_m, half_y_m, rel_ax_mps2,
                                     rel_ay_mps2)]
    shape_of = ops.zeros(sum(args[1:], args[0]))
    cx, cy, vx, vy, hx, hy, ax, ay = (a + shape_of for a in args)
    out = _along_x(ops, cx, cy, vx, hx, hy, horizon_s, min_closing_mps)
    planar = (vy != 0) | (ay != 0) | (ax != 0)
    if planar.any():
        sel = [a[planar] for a in (cx, cy, vx, vy, hx, hy, ax, ay)]
        out[planar] = _first_overlap(ops, *sel, horizon_s, min_closing_mps)
    return out


def _along_x(ops: _Ops, cx: Any, cy: Any, vx: Any, hx: Any, hy: Any, horizon_s: float,
             min_closing_mps: float) -> Any:
    """`time_to_collision` of objects moving along x only, in closed form (the same roots)."""
    inf = float("inf")
    safe_v = ops.where(vx == 0, ops.full(vx, 1.0), vx)
    t = ops.where(abs(cx) <= hx + _TOL_M, ops.zeros(cx),
                  ops.where((cx > hx) & (vx < 0), -(cx - hx) / safe_v,
                            ops.where((cx < -hx) & (vx > 0), -(cx + hx) / safe_v, ops.full(cx, inf))))
    speed = abs(vx)
    ok = (abs(cy) <= hy + _TOL_M) & (t <= horizon_s) & (speed >= min_closing_mps) & (speed > 0)
    return ops.where(ok, t, ops.full(t, inf))


def _first_overlap(ops: _Ops, cx: Any, cy: Any, vx: Any, vy: Any, hx: Any, hy: Any, ax: Any, ay: Any,
                   horizon_s: float, min_closing_mps: float) -> Any:
    """`time_to_collision` in general: the least of the nine candidate times inside both bands."""
    cand = [ops.zeros(cx)]
    for c, v, a, h in ((cx, vx, ax, hx), (cy, vy, ay, hy)):
        for edge in (h, -h):
            cand += _roots(ops, 0.5 * a, v, c - edge)
    t = ops.stack(cand)
    inside = (t >= 0) & (t <= horizon_s)
    x = cx[..., None] + vx[..., None] * t + 0.5 * ax[..., None] * t * t
    y = cy[..., None] + vy[..., None] * t + 0.5 * ay[..., None] * t * t
    inside = inside & (abs(x) <= hx[..., None] + _TOL_M) & (abs(y) <= hy[..., None] + _TOL_M)
    first = ops.amin_last(ops.where(inside, t, ops.full(t, float("inf"))))
    finite = first < float("inf")
    at = ops.where(finite, first, ops.full(first, 0.0))
    speed = ops.hypot(vx + ax * at, vy + ay * at)
    return ops.where(finite & (speed >= min_closing_mps) & (speed > 0), first, ops.full(first, float("inf")))


def forward_ttc(rel_x_m: Array, rel_y_m: Array, rel_vx_mps: Array, rel_vy_mps: Array, half_x_m: Array,
                half_y_m: Array, horizon_s: float, min_closing_mps: float = 0.0, rel_ax_mps2: Array | float = 0.0,
                rel_ay_mps2: Array | float = 0.0) -> Array:
    """`time_to_collision` for objects whose box centre is ahead of the ego's (rel_x_m > 0), inf for
    the others: what near_miss and the vehicle's in-second minima count (being run into from
    behind is not the ego's near miss)."""
    ttc = time_to_collision(rel_x_m, rel_y_m, rel_vx_mps, rel_vy_mps, half_x_m, half_y_m, horizon_s,
                            min_closing_mps, rel_ax_mps2, rel_ay_mps2)
    ops = _ops(ttc)
    return ops.where(ops.asarray(rel_x_m) > 0, ttc, ops.full(ttc, float("inf")))


def path_gap_m(rel_x_m: Array, rel_y_m: Array, half_x_m: Array, half_y_m: Array, margin_m: float,
               reach_m: Array | float) -> Array:
    """Bumper gap (m, ≥ 0) to an object in the ego's path, inf for the others: its centre ahead of the
    ego's, its box laterally within `margin_m` of the ego's (|y| − half_y ≤ margin) and its gap within
    `reach_m` (see `lookahead_m`). The distance near_miss's envelope and `min_distance_m` measure."""
    ops = _ops(rel_x_m, rel_y_m, half_x_m, half_y_m, reach_m)
    cx, cy, hx, hy = (ops.asarray(v) for v in (rel_x_m, rel_y_m, half_x_m, half_y_m))
    gap = cx - hx
    gap = ops.where(gap > 0, gap, ops.full(gap, 0.0))
    inside = (cx > 0) & (abs(cy) - hy <= margin_m) & (gap <= ops.asarray(reach_m))
    return ops.where(inside, gap, ops.full(gap, float("inf")))


def longitudinal_ttc(gap_m: Array, closing_mps: Array, min_closing_mps: float,
                     rel_accel_mps2: Array | float = 0.0, horizon_s: float = float("inf")) -> Array:
    """`time_to_collision` along one axis: an object `gap_m` ahead (m, bumper to bumper; ≤ 0 is
    overlap) closing at `closing_mps` (m/s, + approaching) with relative acceleration
    `rel_accel_mps2` (object's minus ego's, m/s², + opening). Without acceleration and horizon it is
    gap / closing where the closing speed is at least `min_closing_mps`, else inf."""
    ops = _ops(gap_m, closing_mps, rel_accel_mps2)
    gap = ops.asarray(gap_m)
    gap = ops.where(gap > 0, gap, ops.full(gap, 0.0))
    zero = ops.zeros(gap)
    # The gap as a box offset: half extents of 1 m along x and y, the object centred on the ego's axis.
    return time_to_collision(gap + 1.0, zero, -ops.asarray(closing_mps), zero, zero + 1.0, zero + 1.0,
                             horizon_s, min_closing_mps, rel_accel_mps2, 0.0)


def box_offsets(rel_x_m: Array, length_m: Array, ego_length_m: Array | float, bumper_gap: Array | bool,
                to_gap: bool = False) -> Array:
    """Perception's `rel_x_m` in the other reading: the one conversion between the two (near_miss,
    the labels' lead band and the replay's scenarios all call it).

    `bumper_gap` True: `rel_x_m` is the bumper gap (the ego's front bumper to the object's rear face,
    i.e. the centre distance less the two half-lengths; the fleet's legacy reading, what the
    simulator sends); False: it is the box centre distance (BOX_CENTRE). The summed half extent along
    x is (ego length + length) / 2 (m). Returns the object box centre's x from the ego box centre
    (m), or with `to_gap` the bumper gap (m, ≤ 0 where the boxes overlap along x)."""
    ops = _ops(rel_x_m, length_m, ego_length_m)
    rx, ln, le = ops.asarray(rel_x_m), ops.asarray(length_m), ops.asarray(ego_length_m)
    half = 0.5 * (ln + le)
    # A value already in the wanted reading is returned as it is (bit for bit), not converted twice.
    if isinstance(bumper_gap, bool):
        if bumper_gap == to_gap:
            return rx + 0.0 * half
        return rx - half if to_gap else rx + half
    is_gap = ops.asarray(bumper_gap) > 0
    return ops.where(is_gap, rx, rx - half) if to_gap else ops.where(is_gap, rx + half, rx)


def time_headway(gap_m: Array, ego_speed_mps: Array, min_speed_mps: float) -> Array:
    """Time headway (s): bumper gap ahead / the ego's speed, inf where the ego is slower than
    `min_speed_mps` or the object is not ahead (gap < 0)."""
    ops = _ops(gap_m, ego_speed_mps)
    gap, v = ops.asarray(gap_m), ops.asarray(ego_speed_mps)
    ok = (v >= min_speed_mps) & (v > 0) & (gap >= 0)
    return ops.where(ok, gap / ops.where(ok, v, ops.full(v, 1.0)), ops.full(gap, float("inf")))


def post_encroachment_time(rel_x_m: Array, rel_y_m: Array, obj_vx_mps: Array, obj_vy_mps: Array,
                           half_x_m: Array, half_y_m: Array, ego_speed_mps: Array) -> Array:
    """Predicted post-encroachment time (s) of a crossing object (Allen et al. 1978, predicted at
    constant velocities): the time between one of the two leaving the conflict area and the other
    entering it; 0 when both would occupy it at once (a collision course: see TTC), inf when the
    object does not cross the ego's path ahead or the ego stands.

    `rel_x_m`, `rel_y_m` the object's box centre from the ego's (m); `obj_v*` the object's velocity
    over ground in the ego's axes (m/s, i.e. relative velocity + ego speed along x); `half_*` summed
    half extents (m); `ego_speed_mps` ≥ 0 along x. The conflict area is the stretch of the ego's path
    (|y| ≤ half_y) the object sweeps while crossing it.
    """
    ops = _ops(rel_x_m, rel_y_m, obj_vx_mps, obj_vy_mps, half_x_m, half_y_m, ego_speed_mps)
    cx, cy, vx, vy, hx, hy, ve = (ops.asarray(v) for v in (rel_x_m, rel_y_m, obj_vx_mps, obj_vy_mps,
                                                           half_x_m, half_y_m, ego_speed_mps))
    inf = ops.zeros(cx + cy + vx + vy + hx + hy + ve) + float("inf")
    crossing = abs(vy) > 1e-6
    svy = ops.where(crossing, vy, ops.full(vy, 1.0))
    t1, t2 = (-hy - cy) / svy, (hy - cy) / svy
    t_in = ops.where(t1 < t2, t1, t2)
    t_out = ops.where(t1 < t2, t2, t1)
    t_in = ops.where(t_in > 0, t_in, ops.full(t_in, 0.0))
    # The conflict area: the stretch of the path (fixed in the frame of the measurement) the object
    # sweeps while in it, grown by the summed half lengths; the ego's centre, moving at ego speed,
    # occupies it from its near edge to its far edge.
    xa, xb = cx + vx * t_in, cx + vx * t_out
    near = ops.where(xa < xb, xa, xb) - hx
    far = ops.where(xa < xb, xb, xa) + hx
    moving = ve > 0
    sve = ops.where(moving, ve, ops.full(ve, 1.0))
    e_in = near / sve
    e_in = ops.where(e_in > 0, e_in, ops.full(e_in, 0.0))
    e_out = far / sve
    gap_after = e_in - t_out   # the object leaves before the ego arrives
    gap_before = t_in - e_out  # the ego leaves before the object arrives
    pet = ops.where(gap_after > 0, gap_after, ops.where(gap_before > 0, gap_before, ops.full(gap_after, 0.0)))
    valid = crossing & moving & (t_out >= 0) & (far > 0)
    return ops.where(valid, pet, inf)


def required_deceleration(gap_m: Array, ego_speed_mps: Array, obj_speed_mps: Array,
                          obj_accel_mps2: Array | float = 0.0) -> Array:
    """The constant deceleration (m/s², ≥ 0) the ego needs to avoid contact with an object `gap_m`
    ahead (bumper gap, m) moving at `obj_speed_mps` along the ego's axis with acceleration
    `obj_accel_mps2` (m/s², negative braking), the ego at `ego_speed_mps` (DRAC, Almqvist et al.
    1991, with the object's braking to a stop taken into account).

    While the object still moves when the speeds match: closing² / (2 gap) − object acceleration;
    when it stops first: the ego must stop within the gap plus the object's stopping distance,
    v_ego² / (2 (gap + v_obj² / (2 |a_obj|))). 0 where the ego is not closing and the object does
    not brake; inf where the boxes already touch while closing.
    """
    ops = _ops(gap_m, ego_speed_mps, obj_speed_mps, obj_accel_mps2)
    gap, ve, vo = ops.asarray(gap_m), ops.asarray(ego_speed_mps), ops.asarray(obj_speed_mps)
    ao = ops.asarray(obj_accel_mps2) + ops.zeros(gap)
    closing = ve - vo
    sgap = ops.where(gap > 0, gap, ops.full(gap, 1.0))
    match = closing * closing / (2.0 * sgap) - ao
    braking = ao < 0
    s_ao = ops.where(braking, -ao, ops.full(ao, 1.0))
    stop_dist = vo * vo / (2.0 * s_ao)
    t_match = 2.0 * sgap / ops.where(closing > 0, closing, ops.full(closing, 1.0))
    stops_first = braking & (vo + ao * t_match < 0)
    to_stop = ve * ve / (2.0 * (sgap + stop_dist))
    need = ops.where(stops_first, to_stop, match)
    need = ops.where(closing > 0, need, ops.where(braking, to_stop, ops.full(need, 0.0)))
    need = ops.where(need > 0, need, ops.full(need, 0.0))
    touching = (gap <= 0) & (closing > 0)
    return ops.where(touching, ops.full(need, float("inf")), need)


def lookahead_m(speed_mps: Array, horizon_s: float, floor_m: float) -> Array:
    """How far ahead (m) an object can matter within `horizon_s`: speed × horizon, at least `floor_m`."""
    ops = _ops(speed_mps)
    reach = ops.asarray(speed_mps) * horizon_s
    return ops.where(reach > floor_m, reach, ops.full(reach, floor_m))
