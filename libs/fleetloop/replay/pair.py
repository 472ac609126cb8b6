"""The ScenarioSolutionPair: one replayed scenario, its baseline and the Pareto front the search found,
as a compact protobuf message that can be read back into tensors (`pair_to_scenario`) and replayed again.

Build one with `build_pair` from a `ScenarioBatch`, the index of the scenario in it, the ego trajectories
(`ego_trajectories` cuts them out of a `Rollout`), the per-term cost change and what the search reports.
Tracks are coded by `fleetloop.replay.codec` (fixed point, error <= step / 2, steps in the pair).

What a pair does not carry, so `pair_to_scenario` rebuilds it: agents' frame velocities (vx, vy =
speed · (cos, sin) heading), agent slots with no valid step (empty: zeros, class NONE), the on-board
planner's path (`planner_xy` is None), padding polylines (the carried ones come first, in slot order).
Trajectories are coded from `current_step` on (earlier steps repeat the log by the Rollout convention)
and read back with the ego's log before them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from google.protobuf.message import DecodeError

from fleetloop.replay.codec import CHANNELS, Quantisation, as_numpy, decode_tracks, encode_tracks
from fleetloop.replay.config import ReplayConfig
from fleetloop.replay.scenario import (
    EGO,
    AgentClass,
    AgentModel,
    MapKind,
    Rollout,
    ScenarioBatch,
    ScenarioError,
    ScenarioMeta,
)
from fleetloop.v1 import replay_pb2

FORMAT_VERSION = 1
ZLIB_MAGIC = 0x78           # first byte of every zlib stream (deflate, 32 KiB window)
PAIR_MAGIC = 0x08           # first byte of a serialised pair: field 1 (format_version, always set) as a varint
MAX_PAIR_BYTES = 64 << 20   # refuse to inflate beyond this: a pair is tens of kB, so more is damage or a bomb
N_OBJECTIVES = 4   # safety, comfort, efficiency, compliance (fleetloop.replay.costs.OBJECTIVES)
PATH_TOLERANCE_M = 0.1     # along-path slack when matching a point to the baseline path (float noise, not a threshold)
OTHER_CLASSES = frozenset(c for c in AgentClass if c not in (AgentClass.NONE, AgentClass.EGO))


@dataclass(frozen=True)
class Robustness:
    """The solution re-validated under perturbed scenes: fraction won against the baseline, the worst total
    cost change (solution − baseline), how many perturbed scenes and of which kinds, and the fraction where
    the solution passes every hard gate."""

    win_rate: float
    worst_cost_delta: float
    perturbations: int
    kinds: tuple[str, ...] = ()
    gate_pass_rate: float = math.nan


@dataclass(frozen=True)
class Provenance:
    """What produced the pair: policy name@version, search and replay config versions, seed, torch device,
    and the caller's clock (epoch ms) at build time."""

    policy_version: str
    search_config_version: str
    seed: int
    device: str
    replay_config_version: str
    created_ms: int = 0


@dataclass(frozen=True)
class Decision:
    """One way the solution drives differently from the baseline.

    `kind` and its numbers (times in s after the current step, NaN where the event does not happen):
    - `brake_onset`: value = how much earlier the solution starts braking (s, < 0 later); baseline_value /
      solution_value = each one's onset time.
    - `lateral_offset`: value = the largest offset of the solution from the baseline path (m, + left);
      baseline_value = the time of that offset; solution_value = the mean offset (m, + left).
    - `speed`: value = solution − baseline mean speed (m/s); baseline_value / solution_value = the means.
    - `stop`: value = solution's stop time minus the baseline's (NaN if only one stops); baseline_value /
      solution_value = each one's first step at standstill.
    """

    kind: str
    text: str
    value: float
    unit: str
    baseline_value: float = math.nan
    solution_value: float = math.nan


@dataclass(frozen=True)
class DecisionThresholds:
    """When a difference is worth a sentence (replay.yaml `codec.decisions`, the rationale is there)."""

    brake_decel_mps2: float
    min_time_s: float
    min_lateral_m: float
    min_speed_mps: float
    stop_speed_mps: float

    @classmethod
    def from_config(cls, config: ReplayConfig) -> DecisionThresholds:
        return cls(**{k: float(v) for k, v in config.section("codec")["decisions"].items()})


@dataclass
class PairTrajectories:
    """Ego trajectories read back from a pair: `baseline` maps x, y, heading, speed, valid to [T] tensors,
    `front` to [K, T]; `solution_index` picks the solution in the front; `t_s` [T] is each step's time
    after step 0 (s); `objectives` [K, 4] (NaN where the pair has none)."""

    baseline: dict[str, torch.Tensor]
    front: dict[str, torch.Tensor]
    solution_index: int
    t_s: torch.Tensor
    objectives: torch.Tensor


def ego_trajectories(rollout: Rollout, scenario: int,
                     candidates: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
    """The ego's x, y, heading, speed and valid `[K, T]` of the given candidates of one scenario of a rollout."""
    idx = torch.as_tensor(candidates, dtype=torch.long, device=rollout.x.device)
    return {name: getattr(rollout, name)[scenario].index_select(0, idx)[:, EGO] for name in CHANNELS + ("valid",)}


def _trajectory_rows(traj: Mapping[str, torch.Tensor], rows: int | None, n_steps: int, what: str,
                     sid: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Check a trajectory mapping and return its channels and valid as numpy [K, T] (K = 1 for [T] input)."""
    missing = [c for c in CHANNELS if c not in traj]
    if missing:
        raise ScenarioError(f"scenario {sid}: {what} lacks {missing}")
    want = (n_steps,) if rows is None else (rows, n_steps)
    out = {}
    for name in CHANNELS + (("valid",) if "valid" in traj else ()):
        arr = as_numpy(traj[name])
        if tuple(arr.shape) != want:
            raise ScenarioError(f"scenario {sid}: {what} {name} has shape {tuple(arr.shape)}, expected {want}")
        out[name] = arr.reshape(-1, n_steps)
    valid = out.pop("valid").astype(bool) if "valid" in out else np.ones_like(out["x"], dtype=bool)
    return out, valid


def _term_delta(name: str, value: float | tuple[float, float]) -> replay_pb2.TermDelta:
    if isinstance(value, tuple | list):
        base, sol = (float(v) for v in value)
        return replay_pb2.TermDelta(name=name, delta=sol - base, baseline=base, solution=sol)
    return replay_pb2.TermDelta(name=name, delta=float(value))


def build_pair(scen: ScenarioBatch, index: int, baseline: Mapping[str, torch.Tensor],
               front: Mapping[str, torch.Tensor], solution_index: int,
               cost_delta: Mapping[str, float | tuple[float, float]],
               config: ReplayConfig, provenance: Provenance, robustness: Robustness | None = None,
               decisions: Sequence[Decision] | None = None, front_objectives: torch.Tensor | None = None,
               baseline_triggers: Mapping[str, int] | None = None,
               solution_triggers: Mapping[str, int] | None = None) -> replay_pb2.ScenarioSolutionPair:
    """The pair of scenario `index` of `scen`.

    `baseline`: x, y, heading, speed (m, m, rad, m/s) as [T] tensors, optionally `valid` [T] bool — the ego
    rolled out with the baseline actions. `front`: the same keys as [K, T] (the Pareto front, K >= 1);
    `solution_index` in [0, K) (a solution outside the front goes into `front` too). `cost_delta`: per cost
    term, either solution − baseline or the pair (baseline value, solution value), in the term's unit
    (`SearchResult.cost_change[i]` as it is).
    `decisions`: None computes them with `describe_decisions` and `codec.decisions` of `config`.
    `front_objectives` [K, 4] (safety, comfort, efficiency, compliance) when known. Trigger counts: fleet
    trigger name -> events on the baseline / solution rollout. Raises ScenarioError naming the scenario
    and the fault (bad shapes, NaN at a valid step, unknown agent class or map kind, index out of range).
    """
    if not 0 <= index < scen.n_scenarios:
        raise ScenarioError(f"scenario index {index} outside the batch of {scen.n_scenarios}")
    one = scen.select([index])
    one.validate()
    meta = one.meta[0]
    sid = meta.scenario_id
    t, cur = one.n_steps, one.current_step
    codec = config.section("codec")
    quant = Quantisation.from_config(codec)
    quant.check()
    order = int(codec["delta_order"])
    base, base_valid = _trajectory_rows(baseline, None, t, "baseline", sid)
    k = int(as_numpy(front["x"]).shape[0]) if "x" in front and as_numpy(front["x"]).ndim == 2 else -1
    if k < 1:
        raise ScenarioError(f"scenario {sid}: front x must be [K, T] with K >= 1")
    fr, fr_valid = _trajectory_rows(front, k, t, "front", sid)
    if not 0 <= solution_index < k:
        raise ScenarioError(f"scenario {sid}: solution_index {solution_index} outside the front of {k}")
    objectives = None
    if front_objectives is not None:
        objectives = as_numpy(front_objectives)
        if objectives.shape != (k, N_OBJECTIVES):
            raise ScenarioError(f"scenario {sid}: front_objectives has shape {objectives.shape}, "
                                f"expected {(k, N_OBJECTIVES)}")
    classes = as_numpy(one.agent_class[0])
    present = as_numpy(one.valid[0]).any(axis=1)
    present[EGO] = False
    slots = np.flatnonzero(present).tolist()
    unknown = np.flatnonzero(present & ~np.isin(classes, list(OTHER_CLASSES)))
    if unknown.size:
        raise ScenarioError(f"scenario {sid}: agent {int(unknown[0])} has unknown class {int(classes[unknown[0]])}")
    kinds = as_numpy(one.map_kind[0])
    polylines = np.flatnonzero(kinds != 0).tolist()
    unknown = np.flatnonzero((kinds != 0) & ~np.isin(kinds, list(MapKind)))
    if unknown.size:
        raise ScenarioError(f"scenario {sid}: map polyline {int(unknown[0])} has unknown kind {int(kinds[unknown[0]])}")

    def tracks(channels: Mapping[str, Any], valid: Any, what: str, first: int = 0, filled: Any = None) -> list:
        try:
            return encode_tracks(channels, valid, quant, order, first_step=first, filled=filled, name=what)
        except ValueError as exc:
            raise ScenarioError(f"scenario {sid}: {exc}") from None

    agent_ch = {c: getattr(one, c)[0] for c in CHANNELS}
    valid, filled = one.valid[0], one.filled[0]
    all_tracks = tracks(agent_ch, valid, "agent", filled=filled)
    sel = torch.as_tensor(polylines, dtype=torch.long, device=one.device)
    xy = one.map_xy[0].index_select(0, sel)
    map_tracks = tracks({"x": xy[..., 0], "y": xy[..., 1]}, one.map_valid[0].index_select(0, sel), "map polyline")
    base_track = tracks({c: v[:, cur:] for c, v in base.items()}, base_valid[:, cur:], "baseline", cur)[0]
    front_tracks = tracks({c: v[:, cur:] for c, v in fr.items()}, fr_valid[:, cur:], "front", cur)
    if decisions is None:
        decisions = describe_decisions({**{c: torch.as_tensor(v[0]) for c, v in base.items()},
                                        "valid": torch.as_tensor(base_valid[0])},
                                       {**{c: torch.as_tensor(v[solution_index]) for c, v in fr.items()},
                                        "valid": torch.as_tensor(fr_valid[solution_index])},
                                       one.dt_s, DecisionThresholds.from_config(config), start_step=cur)
    length, width = as_numpy(one.length[0]), as_numpy(one.width[0])
    speed_limit = as_numpy(one.map_speed_limit_mps[0])
    # on the quantisation grid, like every other coded value, so a pair rebuilt from a pair is the same bytes
    ego_now = {c: round(float(getattr(one, c)[0, EGO, cur]) / quant.step(c)) * quant.step(c) for c in CHANNELS}
    problem = replay_pb2.ScenarioProblem(
        scenario_id=sid, case_id=meta.case_id, vehicle_id=meta.vehicle_id, t0_ms=meta.t0_ms, dt_s=one.dt_s,
        n_steps=t, current_step=cur, n_agent_slots=one.n_agents, n_vertex_slots=int(one.map_xy.shape[2]),
        n_polyline_slots=int(one.map_xy.shape[1]),
        city=meta.city, origin_x_m=meta.origin_x_m, origin_y_m=meta.origin_y_m,
        origin_heading_rad=meta.origin_heading_rad, road_type=meta.road_type, weather=meta.weather,
        light=meta.light, tags=list(meta.tags), family=meta.family, answer=meta.answer,
        agent_model=int(meta.agent_model), source=meta.source,
        initial=replay_pb2.EgoState(x_m=ego_now["x"], y_m=ego_now["y"], heading_rad=ego_now["heading"],
                                    speed_mps=ego_now["speed"]),
        ego_length_m=float(length[EGO]), ego_width_m=float(width[EGO]), ego_log=all_tracks[EGO],
        agents=[replay_pb2.Agent(slot=a, object_class=int(classes[a]), length_m=float(length[a]),
                                 width_m=float(width[a]), track=all_tracks[a]) for a in slots],
        map=[replay_pb2.MapPolyline(kind=int(kinds[p]), speed_limit_mps=float(speed_limit[p]), vertices=trk)
             for p, trk in zip(polylines, map_tracks, strict=True)])
    pair = replay_pb2.ScenarioSolutionPair(
        format_version=FORMAT_VERSION, quantisation=quant.to_proto(), delta_order=order, problem=problem,
        baseline=base_track, solution_index=solution_index,
        front=[replay_pb2.ParetoTrajectory(trajectory=trk, objectives=[] if objectives is None else
                                           objectives[i].tolist()) for i, trk in enumerate(front_tracks)],
        cost_delta=[_term_delta(n, v) for n, v in cost_delta.items()],
        decisions=[replay_pb2.Decision(kind=d.kind, text=d.text, value=d.value, unit=d.unit,
                                       baseline_value=d.baseline_value, solution_value=d.solution_value)
                   for d in decisions],
        provenance=replay_pb2.Provenance(policy_version=provenance.policy_version,
                                         search_config_version=provenance.search_config_version,
                                         seed=provenance.seed, device=provenance.device,
                                         replay_config_version=provenance.replay_config_version,
                                         created_ms=provenance.created_ms))
    pair.baseline_triggers.update({n: int(c) for n, c in (baseline_triggers or {}).items()})
    pair.solution_triggers.update({n: int(c) for n, c in (solution_triggers or {}).items()})
    if robustness is not None:
        pair.robustness.CopyFrom(replay_pb2.Robustness(win_rate=robustness.win_rate,
                                                       worst_cost_delta=robustness.worst_cost_delta,
                                                       perturbations=robustness.perturbations,
                                                       kinds=list(robustness.kinds),
                                                       gate_pass_rate=robustness.gate_pass_rate))
    return pair


def pair_to_scenario(pair: replay_pb2.ScenarioSolutionPair,
                     device: torch.device | str = "cpu") -> tuple[ScenarioBatch, PairTrajectories]:
    """Read a pair back: a one-scenario `ScenarioBatch` (validated) and the ego trajectories, on `device`.
    Values agree with what was built within the pair's quantisation steps / 2. Raises ScenarioError on an
    unknown format version or a damaged track."""
    prob = pair.problem
    sid = prob.scenario_id
    if pair.format_version != FORMAT_VERSION:
        raise ScenarioError(f"scenario {sid}: pair format version {pair.format_version} is not {FORMAT_VERSION}")
    t, a_slots, cur = prob.n_steps, prob.n_agent_slots, prob.current_step
    try:
        quant = Quantisation.from_proto(pair.quantisation)
        order = pair.delta_order

        def dec(tracks: Sequence[replay_pb2.Track], channels: Sequence[str], steps: int, what: str) -> Any:
            return decode_tracks(tracks, channels, quant, order, n_steps=steps, name=what)

        agents = dec([prob.ego_log] + [ag.track for ag in prob.agents], CHANNELS, t, "agent")
        polys = dec([p.vertices for p in prob.map], ("x", "y"), prob.n_vertex_slots, "map polyline")
        trajs = dec([pair.baseline] + [f.trajectory for f in pair.front], CHANNELS, t - cur, "trajectory")
    except ValueError as exc:
        raise ScenarioError(f"scenario {sid}: {exc}") from None
    slots = np.array([EGO] + [ag.slot for ag in prob.agents], dtype=np.int64)
    if len(set(slots.tolist())) != slots.size or (slots[1:] < 1).any() or (slots >= a_slots).any():
        raise ScenarioError(f"scenario {sid}: agent slots {slots.tolist()} do not fit {a_slots} slots")

    def agent_array(values: np.ndarray, dtype: np.dtype) -> torch.Tensor:
        out = np.zeros((a_slots,) + values.shape[1:], dtype=dtype)
        out[slots] = values
        return torch.as_tensor(out, device=device)[None]

    ch = {c: agent_array(agents.channels[c], np.float32) for c in CHANNELS}
    valid = agent_array(agents.valid, np.bool_)
    size = np.array([[prob.ego_length_m, prob.ego_width_m]] + [[ag.length_m, ag.width_m] for ag in prob.agents],
                    dtype=np.float32)
    classes = np.array([AgentClass.EGO] + [ag.object_class for ag in prob.agents], dtype=np.int64)
    # padding polylines (kind 0, no valid vertex, NaN speed limit) go back after the carried ones
    n_poly, v_slots = max(prob.n_polyline_slots, len(prob.map)), prob.n_vertex_slots
    map_xy = np.zeros((n_poly, v_slots, 2), dtype=np.float32)
    map_valid = np.zeros((n_poly, v_slots), dtype=bool)
    map_kind = np.zeros(n_poly, dtype=np.int64)
    speed_limit = np.full(n_poly, np.nan, dtype=np.float32)
    used = len(prob.map)
    map_xy[:used] = np.stack([polys.channels["x"], polys.channels["y"]], axis=-1).reshape(used, v_slots, 2)
    map_valid[:used] = polys.valid
    map_kind[:used] = [p.kind for p in prob.map]
    speed_limit[:used] = [p.speed_limit_mps for p in prob.map]
    scen = ScenarioBatch(
        x=ch["x"], y=ch["y"], heading=ch["heading"], speed=ch["speed"],
        vx=ch["speed"] * torch.cos(ch["heading"]) * valid, vy=ch["speed"] * torch.sin(ch["heading"]) * valid,
        valid=valid, filled=agent_array(agents.filled, np.bool_),
        length=agent_array(size[:, 0], np.float32), width=agent_array(size[:, 1], np.float32),
        agent_class=agent_array(classes, np.int64),
        map_xy=torch.as_tensor(map_xy, device=device)[None], map_valid=torch.as_tensor(map_valid, device=device)[None],
        map_kind=torch.as_tensor(map_kind, device=device)[None],
        map_speed_limit_mps=torch.as_tensor(speed_limit, device=device)[None],
        dt_s=float(prob.dt_s), current_step=cur,
        meta=[ScenarioMeta(scenario_id=sid, case_id=prob.case_id, vehicle_id=prob.vehicle_id, t0_ms=prob.t0_ms,
                           origin_x_m=prob.origin_x_m, origin_y_m=prob.origin_y_m,
                           origin_heading_rad=prob.origin_heading_rad, city=prob.city, road_type=prob.road_type,
                           weather=prob.weather, light=prob.light, tags=tuple(prob.tags), family=prob.family,
                           answer=prob.answer, agent_model=AgentModel(prob.agent_model), source=prob.source)])
    scen.validate()
    # steps before the current one repeat the ego's log (the Rollout convention)
    full = {}
    for c in CHANNELS + ("valid",):
        head = (agents.valid if c == "valid" else agents.channels[c])[:1, :cur]
        body = trajs.valid if c == "valid" else trajs.channels[c]
        full[c] = torch.as_tensor(np.concatenate([np.repeat(head, body.shape[0], axis=0), body], axis=1),
                                  device=device)
    k = len(pair.front)
    objectives = np.full((k, N_OBJECTIVES), np.nan, dtype=np.float32)
    for i, f in enumerate(pair.front):
        if f.objectives:
            objectives[i] = f.objectives
    return scen, PairTrajectories(
        baseline={c: v[0] for c, v in full.items()}, front={c: v[1:] for c, v in full.items()},
        solution_index=pair.solution_index,
        t_s=torch.arange(t, dtype=torch.float32, device=device) * float(prob.dt_s),
        objectives=torch.as_tensor(objectives, device=device))


def _first_time(mask: torch.Tensor, dt_s: float) -> float:
    """Time (s) of the first True of a [T] mask, NaN when there is none."""
    hits = mask.nonzero()
    return round(float(hits[0, 0]) * dt_s, 3) if hits.numel() else math.nan


def describe_decisions(baseline: Mapping[str, torch.Tensor], solution: Mapping[str, torch.Tensor], dt_s: float,
                       thresholds: DecisionThresholds, start_step: int = 0) -> list[Decision]:
    """The human-readable differences between two ego trajectories over the steps from `start_step` on.

    `baseline` and `solution` map x, y, heading, speed (m, m, rad, m/s; optional `valid` bool) to [T]
    tensors. Braking starts at the first step whose deceleration (speed difference / dt) exceeds
    `brake_decel_mps2`; the lateral offset is the solution's signed distance from the baseline's path
    (along the left normal of the nearest baseline pose), + left; speed compares the means; a stop is the
    first step at or below `stop_speed_mps`. Differences under the thresholds are left out. Times are s
    after `start_step`.
    """
    b = {c: torch.as_tensor(baseline[c]).detach().cpu().double()[start_step:] for c in CHANNELS}
    s = {c: torch.as_tensor(solution[c]).detach().cpu().double()[start_step:] for c in CHANNELS}
    if any(b[c].shape != s[c].shape or b[c].ndim != 1 for c in CHANNELS):
        raise ValueError(f"describe_decisions: baseline {tuple(b['x'].shape)} and solution {tuple(s['x'].shape)} "
                         "must be [T] each")
    ones = torch.ones(int(b["x"].shape[0]) + start_step, dtype=torch.bool)
    base_valid = torch.as_tensor(baseline.get("valid", ones)).cpu().bool()[start_step:]
    both = base_valid & torch.as_tensor(solution.get("valid", ones)).cpu().bool()[start_step:]
    if not bool(both.any()):
        return []
    out = []
    pair_valid = both[1:] & both[:-1]
    brake_b = _first_time(pair_valid & ((b["speed"][1:] - b["speed"][:-1]) / dt_s < -thresholds.brake_decel_mps2),
                          dt_s)
    brake_s = _first_time(pair_valid & ((s["speed"][1:] - s["speed"][:-1]) / dt_s < -thresholds.brake_decel_mps2),
                          dt_s)
    if math.isnan(brake_b) != math.isnan(brake_s):
        text = (f"brakes from {brake_s:.1f} s (the baseline does not brake)" if math.isnan(brake_b)
                else f"does not brake (the baseline brakes from {brake_b:.1f} s)")
        out.append(Decision("brake_onset", text, math.nan, "s", brake_b, brake_s))
    elif not math.isnan(brake_b) and abs(brake_b - brake_s) >= thresholds.min_time_s - 1e-9:
        earlier = brake_b - brake_s
        out.append(Decision("brake_onset", f"brakes {abs(earlier):.1f} s {'earlier' if earlier > 0 else 'later'}",
                            earlier, "s", brake_b, brake_s))
    # against the baseline's path, not its pose at the same time: a solution that brakes earlier lags
    # behind, which on a curve would read as a sideways offset. Nearest baseline pose ([T, T], T <= a few
    # hundred), then the offset along that pose's left normal; points beside the path only (within half
    # the pose spacing along it), so driving on past where the baseline stopped is not "further left".
    gap = torch.stack([s["x"][:, None] - b["x"][None], s["y"][:, None] - b["y"][None]], dim=-1)
    near = gap.square().sum(-1).masked_fill(~base_valid[None], math.inf).argmin(dim=1)
    hb = b["heading"][near]
    picked = gap[torch.arange(gap.shape[0]), near]
    lateral = picked[:, 1] * torch.cos(hb) - picked[:, 0] * torch.sin(hb)
    along = picked[:, 0] * torch.cos(hb) + picked[:, 1] * torch.sin(hb)
    hop = torch.hypot(b["x"].diff(), b["y"].diff())
    spacing = torch.maximum(torch.cat([hop, hop[-1:]]), torch.cat([hop[:1], hop]))[near] if hop.numel() \
        else torch.zeros_like(along)
    beside = both & (along.abs() <= 0.5 * spacing + PATH_TOLERANCE_M)
    lateral = torch.where(beside, lateral, torch.zeros_like(lateral))
    at = int(lateral.abs().argmax())
    at_s = round(at * dt_s, 3)
    peak = float(lateral[at])
    mean = float(lateral[beside].mean()) if bool(beside.any()) else 0.0
    if abs(peak) >= thresholds.min_lateral_m:
        out.append(Decision("lateral_offset", f"keeps {abs(peak):.1f} m further {'left' if peak > 0 else 'right'} "
                            f"(at {at_s:.1f} s; {mean:+.1f} m on average)", peak, "m", at_s, mean))
    mean_b, mean_s = float(b["speed"][both].mean()), float(s["speed"][both].mean())
    if abs(mean_s - mean_b) >= thresholds.min_speed_mps:
        faster = "faster" if mean_s > mean_b else "slower"
        out.append(Decision("speed", f"drives {abs(mean_s - mean_b):.1f} m/s {faster}"
                            f" on average ({mean_s:.1f} vs {mean_b:.1f} m/s)", mean_s - mean_b, "m/s", mean_b, mean_s))
    stop_b = _first_time(both & (b["speed"].abs() <= thresholds.stop_speed_mps), dt_s)
    stop_s = _first_time(both & (s["speed"].abs() <= thresholds.stop_speed_mps), dt_s)
    if math.isnan(stop_b) != math.isnan(stop_s):
        text = (f"comes to a stop at {stop_s:.1f} s (the baseline does not stop)" if math.isnan(stop_b)
                else f"does not stop (the baseline stops at {stop_b:.1f} s)")
        out.append(Decision("stop", text, math.nan, "s", stop_b, stop_s))
    elif not math.isnan(stop_b) and abs(stop_s - stop_b) >= thresholds.min_time_s - 1e-9:
        out.append(Decision("stop", f"stops {abs(stop_s - stop_b):.1f} s {'later' if stop_s > stop_b else 'earlier'}",
                            stop_s - stop_b, "s", stop_b, stop_s))
    return out



def pair_to_bytes(pair: replay_pb2.ScenarioSolutionPair, config: ReplayConfig) -> bytes:
    """The pair as stored and sent: serialised, then zlib-compressed when `codec.compression` is zlib
    (the varint streams' small values leave ~3x to deflate; see replay.yaml)."""
    codec = config.section("codec")
    raw = pair.SerializeToString(deterministic=True)
    if codec["compression"] == "zlib":
        return zlib.compress(raw, int(codec["zlib_level"]))
    if codec["compression"] == "none":
        return raw
    raise ValueError(f"codec.compression must be zlib or none, got {codec['compression']!r}")


def pair_from_bytes(data: bytes) -> replay_pb2.ScenarioSolutionPair:
    """Inverse of `pair_to_bytes` for either compression (told apart by the first byte). ValueError on
    anything else, a damaged stream or one inflating beyond MAX_PAIR_BYTES."""
    if not data:
        raise ValueError("empty ScenarioSolutionPair bytes")
    if data[0] == ZLIB_MAGIC:
        inflate = zlib.decompressobj()
        try:
            raw = inflate.decompress(data, MAX_PAIR_BYTES)
        except zlib.error as exc:
            raise ValueError(f"damaged zlib ScenarioSolutionPair: {exc}") from None
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError(f"ScenarioSolutionPair inflates beyond {MAX_PAIR_BYTES} bytes or is truncated")
    elif data[0] == PAIR_MAGIC:
        raw = data
    else:
        raise ValueError(f"not a ScenarioSolutionPair: first byte 0x{data[0]:02x}")
    try:
        return replay_pb2.ScenarioSolutionPair.FromString(raw)
    except DecodeError as exc:
        raise ValueError(f"damaged ScenarioSolutionPair: {exc}") from None
