"""One trigger code base for the vehicle, the cloud trigger-engine and replay (ARCHITECTURE §6).

Pure numpy, no I/O: messages → `Frames` columns → `Trigger.update` per batch → `TriggerEvent`.
Importing the package registers every built-in trigger.
"""

from fleetloop.triggers import events, kinematic, perception  # noqa: F401  (registers the built-ins)
from fleetloop.triggers.base import REGISTRY, Category, Detection, Trigger, build_triggers, register
from fleetloop.triggers.config import TriggerConfig, TriggerSpec, load_config
from fleetloop.triggers.frames import FrameCarry, Frames, build_frames
from fleetloop.triggers.runner import TriggerRunner, detect_recording, trigger_id

__all__ = [
    "REGISTRY", "Category", "Detection", "FrameCarry", "Frames", "Trigger", "TriggerConfig", "TriggerRunner",
    "TriggerSpec", "build_frames", "build_triggers", "detect_recording", "load_config", "register", "trigger_id",
]
