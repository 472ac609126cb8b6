"""ScenarioSolutionPair: built from a ScenarioBatch and read back within the quantisation, the 15 s × 32-agent
size target, decisions with known answers, bad input refused."""

import math
import zlib

import numpy as np
import pytest
import torch
from fleetloop.replay.config import load_config
from fleetloop.replay.generator import FAMILIES, generate_suite
from fleetloop.replay.pair import (
    Decision,
    build_pair,
    describe_decisions,
    ego_trajectories,
    pair_from_bytes,
    pair_to_bytes,
    pair_to_scenario,
)
from fleetloop.replay.scenario import AgentClass, Rollout, ScenarioError
from fleetloop.v1 import replay_pb2

from tests.support.pairdata import (
    CONFIG,
    DT,
    PROVENANCE,
    QUANT,
    ROBUSTNESS,
    THRESHOLDS,
    baseline_of,
    front_of,
    make_pair,
    make_scenario,
)


def compressed(pair: replay_pb2.ScenarioSolutionPair) -> int:
    return len(pair_to_bytes(pair, CONFIG))


@pytest.mark.parametrize("perception", ["smooth", "1hz"])
def test_pair_reads_back_within_the_quantisation(perception: str) -> None:
    scen = make_scenario(1, perception=perception)
    front = front_of(scen, 6, 1)
    pair = make_pair(scen, k=6, seed=1)
    wire = replay_pb2.ScenarioSolutionPair.FromString(pair.SerializeToString())
    back, traj = pair_to_scenario(wire)
    assert back.n_scenarios == 1 and back.n_agents == scen.n_agents and back.n_steps == scen.n_steps
    assert back.meta[0] == scen.meta[0]
    assert back.current_step == scen.current_step and back.dt_s == pytest.approx(scen.dt_s)
    assert torch.equal(back.valid, scen.valid) and torch.equal(back.filled, scen.filled)
    assert bool(back.filled.any()) == (perception == "1hz")  # interpolated steps stay marked
    assert torch.equal(back.agent_class, scen.agent_class)
    assert torch.equal(back.length, scen.length) and torch.equal(back.width, scen.width)
    v = scen.valid
    for name, step in (("x", QUANT.position_step_m), ("y", QUANT.position_step_m), ("speed", QUANT.speed_step_mps)):
        err = (getattr(back, name) - getattr(scen, name)).abs()[v]
        assert float(err.max()) <= step / 2 + 1e-4, name
    dh = (back.heading - scen.heading + math.pi) % (2 * math.pi) - math.pi
    assert float(dh.abs()[v].max()) <= QUANT.heading_step_rad / 2 + 1e-6
    assert torch.allclose(back.vx[v], scen.vx[v], atol=0.02)
    mv = scen.map_valid
    assert torch.equal(back.map_valid, mv) and torch.equal(back.map_kind, scen.map_kind)
    assert float((back.map_xy - scen.map_xy).abs()[mv].max()) <= 0.005 + 1e-4
    assert torch.equal(back.map_speed_limit_mps.isnan(), scen.map_speed_limit_mps.isnan())
    assert len(wire.problem.map) == int((scen.map_kind > 0).sum()) < scen.map_kind.shape[1]  # padding not carried
    assert traj.solution_index == 3 and traj.front["x"].shape == (6, 150)
    assert float((traj.front["x"] - front["x"]).abs().max()) <= 0.005 + 1e-4
    assert float((traj.front["speed"] - front["speed"]).abs().max()) <= 0.005 + 1e-4
    assert float((traj.baseline["y"] - scen.y[0, 0]).abs().max()) <= 0.005 + 1e-4
    assert torch.allclose(traj.t_s[:3], torch.tensor([0.0, 0.1, 0.2]))
    assert torch.allclose(traj.objectives, torch.rand(6, 4, generator=torch.Generator().manual_seed(1)))
    assert wire.problem.initial.speed_mps == pytest.approx(float(scen.speed[0, 0, 10]), abs=0.005)
    terms = {d.name: d for d in wire.cost_delta}
    assert terms["ttc"].delta == pytest.approx(-0.8) and not terms["ttc"].HasField("baseline")
    assert (terms["collision"].delta, terms["collision"].baseline, terms["collision"].solution) == (-1.0, 1.0, 0.0)
    assert wire.robustness.gate_pass_rate == pytest.approx(0.97)
    assert dict(wire.baseline_triggers) == {"hard_brake": 1, "near_miss": 2} and not wire.solution_triggers
    assert wire.robustness.perturbations == 64 and list(wire.robustness.kinds)[-1] == "perception_noise"
    assert wire.provenance.policy_version == "rule@1" and wire.provenance.seed == 7


def test_a_pair_rebuilds_the_same_pair() -> None:
    scen = make_scenario(2)
    pair = make_pair(scen)
    back, traj = pair_to_scenario(pair)
    again = build_pair(back, 0, traj.baseline, traj.front, traj.solution_index,
                       {d.name: (d.baseline, d.solution) if d.HasField("baseline") else d.delta
                        for d in pair.cost_delta}, CONFIG, PROVENANCE, robustness=ROBUSTNESS,
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


def test_lateral_offset_is_measured_against_the_path_not_the_clock() -> None:
    # both drive the same 20 m-radius arc; the solution 30 % slower and 0.5 m inside (left) of it
    t = torch.arange(80, dtype=torch.float32) * DT
    for speed, radius in ((8.0, 20.0), (5.6, 19.5)):
        angle = speed * t / 20.0
        traj = {"x": radius * torch.sin(angle), "y": 20.0 - radius * torch.cos(angle), "heading": angle,
                "speed": torch.full((80,), speed)}
        if radius == 20.0:
            base = traj
        else:
            sol = traj
    found = {d.kind: d for d in describe_decisions(base, sol, DT, THRESHOLDS)}
    assert found["lateral_offset"].value == pytest.approx(0.5, abs=0.05)
    assert found["lateral_offset"].solution_value == pytest.approx(0.5, abs=0.05)
    assert found["lateral_offset"].text.startswith("keeps 0.5 m further left")


def test_driving_on_past_the_baseline_stop_is_not_a_lateral_offset() -> None:
    t = torch.arange(80, dtype=torch.float32) * DT
    stop = (8.0 - 2.0 * t).clamp(min=0)            # the baseline stops after 16 m
    go = torch.full((80,), 8.0)                      # the solution turns left and drives on
    heading = (t - 2.0).clamp(min=0) * 0.4
    sol = {"x": torch.cumsum(go * torch.cos(heading), 0) * DT, "y": torch.cumsum(go * torch.sin(heading), 0) * DT,
           "heading": heading, "speed": go}
    base = {"x": torch.cumsum(stop, 0) * DT, "y": torch.zeros(80), "heading": torch.zeros(80), "speed": stop}
    found = {d.kind: d for d in describe_decisions(base, sol, DT, THRESHOLDS)}
    assert "lateral_offset" not in found
    assert found["stop"].text.startswith("does not stop")


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


def test_generated_suite_round_trips_and_sizes() -> None:
    suite = generate_suite(4 * len(FAMILIES), 21, CONFIG)
    sizes = {}
    for i in range(suite.n_scenarios):
        one = suite.select([i])
        pair = make_pair(one, k=8, seed=i)
        back, traj = pair_to_scenario(pair_from_bytes(pair_to_bytes(pair, CONFIG)))
        for name, tensor in one.tensors().items():
            got = getattr(back, name)
            if name in ("x", "y", "speed", "vx", "vy", "map_xy"):
                assert float((got - tensor).abs().max()) <= (0.005 if name != "vx" and name != "vy" else 0.01) + 1e-4
            elif name == "heading":
                assert float(((got - tensor + math.pi) % (2 * math.pi) - math.pi).abs().max()) <= 0.0005 + 1e-6
            else:
                assert torch.equal(got.isnan(), tensor.isnan()) and torch.equal(got.nan_to_num(), tensor.nan_to_num())
        assert back.meta == one.meta
        sizes.setdefault(one.meta[0].family, []).append((pair.ByteSize(), len(pair_to_bytes(pair, CONFIG))))
    raw = np.array([r for rows in sizes.values() for r, _ in rows]) / 1000
    packed = np.array([z for rows in sizes.values() for _, z in rows]) / 1000
    print(f"\ngenerated suite ({suite.n_scenarios} scenarios, {suite.n_steps} steps, {suite.n_agents} slots, 8 front "
          f"trajectories): raw p50 {np.percentile(raw, 50):.1f} p95 {np.percentile(raw, 95):.1f} kB, zlib p50 "
          f"{np.percentile(packed, 50):.1f} p95 {np.percentile(packed, 95):.1f} max {packed.max():.1f} kB")
    for family, rows in sizes.items():
        print(f"  {family:22} raw {np.mean([r for r, _ in rows]) / 1000:5.1f} kB  zlib "
              f"{np.mean([z for _, z in rows]) / 1000:4.1f} kB")
    assert packed.max() <= 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_builds_and_reads_the_same_pair() -> None:
    scen = make_scenario(12, agents=16, steps=60)
    front = front_of(scen, 4, 12)
    cpu = build_pair(scen, 0, baseline_of(scen), front, 1, {}, CONFIG, PROVENANCE)
    gpu_scen = scen.to("cuda")
    gpu = build_pair(gpu_scen, 0, baseline_of(gpu_scen), {k: v.cuda() for k, v in front.items()}, 1, {}, CONFIG,
                     PROVENANCE)
    assert gpu.SerializeToString(deterministic=True) == cpu.SerializeToString(deterministic=True)
    back_cpu, _ = pair_to_scenario(cpu)
    back_gpu, traj = pair_to_scenario(cpu, device="cuda")
    assert back_gpu.device.type == "cuda" and traj.front["x"].device.type == "cuda"
    for name, tensor in back_cpu.tensors().items():
        assert torch.equal(getattr(back_gpu, name).cpu().nan_to_num(), tensor.nan_to_num()), name
