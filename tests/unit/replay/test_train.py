"""Behaviour cloning on the simulated fleet: the training windows, the loss against a constant action,
checkpoints that load back bit-identical, determinism for a seed, and the learned policy keeping its
lane closed loop through the world model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import typer
from fleetloop import topics
from fleetloop.commands.replay_train import policies, train
from fleetloop.replay.config import load_config
from fleetloop.replay.features import FEATURES, ObservationFeatures
from fleetloop.replay.policies import (
    ActionBounds,
    BehaviourCloningPolicy,
    get_policy,
    read_manifest,
    save_checkpoint,
    sha256_file,
)
from fleetloop.replay.scenario import AGENT_FIELDS, EGO, AgentClass, MapKind, ScenarioBatch, ScenarioMeta, concat
from fleetloop.replay.train import cloning_samples, run_fleet, simulated_driving, train_behaviour_cloning
from fleetloop.replay.world import WorldModel
from fleetloop.sim import FleetSimulator, SimConfig
from typer.testing import CliRunner

# A small fleet and budget: 6 vehicles x 4 min is ~100 windows and ~8 k samples, trained in seconds.
CONFIG = load_config(overrides={"policies": {"bc": {"vehicles": 6, "duration_s": 240, "batch": 256}}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("checkpoints")
    return out, train_behaviour_cloning(CONFIG, out, seed=3, steps=300)


def test_simulated_driving_windows_are_valid_ego_frame_scenarios_on_their_lanes():
    scen = simulated_driving(CONFIG, vehicles=2, duration_s=60, sim_seed=5)
    k = scen.current_step
    assert scen.n_steps == 100 and scen.dt_s == pytest.approx(0.1)
    assert torch.all(scen.x[:, EGO, k].abs() < 1e-4) and torch.all(scen.heading[:, EGO, k].abs() < 1e-5)
    assert torch.all(scen.agent_class[:, EGO] == AgentClass.EGO)
    assert bool((scen.map_kind == MapKind.LANE_CENTRE).any(dim=1).all())
    lanes = scen.map_kind == MapKind.LANE_CENTRE
    assert bool(torch.isfinite(scen.map_speed_limit_mps[lanes]).all())
    others = scen.valid[:, 1:]
    assert bool(others.any()), "the fleet perceives objects"
    assert bool(scen.filled[:, 1:].any()) and not bool((scen.filled & ~scen.valid).any())
    # detections sit on whole seconds; the steps between them are interpolated
    assert not bool(scen.filled[:, :, ::10].any())
    f = ObservationFeatures.from_config(CONFIG.section("policies")).along_log(scen)
    moving = scen.speed[:, EGO] > 1.0
    offset = f[..., FEATURES.index("lateral_offset_m")][moving].abs()
    assert float((offset < 0.3).float().mean()) > 0.9, "the route's lanes are where the ego drives"


def test_training_lowers_the_validation_loss_well_below_a_constant_action(trained):
    out, result = trained
    assert result.spec == "bc@1"
    assert result.val_loss < 0.25 * result.constant_val_loss
    assert result.val_loss < 0.1 * result.initial_val_loss
    assert result.val_loss_accel < 0.25 and result.val_loss_curvature < 0.5
    manifest = read_manifest(out, "bc", 1)
    assert manifest["sha256"] == result.sha256 == sha256_file(out / "bc@1.safetensors")
    assert manifest["features"] == list(CONFIG.section("policies")["bc"]["inputs"])
    on = manifest["trained_on"]
    assert on["vehicles"] == 6 and on["duration_s"] == 240 and on["seed"] == 3 and on["steps"] == 300
    assert on["n_scenarios"] == result.n_scenarios and on["config_version"] == CONFIG.version
    assert on["final_train_loss"] == pytest.approx(result.final_train_loss)
    assert result.weights_bytes < 100_000


def test_a_saved_policy_loads_back_bit_identical(trained, tmp_path):
    out, result = trained
    policy = get_policy(result.spec, CONFIG, checkpoint_dir=out)
    assert isinstance(policy, BehaviourCloningPolicy)
    save_checkpoint(policy, tmp_path, read_manifest(out, "bc", 1)["trained_on"])
    assert sha256_file(tmp_path / "bc@1.safetensors") == result.sha256
    assert json.loads((tmp_path / "bc@1.json").read_text()) == read_manifest(out, "bc", 1)


def test_training_is_deterministic_for_a_seed_and_versions_count_up(tmp_path):
    tiny = load_config(overrides={"policies": {"bc": {"vehicles": 2, "duration_s": 60, "batch": 64}}})
    first = train_behaviour_cloning(tiny, tmp_path / "a", seed=7, steps=20)
    again = train_behaviour_cloning(tiny, tmp_path / "b", seed=7, steps=20)
    other = train_behaviour_cloning(tiny, tmp_path / "a", seed=8, steps=20)
    assert first.sha256 == again.sha256
    assert (first.spec, other.spec) == ("bc@1", "bc@2") and other.sha256 != first.sha256
    with pytest.raises(ValueError, match="already exists"):
        train_behaviour_cloning(tiny, tmp_path / "a", seed=9, steps=1, version=2)


def straight_road(ego_y_m: float, speed_mps: float, limit_mps: float, steps: int) -> ScenarioBatch:
    """One straight lane along +x; the ego `ego_y_m` left of it at `speed_mps`; a parked car 200 m behind."""
    a, t = 2, steps
    x = torch.zeros(1, a, t)
    y = torch.zeros(1, a, t)
    speed = torch.zeros(1, a, t)
    x[0, 1], y[0, 0], speed[0, 0] = -200.0, ego_y_m, speed_mps
    map_xy = torch.tensor([[[[-50.0, 0.0], [150.0, 0.0], [350.0, 0.0], [550.0, 0.0]]]])
    return ScenarioBatch(x=x, y=y, heading=torch.zeros(1, a, t), speed=speed, vx=speed.clone(), vy=torch.zeros(1, a, t),
                         valid=torch.ones(1, a, t, dtype=torch.bool), filled=torch.zeros(1, a, t, dtype=torch.bool),
                         length=torch.tensor([[5.0, 4.6]]), width=torch.tensor([[2.0, 1.9]]),
                         agent_class=torch.tensor([[AgentClass.EGO, AgentClass.CAR]]), map_xy=map_xy,
                         map_valid=torch.ones(1, 1, 4, dtype=torch.bool),
                         map_kind=torch.tensor([[int(MapKind.LANE_CENTRE)]]),
                         map_speed_limit_mps=torch.tensor([[limit_mps]]), dt_s=0.1, current_step=0,
                         meta=[ScenarioMeta(scenario_id="straight")])


# Urban speeds: this test's 4-minute fleet has barely reached the highway (the default training does).
@pytest.mark.parametrize(("ego_y_m", "speed_mps", "limit_mps"), [(1.0, 8.0, 13.9), (-1.0, 13.0, 13.9),
                                                                  (0.8, 5.0, 8.0)])
def test_learned_policy_keeps_its_lane_on_a_straight_road(trained, ego_y_m, speed_mps, limit_mps):
    out, result = trained
    scen = straight_road(ego_y_m, speed_mps, limit_mps, steps=100)
    world = WorldModel(CONFIG)
    for spec in (result.spec, "rule@1"):
        policy = get_policy(spec, CONFIG, checkpoint_dir=out)
        actions = policy.plan(scen, world)
        assert actions.shape == (1, 100, 2)
        path = world.rollout(scen, actions[:, None])
        lateral = path.y[0, 0, EGO]
        assert float(lateral[-20:].abs().max()) < 0.4, f"{spec} ends {float(lateral[-1]):.2f} m off the lane"
        assert float(lateral.abs().max()) <= abs(ego_y_m) + 0.05, f"{spec} overshoots the lane"
        assert float(path.heading[0, 0, EGO].abs().max()) < 0.15


def test_plan_runs_where_the_scenario_lives():
    scen = replace(straight_road(0.5, 8.0, 13.9, steps=30), current_step=5)
    actions = get_policy("rule@1", CONFIG).plan(scen, WorldModel(CONFIG))
    assert actions.device == scen.device and actions.dtype == torch.float32
    assert torch.equal(actions[:, :5], torch.zeros(1, 5, 2))
    assert all(getattr(scen, n).shape == (1, 2, 30) for n in AGENT_FIELDS)


def test_train_command_writes_a_version_and_lists_it(tmp_path):
    app = typer.Typer()
    app.command("train")(train)
    app.command("policies")(policies)
    runner = CliRunner()
    done = runner.invoke(app, ["train", "--checkpoints", str(tmp_path), "--vehicles", "2", "--minutes", "1",
                               "--steps", "5", "--seed", "1"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("bc@1: validation loss")
    assert json.loads(done.output.strip().splitlines()[-1])["spec"] == "bc@1"
    listed = runner.invoke(app, ["policies", "--checkpoints", str(tmp_path)])
    assert listed.output.split() == ["logged@1", "rule@1", "bc@1"]
    clash = runner.invoke(app, ["train", "--checkpoints", str(tmp_path), "--vehicles", "2", "--minutes", "1",
                                "--steps", "1", "--version", "1"])
    assert clash.exit_code == 2 and "already exists" in clash.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_plans_on_cuda_match_the_cpu(trained):
    out, result = trained
    scen = straight_road(1.0, 8.0, 13.9, steps=100)
    world = WorldModel(CONFIG)
    for spec in (result.spec, "rule@1"):
        policy = get_policy(spec, CONFIG, checkpoint_dir=out)
        cpu = policy.plan(scen, world)
        gpu = policy.plan(scen.to("cuda"), world)
        assert gpu.device.type == "cuda"
        # float32 on both; the closed loop compounds rounding over 100 steps
        assert torch.allclose(cpu, gpu.cpu(), atol=1e-4, rtol=1e-3), spec


def test_cloning_samples_leave_out_stops_and_lane_changes():
    cruise = straight_road(0.0, 8.0, 13.9, steps=20)
    t = torch.arange(20) * 0.1
    cruise.x[0, EGO] = 8.0 * t
    stopping = straight_road(0.0, 8.0, 13.9, steps=20)
    stopping.speed[0, EGO] = (8.0 - 5.0 * t).clamp_min(0.0)
    changing = straight_road(0.0, 8.0, 13.9, steps=20)
    changing.x[0, EGO] = 8.0 * t
    changing.y[0, EGO, 10:] = 0.5  # half a metre off the lane centre from step 10
    scen = concat([cruise, replace(stopping, meta=[ScenarioMeta("stop")]),
                   replace(changing, meta=[ScenarioMeta("lane change")])])
    bc = CONFIG.section("policies")["bc"]
    features = ObservationFeatures.from_config(CONFIG.section("policies"))
    x, y, owner = cloning_samples(scen, features, ActionBounds.from_config(CONFIG), bc["stop_speed_mps"],
                                  bc["max_offset_m"])
    assert owner.tolist() == [0] * 19 + [2] * 10  # cruise: steps 0..18; stop: none; lane change: steps 0..9
    assert torch.allclose(y[:19], torch.zeros(19, 2), atol=1e-4)  # constant speed, straight: no action
    assert torch.allclose(x[:19, FEATURES.index("speed_mps")], torch.full((19,), 8.0))


def test_the_fleet_logs_box_centres_from_the_simulators_bumper_gaps():
    # The simulator sends bumper gaps (position_reference unset or BUMPER_GAP, its van 4.6 m, its truck 9 m);
    # the cloning windows place box centres: the gap plus the two half lengths, through criticality.box_offsets.
    logs, _ = run_fleet(3, 20, 5)
    sim = FleetSimulator(SimConfig(vehicles=3, duration_s=20, seed=5, incidents=[]))
    index = {v.vehicle_id: i for i, v in enumerate(sim.vehicles)}
    sent: list[list[np.ndarray]] = [[] for _ in sim.vehicles]
    for sec in sim.seconds():
        for topic, env in sec.messages:
            if topic == topics.PERCEPTION:
                sent[index[env.vehicle_id]].append(np.array([[o.rel_x_m, o.length_m] for o in env.perception.objects],
                                                            dtype=np.float64).reshape(-1, 2))
    seen = 0
    for log, raw in zip(logs, sent, strict=True):
        ego_l = 9.0 if log.kind == "truck" else 4.6
        assert len(log.objects) == len(raw)
        for obj, gap in zip(log.objects, raw, strict=True):
            np.testing.assert_allclose(obj[:, 2], gap[:, 0] + 0.5 * (gap[:, 1] + ego_l), rtol=0, atol=1e-9)
            seen += len(obj)
    assert seen > 0
