"""Behaviour cloning of the simulated fleet's driving: the `bc@<n>` policies.

`simulated_driving` runs the project's fleet simulator (no injected incidents: ordinary driving) and cuts
every vehicle's trace into windows of `window_s` as a `ScenarioBatch`: the 10 Hz ego pose, the 1 Hz
perceived objects placed in the world from the ego pose of their second and interpolated onto the
10 Hz grid between consecutive detections (`filled`), and the lane centres of the route the vehicle
drove (one polyline per road piece and lane, with the piece's speed limit). `cloning_samples` takes
the observation features at every logged step and, as targets, the inverse bicycle of the logged ego
(the action that moves step k to k+1), leaving out windows where the ego stops and steps off its lane
centre (lane changes): the reasons for those are not in the features. `train_behaviour_cloning` fits
the MLP with Adam on a window-wise split (past-motion dropout on the `accel_mps2` input), saves
`bc@<n>.safetensors` plus its manifest and returns the metrics.

This builds its windows itself rather than through `minilog.from_ground_truth`: that path crops the
full 220 m, 96-polyline map per moment for an 8 s search horizon, ~30x slower for hundreds of training
windows, where the route's own lanes are what the features need.

Losses are mean squared errors in standardised units: the acceleration error, and the curvature error
as a lateral-acceleration error `(v² + v_ref²) Δκ`, each divided by the training deviation of its
(weighted) target, so 1.0 is roughly what a constant action scores; `constant_val_loss` is the score of
the training mean action on the validation split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fleetloop import topics
from fleetloop.codec import pose_columns
from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.dynamics import inverse_bicycle
from fleetloop.replay.features import FEATURES, ObservationFeatures
from fleetloop.replay.maps import piece_line
from fleetloop.replay.minilog import TRUCK_SIZE_M, VAN_SIZE_M, position_reading
from fleetloop.replay.policies import (
    ActionBounds,
    BehaviourCloningPolicy,
    checkpoint_paths,
    learned_versions,
    save_checkpoint,
    sha256_file,
)
from fleetloop.replay.scenario import EGO, AgentClass, MapKind, ScenarioBatch, ScenarioMeta
from fleetloop.sim import FleetSimulator, SimConfig
from fleetloop.sim.world import CurveBank, Piece
from fleetloop.triggers import criticality

VERTICES = 17  # per lane polyline: every second point of the simulator's 33-point piece tables


@dataclass
class VehicleLog:
    """One simulated vehicle: 10 Hz ego pose (world frame, m, rad, m/s), per second the perceived
    objects `[n, 8]` (track id, class, rel x, rel y, rel vx, rel vy, length, width; rel x: the object
    box centre's distance ahead of the ego box centre, whatever reading the summary sent), the route
    position at the end of every second (m) and every route piece it was given, by start position."""

    kind: str
    t_ms: list[np.ndarray]
    x: list[np.ndarray]
    y: list[np.ndarray]
    heading: list[np.ndarray]
    speed: list[np.ndarray]
    objects: list[np.ndarray]
    s_end: list[float]
    pieces: dict[float, Piece]


def run_fleet(vehicles: int, duration_s: int, sim_seed: int) -> tuple[list[VehicleLog], CurveBank]:
    """Simulate `vehicles` for `duration_s` without incidents; one log per vehicle and the curve bank."""
    sim = FleetSimulator(SimConfig(vehicles=vehicles, duration_s=duration_s, seed=sim_seed, incidents=[]))
    logs = [VehicleLog(v.kind, [], [], [], [], [], [], [], {}) for v in sim.vehicles]
    index = {v.vehicle_id: i for i, v in enumerate(sim.vehicles)}
    for sec in sim.seconds():
        for topic, env in sec.messages:
            log = logs[index[env.vehicle_id]]
            if topic == topics.POSE:
                cols = pose_columns(env.pose)
                log.t_ms.append(cols["t_ms"].astype(np.int64))
                log.x.append(cols["x_m"].astype(np.float64))
                log.y.append(cols["y_m"].astype(np.float64))
                log.heading.append(cols["heading_rad"].astype(np.float64))
                log.speed.append(cols["speed_mps"].astype(np.float64))
            elif topic == topics.PERCEPTION:
                obj = np.array([[o.track_id, o.object_class, o.rel_x_m, o.rel_y_m, o.rel_vx_mps, o.rel_vy_mps,
                                 o.length_m, o.width_m] for o in env.perception.objects],
                               dtype=np.float64).reshape(-1, 8)
                # rel_x_m read by the summary's position reference (the simulator's: bumper gaps from its own
                # ego box) and turned into the box centre distance the windows place, as minilog does
                sim_ego_l = (TRUCK_SIZE_M if log.kind == "truck" else VAN_SIZE_M)[0]
                ego_l, bumper_gap = position_reading(env.perception, sim_ego_l)
                obj[:, 2] = criticality.box_offsets(obj[:, 2], obj[:, 6], ego_l, bumper_gap)
                log.objects.append(obj)
        for i, veh in enumerate(sim.vehicles):
            logs[i].s_end.append(float(sim.state.pos_m[i]))
            for piece in veh.pieces:
                logs[i].pieces.setdefault(piece.s0, piece)
    return logs, sim.bank


def _lane_polylines(pieces: list[Piece], bank: CurveBank, lane_width_m: float) -> tuple[np.ndarray, np.ndarray]:
    """World-frame lane centres `[L, VERTICES, 2]` of `pieces` (each lane of each piece, the first on the
    route's reference line and the others `lane_width_m` apart to its left) and their limits `[L]`."""
    lines = [piece_line(p, bank, lane * lane_width_m)[::2] for p in pieces for lane in range(p.lanes)]
    limits = [p.limit_mps for p in pieces for _ in range(p.lanes)]
    return np.asarray(lines).reshape(-1, VERTICES, 2), np.asarray(limits, dtype=np.float64)


def _agent_tracks(log: VehicleLog, sec0: int, seconds: int, slots: int) -> dict[str, np.ndarray]:
    """World-frame detections of the objects seen in seconds `sec0 .. sec0 + seconds` (one past the
    window, to interpolate its last second), `[slots, seconds + 1]` per field, plus the detection mask."""
    n_sec = len(log.objects)
    ids: list[int] = []
    for j in range(sec0, min(sec0 + seconds + 1, n_sec)):
        ids += [int(t) for t in log.objects[j][:, 0] if int(t) not in ids]
    ids = ids[:slots]
    shape = (slots, seconds + 1)
    out = {k: np.zeros(shape) for k in ("x", "y", "heading", "speed", "vx", "vy", "length", "width", "cls")}
    out["seen"] = np.zeros(shape, dtype=bool)
    for m in range(seconds + 1):
        j = sec0 + m
        if j >= n_sec or not len(log.objects[j]):
            continue
        obj = log.objects[j]
        slot = np.array([ids.index(int(t)) if int(t) in ids else -1 for t in obj[:, 0]])
        obj, slot = obj[slot >= 0], slot[slot >= 0]
        ex, ey, eh, ev = log.x[j][0], log.y[j][0], log.heading[j][0], log.speed[j][0]
        c, s = math.cos(eh), math.sin(eh)
        along, lateral = ev + obj[:, 4], obj[:, 5]  # world velocity in the ego's axes (ego yaw rate ignored)
        out["x"][slot, m] = ex + c * obj[:, 2] - s * obj[:, 3]
        out["y"][slot, m] = ey + s * obj[:, 2] + c * obj[:, 3]
        out["vx"][slot, m] = c * along - s * lateral
        out["vy"][slot, m] = s * along + c * lateral
        out["speed"][slot, m] = np.hypot(along, lateral)
        out["heading"][slot, m] = np.where(out["speed"][slot, m] > 0.1, np.arctan2(out["vy"][slot, m],
                                                                                   out["vx"][slot, m]), eh)
        out["length"][slot, m], out["width"][slot, m], out["cls"][slot, m] = obj[:, 6], obj[:, 7], obj[:, 1]
        out["seen"][slot, m] = True
    return out


def _window(log: VehicleLog, bank: CurveBank, sec0: int, seconds: int, current_step: int, bc: Mapping[str, Any],
            scenario_id: str) -> dict[str, Any]:
    """One window of `seconds` as numpy arrays in the ego frame of `current_step` (see `simulated_driving`)."""
    steps = 10 * seconds
    ex = np.concatenate(log.x[sec0:sec0 + seconds])
    ey = np.concatenate(log.y[sec0:sec0 + seconds])
    eh = np.concatenate(log.heading[sec0:sec0 + seconds])
    ev = np.concatenate(log.speed[sec0:sec0 + seconds])
    ox, oy, oh = ex[current_step], ey[current_step], eh[current_step]
    c, s = math.cos(oh), math.sin(oh)

    def frame(px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return c * (px - ox) + s * (py - oy), -s * (px - ox) + c * (py - oy)

    slots = int(bc["max_agents"]) - 1
    tr = _agent_tracks(log, sec0, seconds, slots)
    # 10 Hz grid: step k = 10 m + r lies between detections m and m + 1; valid when r == 0 and m was seen,
    # or both ends were seen (then linearly interpolated and `filled`).
    k = np.arange(steps)
    m, r = k // 10, (k % 10) / 10.0
    seen0, seen1 = tr["seen"][:, m], tr["seen"][:, m + 1]
    valid = seen0 & ((r == 0) | seen1)
    filled = valid & (r > 0)

    def lerp(name: str) -> np.ndarray:
        a, b = tr[name][:, m], tr[name][:, m + 1]
        return np.where(r > 0, a + (b - a) * r, a)

    ax, ay = frame(lerp("x"), lerp("y"))
    avx, avy = lerp("vx"), lerp("vy")
    hc = np.where(r > 0, np.cos(tr["heading"][:, m]) * (1 - r) + np.cos(tr["heading"][:, m + 1]) * r,
                  np.cos(tr["heading"][:, m]))
    hs = np.where(r > 0, np.sin(tr["heading"][:, m]) * (1 - r) + np.sin(tr["heading"][:, m + 1]) * r,
                  np.sin(tr["heading"][:, m]))
    ah = np.arctan2(hs, hc) - oh
    size = np.where(tr["seen"], tr["length"], 0.0).max(axis=1), np.where(tr["seen"], tr["width"], 0.0).max(axis=1)
    cls = np.where(tr["seen"], tr["cls"], 0.0).max(axis=1)

    ego_x, ego_y = frame(ex, ey)
    rows = {"x": (ego_x, ax), "y": (ego_y, ay), "heading": (eh - oh, ah), "speed": (ev, lerp("speed")),
            "vx": (c * ev * np.cos(eh) + s * ev * np.sin(eh), c * avx + s * avy),
            "vy": (-s * ev * np.cos(eh) + c * ev * np.sin(eh), -s * avx + c * avy)}
    out: dict[str, Any] = {}
    for name, (ego, agents) in rows.items():
        arr = np.concatenate([ego[None], agents], axis=0)
        if name == "heading":
            arr = np.remainder(arr + np.pi, 2 * np.pi) - np.pi
        out[name] = np.where(np.concatenate([np.ones((1, steps), bool), valid]), arr, 0.0)
    out["valid"] = np.concatenate([np.ones((1, steps), bool), valid])
    out["filled"] = np.concatenate([np.zeros((1, steps), bool), filled])
    ego_len, ego_wid = bc["ego_size_m"][log.kind]
    out["length"] = np.concatenate([[ego_len], size[0]])
    out["width"] = np.concatenate([[ego_wid], size[1]])
    out["agent_class"] = np.concatenate([[int(AgentClass.EGO)], cls.astype(np.int64)])

    s_lo = (log.s_end[sec0 - 1] if sec0 > 0 else 0.0) - 20.0
    s_hi = log.s_end[sec0 + seconds - 1] + 150.0
    pieces = [p for s0, p in sorted(log.pieces.items()) if s0 < s_hi and p.s1 > s_lo]
    lines, limits = _lane_polylines(pieces, bank, float(bc["lane_width_m"]))
    lx, ly = frame(lines[..., 0], lines[..., 1])
    out["map_xy"], out["map_limit"] = np.stack([lx, ly], axis=-1), limits
    out["meta"] = ScenarioMeta(scenario_id=scenario_id, t0_ms=int(log.t_ms[sec0][0]), origin_x_m=float(ox),
                               origin_y_m=float(oy), origin_heading_rad=float(oh), source="simulator")
    return out


def simulated_driving(config: ReplayConfig, vehicles: int, duration_s: int, sim_seed: int,
                      device: torch.device | str = "cpu") -> ScenarioBatch:
    """The simulated fleet's ordinary driving as windows of `policies.bc.window_s` (see the module
    docstring); `current_step` from `scenario.history_s`. Windows of vehicles that stood still
    throughout are left out."""
    bc = config.section("policies")["bc"]
    dt_s = float(config.section("scenario")["dt_s"])
    seconds = int(round(float(bc["window_s"])))
    current_step = int(round(float(config.section("scenario")["history_s"]) / dt_s))
    logs, bank = run_fleet(vehicles, duration_s, sim_seed)
    windows = []
    for i, log in enumerate(logs):
        for sec0 in range(0, len(log.x) - seconds + 1, seconds):
            if max(float(v.max()) for v in log.speed[sec0:sec0 + seconds]) < float(bc["min_speed_mps"]):
                continue
            windows.append(_window(log, bank, sec0, seconds, current_step, bc, f"sim-{sim_seed}-v{i}-s{sec0}"))
    if not windows:
        raise ValueError(f"the simulated fleet ({vehicles} vehicles, {duration_s} s) never moved: no windows")
    n_lines = max(len(w["map_limit"]) for w in windows)
    s = len(windows)
    map_xy = np.zeros((s, n_lines, VERTICES, 2))
    map_valid = np.zeros((s, n_lines, VERTICES), dtype=bool)
    map_kind = np.zeros((s, n_lines), dtype=np.int64)
    map_limit = np.full((s, n_lines), np.nan)
    for j, w in enumerate(windows):
        n = len(w["map_limit"])
        map_xy[j, :n], map_valid[j, :n], map_kind[j, :n], map_limit[j, :n] = \
            w["map_xy"], True, int(MapKind.LANE_CENTRE), w["map_limit"]

    def stack(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.stack([w[name] for w in windows]), dtype=dtype, device=device)

    f32 = torch.float32
    scen = ScenarioBatch(
        **{name: stack(name, f32) for name in ("x", "y", "heading", "speed", "vx", "vy", "length", "width")},
        valid=stack("valid", torch.bool), filled=stack("filled", torch.bool),
        agent_class=stack("agent_class", torch.int64),
        map_xy=torch.as_tensor(map_xy, dtype=f32, device=device),
        map_valid=torch.as_tensor(map_valid, device=device),
        map_kind=torch.as_tensor(map_kind, device=device),
        map_speed_limit_mps=torch.as_tensor(map_limit, dtype=f32, device=device),
        dt_s=dt_s, current_step=current_step, meta=[w["meta"] for w in windows])
    scen.validate()
    return scen


def cloning_samples(scen: ScenarioBatch, features: ObservationFeatures, bounds: ActionBounds,
                    stop_speed_mps: float, max_offset_m: float,
                    chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features `[N, F]`, target actions `[N, 2]` (m/s², 1/m), scenario index `[N]`) at every logged
    step k < T-1 whose inverse-bicycle action is valid, in windows where the ego never drops below
    `stop_speed_mps`, where it is within `max_offset_m` of its lane centre. Targets are clamped to just
    inside the action bounds (the tanh output never reaches them)."""
    feats, targets, owner = [], [], []
    for lo in range(0, scen.n_scenarios, chunk):
        part = scen.select(range(lo, min(lo + chunk, scen.n_scenarios)))
        f = features.along_log(part)                                                # [s, T, F]
        accel, curvature, ok = inverse_bicycle(part.x[:, EGO], part.y[:, EGO], part.heading[:, EGO],
                                               part.speed[:, EGO], part.valid[:, EGO], part.dt_s)
        driving = torch.where(part.valid[:, EGO], part.speed[:, EGO], math.inf).min(dim=1).values >= stop_speed_mps
        keep = ok & driving[:, None] & (f[..., FEATURES.index("lateral_offset_m")].abs() <= max_offset_m)
        keep[:, -1] = False
        idx = torch.arange(lo, lo + part.n_scenarios, device=scen.device)[:, None].expand_as(keep)
        feats.append(f[keep])
        targets.append(torch.stack([accel, curvature], dim=-1)[keep])
        owner.append(idx[keep])
    y = torch.cat(targets)
    low = torch.tensor(bounds.low(), device=y.device)
    high = torch.tensor(bounds.high(), device=y.device)
    mid, half = (high + low) / 2, (high - low) / 2 * 0.999
    return torch.cat(feats), torch.minimum(torch.maximum(y, mid - half), mid + half), torch.cat(owner)


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the policy spec, its files and the losses (standardised MSE)."""

    spec: str
    manifest_path: str
    weights_path: str
    sha256: str
    weights_bytes: int
    n_scenarios: int
    n_train_samples: int
    n_val_samples: int
    steps: int
    final_train_loss: float
    val_loss: float
    val_loss_accel: float
    val_loss_curvature: float
    constant_val_loss: float
    initial_val_loss: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_behaviour_cloning(config: ReplayConfig, out_dir: Path | str, seed: int, vehicles: int | None = None,
                            duration_s: int | None = None, steps: int | None = None, version: int | None = None,
                            sim_seed: int | None = None) -> TrainResult:
    """Train `bc@<version>` (default: one past the newest in `out_dir`) on the simulated fleet and save
    it there. Arguments left None come from `policies.bc`. Deterministic for (`seed`, `sim_seed`, config)."""
    section = config.section("policies")
    bc = section["bc"]
    vehicles = int(bc["vehicles"] if vehicles is None else vehicles)
    duration_s = int(bc["duration_s"] if duration_s is None else duration_s)
    steps = int(bc["steps"] if steps is None else steps)
    sim_seed = int(bc["sim_seed"] if sim_seed is None else sim_seed)
    out = Path(out_dir)
    version = version if version is not None else max(learned_versions(out, "bc"), default=0) + 1
    if checkpoint_paths(out, "bc", version)[1].exists():
        raise ValueError(f"bc@{version} already exists in {out}; pick another version")
    features = ObservationFeatures.from_config(section)
    bounds = ActionBounds.from_config(config)

    scen = simulated_driving(config, vehicles, duration_s, sim_seed)
    x, y, owner = cloning_samples(scen, features, bounds, float(bc["stop_speed_mps"]), float(bc["max_offset_m"]))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(scen.n_scenarios, generator=gen)
    n_val = max(1, int(round(float(bc["val_fraction"]) * scen.n_scenarios)))
    is_val = torch.zeros(scen.n_scenarios, dtype=torch.bool)
    is_val[order[:n_val]] = True
    val = is_val[owner]
    x_tr, y_tr, x_val, y_val = x[~val], y[~val], x[val], y[val]
    if len(x_tr) == 0 or len(x_val) == 0:
        raise ValueError(f"too little driving to train on: {len(x_tr)} training and {len(x_val)} validation samples")
    # Curvature errors count as lateral-acceleration errors, (v² + v_ref²) Δκ: at speed what matters is
    # the lateral acceleration they cause, at a crawl the path; each component is then divided by the
    # deviation of its weighted target on the training split.
    v_ref = float(bc["curvature_weight_speed_mps"])
    speed_col = FEATURES.index("speed_mps")

    def weight(f: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.ones_like(f[:, speed_col]), f[:, speed_col] ** 2 + v_ref ** 2], dim=-1)

    w_tr, w_val = weight(x_tr), weight(x_val)
    scale = (y_tr * w_tr).std(dim=0).clamp_min(1e-6)

    def loss_of(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor,
                component: slice = slice(None)) -> torch.Tensor:
        return (((pred - target) * w / scale)[:, component] ** 2).mean()

    policy = BehaviourCloningPolicy(features, bounds, bc["hidden"], bc["inputs"], version=version)
    policy.reset_parameters(gen)
    policy.set_normalisation(x_tr)
    opt = torch.optim.Adam(policy.parameters(), lr=float(bc["lr"]), weight_decay=float(bc["weight_decay"]))
    with torch.no_grad():
        initial_val = float(loss_of(policy.act(x_val), y_val, w_val))
        constant_val = float(loss_of(y_tr.mean(dim=0).expand_as(y_val), y_val, w_val))
    batch = min(int(bc["batch"]), len(x_tr))
    policy.train()
    # Past-motion dropout (ChauffeurNet, Bansal et al. 2018): the last step's acceleration predicts the
    # next one so well that a net left alone copies it and, closed loop, never stops accelerating; hiding
    # it from a share of the samples makes the net read speed against the limit as well.
    accel_col = FEATURES.index("accel_mps2")
    p_drop = float(bc["past_motion_dropout"])
    for _ in range(steps):
        pick = torch.randint(len(x_tr), (batch,), generator=gen)
        xb = x_tr[pick].clone()
        hide = torch.rand(batch, generator=gen) < p_drop
        xb[hide, accel_col] = 0.0
        loss = loss_of(policy.act(xb), y_tr[pick], w_tr[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    with torch.no_grad():
        train_loss = float(loss_of(policy.act(x_tr), y_tr, w_tr))
        pred_val = policy.act(x_val)
        val_loss = float(loss_of(pred_val, y_val, w_val))
        val_parts = [float(loss_of(pred_val, y_val, w_val, slice(i, i + 1))) for i in range(2)]
    trained_on = {"source": "fleet simulator, no injected incidents", "vehicles": vehicles, "duration_s": duration_s,
                  "sim_seed": sim_seed, "window_s": float(bc["window_s"]), "n_scenarios": scen.n_scenarios,
                  "n_val_scenarios": n_val, "n_train_samples": len(x_tr), "n_val_samples": len(x_val),
                  "seed": seed, "config_version": config.version, "steps": steps, "batch": batch,
                  "lr": float(bc["lr"]), "loss_scale": scale.tolist(), "curvature_weight_speed_mps": v_ref,
                  "final_train_loss": train_loss,
                  "val_loss": val_loss, "val_loss_accel": val_parts[0], "val_loss_curvature": val_parts[1],
                  "constant_val_loss": constant_val, "initial_val_loss": initial_val}
    manifest = save_checkpoint(policy, out, trained_on)
    weights, _ = checkpoint_paths(out, "bc", version)
    return TrainResult(spec=policy.spec, manifest_path=str(manifest), weights_path=str(weights),
                       sha256=sha256_file(weights), weights_bytes=weights.stat().st_size,
                       n_scenarios=scen.n_scenarios, n_train_samples=len(x_tr), n_val_samples=len(x_val),
                       steps=steps, final_train_loss=train_loss, val_loss=val_loss, val_loss_accel=val_parts[0],
                       val_loss_curvature=val_parts[1], constant_val_loss=constant_val, initial_val_loss=initial_val)
