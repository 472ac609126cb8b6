"""Known-answer scenarios: seeded families of moments the fleet handles badly (and controls it handles
well), each with the answer a counterfactual search should find.

Every generated scenario is what a log would hold: the logged ego is what a flawed on-board planner
did (in `lead_brake` it brakes too late and collides; in `good_driving` it is smooth and safe), the
other agents are what perception reported, the map is the road laid out for the scene. Families:

- `lead_brake`: the lead brakes hard; the ego reacts late and rear-ends it.
- `cut_in`: a car from the next lane cuts in close and brakes; the ego reacts late and collides.
- `pedestrian_occlusion`: a pedestrian steps out in front of a parked truck/van/bus; the ego reacts
  late and hits them (the pedestrian is only valid from the step it emerged; tag `occluded`).
- `stalled_vehicle`: a vehicle stands in the ego's lane; the ego notices it late and collides.
- `unprotected_left`: the ego turns left across an oncoming car without yielding and collides.
- `phantom_obstacle`: perception reports an object in the lane that truth does not have; the ego
  brakes hard for nothing. The phantom's agent slot is named by the tag `phantom_agent:<slot>`
  (`phantom_agents(meta)`, `without_phantoms(scen)` give the truth view).
- `good_driving`: cruising or following on straight and curved roads, smooth and safe.

Answers (`ScenarioMeta.answer`): `baseline_collides_safe_exists` (the logged ego collides and
braking straight on from the current step at `safe_decel_mps2` avoids every agent, checked at
generation; harder braking up to the dynamics bound does too), `baseline_overbrakes` (the logged
ego brakes hard although holding its speed is collision-free with every real agent), `baseline_good`
(the log is collision-free and comfortable).

Scenes span `Window.from_config`: 1 s of history, the current step (10), 8 s of horizon: 91 steps
of 0.1 s. Tags: `phantom_agent:<slot>`, `occluded`, `lane_change_possible`, `junction`, `curved` /
`straight`, `following` / `cruise` and a few descriptive ones (`lead:<class>`, `cut_in:<side>`, ...).

All agents are other traffic of realistic size (car 4.6 × 1.9 m, pedestrian 0.6 × 0.6 m, ...) in
their own lanes and on the sidewalks; the generator keeps them out of the ego's lane behind it, so
braking never invites a rear-end in log replay. Generation runs on the CPU from a `torch.Generator`
seeded by (seed, family) and moves the batch to the requested device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.maps import MapLayout, MapPolyline, PolylineMap, pad_map
from fleetloop.replay.scenario import AgentClass, AgentModel, MapKind, ScenarioBatch, ScenarioError, ScenarioMeta
from fleetloop.v1 import common_pb2

FAMILIES = ("lead_brake", "cut_in", "pedestrian_occlusion", "stalled_vehicle", "unprotected_left",
            "phantom_obstacle", "good_driving")
COLLIDES_SAFE_EXISTS = "baseline_collides_safe_exists"
OVERBRAKES = "baseline_overbrakes"
GOOD = "baseline_good"
ANSWERS = {"lead_brake": COLLIDES_SAFE_EXISTS, "cut_in": COLLIDES_SAFE_EXISTS,
           "pedestrian_occlusion": COLLIDES_SAFE_EXISTS, "stalled_vehicle": COLLIDES_SAFE_EXISTS,
           "unprotected_left": COLLIDES_SAFE_EXISTS, "phantom_obstacle": OVERBRAKES, "good_driving": GOOD}
PHANTOM_TAG = "phantom_agent:"
T0_MS = 1_780_293_600_000  # 2026-06-01T06:00:00Z, the simulator's default start

# (class, length m, width m): cars, trucks and buses at the simulator's agent sizes (sim/traffic.py), and the
# other road users of city traffic.
CAR = (AgentClass.CAR, 4.6, 1.9)
VAN = (AgentClass.CAR, 5.2, 2.0)
TRUCK = (AgentClass.TRUCK, 9.0, 2.5)
BUS = (AgentClass.BUS, 12.0, 2.5)
MOTORCYCLE = (AgentClass.MOTORCYCLE, 2.1, 0.8)
PEDESTRIAN = (AgentClass.PEDESTRIAN, 0.6, 0.6)
UNKNOWN = (AgentClass.UNKNOWN, 1.2, 0.9)
EGO_SIZE = (AgentClass.EGO, 4.6, 1.9)  # a delivery van of the fleet
TRAFFIC = (CAR, CAR, CAR, CAR, CAR, CAR, VAN, TRUCK, BUS, MOTORCYCLE)
# (speed limit m/s, road type): the simulator's urban, elevated and highway roads (sim.yaml roads)
ROADS = ((13.9, common_pb2.ROAD_TYPE_URBAN), (16.7, common_pb2.ROAD_TYPE_ELEVATED),
         (25.0, common_pb2.ROAD_TYPE_HIGHWAY))
WEATHERS = (common_pb2.WEATHER_CLEAR, common_pb2.WEATHER_CLEAR, common_pb2.WEATHER_CLOUDY, common_pb2.WEATHER_RAIN,
            common_pb2.WEATHER_FOG)
LIGHTS = (common_pb2.LIGHT_DAY, common_pb2.LIGHT_DAY, common_pb2.LIGHT_DUSK, common_pb2.LIGHT_NIGHT)


@dataclass(frozen=True)
class Window:
    """The time grid of a scenario: `n_steps` T of `dt_s`, the counterfactual from `current_step`.
    T = history + horizon + 1: the horizon's last state is at current + horizon."""

    dt_s: float
    current_step: int
    n_steps: int

    @classmethod
    def from_config(cls, config: ReplayConfig) -> Window:
        sc = config.section("scenario")
        dt = float(sc["dt_s"])
        history, horizon = round(float(sc["history_s"]) / dt), round(float(sc["horizon_s"]) / dt)
        return cls(dt, history, history + horizon + 1)

    @property
    def t_s(self) -> np.ndarray:
        """Seconds from the current step, `[T]` (negative in the history)."""
        return (np.arange(self.n_steps) - self.current_step) * self.dt_s


def phantom_agents(meta: ScenarioMeta) -> tuple[int, ...]:
    """Agent slots perception reported that truth does not have (tags `phantom_agent:<slot>`)."""
    return _phantom_slots(meta.tags)


def _phantom_slots(tags: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(t[len(PHANTOM_TAG):]) for t in tags if t.startswith(PHANTOM_TAG))


def real_agents(scen: ScenarioBatch) -> torch.Tensor:
    """`[S, A]` bool: False for the phantom slots of each scenario."""
    real = torch.ones(scen.n_scenarios, scen.n_agents, dtype=torch.bool, device=scen.device)
    for i, m in enumerate(scen.meta):
        for slot in phantom_agents(m):
            real[i, slot] = False
    return real


def without_phantoms(scen: ScenarioBatch) -> ScenarioBatch:
    """The truth view: phantom agents made invalid (their slots empty), everything else unchanged."""
    keep = real_agents(scen)[..., None]
    return replace(scen, valid=scen.valid & keep, filled=scen.filled & keep)


# ---------------------------------------------------------------------------------------------- geometry


@dataclass
class Road:
    """A road in the map frame: a reference line of constant curvature `kappa` (1/m, + left) from
    (0, 0) heading +x, `n_fwd` lanes in the direction of travel at offsets 0, w, … (lane 0 rightmost)
    and `n_back` oncoming lanes left of them; `s_lo..s_hi` its extent along the line (m)."""

    kappa: float
    n_fwd: int
    n_back: int
    w: float
    limit_mps: float
    s_lo: float = -150.0
    s_hi: float = 300.0

    def point(self, s: np.ndarray, d: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Map (x, y) of reference arc length `s` and left offset `d`."""
        s = np.asarray(s, dtype=np.float64)
        h = self.kappa * s
        if abs(self.kappa) < 1e-9:
            x0, y0 = s, np.zeros_like(s)
        else:
            x0, y0 = np.sin(h) / self.kappa, (1 - np.cos(h)) / self.kappa
        return x0 - np.sin(h) * d, y0 + np.cos(h) * d

    def heading(self, s: float) -> float:
        return self.kappa * s

    def lane_d(self, k: int) -> float:
        """Offset of forward lane k (k >= n_fwd: the oncoming lanes, innermost first)."""
        return k * self.w

    @property
    def right_edge(self) -> float:
        return -self.w / 2

    @property
    def left_edge(self) -> float:
        return (self.n_fwd + self.n_back - 0.5) * self.w

    def _line(self, d: float, s_lo: float | None = None, s_hi: float | None = None) -> np.ndarray:
        lo, hi = self.s_lo if s_lo is None else s_lo, self.s_hi if s_hi is None else s_hi
        s = np.linspace(lo, hi, max(2, int((hi - lo) / 5.0) + 1))
        return np.stack(self.point(s, d), axis=1)

    def polylines(self, gaps: Sequence[tuple[float, float]] = ()) -> list[MapPolyline]:
        """Lane centres (oncoming ones reversed), edges broken at `gaps` (s ranges of junctions)."""
        out = [MapPolyline(MapKind.LANE_CENTRE, self._line(self.lane_d(k)), self.limit_mps) for k in range(self.n_fwd)]
        out += [MapPolyline(MapKind.LANE_CENTRE, self._line(self.lane_d(self.n_fwd + j))[::-1].copy(), self.limit_mps)
                for j in range(self.n_back)]
        cuts = [self.s_lo] + [v for g in sorted(gaps) for v in g] + [self.s_hi]
        for d in (self.right_edge, self.left_edge):
            for lo, hi in zip(cuts[::2], cuts[1::2], strict=True):
                out.append(MapPolyline(MapKind.ROAD_EDGE, self._line(d, lo, hi)))
        return out

    def across(self, s: float, d_lo: float, d_hi: float) -> np.ndarray:
        """A straight line across the road at `s` from offset d_lo to d_hi (stop lines)."""
        return np.stack(self.point(np.array([s, s]), np.array([d_lo, d_hi])), axis=1)


@dataclass
class Track:
    """One agent in the map frame: positions `[T]` (m) on the whole grid (valid or not), `valid [T]`,
    size and class; `heading_rad` is used while the agent stands still."""

    x: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    kind: tuple[AgentClass, float, float]
    heading_rad: float = 0.0


@dataclass
class Scene:
    """One scenario before it becomes tensors: the ego first, the agents, the map, the labels."""

    tracks: list[Track]
    polylines: list[MapPolyline]
    tags: list[str] = field(default_factory=list)
    road_type: int = common_pb2.ROAD_TYPE_URBAN


def drive(v0: float, accel: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance and speed `[T]` from speed `v0` at step 0 under accelerations `accel [T]` (m/s²),
    speed clamped at 0 (vehicles brake to a stop, never reverse); s[0] = 0."""
    v = np.empty_like(accel)
    s = np.empty_like(accel)
    v[0], s[0] = v0, 0.0
    for k in range(len(accel) - 1):
        v[k + 1] = max(v[k] + accel[k] * dt, 0.0)
        # the exact distance of a step that stops inside it, else the trapezoid
        if v[k] + accel[k] * dt < 0.0:
            s[k + 1] = s[k] + v[k] * v[k] / (2 * -accel[k])
        else:
            s[k + 1] = s[k] + (v[k] + v[k + 1]) / 2 * dt
    return s, v


def ramp(t: np.ndarray, t0: float, level: float, ramp_s: float) -> np.ndarray:
    """An acceleration stepping from 0 to `level` from `t0` on, linearly over `ramp_s` (a jerk limit)."""
    return level * np.clip((t - t0) / ramp_s, 0.0, 1.0)


def _corners(x: np.ndarray, y: np.ndarray, h: np.ndarray, length: np.ndarray, width: np.ndarray) -> np.ndarray:
    c, s = np.cos(h), np.sin(h)
    hl, hw = length / 2, width / 2
    dx = np.stack([hl, hl, -hl, -hl], axis=-1)
    dy = np.stack([hw, -hw, -hw, hw], axis=-1)
    return np.stack([x[..., None] + c[..., None] * dx - s[..., None] * dy,
                     y[..., None] + s[..., None] * dx + c[..., None] * dy], axis=-1)


def boxes_overlap(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> np.ndarray:
    """Oriented boxes overlap (separating axis test), broadcast over leading dimensions: a, b =
    (x, y, heading, length, width)."""
    ca, cb = _corners(*a), _corners(*b)
    separated = np.zeros(np.broadcast_shapes(ca.shape[:-2], cb.shape[:-2]), dtype=bool)
    for h in (a[2], a[2] + np.pi / 2, b[2], b[2] + np.pi / 2):
        axis = np.stack([np.cos(h), np.sin(h)], axis=-1)[..., None, :]
        pa, pb = (ca * axis).sum(-1), (cb * axis).sum(-1)
        separated |= (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
    return ~separated


def headings(x: np.ndarray, y: np.ndarray, dt: float, rest: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vx, vy, heading) `[T]` from positions: central differences, the heading of motion, held while
    the agent is (nearly) still and, before it first moves, that first heading (`rest` if it never does)."""
    vx, vy = np.gradient(x, dt), np.gradient(y, dt)
    moving = np.hypot(vx, vy) > 0.2
    if not moving.any():
        return vx, vy, np.full_like(x, rest)
    idx = np.maximum.accumulate(np.where(moving, np.arange(len(x)), -1))
    idx = np.where(idx < 0, int(np.argmax(moving)), idx)
    return vx, vy, np.arctan2(vy, vx)[idx]


def _state(track: Track, dt: float) -> tuple[np.ndarray, ...]:
    vx, vy, h = headings(track.x, track.y, dt, track.heading_rad)
    return track.x, track.y, h, np.full_like(track.x, track.kind[1]), np.full_like(track.x, track.kind[2]), vx, vy


def ego_collides(tracks: Sequence[Track], ego: Track, dt: float, skip: Sequence[int] = ()) -> bool:
    """Whether `ego` overlaps any valid agent of `tracks[1:]` (slots in `skip` ignored) at any step."""
    others = [tr for slot, tr in enumerate(tracks[1:], start=1) if slot not in skip]
    if not others:
        return False
    ex, ey, eh, el, ew, _, _ = _state(ego, dt)
    states = [_state(tr, dt)[:5] for tr in others]
    agents = tuple(np.stack([st[j] for st in states]) for j in range(5))
    valid = np.stack([tr.valid for tr in others]) & ego.valid
    # boxes farther apart than their half diagonals cannot touch: test only the rest
    reach = (np.hypot(el, ew) + np.hypot(agents[3], agents[4])) / 2
    near = valid & (np.hypot(agents[0] - ex, agents[1] - ey) < reach)
    if not near.any():
        return False
    a, t = np.nonzero(near)
    return bool(boxes_overlap((ex[t], ey[t], eh[t], el[t], ew[t]), tuple(v[a, t] for v in agents)).any())


def braking_alternative(ego: Track, window: Window, decel: float) -> Track:
    """The logged ego's path driven with constant braking `decel` from the current step on (the
    history unchanged): the simplest safe answer a generated scene claims."""
    k0 = window.current_step
    seg = np.hypot(np.diff(ego.x), np.diff(ego.y))
    s_log = np.concatenate([[0.0], np.cumsum(seg)])
    v0 = seg[k0] / window.dt_s if k0 < len(seg) else 0.0
    accel = np.full(window.n_steps - k0, -decel)
    s_alt, _ = drive(v0, accel, window.dt_s)
    s_new = np.concatenate([s_log[:k0], s_log[k0] + s_alt])
    # braking never drives further than the logged ego did (it brakes earlier or harder), so the
    # stop lies on the logged path
    return replace(ego, x=np.interp(s_new, s_log, ego.x), y=np.interp(s_new, s_log, ego.y))


# ---------------------------------------------------------------------------------------------- sampling


class Draw:
    """Uniform draws from a seeded CPU `torch.Generator` (one per family and seed)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator(device="cpu")
        self.g.manual_seed(seed)

    def u(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.g))

    def i(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return int(torch.randint(lo, hi + 1, (), generator=self.g))

    def pick(self, options: Sequence):
        return options[self.i(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        return float(torch.rand((), generator=self.g)) < p


def _lane_track(road: Road, s: np.ndarray, d: float | np.ndarray, kind: tuple, valid: np.ndarray | None = None,
                direction: float = 1.0) -> Track:
    x, y = road.point(s, d)
    s0 = float(np.asarray(s).reshape(-1)[0])
    rest = road.heading(s0) + (0.0 if direction > 0 else math.pi)
    return Track(x, y, np.ones_like(x, dtype=bool) if valid is None else valid, kind, rest)


def fill_traffic(d: Draw, road: Road, window: Window, n: int, free_lanes: Sequence[int], ego_s: float,
                 sidewalks: bool, keep_clear: Callable[[int, float], bool] = lambda lane, s: True) -> list[Track]:
    """Up to `n` benign agents: convoys at one speed per lane in `free_lanes` (forward lane indices;
    >= n_fwd are oncoming), pedestrians walking the sidewalks, parked cars beyond the right edge on
    urban roads. Every agent stays in its own lane; `keep_clear(lane, s)` vetoes positions (s at the
    current step; lane -1 for the sidewalks)."""
    t = window.t_s
    out: list[Track] = []
    lanes = list(free_lanes)
    if not lanes and not sidewalks:
        return out
    slots = {lane: [] for lane in lanes}
    speeds = {lane: d.u(0.6, 0.95) * road.limit_mps for lane in lanes}
    tries = 0
    while len(out) < n and tries < 5 * n:
        tries += 1
        on_walk = sidewalks and (not lanes or d.chance(0.3))
        if on_walk:
            right = d.chance(0.5)
            off = road.right_edge - d.u(1.0, 3.0) if right else road.left_edge + d.u(1.0, 3.0)
            if sidewalks and road.limit_mps <= 14.0 and right and d.chance(0.3):
                kind, speed, off = d.pick((CAR, VAN)), 0.0, road.right_edge - 1.3
            else:
                kind, speed = PEDESTRIAN, d.u(0.8, 1.6) * (1 if d.chance(0.5) else -1)
            s0 = ego_s + d.u(-60.0, 120.0)
            s = s0 + speed * t
            if any(abs(s0 - o) < 8.0 for o in slots.setdefault(("walk", right), [])) or not keep_clear(-1, s0):
                continue
            slots[("walk", right)].append(s0)
            out.append(_lane_track(road, s, off, kind, direction=1.0 if speed >= 0 else -1.0))
            continue
        lane = d.pick(lanes)
        kind = d.pick(TRAFFIC)
        onc = lane >= road.n_fwd
        v = speeds[lane]
        s0 = ego_s + d.u(-80.0, 140.0)
        spacing = 12.0 + 8.0 + 1.5 * v  # a bus, 8 m standing gap and a 1.5 s time gap: convoys never touch
        if any(abs(s0 - o) < spacing for o in slots[lane]) or not keep_clear(lane, s0):
            continue
        slots[lane].append(s0)
        s = s0 + (-v if onc else v) * t
        out.append(_lane_track(road, s, road.lane_d(lane), kind, direction=-1.0 if onc else 1.0))
    return out


def _road(d: Draw, cfg: dict, n_fwd: tuple[int, int], n_back: tuple[int, int], limits: Sequence = ROADS,
          kappa: float = 0.0) -> tuple[Road, int]:
    limit, road_type = d.pick(limits)
    return Road(kappa, d.i(*n_fwd), d.i(*n_back), float(cfg["lane_width_m"]), limit), road_type


def _fill_count(d: Draw, cfg: dict, max_agents: int, used: int) -> int:
    return d.i(max(0, int(cfg["min_agents"]) - used), max_agents - used)


# ---------------------------------------------------------------------------------------------- families


def lead_brake(d: Draw, cfg: dict, window: Window, max_agents: int) -> Scene:
    road, road_type = _road(d, cfg, (1, 3), (1, 2))
    t, dt = window.t_s, window.dt_s
    lane = d.i(0, road.n_fwd - 1)
    v0 = d.u(0.6, 0.95) * road.limit_mps
    lead_kind = d.pick((CAR, CAR, VAN, TRUCK, BUS))
    t_brake, a_lead = d.u(0.3, 1.5), d.u(6.0, 8.0)
    # the lead's stop point and where braking at safe_decel from now stops the ego: the gap covers it
    a_safe = float(cfg["safe_decel_mps2"])
    s_lead, _ = drive(v0, -ramp(t, t_brake, a_lead, 0.25), dt)
    s_lead -= s_lead[window.current_step]
    needed = v0 * v0 / (2 * a_safe) - s_lead[-1] + (lead_kind[1] + EGO_SIZE[1]) / 2
    gap = max(d.u(0.8, 1.6) * v0 + (lead_kind[1] + EGO_SIZE[1]) / 2, needed + d.u(1.0, 4.0))
    react, a_ego = d.u(1.0, 2.2), d.u(3.5, 5.5)
    s_ego, _ = drive(v0, -ramp(t, t_brake + react, a_ego, 0.4), dt)
    s_ego -= s_ego[window.current_step]
    ego = _lane_track(road, s_ego, road.lane_d(lane), EGO_SIZE)
    lead = _lane_track(road, s_lead + gap, road.lane_d(lane), lead_kind)
    others = [k for k in range(road.n_fwd + road.n_back) if k != lane]
    fill = fill_traffic(d, road, window, _fill_count(d, cfg, max_agents, 2), others, 0.0, road.limit_mps <= 14.0)
    return Scene([ego, lead] + fill, road.polylines(), [f"lead:{lead_kind[0].name.lower()}"], road_type)


def cut_in(d: Draw, cfg: dict, window: Window, max_agents: int) -> Scene:
    road, road_type = _road(d, cfg, (2, 3), (1, 2))
    t, dt = window.t_s, window.dt_s
    lane = d.i(0, road.n_fwd - 1)
    src = lane + 1 if lane + 1 < road.n_fwd and (lane == 0 or d.chance(0.5)) else lane - 1
    v0 = d.u(0.6, 0.95) * road.limit_mps
    kind = d.pick((CAR, CAR, VAN, MOTORCYCLE))
    t_cut, dur = d.u(0.2, 1.2), d.u(1.5, 2.5)
    v_cut = v0 - d.u(1.0, 4.0)
    a_cut = d.u(3.0, 5.0)
    t_brake = t_cut + dur * d.u(0.6, 1.0)
    s_cut, _ = drive(v_cut, -ramp(t, t_brake, a_cut, 0.3), dt)
    s_cut -= s_cut[window.current_step]
    gap = (kind[1] + EGO_SIZE[1]) / 2 + d.u(4.0, 12.0) + (v0 - v_cut) * t_cut
    u = np.clip((t - t_cut) / dur, 0.0, 1.0)
    lat = road.lane_d(src) + (road.lane_d(lane) - road.lane_d(src)) * (u - np.sin(2 * np.pi * u) / (2 * np.pi))
    cutter = _lane_track(road, s_cut + gap, lat, kind)
    react, a_ego = d.u(0.6, 1.5), d.u(3.5, 5.5)
    s_ego, _ = drive(v0, -ramp(t, t_cut + dur + react, a_ego, 0.4), dt)
    s_ego -= s_ego[window.current_step]
    ego = _lane_track(road, s_ego, road.lane_d(lane), EGO_SIZE)
    others = [k for k in range(road.n_fwd + road.n_back) if k != lane]
    clear = lambda ln, s: ln != src or abs(s - gap) > 60.0  # noqa: E731 (the cutter's lane is empty around it)
    fill = fill_traffic(d, road, window, _fill_count(d, cfg, max_agents, 2), others, 0.0, road.limit_mps <= 14.0,
                        clear)
    return Scene([ego, cutter] + fill, road.polylines(), ["cut_in:" + ("left" if src > lane else "right")], road_type)


def pedestrian_occlusion(d: Draw, cfg: dict, window: Window, max_agents: int) -> Scene:
    road, road_type = _road(d, cfg, (1, 2), (1, 2), limits=ROADS[:1])
    t, dt = window.t_s, window.dt_s
    v0 = d.u(7.0, 12.5)
    walk = d.u(1.2, 2.0)
    t_emerge, react, a_ego = d.u(0.5, 2.5), d.u(0.6, 1.2), d.u(4.0, 5.5)
    d_start = road.right_edge - 1.0
    t_centre = t_emerge + (0.0 - d_start) / walk  # the pedestrian reaches the lane centre
    s_ego, v_ego = drive(v0, -ramp(t, t_emerge + react, a_ego, 0.4), dt)
    s_ego -= s_ego[window.current_step]
    k_hit = window.current_step + int(round(t_centre / dt))
    if k_hit >= window.n_steps or v_ego[k_hit] < 1.5:
        raise _Redraw
    s_ped = float(s_ego[k_hit]) + EGO_SIZE[1] / 2  # the ego's front reaches them at the lane centre
    lat = np.where(t < t_emerge, d_start, d_start + walk * (t - t_emerge))
    ped = _lane_track(road, np.full_like(t, s_ped), lat, PEDESTRIAN, valid=t >= t_emerge)
    ped.heading_rad = road.heading(s_ped) + math.pi / 2
    occ_kind = d.pick((TRUCK, VAN, BUS))
    s_occ = s_ped - 0.3 - PEDESTRIAN[1] / 2 - occ_kind[1] / 2
    occluder = _lane_track(road, np.full_like(t, s_occ), road.right_edge - occ_kind[2] / 2 - 0.3, occ_kind)
    ego = _lane_track(road, s_ego, 0.0, EGO_SIZE)
    others = list(range(1, road.n_fwd + road.n_back))
    clear = lambda ln, s: abs(s - s_ped) > 50.0  # noqa: E731 (no traffic where the pedestrian crosses)
    fill = fill_traffic(d, road, window, _fill_count(d, cfg, max_agents, 3), others, 0.0, True, clear)
    return Scene([ego, ped, occluder] + fill, road.polylines(), ["occluded", f"occluder:{occ_kind[0].name.lower()}"],
                 road_type)


def stalled_vehicle(d: Draw, cfg: dict, window: Window, max_agents: int) -> Scene:
    road, road_type = _road(d, cfg, (1, 3), (1, 2))
    t, dt = window.t_s, window.dt_s
    lane = d.i(0, road.n_fwd - 1)
    v0 = d.u(0.6, 0.95) * road.limit_mps
    kind = d.pick((CAR, VAN, TRUCK))
    a_safe = float(cfg["safe_decel_mps2"])
    contact = v0 * v0 / (2 * a_safe) + d.u(2.0, 20.0) + v0 * d.u(0.3, 1.5)
    a_log = d.u(3.5, 5.5)
    t_react = (contact + d.u(2.0, 6.0) - v0 * v0 / (2 * a_log)) / v0
    if t_react < 0.2:
        raise _Redraw
    s_ego, _ = drive(v0, -ramp(t, t_react, a_log, 0.4), dt)
    s_ego -= s_ego[window.current_step]
    s_st = contact + (kind[1] + EGO_SIZE[1]) / 2
    stalled = _lane_track(road, np.full_like(t, s_st), road.lane_d(lane) + d.u(-0.4, 0.4), kind)
    ego = _lane_track(road, s_ego, road.lane_d(lane), EGO_SIZE)
    others = [k for k in range(road.n_fwd + road.n_back) if k != lane]
    free_next = [k for k in (lane - 1, lane + 1) if 0 <= k < road.n_fwd]
    tags = ["lane_change_possible"] if free_next else []
    clear = lambda ln, s: ln not in free_next or abs(s) > 90.0  # noqa: E731 (a free lane to change into)
    fill = fill_traffic(d, road, window, _fill_count(d, cfg, max_agents, 2), others, 0.0, road.limit_mps <= 14.0,
                        clear)
    return Scene([ego, stalled] + fill, road.polylines(), tags, road_type)


def unprotected_left(d: Draw, cfg: dict, window: Window, max_agents: int) -> Scene:
    w = float(cfg["lane_width_m"])
    road = Road(0.0, d.i(1, 2), d.i(1, 2), w, 13.9)
    n_cross = d.i(1, 2)
    t, dt = window.t_s, window.dt_s
    y_l = road.lane_d(road.n_fwd - 1)           # the ego's lane: the leftmost forward one
    y_c = road.n_fwd * w - w / 2                # the main road's centre line
    v_app, v_turn = d.u(8.0, 12.0), d.u(4.5, 6.0)
    a_safe = float(cfg["safe_decel_mps2"])
    # the stop line, from the ego at the current step (x = 0): far enough for a gentle approach and
    # for a stop at safe_decel
    d_stop = max((v_app ** 2 - v_turn ** 2) / (2 * 2.0), v_app ** 2 / (2 * a_safe)) + EGO_SIZE[1] / 2 + d.u(1.0, 10.0)
    x_stop = d_stop
    xj = x_stop + n_cross * w + 4.5             # junction centre: cross road half-width + crosswalk + margin
    x_n = xj + w / 2                            # the northbound lane the ego turns into
    radius = x_n - x_stop
    a_app = (v_app ** 2 - v_turn ** 2) / (2 * (d_stop - EGO_SIZE[1] / 2))
    t_slow = (v_app - v_turn) / a_app
    acc = np.where((t >= 0) & (t < t_slow), -a_app, 0.0)
    acc = np.where(t >= t_slow + radius * math.pi / 2 / v_turn, 1.0, acc)  # accelerate away after the turn
    s_ego, v_ego = drive(v_app, acc, dt)
    s_ego = s_ego - s_ego[window.current_step]
    arc = radius * math.pi / 2

    def path(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = s - x_stop
        theta = np.clip(u / radius, 0.0, math.pi / 2)
        x = np.where(u < 0, s, x_stop + radius * np.sin(theta))
        y = np.where(u < 0, y_l, y_l + radius * (1 - np.cos(theta)))
        return np.where(u > arc, x_n, x), np.where(u > arc, y_l + radius + (u - arc), y)

    ex, ey = path(s_ego)
    ego = Track(ex, ey, np.ones_like(ex, dtype=bool), EGO_SIZE)
    y_o = y_c + w / 2                           # the inner oncoming lane
    theta_c = math.acos(1 - (y_o - y_l) / radius)
    x_c = x_stop + radius * math.sin(theta_c)
    k_c = int(np.argmax(s_ego >= x_stop + radius * theta_c))
    if s_ego[-1] < x_stop + radius * theta_c:
        raise _Redraw
    v_o = d.u(9.0, 13.9)
    kind = d.pick((CAR, CAR, VAN, TRUCK))
    xo = x_c - v_o * (t - t[k_c]) + d.u(-1.0, 1.0)
    oncoming = Track(xo, np.full_like(t, y_o), np.ones_like(t, dtype=bool), kind, math.pi)
    polys = road.polylines(gaps=[(xj - n_cross * w, xj + n_cross * w)])
    ys = np.array([y_c - 150.0, y_c + 150.0])
    for k in range(n_cross):
        polys.append(MapPolyline(MapKind.LANE_CENTRE, np.stack([np.full(2, xj + w / 2 + k * w), ys], 1), 13.9))
        polys.append(MapPolyline(MapKind.LANE_CENTRE, np.stack([np.full(2, xj - w / 2 - k * w), ys[::-1]], 1), 13.9))
    for xe in (xj - n_cross * w, xj + n_cross * w):
        polys.append(MapPolyline(MapKind.ROAD_EDGE, np.array([[xe, ys[0]], [xe, road.right_edge]])))
        polys.append(MapPolyline(MapKind.ROAD_EDGE, np.array([[xe, road.left_edge], [xe, ys[1]]])))
    theta = np.linspace(0.0, math.pi / 2, 12)
    polys.append(MapPolyline(MapKind.LANE_CENTRE, np.stack(
        [x_stop + radius * np.sin(theta), y_l + radius * (1 - np.cos(theta))], 1), 13.9))
    polys.append(MapPolyline(MapKind.STOP_LINE, road.across(x_stop, road.right_edge, y_c)))
    polys.append(MapPolyline(MapKind.STOP_LINE, road.across(xj + n_cross * w + 4.5, y_c, road.left_edge)))
    for x0 in (x_stop + 0.5, xj + n_cross * w + 1.0):
        polys.append(MapPolyline(MapKind.CROSSWALK, np.array(
            [[x0, road.right_edge], [x0 + 3.0, road.right_edge], [x0 + 3.0, road.left_edge], [x0, road.left_edge],
             [x0, road.right_edge]])))
    others = list(range(road.n_fwd + road.n_back))
    others.remove(road.n_fwd - 1)
    clear = lambda ln, s: ln < road.n_fwd or abs(s - x_c - v_o * float(t[k_c])) > 40.0  # noqa: E731
    fill = fill_traffic(d, road, window, _fill_count(d, cfg, max_agents, 2), others, 0.0, True, clear)
    fill = [f for f in fill if not np.any((f.x > xj - n_cross * w - 10) & (f.x < xj + n_cross * w + 10)
                                          & (np.abs(f.y - y_c) > road.n_fwd * w + 0.5))]
    return Scene([ego, oncoming] + fill, polys, ["junction", f"cross_lanes:{n_cross}"], common_pb2.ROAD_TYPE_URBAN)


def phantom_obstacle(d: Draw, cfg: dict, window: Window, max_agents: int) -> Scene:
    road, road_type = _road(d, cfg, (1, 3), (1, 2))
    t, dt = window.t_s, window.dt_s
    lane = d.i(0, road.n_fwd - 1)
    v0 = d.u(0.6, 0.95) * road.limit_mps
    kind = d.pick((UNKNOWN, CAR, PEDESTRIAN))
    t_on = d.u(0.1, 0.6)
    t_off = t_on + d.u(0.8, 1.6)
    # far enough that the cruising ego never reaches it while it is reported
    s_ph = v0 * (t_off + d.u(0.6, 1.5)) + (kind[1] + EGO_SIZE[1]) / 2 + 3.0
    peak = d.u(5.0, 6.0)
    brake = -ramp(t, t_on + 0.3, peak, 0.3)
    accel = np.where(t < t_off + 0.5, brake, 0.0)
    accel = np.where(t >= t_off + 0.8, d.u(1.0, 1.5), accel)
    s_ego, v_ego = drive(v0, accel, dt)
    v_cap = np.minimum(v_ego, v0)
    s_ego = np.concatenate([[0.0], np.cumsum((v_cap[1:] + v_cap[:-1]) / 2 * dt)])
    s_ego -= s_ego[window.current_step]
    ego = _lane_track(road, s_ego, road.lane_d(lane), EGO_SIZE)
    phantom = _lane_track(road, np.full_like(t, s_ph), road.lane_d(lane), kind, valid=(t >= t_on) & (t < t_off))
    others = [k for k in range(road.n_fwd + road.n_back) if k != lane]
    fill = fill_traffic(d, road, window, _fill_count(d, cfg, max_agents, 2), others, 0.0, road.limit_mps <= 14.0)
    return Scene([ego, phantom] + fill, road.polylines(), [f"{PHANTOM_TAG}1", f"phantom:{kind[0].name.lower()}"],
                 road_type)


def good_driving(d: Draw, cfg: dict, window: Window, max_agents: int) -> Scene:
    curved = d.chance(0.5)
    kappa = (1 if d.chance(0.5) else -1) * d.u(1 / 400, 1 / 150) if curved else 0.0
    road, road_type = _road(d, cfg, (1, 3), (1, 2), kappa=kappa)
    t, dt = window.t_s, window.dt_s
    lane = d.i(0, road.n_fwd - 1)
    v_max = min(road.limit_mps, math.sqrt(2.0 / abs(kappa))) if curved else road.limit_mps
    v0 = d.u(0.6, 0.9) * v_max
    tags = ["curved" if curved else "straight"]
    agents = []
    # the ego drives its lane; with a lead, it follows the lead's speed changes tau seconds later
    # (Newell's car-following: the gap never drops below its standstill part)
    swing = d.u(0.0, 0.6)
    period = d.u(4.0, 8.0)
    lead_acc = swing * np.sin(2 * np.pi * t / period)
    s_lead, _ = drive(v0, lead_acc, dt)
    if d.chance(0.6):
        kind = d.pick((CAR, CAR, VAN, TRUCK, BUS))
        tau = d.u(1.8, 3.0)
        standstill = (kind[1] + EGO_SIZE[1]) / 2 + d.u(3.0, 6.0)
        s_ego = np.interp(t - tau, t, s_lead, left=None) - standstill
        early = t - tau < t[0]
        s_ego = np.where(early, s_lead[0] - standstill + v0 * (t - tau - t[0]), s_ego)
        shift = s_ego[window.current_step]
        agents.append(_lane_track(road, s_lead - shift, road.lane_d(lane), kind))
        s_ego = s_ego - shift
        tags.append("following")
    else:
        s_ego = s_lead - s_lead[window.current_step]
        tags.append("cruise")
    ego = _lane_track(road, s_ego, road.lane_d(lane), EGO_SIZE)
    others = [k for k in range(road.n_fwd + road.n_back) if k != lane]
    fill = fill_traffic(d, road, window, _fill_count(d, cfg, max_agents, 1 + len(agents)), others, 0.0,
                        road.limit_mps <= 14.0)
    return Scene([ego] + agents + fill, road.polylines(), tags, road_type)


BUILDERS: dict[str, Callable[[Draw, dict, Window, int], Scene]] = {
    "lead_brake": lead_brake, "cut_in": cut_in, "pedestrian_occlusion": pedestrian_occlusion,
    "stalled_vehicle": stalled_vehicle, "unprotected_left": unprotected_left, "phantom_obstacle": phantom_obstacle,
    "good_driving": good_driving}


class _Redraw(Exception):
    """A draw that cannot show its family (e.g. the ego would stop before the pedestrian)."""


def _answer_holds(family: str, scene: Scene, window: Window, cfg: dict) -> bool:
    """The family's answer class, checked on the drawn scene (see the module docstring)."""
    ego, tracks, dt = scene.tracks[0], scene.tracks, window.dt_s
    answer = ANSWERS[family]
    if answer == COLLIDES_SAFE_EXISTS:
        safe = braking_alternative(ego, window, float(cfg["safe_decel_mps2"]))
        return ego_collides(tracks, ego, dt) and not ego_collides(tracks, safe, dt)
    if answer == OVERBRAKES:
        skip = _phantom_slots(scene.tags)
        k0 = window.current_step
        v0 = math.hypot(ego.x[k0 + 1] - ego.x[k0], ego.y[k0 + 1] - ego.y[k0]) / dt
        s_log = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(ego.x), np.diff(ego.y)))])
        cruise = np.concatenate([s_log[:k0], s_log[k0] + v0 * (window.t_s[k0:])])
        lane_x, lane_y = _extend_path(ego, s_log, cruise)
        cruising = replace(ego, x=lane_x, y=lane_y)
        return not ego_collides(tracks, cruising, dt, skip) and not ego_collides(tracks, ego, dt, skip)
    return not ego_collides(tracks, ego, dt)


def _extend_path(ego: Track, s_log: np.ndarray, s_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions at arc lengths `s_new` along the logged path, continued straight past its end."""
    end_h = math.atan2(ego.y[-1] - ego.y[-2], ego.x[-1] - ego.x[-2])
    over = np.maximum(s_new - s_log[-1], 0.0)
    x = np.interp(s_new, s_log, ego.x) + over * math.cos(end_h)
    y = np.interp(s_new, s_log, ego.y) + over * math.sin(end_h)
    return x, y


def _tensorise(scenes: Sequence[Scene], metas: Sequence[ScenarioMeta], window: Window, max_agents: int,
               layout: MapLayout, device: torch.device | str) -> ScenarioBatch:
    s_n, a_n, t_n = len(scenes), max_agents, window.n_steps
    arrays = {k: np.zeros((s_n, a_n, t_n), dtype=np.float32) for k in ("x", "y", "heading", "speed", "vx", "vy")}
    valid = np.zeros((s_n, a_n, t_n), dtype=bool)
    length = np.zeros((s_n, a_n), dtype=np.float32)
    width = np.zeros((s_n, a_n), dtype=np.float32)
    cls = np.zeros((s_n, a_n), dtype=np.int64)
    k0 = window.current_step
    origins, crops = [], []
    for i, scene in enumerate(scenes):
        if len(scene.tracks) > a_n:
            raise ScenarioError(f"scenario {metas[i].scenario_id}: {len(scene.tracks)} agents, max_agents {a_n}")
        ex, ey, eh, *_ = _state(scene.tracks[0], window.dt_s)
        ox, oy, oh = float(ex[k0]), float(ey[k0]), float(eh[k0])
        origins.append((ox, oy, oh))
        c, s = math.cos(oh), math.sin(oh)
        for a, tr in enumerate(scene.tracks):
            x, y, h, _, _, vx, vy = _state(tr, window.dt_s)
            m = tr.valid
            lx, ly = c * (x - ox) + s * (y - oy), -s * (x - ox) + c * (y - oy)
            lvx, lvy = c * vx + s * vy, -s * vx + c * vy
            lh = np.mod(h - oh + np.pi, 2 * np.pi) - np.pi
            for name, val in (("x", lx), ("y", ly), ("heading", lh), ("speed", np.hypot(vx, vy)), ("vx", lvx),
                              ("vy", lvy)):
                arrays[name][i, a] = np.where(m, val, 0.0)
            valid[i, a] = m
            length[i, a], width[i, a], cls[i, a] = tr.kind[1], tr.kind[2], int(tr.kind[0])
        crops.append(PolylineMap(scene.polylines, layout.spacing_m).crop("", ox, oy, oh, layout.radius_m))
    # heading of a moving agent is the direction of its velocity: vx, vy follow speed and heading exactly
    for name in ("vx", "vy"):
        trig = np.cos if name == "vx" else np.sin
        arrays[name] = np.where(valid, arrays["speed"] * trig(arrays["heading"]), 0.0).astype(np.float32)
    map_xy, map_valid, map_kind, map_limit = pad_map(crops, origins, layout, device)
    tensors = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    v = torch.from_numpy(valid).to(device)
    return ScenarioBatch(
        **tensors, valid=v, filled=torch.zeros_like(v), length=torch.from_numpy(length).to(device),
        width=torch.from_numpy(width).to(device), agent_class=torch.from_numpy(cls).to(device), map_xy=map_xy,
        map_valid=map_valid, map_kind=map_kind, map_speed_limit_mps=map_limit, dt_s=window.dt_s,
        current_step=k0, meta=[replace(m, origin_x_m=o[0], origin_y_m=o[1], origin_heading_rad=o[2])
                               for m, o in zip(metas, origins, strict=True)])


def generate(family: str, n: int, seed: int, config: ReplayConfig, device: torch.device | str = "cpu"
             ) -> ScenarioBatch:
    """`n` scenarios of `family`, the same for the same (family, n, seed, config). Raises KeyError for
    an unknown family and ScenarioError if a scene cannot be drawn within `max_attempts`."""
    if family not in BUILDERS:
        raise KeyError(f"unknown scenario family {family!r}; known: {', '.join(FAMILIES)}")
    if n < 1:
        raise ScenarioError(f"{family}: asked for {n} scenarios")
    sc = config.section("scenario")
    cfg = sc["generator"]
    window = Window.from_config(config)
    max_agents = int(sc["max_agents"])
    draw = Draw(seed * len(FAMILIES) + FAMILIES.index(family))
    scenes, metas = [], []
    for i in range(n):
        for _ in range(int(cfg["max_attempts"])):
            try:
                scene = BUILDERS[family](draw, cfg, window, max_agents)
            except _Redraw:
                continue
            if _answer_holds(family, scene, window, cfg):
                break
        else:
            raise ScenarioError(f"{family}: no scene with answer {ANSWERS[family]} in {cfg['max_attempts']} draws")
        scenes.append(scene)
        metas.append(ScenarioMeta(
            scenario_id=f"gen-{family}-{seed}-{i:04d}", t0_ms=T0_MS + 60_000 * i, city="generated",
            road_type=scene.road_type, weather=draw.pick(WEATHERS), light=draw.pick(LIGHTS),
            tags=tuple(scene.tags), family=family, answer=ANSWERS[family], agent_model=AgentModel.LOG,
            source="generator"))
    batch = _tensorise(scenes, metas, window, max_agents, MapLayout.from_config(sc), device)
    batch.validate()
    return batch


def suite_counts(n: int, config: ReplayConfig) -> dict[str, int]:
    """Scenarios per family for a suite of `n`: proportional to `family_weights`, the remainder going
    to the families with the largest fractional share (ties in FAMILIES order)."""
    weights = config.section("scenario")["generator"]["family_weights"]
    unknown = sorted(set(weights) - set(FAMILIES))
    if unknown:
        raise KeyError(f"family_weights names unknown families {unknown}; known: {', '.join(FAMILIES)}")
    total = sum(float(weights.get(f, 0.0)) for f in FAMILIES)
    share = {f: n * float(weights.get(f, 0.0)) / total for f in FAMILIES}
    counts = {f: int(share[f]) for f in FAMILIES}
    for f in sorted(FAMILIES, key=lambda f: (-(share[f] - counts[f]), FAMILIES.index(f)))[:n - sum(counts.values())]:
        counts[f] += 1
    return counts


def generate_suite(n: int, seed: int, config: ReplayConfig, device: torch.device | str = "cpu") -> ScenarioBatch:
    """A suite of `n` scenarios over every family (see `suite_counts`), families in FAMILIES order."""
    from fleetloop.replay.scenario import concat

    counts = suite_counts(n, config)
    return concat([generate(f, k, seed, config, device) for f, k in counts.items() if k > 0])
