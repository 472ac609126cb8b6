"""Trigger parity: the fleet's own trigger classes count events on replay rollouts.

A (scenario, candidate) of a `Rollout` becomes the trigger library's `Frames`, the arrays the vehicle
and the cloud trigger-engine build from a vehicle's messages, and every enabled trigger of the
trigger configuration (hard_brake, phantom_stop, near_miss, weaving, ...) runs over it exactly as the
`TriggerRunner` runs it over one vehicle: `update` over the batch, then `finish`.

What the rollout supplies, over the steps the candidate drives (from `current_step` to the end):

- samples at the rollout's 10 Hz: `t_ms` = `meta.t0_ms` + step × dt; the ego's x, y, speed; the
  applied acceleration (the last step's unused action is unknown); yaw rate = speed × curvature.
  Values outside the trigger configuration's `sanity` bounds are masked as `build_frames` masks them;
- one perception summary per second, at the first sample of the second: every other valid agent in
  the ego's frame, `rel_x_m`/`rel_y_m` its box centre from the ego's (x ahead, y left), so the
  summary's position reference is BOX_CENTRE (`bumper_gap` False) and it carries the boxes: the
  agents' and the ego's length and width from the scenario, which `criticality.box_offsets` reads
  as near_miss reads a vehicle's summaries; `rel_vx_mps`/`rel_vy_mps` its velocity relative to the
  ego's, its class, confidence 1 (the rollout's agents are truth);
- the task is running throughout; no planner outputs, no vehicle events (the triggers that need
  them stay silent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch

from fleetloop.replay.scenario import EGO, Rollout, ScenarioBatch
from fleetloop.triggers import TriggerConfig, build_triggers, load_config
from fleetloop.triggers.frames import Frames, sanity_mask


@lru_cache(maxsize=1)
def _packaged_config() -> TriggerConfig:
    return load_config()


def rollout_frames(rollout: Rollout, scen: ScenarioBatch, pairs: Sequence[tuple[int, int]],
                   sanity: Mapping[str, float]) -> list[Frames]:
    """One `Frames` per (scenario, candidate) in `pairs` (see the module docstring)."""
    cs, t = rollout.current_step, rollout.x.shape[-1]
    n_c = rollout.x.shape[1]
    flat = torch.tensor([s * n_c + c for s, c in pairs], dtype=torch.long, device=rollout.x.device)

    def pick(v: torch.Tensor) -> np.ndarray:   # [P, A, F] for the picked pairs, future steps, on the host
        return v.flatten(0, 1).index_select(0, flat)[..., cs:].cpu().numpy()

    x, y, h, v = (pick(q).astype(np.float64) for q in (rollout.x, rollout.y, rollout.heading, rollout.speed))
    accel, curv = pick(rollout.accel).astype(np.float64), pick(rollout.curvature).astype(np.float64)
    valid = pick(rollout.valid)
    cls = scen.agent_class.cpu().numpy()[[s for s, _ in pairs]]
    rows = [s for s, _ in pairs]
    length, width = (q.cpu().numpy().astype(np.float64)[rows] for q in (scen.length, scen.width))
    steps = np.arange(cs, t)
    out = []
    for i, (s, _) in enumerate(pairs):
        t_ms = scen.meta[s].t0_ms + np.round(steps * rollout.dt_s * 1000.0).astype(np.int64)
        ok = valid[i, EGO]
        speed, speed_ok = sanity_mask(v[i, EGO], sanity["min_speed_mps"], sanity["max_speed_mps"])
        acc, acc_ok = sanity_mask(accel[i, EGO], -sanity["max_abs_accel_mps2"], sanity["max_abs_accel_mps2"])
        acc_ok[-1] = False                                          # the last step's action is never applied
        yaw, yaw_ok = sanity_mask(v[i, EGO] * curv[i, EGO], -sanity["max_abs_yaw_rate_rps"],
                                  sanity["max_abs_yaw_rate_rps"])
        speed_ok &= ok
        acc_ok &= ok
        yaw_ok &= ok
        ex, ey = np.where(ok, x[i, EGO], 0.0), np.where(ok, y[i, EGO], 0.0)
        step_m = np.zeros(steps.size)
        step_m[1:] = np.where(ok[1:] & ok[:-1], np.hypot(np.diff(ex), np.diff(ey)), 0.0)

        sec_ms = np.unique(t_ms // 1000) * 1000
        row = np.searchsorted(sec_ms, (t_ms // 1000) * 1000)
        first = np.searchsorted(row, np.arange(sec_ms.size))      # first sample of each second
        # Perception: the other agents in the ego frame at the first sample of each second, [A-1, m].
        xi, yi, hi, vi = (q[i][:, first] for q in (x, y, h, v))
        ce, se = np.cos(hi[EGO]), np.sin(hi[EGO])
        dx, dy, dh = xi[1:] - xi[EGO], yi[1:] - yi[EGO], hi[1:] - hi[EGO]
        seen = valid[i][1:, first] & ok[first]
        when, agent = np.nonzero(seen.T)                            # objects in row (second) order
        rel_x = (dx * ce + dy * se)[agent, when]
        rel_y = (dy * ce - dx * se)[agent, when]
        rel_vx = (vi[1:] * np.cos(dh) - vi[EGO])[agent, when]
        rel_vy = (vi[1:] * np.sin(dh))[agent, when]
        obj = np.stack([rel_x, rel_y, rel_vx, rel_vy])
        obj_ok = np.isfinite(obj).all(0)
        obj = np.where(obj_ok, obj, 0.0)

        m = sec_ms.size
        ego_speed = np.bincount(row[speed_ok], weights=speed[speed_ok], minlength=m) / np.maximum(
            np.bincount(row[speed_ok], minlength=m), 1)
        max_decel = np.full(m, -np.inf)
        np.maximum.at(max_decel, row[acc_ok], -acc[acc_ok])
        n_obj = agent.size
        out.append(Frames(
            t_ms=t_ms, speed_mps=speed, accel_lon_mps2=acc, yaw_rate_rps=yaw, x_m=ex, y_m=ey,
            speed_valid=speed_ok, accel_valid=acc_ok, yaw_valid=yaw_ok, pos_valid=ok.copy(), step_m=step_m,
            row=row.astype(np.int64), sec_ms=sec_ms.astype(np.int64), task_running=np.ones(m, dtype=bool),
            has_perception=np.ones(m, dtype=bool), perception_ms=t_ms[first], planner_gap_ratio=np.full(m, np.nan),
            maneuver=np.zeros(m, dtype=np.int64), unprotected_turn=np.zeros(m, dtype=bool), ego_speed_mps=ego_speed,
            max_decel_mps2=max_decel, obj_row=when.astype(np.int64),
            obj_class=cls[i, 1:][agent].astype(np.int64), obj_rel_x_m=obj[0], obj_rel_y_m=obj[1],
            obj_rel_vx_mps=obj[2], obj_rel_vy_mps=obj[3], obj_confidence=np.ones(n_obj),
            obj_emerged=np.zeros(n_obj, dtype=bool), obj_valid=obj_ok,
            obj_length_m=length[i, 1:][agent], obj_width_m=width[i, 1:][agent], bumper_gap=np.zeros(m, dtype=bool),
            ego_length_m=np.full(m, length[i, EGO]), ego_width_m=np.full(m, width[i, EGO]),
            ev_t_ms=np.zeros(0, dtype=np.int64), ev_kind=np.zeros(0, dtype=np.int64),
            ev_to_mode=np.zeros(0, dtype=np.int64), ev_value=np.zeros(0), ev_module=[], ev_code=[], ev_text=[],
            ev_source=[], masked=int((~speed_ok).sum() + (~yaw_ok).sum()),
        ))
    return out


def fired_triggers(rollout: Rollout, scen: ScenarioBatch, pairs: Sequence[tuple[int, int]],
                   config: TriggerConfig | None = None) -> list[dict[str, int]]:
    """Events per trigger name (every enabled trigger, 0 included) for each (scenario, candidate) of
    `pairs`, counted by the fleet's trigger classes of `config` (default: the packaged triggers.yaml,
    the configuration the fleet runs)."""
    config = config or _packaged_config()
    counts = []
    for frames in rollout_frames(rollout, scen, pairs, config.section("sanity")):
        triggers = build_triggers(config)
        horizon_ms = int(frames.sec_ms[-1]) + 1000 if frames.sec_ms.size else 0
        found = [d for trig in triggers for d in trig.update(frames, horizon_ms)]
        found += [d for trig in triggers for d in trig.finish()]
        tally = {trig.name: 0 for trig in triggers}
        for d in found:
            tally[d.trigger] += 1
        counts.append(tally)
    return counts
