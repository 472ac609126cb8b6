"""Generated-like ScenarioSolutionPairs for the pair and export tests: 15 s scenarios with up to 32 agents of
every class (smooth generator tracks, 1 Hz interpolated perception, or noisy 10 Hz perception), a realistic
map crop and a smooth Pareto front."""

import math

import numpy as np
import torch
from fleetloop.replay.codec import Quantisation
from fleetloop.replay.config import load_config
from fleetloop.replay.pair import DecisionThresholds, Provenance, Robustness, build_pair
from fleetloop.replay.scenario import AgentClass, MapKind, ScenarioBatch, ScenarioMeta
from fleetloop.v1 import replay_pb2

CONFIG = load_config()
QUANT = Quantisation.from_config(CONFIG.section("codec"))
THRESHOLDS = DecisionThresholds.from_config(CONFIG)
PROVENANCE = Provenance(policy_version="rule@1", search_config_version="1+abcd1234", seed=7, device="cpu",
                        replay_config_version=CONFIG.version, created_ms=1_790_000_000_000)
DT = 0.1
ROBUSTNESS = Robustness(0.92, 0.4, 64, ("speed", "timing", "extra_agent", "perception_noise"), gate_pass_rate=0.97)
OTHER = [AgentClass.CAR, AgentClass.CAR, AgentClass.CAR, AgentClass.TRUCK, AgentClass.BUS, AgentClass.PEDESTRIAN,
         AgentClass.CYCLIST, AgentClass.MOTORCYCLE, AgentClass.CONE]


def _drive(rng: np.random.Generator, n: int, steps: int, speed0: np.ndarray, accel_sd: float,
           yaw_sd: float) -> tuple[np.ndarray, ...]:
    """Smooth bicycle-like tracks [n, steps]: piecewise-constant acceleration and yaw rate, changed every 1-3 s."""
    knots = rng.integers(10, 30, size=n)
    seg = np.arange(steps)[None] // knots[:, None]
    accel = rng.normal(0, accel_sd, (n, steps // 10 + 2))[np.arange(n)[:, None], seg]
    yaw = rng.normal(0, yaw_sd, (n, steps // 10 + 2))[np.arange(n)[:, None], seg]
    speed = np.clip(speed0[:, None] + np.cumsum(accel, axis=1) * DT, 0, None)
    heading = rng.uniform(-math.pi, math.pi, (n, 1)) + np.cumsum(yaw, axis=1) * DT
    x = rng.uniform(-60, 120, (n, 1)) + np.cumsum(speed * np.cos(heading), axis=1) * DT
    y = rng.uniform(-15, 15, (n, 1)) + np.cumsum(speed * np.sin(heading), axis=1) * DT
    return x, y, heading, speed


def _map_crop(polylines: int = 40, vertices: int = 64) -> tuple[np.ndarray, ...]:
    """A 4-lane road of 300 m with a gentle curve and a crossing road: lane centres and road edges every 2 m,
    cut into pieces of <= 64 vertices, crosswalks as 5-vertex rings, stop lines as 2-vertex segments."""
    xy = np.zeros((polylines, vertices, 2))
    valid = np.zeros((polylines, vertices), dtype=bool)
    kind = np.zeros(polylines, dtype=np.int64)
    limit = np.full(polylines, np.nan)
    p = 0

    def add(points: np.ndarray, k: MapKind, speed: float = math.nan) -> None:
        nonlocal p
        for start in range(0, len(points) - 1, vertices - 1):
            piece = points[start:start + vertices]
            xy[p, :len(piece)], valid[p, :len(piece)], kind[p], limit[p] = piece, True, k, speed
            p += 1

    s = np.arange(-100, 200, 2.0)
    bend = 0.0008 * np.clip(s - 50, 0, None) ** 2                      # curve to the left after 50 m
    for offset in (-5.25, -1.75, 1.75, 5.25):
        add(np.stack([s, bend + offset], axis=1), MapKind.LANE_CENTRE, 13.9)
    for offset in (-7.0, 7.0):
        add(np.stack([s, bend + offset], axis=1), MapKind.ROAD_EDGE)
    cross = np.arange(-40, 40, 2.0)
    for offset in (38.25, 41.75):
        add(np.stack([np.full_like(cross, offset), cross], axis=1), MapKind.LANE_CENTRE, 8.3)
    for x0 in (30.0, 50.0):
        add(np.array([[x0, -7], [x0 + 3, -7], [x0 + 3, 7], [x0, 7], [x0, -7]]), MapKind.CROSSWALK)
        add(np.array([[x0 - 1, -7], [x0 - 1, 0]]), MapKind.STOP_LINE)
    assert p <= polylines
    return xy, valid, kind, limit


def make_scenario(seed: int, agents: int = 32, steps: int = 150, perception: str = "smooth") -> ScenarioBatch:
    """A generated-like scenario of `steps` at 0.1 s with `agents` slots (ego included). `perception`:
    smooth (generator), 1hz (objects detected at 1 Hz and interpolated, as from a minilog) or noisy
    (10 Hz detections with 5 cm / 0.01 rad / 0.05 m/s noise: the worst case for the codec)."""
    rng = np.random.default_rng(seed)
    x, y, heading, speed = _drive(rng, agents, steps, rng.uniform(0, 15, agents), 0.8, 0.08)
    classes = np.array([AgentClass.EGO] + [OTHER[i] for i in rng.integers(0, len(OTHER), agents - 1)])
    slow = np.isin(classes, [AgentClass.PEDESTRIAN, AgentClass.CONE])
    speed[slow] *= 0.1 * (classes[slow] != AgentClass.CONE)[:, None]
    x[slow] = x[slow, :1] + np.cumsum(speed[slow] * np.cos(heading[slow]), axis=1) * DT
    y[slow] = y[slow, :1] + np.cumsum(speed[slow] * np.sin(heading[slow]), axis=1) * DT
    cur = 10
    # the ego at the origin heading +x at the current step
    x[0] -= x[0, cur]
    y[0] -= y[0, cur]
    heading[0] -= heading[0, cur]
    valid = np.ones((agents, steps), dtype=bool)
    enter, leave = rng.integers(0, steps // 3, agents), rng.integers(2 * steps // 3, steps + 1, agents)
    valid &= (np.arange(steps)[None] >= enter[:, None]) & (np.arange(steps)[None] < leave[:, None])
    valid[0] = True
    filled = np.zeros_like(valid)
    if perception == "1hz":
        t = np.arange(steps)
        for arr in (x, y, speed):
            arr[1:] = np.stack([np.interp(t, t[::10], row[::10]) for row in arr[1:]])
        filled[1:] = valid[1:] & (t % 10 != 0)[None]
    elif perception == "noisy":
        x[1:] += rng.normal(0, 0.05, x[1:].shape)
        y[1:] += rng.normal(0, 0.05, y[1:].shape)
        heading[1:] += rng.normal(0, 0.01, heading[1:].shape)
        speed[1:] += rng.normal(0, 0.05, speed[1:].shape)
    heading = (heading + math.pi) % (2 * math.pi) - math.pi
    length = np.where(slow, 0.6, rng.uniform(4.0, 12.0, agents))
    width = np.where(slow, 0.6, rng.uniform(1.8, 2.6, agents))
    for arr in (x, y, heading, speed):
        arr[~valid] = 0
    xy, map_valid, kind, limit = _map_crop()

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32)[None]

    return ScenarioBatch(
        x=f32(x), y=f32(y), heading=f32(heading), speed=f32(speed), vx=f32(speed * np.cos(heading)),
        vy=f32(speed * np.sin(heading)), valid=torch.as_tensor(valid)[None], filled=torch.as_tensor(filled)[None],
        length=f32(length), width=f32(width), agent_class=torch.as_tensor(classes, dtype=torch.int64)[None],
        map_xy=f32(xy), map_valid=torch.as_tensor(map_valid)[None], map_kind=torch.as_tensor(kind)[None],
        map_speed_limit_mps=f32(limit), dt_s=DT, current_step=cur,
        meta=[ScenarioMeta(scenario_id=f"gen-{seed}", case_id=f"case-{seed}", vehicle_id="van-07",
                           t0_ms=1_790_000_000_000 + seed, origin_x_m=1234.5, origin_y_m=-876.25,
                           origin_heading_rad=0.7, city="suzhou", road_type=2, weather=3, light=1,
                           tags=("rain", "intersection"), family="lead_brake", answer="baseline_collides",
                           source="generator")])


def front_of(scen: ScenarioBatch, k: int, seed: int) -> dict[str, torch.Tensor]:
    """K ego alternatives: the log braking harder or earlier and shifted sideways (smooth, like the search's)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(scen.n_steps, dtype=torch.float32)
    after = (t - scen.current_step).clamp(min=0) * scen.dt_s
    decel = torch.rand(k, 1, generator=g) * 3.0
    offset = (torch.rand(k, 1, generator=g) - 0.5) * 2.0
    speed = (scen.speed[0, 0][None] - decel * after).clamp(min=0)
    progress = torch.cumsum(speed * scen.dt_s, dim=1)
    base = torch.cumsum(scen.speed[0, 0] * scen.dt_s, dim=0)
    heading = scen.heading[0, 0].expand(k, -1).clone()
    shift = offset * (1 - torch.exp(-after))
    x = scen.x[0, 0] + (progress - base) * torch.cos(heading) - shift * torch.sin(heading)
    y = scen.y[0, 0] + (progress - base) * torch.sin(heading) + shift * torch.cos(heading)
    return {"x": x, "y": y, "heading": heading, "speed": speed}


def baseline_of(scen: ScenarioBatch) -> dict[str, torch.Tensor]:
    return {c: getattr(scen, c)[0, 0] for c in ("x", "y", "heading", "speed")}


def make_pair(scen: ScenarioBatch, k: int = 8, seed: int = 0, **kw) -> replay_pb2.ScenarioSolutionPair:
    front = front_of(scen, k, seed)
    return build_pair(scen, 0, baseline_of(scen), front, solution_index=k // 2,
                      cost_delta={"collision": (1.0, 0.0), "ttc": -0.8, "comfort_accel": 0.3, "progress": 0.12},
                      config=CONFIG, provenance=PROVENANCE,
                      robustness=ROBUSTNESS,
                      front_objectives=torch.rand(k, 4, generator=torch.Generator().manual_seed(seed)),
                      baseline_triggers={"hard_brake": 1, "near_miss": 2}, solution_triggers={}, **kw)
