"""OpenSCENARIO export: written with scenariogeneration, read back with its own parser (schema-valid), and the
entities, classes, sizes, vertex counts, times and map-frame coordinates survive within the write precision."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from fleetloop.replay.export import entity_name, write_openscenario
from fleetloop.replay.pair import pair_to_scenario
from fleetloop.replay.scenario import AgentClass
from scenariogeneration import xosc

from tests.support.pairdata import make_pair, make_scenario

CLASSES = [AgentClass.EGO, AgentClass.CAR, AgentClass.TRUCK, AgentClass.PEDESTRIAN, AgentClass.CONE,
           AgentClass.CYCLIST, AgentClass.BUS, AgentClass.ANIMAL]


def _pair():
    scen = make_scenario(11, agents=8, steps=40)
    scen.agent_class[0] = scen.agent_class.new_tensor([int(c) for c in CLASSES])
    scen.valid[0, 6] = False
    scen.valid[0, 6, 20] = True                  # the bus is seen once: it only stands there
    scen.filled[0, 6] = False
    scen.valid[0, 7, 12:16] = False              # a gap: no vertices there
    return make_pair(scen, k=3, seed=11)


def _read(path: Path) -> xosc.Scenario:
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # "not valid according to the OpenSCENARIO schema" fails the test
        return xosc.ParseOpenScenario(str(path))


def _to_map(pair, x, y, h):
    p = pair.problem
    c, s = math.cos(p.origin_heading_rad), math.sin(p.origin_heading_rad)
    return (p.origin_x_m + c * x - s * y, p.origin_y_m + s * x + c * y,
            (h + p.origin_heading_rad + math.pi) % (2 * math.pi) - math.pi)


def _trajectories(scenario: xosc.Scenario) -> dict[str, xosc.Polyline]:
    out = {}
    for group in scenario.storyboard.stories[0].acts[0].maneuvergroup:
        action = group.maneuvers[0].events[0].action[0].action
        assert isinstance(action, xosc.FollowTrajectoryAction)
        out[group.actors.actors[0].entity] = action.trajectory.shapes
    return out


def test_export_reads_back_with_scenariogeneration(tmp_path: Path) -> None:
    pair = _pair()
    scen, traj = pair_to_scenario(pair)
    read = _read(write_openscenario(pair, tmp_path / "pair.xosc"))
    objects = {o.name: o.entityobject for o in read.entities.scenario_objects}
    assert list(objects) == [entity_name(a) for a in range(8)]
    assert isinstance(objects["ego"], xosc.Vehicle) and objects["agent_02"].vehicle_type == xosc.VehicleCategory.truck
    assert isinstance(objects["agent_03"], xosc.Pedestrian) and isinstance(objects["agent_04"], xosc.MiscObject)
    assert objects["agent_05"].vehicle_type == xosc.VehicleCategory.bicycle
    assert objects["agent_07"].category == xosc.PedestrianCategory.animal
    for slot, name in enumerate(objects):
        props = dict(objects[name].properties.properties)
        assert props == {"fleetloop_class": CLASSES[slot].name, "fleetloop_slot": str(slot)}
        box = objects[name].boundingbox.boundingbox
        assert box.length == pytest.approx(float(scen.length[0, slot]), abs=5e-4)
        assert box.width == pytest.approx(float(scen.width[0, slot]), abs=5e-4)

    paths = _trajectories(read)
    assert "agent_06" not in paths               # one valid step: teleported, no polyline
    ego_x = traj.front["x"][traj.solution_index].numpy()
    ego_y = traj.front["y"][traj.solution_index].numpy()
    ego_h = traj.front["heading"][traj.solution_index].numpy()
    for slot in (0, 1, 3, 7):
        shape = paths[entity_name(slot)]
        steps = np.flatnonzero(scen.valid[0, slot].numpy())
        assert len(shape.positions) == len(shape.time) == steps.size
        assert shape.time == pytest.approx((steps * 0.1).tolist(), abs=5e-4)
        src = (ego_x, ego_y, ego_h) if slot == 0 else (scen.x[0, slot].numpy(), scen.y[0, slot].numpy(),
                                                       scen.heading[0, slot].numpy())
        mx, my, mh = _to_map(pair, *(a.astype(np.float64)[steps] for a in src))
        got = np.array([[p.x, p.y, p.h] for p in shape.positions])
        assert np.abs(got[:, 0] - mx).max() <= 5e-4 + 1e-9 and np.abs(got[:, 1] - my).max() <= 5e-4 + 1e-9
        assert np.abs((got[:, 2] - mh + math.pi) % (2 * math.pi) - math.pi).max() <= 5e-5 + 1e-9
    gap = [t for t in paths["agent_07"].time if 1.15 < t < 1.55]
    assert not gap and len(paths["agent_07"].positions) == int(scen.valid[0, 7].sum())
    teleport = read.storyboard.init.initactions["agent_06"][0]
    bx, by, _ = _to_map(pair, float(scen.x[0, 6, 20]), float(scen.y[0, 6, 20]), 0.0)
    assert teleport.position.x == pytest.approx(bx, abs=5e-4) and teleport.position.y == pytest.approx(by, abs=5e-4)


def test_the_ego_follows_the_requested_front_member(tmp_path: Path) -> None:
    pair = _pair()
    _, traj = pair_to_scenario(pair)
    other = (pair.solution_index + 1) % 3
    read = _read(write_openscenario(pair, tmp_path / "other.xosc", trajectory=other))
    last = _trajectories(read)["ego"].positions[-1]
    x, y, _ = _to_map(pair, float(traj.front["x"][other, -1]), float(traj.front["y"][other, -1]), 0.0)
    assert (last.x, last.y) == (pytest.approx(x, abs=5e-4), pytest.approx(y, abs=5e-4))
    with pytest.raises(ValueError, match="front trajectory 3 outside the front of 3"):
        write_openscenario(pair, tmp_path / "bad.xosc", trajectory=3)
