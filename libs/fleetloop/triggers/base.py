"""The trigger interface, its detections, and the registry that maps names to classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np

from fleetloop.config import ConfigError, ConfigModel, validate
from fleetloop.triggers import criticality
from fleetloop.triggers.config import TriggerConfig, TriggerSpec
from fleetloop.triggers.frames import Frames
from fleetloop.v1 import triggers_pb2


class Category(IntEnum):
    """Which metric an event counts toward (values of the TriggerCategory proto enum)."""

    MPS = triggers_pb2.TRIGGER_CATEGORY_MPS
    MPD = triggers_pb2.TRIGGER_CATEGORY_MPD
    MPI = triggers_pb2.TRIGGER_CATEGORY_MPI
    INFO = triggers_pb2.TRIGGER_CATEGORY_INFO


@dataclass(frozen=True)
class Detection:
    """What a trigger found: times are epoch ms, severity 0..1, measurements carry units in their keys."""

    trigger: str
    category: Category
    severity: float
    onset_ms: int
    peak_ms: int
    end_ms: int
    measurements: Mapping[str, float]
    detail: str = ""


class Trigger:
    """A pure trigger over one vehicle's `Frames`, carrying its open episodes between batches.

    Subclasses set `name`, `category`, `Params` (the model of their `params` config, read as the
    typed `self.p`) and implement `update`. `update(frames, horizon_ms)` sees every batch of consecutive seconds in
    time order; `horizon_ms` promises that no later batch holds data before it. `finish()` ends
    the stream. `snapshot()`/`restore()` round-trip everything carried (JSON-able).
    """

    name: ClassVar[str]
    category: ClassVar[Category]
    Params: ClassVar[type[ConfigModel]] = ConfigModel

    def __init__(self, spec: TriggerSpec, config: TriggerConfig) -> None:
        self.spec = spec
        self.p = validate(spec.params, self.Params, source=config.source, prefix=f"triggers.{self.name}.params")
        self.default_category = Category[spec.category] if spec.category else self.category

    def update(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        raise NotImplementedError

    def finish(self) -> list[Detection]:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Restore what `snapshot()` returned (the state protocol: `fleetloop.state.Resumable`)."""

    def detection(self, severity: float, onset_ms: int, peak_ms: int, end_ms: int,
                  measurements: Mapping[str, float], detail: str = "",
                  category: Category | None = None) -> Detection:
        return Detection(self.name, category or self.default_category, min(max(float(severity), 0.0), 1.0),
                         int(onset_ms), int(peak_ms), int(end_ms),
                         {k: round(float(v), 6) for k, v in measurements.items()}, detail)


REGISTRY: dict[str, type[Trigger]] = {}


def register(cls: type[Trigger]) -> type[Trigger]:
    """Class decorator: make a trigger constructible by name from configuration."""
    REGISTRY[cls.name] = cls
    return cls


def build_triggers(config: TriggerConfig) -> list[Trigger]:
    """Instantiate every enabled trigger of `config`, in configuration order.

    Raises ConfigError for a configured name that no class registers, or params its class refuses.
    """
    unknown = set(config.triggers) - set(REGISTRY)
    if unknown:
        raise ConfigError(f"{config.source}: triggers: no trigger class registered for {sorted(unknown)}")
    return [REGISTRY[name](spec, config) for name, spec in config.triggers.items() if spec.enabled]


def nearest_in_path(frames: Frames, half_width_m: float, lookahead_m: float, lookahead_s: float,
                    ego_length_m: float) -> np.ndarray:
    """Per second row (m,): bumper gap (m) to the nearest valid object ahead in the ego path, inf if
    none. The path reaches `lookahead_s` × the second's ego speed ahead, never less than
    `lookahead_m`; `ego_length_m`: the ego's length where a summary does not send its own."""
    return frames.memo(("nearest_in_path", half_width_m, lookahead_m, lookahead_s, ego_length_m),
                       lambda: per_row_min(frames, in_path(frames, half_width_m, lookahead_m, lookahead_s,
                                                           ego_length_m), bumper_gaps_m(frames, ego_length_m)))


def in_path(frames: Frames, half_width_m: float, lookahead_m: float, lookahead_s: float,
            ego_length_m: float) -> np.ndarray:
    """Per object (k,): valid, its bumper gap ahead within the lookahead (`nearest_in_path`) and
    laterally within `half_width_m` (centre corridor)."""
    def compute() -> np.ndarray:
        reach = criticality.lookahead_m(frames.ego_speed_mps, lookahead_s, lookahead_m)[frames.obj_row]
        gap = bumper_gaps_m(frames, ego_length_m)
        return frames.obj_valid & (np.abs(frames.obj_rel_y_m) <= half_width_m) & (gap > 0) & (gap <= reach)

    return frames.memo(("in_path", half_width_m, lookahead_m, lookahead_s, ego_length_m), compute)


def ego_length_per_object(frames: Frames, ego_length_m: float) -> np.ndarray | float:
    """The ego's length (m) for each object's summary: the summary's own where it sends one, else
    `ego_length_m`; one number when no summary of the batch sends one (the common case)."""
    sent = frames.ego_length_m
    return ego_length_m if np.isnan(sent).all() else np.where(np.isnan(sent), ego_length_m, sent)[frames.obj_row]


def bumper_gaps_m(frames: Frames, ego_length_m: float) -> np.ndarray:
    """Per object (k,): the bumper gap ahead (m), `rel_x_m` read by its summary's position reference
    through `criticality.box_offsets` (gap summaries: as sent, bit for bit); `ego_length_m` as in
    `ego_length_per_object`."""
    def compute() -> np.ndarray:
        bumper = True if frames.bumper_gap.all() else frames.bumper_gap[frames.obj_row]
        return criticality.box_offsets(frames.obj_rel_x_m, frames.obj_length_m,
                                       ego_length_per_object(frames, ego_length_m), bumper, to_gap=True)

    return frames.memo(("bumper_gaps_m", ego_length_m), compute)


def per_row_min(frames: Frames, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per second row (m,): the minimum of `values` over the objects selected by `mask`, inf if none.
    Objects are stored in row order, so a segmented reduce does it in one pass."""
    out = np.full(frames.sec_ms.size, np.inf)
    rows = frames.obj_row[mask]
    if rows.size:
        starts = np.flatnonzero(np.diff(rows, prepend=-1))
        out[rows[starts]] = np.minimum.reduceat(values[mask], starts)
    return out


def ms(seconds: float) -> int:
    return int(round(seconds * 1000))
