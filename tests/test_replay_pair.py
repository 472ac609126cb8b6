"""ScenarioSolutionPair: built from a ScenarioBatch and read back within the quantisation, the 15 s × 32-agent
size target, decisions with known answers, bad input refused."""

import math
import zlib

import numpy as np
import pytest
import torch
from fleetloop.replay.codec import Quantisation
from fleetloop.replay.config import load_config
from fleetloop.replay.pair import (
    Decision,
    DecisionThresholds,
    Provenance,
    Robustness,
    build_pair,
    describe_decisions,
    ego_trajectories,
    pair_from_bytes,
    pair_to_bytes,
    pair_to_scenario,
)
from fleetloop.replay.scenario import AgentClass, MapKind, Rollout, ScenarioBatch, ScenarioError, ScenarioMeta
from fleetloop.v1 import replay_pb2

CONFIG = load_config()
QUANT = Quantisation.from_config(CONFIG.section("codec"))
THRESHOLDS = DecisionThresholds.from_config(CONFIG)
PROVENANCE = Provenance(policy_version="rule@1", search_config_version="1+abcd1234", seed=7, device="cpu",
                        replay_config_version=CONFIG.version, created_ms=1_790_000_000_000)
DT = 0.1
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
                      cost_delta={"collision": -1.0, "ttc": -0.8, "comfort_accel": 0.3, "progress": 0.12},
                      config=CONFIG, provenance=PROVENANCE,
                      robustness=Robustness(0.92, 0.4, 64, ("speed", "timing", "extra_agent", "perception_noise")),
                      front_objectives=torch.rand(k, 4, generator=torch.Generator().manual_seed(seed)),
                      baseline_triggers={"hard_brake": 1, "near_miss": 2}, solution_triggers={}, **kw)


def compressed(pair: replay_pb2.ScenarioSolutionPair) -> int:
    return len(pair_to_bytes(pair, CONFIG))


def test_pair_reads_back_within_the_quantisation() -> None:
    scen = make_scenario(1)
    front = front_of(scen, 6, 1)
    pair = make_pair(scen, k=6, seed=1)
    wire = replay_pb2.ScenarioSolutionPair.FromString(pair.SerializeToString())
    back, traj = pair_to_scenario(wire)
    assert back.n_scenarios == 1 and back.n_agents == scen.n_agents and back.n_steps == scen.n_steps
    assert back.meta[0] == scen.meta[0]
    assert back.current_step == scen.current_step and back.dt_s == pytest.approx(scen.dt_s)
    assert torch.equal(back.valid, scen.valid) and torch.equal(back.filled, scen.filled)
    assert torch.equal(back.agent_class, scen.agent_class)
    assert torch.equal(back.length, scen.length) and torch.equal(back.width, scen.width)
    v = scen.valid
    for name, step in (("x", QUANT.position_step_m), ("y", QUANT.position_step_m), ("speed", QUANT.speed_step_mps)):
        err = (getattr(back, name) - getattr(scen, name)).abs()[v]
        assert float(err.max()) <= step / 2 + 1e-4, name
    dh = (back.heading - scen.heading + math.pi) % (2 * math.pi) - math.pi
    assert float(dh.abs()[v].max()) <= QUANT.heading_step_rad / 2 + 1e-6
    assert torch.allclose(back.vx[v], scen.vx[v], atol=0.02)
    used = int((scen.map_kind > 0).sum())            # padding polylines are not carried
    assert back.map_xy.shape[1] == used and bool((scen.map_kind[0, used:] == 0).all())
    mv = scen.map_valid[:, :used]
    assert torch.equal(back.map_valid, mv) and torch.equal(back.map_kind, scen.map_kind[:, :used])
    assert float((back.map_xy - scen.map_xy[:, :used]).abs()[mv].max()) <= 0.005 + 1e-4
    assert torch.equal(back.map_speed_limit_mps.isnan(), scen.map_speed_limit_mps[:, :used].isnan())
    assert traj.solution_index == 3 and traj.front["x"].shape == (6, 150)
    assert float((traj.front["x"] - front["x"]).abs().max()) <= 0.005 + 1e-4
    assert float((traj.front["speed"] - front["speed"]).abs().max()) <= 0.005 + 1e-4
    assert float((traj.baseline["y"] - scen.y[0, 0]).abs().max()) <= 0.005 + 1e-4
    assert torch.allclose(traj.t_s[:3], torch.tensor([0.0, 0.1, 0.2]))
    assert torch.allclose(traj.objectives, torch.rand(6, 4, generator=torch.Generator().manual_seed(1)))
    assert wire.problem.initial.speed_mps == pytest.approx(float(scen.speed[0, 0, 10]), abs=0.005)
    assert {d.name: d.delta for d in wire.cost_delta}["ttc"] == pytest.approx(-0.8)
    assert dict(wire.baseline_triggers) == {"hard_brake": 1, "near_miss": 2} and not wire.solution_triggers
    assert wire.robustness.perturbations == 64 and list(wire.robustness.kinds)[-1] == "perception_noise"
    assert wire.provenance.policy_version == "rule@1" and wire.provenance.seed == 7


def test_a_pair_rebuilds_the_same_pair() -> None:
    scen = make_scenario(2)
    pair = make_pair(scen)
    back, traj = pair_to_scenario(pair)
    again = build_pair(back, 0, traj.baseline, traj.front, traj.solution_index,
                       {d.name: d.delta for d in pair.cost_delta}, CONFIG, PROVENANCE,
                       robustness=Robustness(0.92, 0.4, 64, ("speed", "timing", "extra_agent", "perception_noise")),
                       decisions=[Decision(d.kind, d.text, d.value, d.unit, d.baseline_value, d.solution_value)
                                  for d in pair.decisions],
                       front_objectives=traj.objectives, baseline_triggers=dict(pair.baseline_triggers))
    assert again.SerializeToString(deterministic=True) == pair.SerializeToString(deterministic=True)


def test_ego_trajectories_cut_candidates_out_of_a_rollout() -> None:
    scen = make_scenario(3, agents=4, steps=30)
    shape = (1, 5, 4, 30)
    g = torch.Generator().manual_seed(3)
    roll = Rollout(*(torch.rand(shape, generator=g) for _ in range(6)), valid=torch.ones(shape, dtype=torch.bool),
                   ego_actions=torch.zeros(1, 5, 30, 2), dt_s=DT, current_step=10)
    front = ego_trajectories(roll, 0, [4, 1])
    assert front["x"].shape == (2, 30) and torch.equal(front["speed"][0], roll.speed[0, 4, 0])
    pair = build_pair(scen, 0, baseline_of(scen), front, 1, {}, CONFIG, PROVENANCE)
    assert len(pair.front) == 2 and not pair.HasField("robustness")


def test_size_of_a_15_s_case_with_32_agents() -> None:
    scen = make_scenario(4, agents=32, steps=150)
    pair = make_pair(scen, k=8)
    raw, packed = pair.ByteSize(), compressed(pair)
    parts = {"agents": sum(a.ByteSize() for a in pair.problem.agents),
             "map": sum(p.ByteSize() for p in pair.problem.map), "ego": pair.problem.ego_log.ByteSize(),
             "front": sum(f.ByteSize() for f in pair.front), "baseline": pair.baseline.ByteSize()}
    print(f"\n15 s x 32 agents, 8 front trajectories, {int(scen.map_valid.sum())} map vertices: "
          f"{raw / 1000:.1f} kB ({packed / 1000:.1f} kB zlib-9); parts (B): {parts}")
    assert raw <= 100_000
    assert packed <= 10_000                      # the moonshot, for smooth (generator) tracks


def test_bytes_round_trip_with_and_without_zlib() -> None:
    pair = make_pair(make_scenario(10, agents=8), k=3)
    packed = pair_to_bytes(pair, CONFIG)
    plain = pair_to_bytes(pair, load_config(overrides={"codec": {"compression": "none"}}))
    assert packed[0] == 0x78 and plain == pair.SerializeToString(deterministic=True)
    assert len(packed) < len(plain) / 2
    assert pair_from_bytes(packed) == pair and pair_from_bytes(plain) == pair
    with pytest.raises(ValueError, match="damaged zlib"):
        pair_from_bytes(packed[:2] + bytes(8))
    with pytest.raises(ValueError, match="truncated"):
        pair_from_bytes(packed[:-40])
    with pytest.raises(ValueError, match="first byte 0x7b"):
        pair_from_bytes(b"{}")
    with pytest.raises(ValueError, match="inflates beyond"):
        pair_from_bytes(zlib.compress(bytes(65 << 20), 1))
    with pytest.raises(ValueError, match="compression must be zlib or none"):
        pair_to_bytes(pair, load_config(overrides={"codec": {"compression": "lz4"}}))


def test_size_distribution_over_generated_like_pairs() -> None:
    rows = []
    for seed in range(30):
        perception = ("smooth", "1hz", "noisy")[seed % 3]
        scen = make_scenario(100 + seed, agents=int(8 + seed % 4 * 8), steps=150, perception=perception)
        pair = make_pair(scen, k=1 + seed % 16, seed=seed)
        rows.append((perception, scen.n_agents, len(pair.front), pair.ByteSize(), compressed(pair)))
    raw = np.array([r[3] for r in rows]) / 1000
    packed = np.array([r[4] for r in rows]) / 1000
    print("\npair size over 30 generated-like 15 s pairs (8-32 agents, 1-16 front trajectories), kB:")
    print(f"  raw  p50 {np.percentile(raw, 50):.1f}  p95 {np.percentile(raw, 95):.1f}  max {raw.max():.1f}")
    print(f"  zlib p50 {np.percentile(packed, 50):.1f}  p95 {np.percentile(packed, 95):.1f}  max {packed.max():.1f}")
    for kind in ("smooth", "1hz", "noisy"):
        of = [r for r in rows if r[0] == kind and r[1] == 32]
        if of:
            print(f"  32 agents, {kind:6}: raw {of[0][3] / 1000:.1f} kB, zlib {of[0][4] / 1000:.1f} kB")
    assert raw.max() <= 100


def test_decisions_brake_earlier_and_keep_left() -> None:
    t = torch.arange(100, dtype=torch.float32) * DT
    base_speed = torch.where(t < 3.0, torch.tensor(10.0), (10.0 - 3.0 * (t - 3.0)).clamp(min=0))
    sol_speed = torch.where(t < 1.8, torch.tensor(10.0), (10.0 - 2.0 * (t - 1.8)).clamp(min=0))
    base = {"x": torch.cumsum(base_speed, 0) * DT, "y": torch.zeros(100), "heading": torch.zeros(100),
            "speed": base_speed}
    sol = {"x": torch.cumsum(sol_speed, 0) * DT, "y": 0.8 * (1 - torch.exp(-t)), "heading": torch.zeros(100),
           "speed": sol_speed}
    found = {d.kind: d for d in describe_decisions(base, sol, DT, THRESHOLDS)}
    assert found["brake_onset"].text == "brakes 1.2 s earlier"
    assert found["brake_onset"].value == pytest.approx(1.2, abs=1e-6)
    assert found["lateral_offset"].text.startswith("keeps 0.8 m further left")
    assert found["lateral_offset"].value == pytest.approx(0.8, abs=0.01)
    assert found["speed"].value < 0 and "slower" in found["speed"].text
    assert "stop" in found                       # both stop, the solution 3.5 s... later: it brakes more gently
    assert found["stop"].value == pytest.approx((1.8 + 5.0) - (3.0 + 10 / 3), abs=0.11)


def test_decisions_phantom_obstacle_no_brake_no_stop() -> None:
    t = torch.arange(80, dtype=torch.float32) * DT
    stop = (8.0 - 4.5 * t).clamp(min=0)
    cruise = torch.full((80,), 8.0)
    base = {"x": torch.cumsum(stop, 0) * DT, "y": torch.zeros(80), "heading": torch.zeros(80), "speed": stop}
    sol = {"x": torch.cumsum(cruise, 0) * DT, "y": torch.zeros(80), "heading": torch.zeros(80), "speed": cruise}
    found = {d.kind: d for d in describe_decisions(base, sol, DT, THRESHOLDS)}
    assert found["brake_onset"].text == "does not brake (the baseline brakes from 0.0 s)"
    assert found["stop"].text.startswith("does not stop (the baseline stops at 1.")
    assert "lateral_offset" not in found
    assert describe_decisions(base, base, DT, THRESHOLDS) == []


def test_decisions_in_the_pair() -> None:
    pair = make_pair(make_scenario(5, agents=4))
    kinds = [d.kind for d in pair.decisions]
    assert "speed" in kinds and all(d.text for d in pair.decisions)
    given = [Decision("speed", "drives 1.0 m/s slower on average", -1.0, "m/s", 8.0, 7.0)]
    scen = make_scenario(5, agents=4)
    pair = build_pair(scen, 0, baseline_of(scen), front_of(scen, 2, 0), 0, {}, CONFIG, PROVENANCE, decisions=given)
    assert [d.text for d in pair.decisions] == ["drives 1.0 m/s slower on average"]


def test_thresholds_come_from_the_config() -> None:
    assert THRESHOLDS.brake_decel_mps2 == CONFIG.section("codec")["decisions"]["brake_decel_mps2"]


def test_mismatched_lengths_are_refused() -> None:
    scen = make_scenario(6, agents=4, steps=40)
    front = front_of(scen, 3, 0)
    front["heading"] = front["heading"][:, :-1]
    with pytest.raises(ScenarioError, match=r"scenario gen-6: front heading has shape \(3, 39\), expected \(3, 40\)"):
        build_pair(scen, 0, baseline_of(scen), front, 0, {}, CONFIG, PROVENANCE)
    with pytest.raises(ScenarioError, match="baseline speed"):
        build_pair(scen, 0, {**baseline_of(scen), "speed": torch.zeros(41)}, front_of(scen, 3, 0), 0, {}, CONFIG,
                   PROVENANCE)
    with pytest.raises(ScenarioError, match="solution_index 3 outside the front of 3"):
        build_pair(scen, 0, baseline_of(scen), front_of(scen, 3, 0), 3, {}, CONFIG, PROVENANCE)
    with pytest.raises(ScenarioError, match="front_objectives"):
        build_pair(scen, 0, baseline_of(scen), front_of(scen, 3, 0), 0, {}, CONFIG, PROVENANCE,
                   front_objectives=torch.zeros(3, 3))


def test_nan_in_a_valid_step_is_refused() -> None:
    scen = make_scenario(7, agents=4, steps=40)
    front = front_of(scen, 2, 0)
    front["x"][1, 25] = math.nan
    with pytest.raises(ScenarioError, match="scenario gen-7: front x: NaN or infinite value at valid row 1, step 15"):
        build_pair(scen, 0, baseline_of(scen), front, 0, {}, CONFIG, PROVENANCE)
    front = front_of(scen, 2, 0)
    front["x"][1, 25] = math.nan
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, 25] = False                         # an invalid step may hold NaN
    build_pair(scen, 0, baseline_of(scen), {**front, "valid": valid}, 0, {}, CONFIG, PROVENANCE)
    scen.x[0, 2, 20] = math.nan
    with pytest.raises(ScenarioError, match="agent 2 has NaN"):
        build_pair(scen, 0, baseline_of(scen), front_of(scen, 2, 0), 0, {}, CONFIG, PROVENANCE)


def test_unknown_agent_class_and_map_kind_are_refused() -> None:
    scen = make_scenario(8, agents=4, steps=40)
    scen.agent_class[0, 2] = 57
    with pytest.raises(ScenarioError, match="scenario gen-8: agent 2 has unknown class 57"):
        build_pair(scen, 0, baseline_of(scen), front_of(scen, 2, 0), 0, {}, CONFIG, PROVENANCE)
    scen = make_scenario(8, agents=4, steps=40)
    scen.agent_class[0, 3] = AgentClass.EGO
    with pytest.raises(ScenarioError, match="agent 3 has unknown class 100"):
        build_pair(scen, 0, baseline_of(scen), front_of(scen, 2, 0), 0, {}, CONFIG, PROVENANCE)
    scen = make_scenario(8, agents=4, steps=40)
    scen.map_kind[0, 1] = 9
    with pytest.raises(ScenarioError, match="map polyline 1 has unknown kind 9"):
        build_pair(scen, 0, baseline_of(scen), front_of(scen, 2, 0), 0, {}, CONFIG, PROVENANCE)
    with pytest.raises(ScenarioError, match="scenario index 1 outside"):
        build_pair(scen, 1, baseline_of(scen), front_of(scen, 2, 0), 0, {}, CONFIG, PROVENANCE)


def test_damaged_or_unknown_pairs_are_refused() -> None:
    pair = make_pair(make_scenario(9, agents=4, steps=40), k=2)
    future = replay_pb2.ScenarioSolutionPair()
    future.CopyFrom(pair)
    future.format_version = 2
    with pytest.raises(ScenarioError, match="format version 2"):
        pair_to_scenario(future)
    damaged = replay_pb2.ScenarioSolutionPair()
    damaged.CopyFrom(pair)
    damaged.problem.agents[0].track.x = damaged.problem.agents[0].track.x[:-1]
    with pytest.raises(ScenarioError, match="scenario gen-9: agent x: row 1 codes"):
        pair_to_scenario(damaged)
