"""Scenarios as tensors: the one layout every part of the replay reads and writes.

A `ScenarioBatch` holds S scenarios of A agent slots over T steps of `dt_s` seconds, batch-first
`[scenario, agent, time]`, float32, in each scenario's ego-centred frame: the ego (agent slot 0)
stands at the origin heading +x at step `current_step`, x ahead, y left, metres, radians
counter-clockwise. Steps before `current_step` are history; the counterfactual starts there.
Unused agent slots and unknown steps are invalid (`valid` False, values 0). `filled` marks steps
that were interpolated between detections (1 Hz perception to the 10 Hz grid) rather than observed.

The map crop is padded vector polylines `[scenario, polyline, vertex, 2]` in the same frame, with a
kind per polyline (`MapKind`) and a speed limit on lane centres (NaN elsewhere).

`Rollout` is what the world model returns for C candidates of each scenario: the same agent layout
with a candidate dimension, `[scenario, candidate, agent, time]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum

import torch

from fleetloop.v1 import common_pb2

EGO = 0  # agent slot of the ego in every scenario


class MapKind(IntEnum):
    """What a map polyline is."""

    LANE_CENTRE = 1
    ROAD_EDGE = 2
    CROSSWALK = 3
    STOP_LINE = 4


class AgentClass(IntEnum):
    """Agent classes: the perception `ObjectClass` codes, plus EGO for slot 0."""

    NONE = common_pb2.OBJECT_CLASS_UNSPECIFIED
    CAR = common_pb2.OBJECT_CLASS_CAR
    TRUCK = common_pb2.OBJECT_CLASS_TRUCK
    BUS = common_pb2.OBJECT_CLASS_BUS
    PEDESTRIAN = common_pb2.OBJECT_CLASS_PEDESTRIAN
    CYCLIST = common_pb2.OBJECT_CLASS_CYCLIST
    TRICYCLE = common_pb2.OBJECT_CLASS_TRICYCLE
    MOTORCYCLE = common_pb2.OBJECT_CLASS_MOTORCYCLE
    CONE = common_pb2.OBJECT_CLASS_CONE
    ANIMAL = common_pb2.OBJECT_CLASS_ANIMAL
    UNKNOWN = common_pb2.OBJECT_CLASS_UNKNOWN
    EGO = 100


# Classes the kinematic bicycle and the car-follower drive; the others move by log or constant velocity.
VEHICLE_CLASSES = (AgentClass.EGO, AgentClass.CAR, AgentClass.TRUCK, AgentClass.BUS, AgentClass.TRICYCLE,
                   AgentClass.MOTORCYCLE)
STATIC_CLASSES = (AgentClass.CONE, AgentClass.UNKNOWN)


class AgentModel(IntEnum):
    """How the non-ego agents of a scenario move in a rollout."""

    LOG = 0                # replay the log (what happened, whatever the ego does)
    CONSTANT_VELOCITY = 1  # hold the speed and heading of `current_step`
    IDM = 2                # vehicles follow the log until the ego leaves its own log, then car-follow (IDM)


class ScenarioError(ValueError):
    """A scenario that cannot be replayed; the message names the scenario and what is wrong."""


@dataclass(frozen=True)
class ScenarioMeta:
    """What a scenario is about, carried beside its tensors (one per scenario).

    `origin_*` place the ego-centred frame in the map frame (metres, radians): a map point p is
    R(-origin_heading) (p - origin). `family` and `answer` are set by the generator (known-answer
    scenarios); cases from the fleet leave them empty.
    """

    scenario_id: str
    case_id: str = ""
    vehicle_id: str = ""
    t0_ms: int = 0                       # epoch ms of step 0
    origin_x_m: float = 0.0
    origin_y_m: float = 0.0
    origin_heading_rad: float = 0.0
    city: str = ""
    road_type: int = common_pb2.ROAD_TYPE_UNSPECIFIED
    weather: int = common_pb2.WEATHER_UNSPECIFIED
    light: int = common_pb2.LIGHT_UNSPECIFIED
    tags: tuple[str, ...] = ()
    family: str = ""
    answer: str = ""
    agent_model: AgentModel = AgentModel.IDM
    source: str = ""                     # generator | minilog | ground_truth


AGENT_FIELDS = ("x", "y", "heading", "speed", "vx", "vy")


@dataclass
class ScenarioBatch:
    """S scenarios × A agent slots × T steps (see the module docstring for the frame).

    Per agent and step, float32 `[S, A, T]`: `x`, `y` (m), `heading` (rad), `speed` (m/s, signed
    along the heading), `vx`, `vy` (m/s, frame axes); bool `[S, A, T]`: `valid` (known state),
    `filled` (interpolated, a subset of valid). Per agent, `[S, A]`: `length`, `width` (m, float32),
    `agent_class` (int64, `AgentClass`). Map: `map_xy` float32 `[S, P, V, 2]`, `map_valid` bool
    `[S, P, V]`, `map_kind` int64 `[S, P]` (0 = padding), `map_speed_limit_mps` float32 `[S, P]`.
    Optional planner output: `planner_xy` float32 `[S, T, 2]` with `planner_valid` bool `[S, T]`
    (the on-board planner's intended ego path, where the log has it).
    """

    x: torch.Tensor
    y: torch.Tensor
    heading: torch.Tensor
    speed: torch.Tensor
    vx: torch.Tensor
    vy: torch.Tensor
    valid: torch.Tensor
    filled: torch.Tensor
    length: torch.Tensor
    width: torch.Tensor
    agent_class: torch.Tensor
    map_xy: torch.Tensor
    map_valid: torch.Tensor
    map_kind: torch.Tensor
    map_speed_limit_mps: torch.Tensor
    dt_s: float
    current_step: int
    meta: list[ScenarioMeta] = field(default_factory=list)
    planner_xy: torch.Tensor | None = None
    planner_valid: torch.Tensor | None = None

    @property
    def n_scenarios(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_agents(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_steps(self) -> int:
        return int(self.x.shape[2])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device: torch.device | str) -> ScenarioBatch:
        return replace(self, **{k: v.to(device) for k, v in self.tensors().items()})

    def select(self, index: Sequence[int] | torch.Tensor) -> ScenarioBatch:
        """The scenarios at `index`, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        picked = {k: v.index_select(0, idx) for k, v in self.tensors().items()}
        return replace(self, meta=[self.meta[int(i)] for i in idx.tolist()], **picked)

    def validate(self) -> None:
        """Raise `ScenarioError` naming the scenario and the fault: shapes, no ego, NaN/inf states,
        an empty window, zero-size objects, a missing current step."""
        s, a, t = self.x.shape
        for name in AGENT_FIELDS + ("valid", "filled"):
            if tuple(getattr(self, name).shape) != (s, a, t):
                raise ScenarioError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {(s, a, t)}")
        for name in ("length", "width", "agent_class"):
            if tuple(getattr(self, name).shape) != (s, a):
                raise ScenarioError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {(s, a)}")
        p, v = self.map_xy.shape[1:3] if self.map_xy.dim() == 4 else (-1, -1)
        for name, shape in (("map_xy", (s, p, v, 2)), ("map_valid", (s, p, v)), ("map_kind", (s, p)),
                            ("map_speed_limit_mps", (s, p))):
            if tuple(getattr(self, name).shape) != shape:
                raise ScenarioError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if (self.planner_xy is None) != (self.planner_valid is None):
            raise ScenarioError("planner_xy and planner_valid come together")
        if self.planner_xy is not None and (tuple(self.planner_xy.shape) != (s, t, 2)
                                            or tuple(self.planner_valid.shape) != (s, t)):
            raise ScenarioError(f"planner_xy/planner_valid have shapes {tuple(self.planner_xy.shape)}/"
                                f"{tuple(self.planner_valid.shape)}, expected {(s, t, 2)}/{(s, t)}")
        if len(self.meta) != s:
            raise ScenarioError(f"{len(self.meta)} metadata entries for {s} scenarios")
        if s == 0:
            raise ScenarioError("no scenarios in the batch")
        if t == 0 or a == 0:
            raise ScenarioError(f"empty window: {a} agents × {t} steps")
        if not 0 <= self.current_step < t:
            raise ScenarioError(f"current_step {self.current_step} outside the window of {t} steps")
        if not self.dt_s > 0:
            raise ScenarioError(f"dt_s must be > 0, got {self.dt_s}")
        present = self.valid.any(dim=2)
        for i in range(s):
            sid = self.meta[i].scenario_id
            if int(self.agent_class[i, EGO]) != AgentClass.EGO:
                raise ScenarioError(f"scenario {sid}: no ego in agent slot 0")
            if not bool(self.valid[i, EGO, self.current_step]):
                raise ScenarioError(f"scenario {sid}: ego state unknown at the current step {self.current_step}")
            bad = ~torch.isfinite(torch.stack([getattr(self, n)[i] for n in AGENT_FIELDS])) & self.valid[i]
            if bool(bad.any()):
                agent = int(bad.any(dim=0).any(dim=1).nonzero()[0])
                raise ScenarioError(f"scenario {sid}: agent {agent} has NaN or infinite states")
            zero = present[i] & ~((self.length[i] > 0) & (self.width[i] > 0) & torch.isfinite(self.length[i])
                                  & torch.isfinite(self.width[i]))
            if bool(zero.any()):
                agent = int(zero.nonzero()[0])
                raise ScenarioError(f"scenario {sid}: agent {agent} has zero or unknown size "
                                    f"({float(self.length[i, agent])} × {float(self.width[i, agent])} m)")
            if bool((~torch.isfinite(self.map_xy[i]) & self.map_valid[i, ..., None]).any()):
                raise ScenarioError(f"scenario {sid}: map crop has NaN or infinite vertices")


def concat(batches: Sequence[ScenarioBatch]) -> ScenarioBatch:
    """One batch of all scenarios; agent, step and map dimensions must already agree. Raises
    ScenarioError naming the first batch that does not fit."""
    if not batches:
        raise ScenarioError("no scenarios to concatenate")
    first = batches[0]
    names = first.tensors().keys()
    for j, b in enumerate(batches):
        if b.dt_s != first.dt_s or b.current_step != first.current_step:
            raise ScenarioError(f"batch {j}: dt_s {b.dt_s} / current_step {b.current_step} differ from batch 0's "
                                f"{first.dt_s} / {first.current_step}; they cannot share a batch")
        if b.tensors().keys() != names:
            raise ScenarioError(f"batch {j}: optional fields {sorted(set(b.tensors()) ^ set(names))} are present "
                                "in some batches only")
        for name, value in b.tensors().items():
            if value.shape[1:] != getattr(first, name).shape[1:]:
                raise ScenarioError(f"batch {j}: {name} has shape {tuple(value.shape)}, batch 0 "
                                    f"{tuple(getattr(first, name).shape)} (agents, steps and map size must agree)")
    joined = {name: torch.cat([getattr(b, name) for b in batches], dim=0) for name in names}
    return replace(first, meta=[m for b in batches for m in b.meta], **joined)


@dataclass
class Rollout:
    """States of C candidate futures per scenario, `[S, C, A, T]` float32: x, y, heading, speed (m, rad,
    m/s); `accel` (m/s², longitudinal) and `curvature` (1/m) as applied; `valid` bool `[S, C, A, T]`.
    Steps before `current_step` repeat the log. `ego_actions` `[S, C, T, 2]` is (acceleration m/s²,
    curvature 1/m) per step for the ego (zeros before `current_step`)."""

    x: torch.Tensor
    y: torch.Tensor
    heading: torch.Tensor
    speed: torch.Tensor
    accel: torch.Tensor
    curvature: torch.Tensor
    valid: torch.Tensor
    ego_actions: torch.Tensor
    dt_s: float
    current_step: int

    @property
    def n_candidates(self) -> int:
        return int(self.x.shape[1])
