"""Export a ScenarioSolutionPair as ASAM OpenSCENARIO XML (1.3), written with the `scenariogeneration` package.

The ego and every agent of the pair are scenario objects — vehicles (car, truck, bus, motorbike, bicycle),
pedestrians (pedestrian, animal) or misc objects (cone, unknown) with the pair's length and width — each
placed by a TeleportAction at its first valid step and then following its track by a FollowTrajectoryAction
(a Polyline of WorldPosition vertices with absolute times, one vertex per valid step, FollowingMode
position). The ego follows the chosen front trajectory (the solution by default), with its logged history
before the current step. Each entity carries the properties `fleetloop_class` (AgentClass name) and
`fleetloop_slot` so a reader can map it back.

Coordinates are in the map frame (the pair's origin applied: p_map = origin + R(origin_heading) p_ego),
so the file lines up with the fleet map's OpenDRIVE. Write precision: 1 mm, 0.0001 rad, 1 ms. Times
count from step 0 of the window. What the export leaves out: the map crop (no OpenDRIVE is written — a
road network from the crop's lane polylines needs reference lines fitted with lane sections and junctions,
which is not a small job; `RoadNetwork` is empty), invalid steps inside a track (the polyline
interpolates across them), entities appearing late (they wait at their first position), and heights
(not in the pair: typical values per class below).
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np
from scenariogeneration import xosc

from fleetloop.codec import LIMITS
from fleetloop.replay.pair import pair_to_scenario
from fleetloop.replay.scenario import EGO, AgentClass
from fleetloop.v1 import replay_pb2

POSITION_DECIMALS = 3   # 1 mm: a fifth of the pair's own quantisation error bound (5 mm)
HEADING_DECIMALS = 4    # 0.0001 rad
TIME_DECIMALS = 3       # 1 ms

# What each class becomes: (kind, category, height m). Heights are typical sizes (the pair has none):
# car 1.5, van-sized truck 3.5, city bus 3.2, adult 1.75, rider 1.7, traffic cone 0.7.
ENTITY_KINDS = {
    AgentClass.EGO: ("vehicle", xosc.VehicleCategory.car, 1.8),
    AgentClass.CAR: ("vehicle", xosc.VehicleCategory.car, 1.5),
    AgentClass.TRUCK: ("vehicle", xosc.VehicleCategory.truck, 3.5),
    AgentClass.BUS: ("vehicle", xosc.VehicleCategory.bus, 3.2),
    AgentClass.TRICYCLE: ("vehicle", xosc.VehicleCategory.motorbike, 1.7),  # OpenSCENARIO has no tricycle
    AgentClass.MOTORCYCLE: ("vehicle", xosc.VehicleCategory.motorbike, 1.5),
    AgentClass.CYCLIST: ("vehicle", xosc.VehicleCategory.bicycle, 1.7),
    AgentClass.PEDESTRIAN: ("pedestrian", xosc.PedestrianCategory.pedestrian, 1.75),
    AgentClass.ANIMAL: ("pedestrian", xosc.PedestrianCategory.animal, 0.8),
    AgentClass.CONE: ("misc", xosc.MiscObjectCategory.obstacle, 0.7),
    AgentClass.UNKNOWN: ("misc", xosc.MiscObjectCategory.obstacle, 1.0),
}
# Vehicle limits OpenSCENARIO requires: the fleet's plausibility bounds (limits.yaml motion), not performance figures.
MAX_SPEED_MPS = LIMITS.motion.max_speed_mps
MAX_ACCEL_MPS2 = LIMITS.motion.max_accel_mps2
PEDESTRIAN_MASS_KG = 75.0
MISC_MASS_KG = 10.0


def entity_name(slot: int) -> str:
    """The scenario-object name of an agent slot: `ego` for slot 0, `agent_07` for slot 7."""
    return "ego" if slot == EGO else f"agent_{slot:02d}"


def _entity(name: str, cls: AgentClass, slot: int, length: float, width: float) -> xosc.Vehicle:
    kind, category, height = ENTITY_KINDS[cls]
    length, width = round(length, POSITION_DECIMALS), round(width, POSITION_DECIMALS)
    box = xosc.BoundingBox(width, length, height, 0, 0, height / 2)   # reference point = box centre, as the pair
    if kind == "vehicle":
        # axles at ±30 % of the length from the centre, track 85 % of the width: a plausible car layout
        track, axle_x = round(0.85 * width, POSITION_DECIMALS), round(0.3 * length, POSITION_DECIMALS)
        front = xosc.Axle(0.5, 0.7, track, axle_x, 0.35)
        rear = xosc.Axle(0.0, 0.7, track, -axle_x, 0.35)
        obj = xosc.Vehicle(name, category, box, front, rear, MAX_SPEED_MPS, MAX_ACCEL_MPS2, MAX_ACCEL_MPS2)
    elif kind == "pedestrian":
        obj = xosc.Pedestrian(name, PEDESTRIAN_MASS_KG, category, box)
    else:
        obj = xosc.MiscObject(name, MISC_MASS_KG, category, box)
    obj.add_property("fleetloop_class", cls.name)
    obj.add_property("fleetloop_slot", str(slot))
    return obj


def _world(x: np.ndarray, y: np.ndarray, h: np.ndarray, origin: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Ego-frame x, y, heading -> map frame, rounded to the write precision."""
    ox, oy, oh = origin
    c, s = math.cos(oh), math.sin(oh)
    mx = ox + c * x.astype(np.float64) - s * y
    my = oy + s * x.astype(np.float64) + c * y
    mh = (h.astype(np.float64) + oh + math.pi) % (2 * math.pi) - math.pi
    return mx.round(POSITION_DECIMALS), my.round(POSITION_DECIMALS), mh.round(HEADING_DECIMALS)


def to_openscenario(pair: replay_pb2.ScenarioSolutionPair, trajectory: int | None = None) -> xosc.Scenario:
    """The pair as an OpenSCENARIO `Scenario`; the ego follows front member `trajectory` (default: the
    solution). Raises ScenarioError for a damaged pair, ValueError for a front index out of range."""
    scen, traj = pair_to_scenario(pair)
    k = int(traj.front["x"].shape[0])
    chosen = traj.solution_index if trajectory is None else trajectory
    if not 0 <= chosen < k:
        raise ValueError(f"scenario {pair.problem.scenario_id}: front trajectory {chosen} outside the front of {k}")
    prob = pair.problem
    origin = (prob.origin_x_m, prob.origin_y_m, prob.origin_heading_rad)
    xs, ys, hs, vs = (getattr(scen, c)[0].numpy().copy() for c in ("x", "y", "heading", "speed"))
    valid = scen.valid[0].numpy().copy()
    for arr, name in ((xs, "x"), (ys, "y"), (hs, "heading"), (vs, "speed")):
        arr[EGO] = traj.front[name][chosen].numpy()
    valid[EGO] = traj.front["valid"][chosen].numpy()
    times = (np.arange(scen.n_steps) * scen.dt_s).round(TIME_DECIMALS)
    mx, my, mh = _world(xs, ys, hs, origin)
    classes = scen.agent_class[0].tolist()
    length, width = scen.length[0].tolist(), scen.width[0].tolist()

    entities = xosc.Entities()
    init = xosc.Init()
    act = xosc.Act(f"replay_{prob.scenario_id}", xosc.ValueTrigger(
        "start", 0, xosc.ConditionEdge.none, xosc.SimulationTimeCondition(0, xosc.Rule.greaterOrEqual)))
    for slot in np.flatnonzero(valid.any(axis=1)).tolist():
        name = entity_name(slot)
        entities.add_scenario_object(name, _entity(name, AgentClass(classes[slot]), slot, length[slot], width[slot]))
        steps = np.flatnonzero(valid[slot])
        first = int(steps[0])
        init.add_init_action(name, xosc.TeleportAction(xosc.WorldPosition(
            float(mx[slot, first]), float(my[slot, first]), 0, float(mh[slot, first]))))
        init.add_init_action(name, xosc.AbsoluteSpeedAction(round(float(vs[slot, first]), POSITION_DECIMALS),
                                                            xosc.TransitionDynamics(xosc.DynamicsShapes.step,
                                                                                    xosc.DynamicsDimension.time, 0)))
        if steps.size < 2:   # a polyline needs two vertices: a one-step object only stands there
            continue
        shape = xosc.Polyline([float(times[i]) for i in steps],
                              [xosc.WorldPosition(float(mx[slot, i]), float(my[slot, i]), 0, float(mh[slot, i]))
                               for i in steps])
        path = xosc.Trajectory(f"{name}_trajectory", False)
        path.add_shape(shape)
        event = xosc.Event(f"{name}_follow", xosc.Priority.override)
        event.add_action(f"{name}_follow_trajectory", xosc.FollowTrajectoryAction(
            path, xosc.FollowingMode.position, xosc.ReferenceContext.absolute, 1, 0))
        event.add_trigger(xosc.ValueTrigger(f"{name}_start", 0, xosc.ConditionEdge.none,
                                            xosc.SimulationTimeCondition(0, xosc.Rule.greaterOrEqual)))
        maneuver = xosc.Maneuver(f"{name}_maneuver")
        maneuver.add_event(event)
        group = xosc.ManeuverGroup(f"{name}_group")
        group.add_actor(name)
        group.add_maneuver(maneuver)
        act.add_maneuver_group(group)
    end = xosc.ValueTrigger("end", 0, xosc.ConditionEdge.rising,
                            xosc.SimulationTimeCondition(float(times[-1]), xosc.Rule.greaterThan), "stop")
    story = xosc.StoryBoard(init, end)
    story.add_act(act)
    created = datetime.datetime.fromtimestamp(pair.provenance.created_ms / 1000, tz=datetime.UTC)
    return xosc.Scenario(f"fleetloop replay {prob.scenario_id} (case {prob.case_id or '-'})", "fleetloop replay",
                         xosc.ParameterDeclarations(), entities, story, xosc.RoadNetwork(), xosc.Catalog(),
                         creation_date=created)


def write_openscenario(pair: replay_pb2.ScenarioSolutionPair, path: Path, trajectory: int | None = None) -> Path:
    """Write `to_openscenario(pair, trajectory)` as a .xosc file at `path` and return the path."""
    to_openscenario(pair, trajectory).write_xml(str(path))
    return path
