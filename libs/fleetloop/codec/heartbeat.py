"""fleet.heartbeat.v1: the plausibility rules of a Heartbeat, stated once as data and applied both
to one message (`check_heartbeat`) and to a batch of columns (`heartbeat_suspects`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fleetloop.codec.limits import LIMITS
from fleetloop.codec.rejected import Rejected, finite
from fleetloop.v1 import common_pb2

FINITE = ("speed_mps", "lat_deg", "lon_deg", "x_m", "y_m", "state_of_charge", "odometer_m")
# (field, lowest, highest), both inclusive: speed in m/s, WGS84 degrees, odometer in m.
RANGES = (
    ("speed_mps", 0.0, LIMITS.motion.max_speed_mps),
    ("lat_deg", -90.0, 90.0),
    ("lon_deg", -180.0, 180.0),
    ("odometer_m", 0.0, math.inf),
)


def check_heartbeat(hb: common_pb2.Heartbeat) -> None:
    """Plausibility of one heartbeat; raises Rejected (non_finite, absurd_value)."""
    for name in FINITE:
        finite(name, getattr(hb, name))
    for name, lowest, highest in RANGES:
        value = getattr(hb, name)
        if not lowest <= value <= highest:
            raise Rejected("absurd_value", f"{name}={value} outside {lowest}..{highest}")


def heartbeat_suspects(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows of heartbeat columns (FINITE names -> equal-length arrays, e.g. an Arrow table) that
    break a rule of `check_heartbeat`, as a bool mask: the rows it rejects, plus any that only a
    column narrowed to float32 breaks (ask `check_heartbeat` about the suspects for the reason)."""
    n = len(np.asarray(columns[FINITE[0]]))
    bad = np.zeros(n, bool)
    for name in FINITE:
        bad |= ~np.isfinite(np.asarray(columns[name]))
    for name, lowest, highest in RANGES:
        values = np.asarray(columns[name])
        bad |= ~((values >= lowest) & (values <= highest))
    return bad
