"""Criticality measures shared by the fleet's triggers and the counterfactual replay.

There is one time-to-collision definition in fleetloop, this one: the `near_miss` trigger applies
it to perceived objects (numpy, on the vehicle and in the cloud) and the replay's TTC cost applies
it to rollout boxes (torch, CPU or CUDA). Only the inputs differ, never the rule:

- the trigger's gap is the object's `rel_x_m` (its centre ahead of the ego, as perception reports
  it) and its closing speed is −`rel_vx_mps`;
- the replay's gap is bumper to bumper along the ego's heading (the agent's centre ahead minus the
  ego's half-length minus the agent's half-extent along the ego's axis, i.e. the trigger's
  `rel_x_m` less the two half-lengths for aligned vehicles), and its closing speed is the ego's
  speed minus the agent's velocity along the ego's heading.

The replay's TTC is therefore the trigger's TTC minus (half-lengths / closing speed): the replay
is the stricter reading of the same scene, so a solution it calls safe does not fire near_miss.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import numpy as np

Array = TypeVar("Array", np.ndarray, Any)  # numpy arrays or torch tensors (torch is imported only by its users)


def time_to_collision(gap_m: Array, closing_mps: Array, min_closing_mps: float) -> Array:
    """Time to collision (s) at constant speeds: `gap_m` / `closing_mps` where the closing speed is
    at least `min_closing_mps` (and positive), else inf (not closing: no collision course).

    `gap_m` (m, ≥ 0 for objects ahead; a negative gap, i.e. overlap, counts as 0) and `closing_mps`
    (m/s, + approaching) are arrays of one shape, numpy or torch alike; the result has that shape
    and type. Which objects are in the ego path is the caller's selection.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(gap_m, torch.Tensor):
        closing = (closing_mps >= min_closing_mps) & (closing_mps > 0)
        ttc = gap_m.clamp_min(0.0) / torch.where(closing, closing_mps, torch.ones_like(closing_mps))
        return torch.where(closing, ttc, torch.full_like(ttc, float("inf")))
    gap_m, closing_mps = np.asarray(gap_m), np.asarray(closing_mps)
    closing = (closing_mps >= min_closing_mps) & (closing_mps > 0)
    ttc = np.maximum(gap_m, 0.0) / np.where(closing, closing_mps, 1.0)
    return np.where(closing, ttc, np.inf)
