"""Real-time fleet monitors, the fleet "ECG" (ARCHITECTURE §1.2): pure, event-time logic.

`FleetMonitor` is the entry point a stream agent calls; `VehicleMonitor` and `ParkMonitor` are
its per-vehicle and per-park halves; `alerts` holds alert identity and lifecycle.
"""

from fleetloop.monitors.alerts import (
    AlertTransitionError,
    acknowledge,
    apply_monitor_update,
    resolve,
)
from fleetloop.monitors.clock import ClockMode, EventClock
from fleetloop.monitors.config import MonitorConfig, load_monitor_config
from fleetloop.monitors.fleet import FleetMonitor, MonitorInputError
from fleetloop.monitors.park import ParkMonitor
from fleetloop.monitors.vehicle import VehicleMonitor

__all__ = [
    "AlertTransitionError",
    "ClockMode",
    "EventClock",
    "FleetMonitor",
    "MonitorConfig",
    "MonitorInputError",
    "ParkMonitor",
    "VehicleMonitor",
    "acknowledge",
    "apply_monitor_update",
    "load_monitor_config",
    "resolve",
]
