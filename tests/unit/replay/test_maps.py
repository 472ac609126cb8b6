"""Map crops: the simulator's world as an HD map (the fleet drives its lane centres, turns included),
clipping, resampling, padding into the ego frame."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fleetloop import topics
from fleetloop.codec import pose_columns
from fleetloop.replay.maps import MapLayout, MapPolyline, PolylineMap, SimWorldMap, pad_map, to_frame
from fleetloop.replay.scenario import MapKind
from fleetloop.sim import FleetSimulator, SimConfig


def lane_distance(crop: list[MapPolyline], x: float, y: float) -> tuple[float, float]:
    """Distance (m) from (x, y) to the nearest lane-centre segment of a crop, and that lane's limit."""
    best, limit = math.inf, math.nan
    for line in crop:
        if line.kind != MapKind.LANE_CENTRE:
            continue
        a, b = line.xy[:-1], line.xy[1:]
        ab = b - a
        t = np.clip(((np.array([x, y]) - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0, 1)
        d = np.hypot(*(a + t[:, None] * ab - (x, y)).T)
        if d.min() < best:
            best, limit = float(d.min()), line.speed_limit_mps
    return best, limit


def test_the_simulated_fleet_drives_the_lane_centres_of_the_world_map():
    sim = FleetSimulator(SimConfig(vehicles=4, duration_s=400, seed=5, incidents=[]))
    world = SimWorldMap.from_simulator(sim)
    city = {v.vehicle_id: v.city.name for v in sim.vehicles}
    kinds = {v.vehicle_id: v.kind for v in sim.vehicles}
    samples = []
    for second in sim.seconds():
        if (second.t_ms // 1000) % 4:
            continue
        for topic, env in second.messages:
            if topic == topics.POSE:
                c = pose_columns(env.pose)
                samples.append((env.vehicle_id, float(c["x_m"][0]), float(c["y_m"][0]), float(c["heading_rad"][0]),
                                float(c["speed_mps"][0])))
    on_lane, over = [], 0
    for vid, x, y, h, v in samples:
        crop = world.crop(city[vid], x, y, h, 60.0)
        d, limit = lane_distance(crop, x, y)
        on_lane.append(d < 0.3)
        over += v > limit + 0.05
    # lane changes (and their return) are the only moments between lane centres
    print(f"on a lane centre: {np.mean(on_lane):.3f} of {len(samples)} samples")
    assert np.mean(on_lane) > 0.93, np.mean(on_lane)
    assert over == 0
    assert "truck" in kinds.values() and len(samples) > 300


def test_a_crop_has_edges_stop_lines_and_crosswalks_and_knows_its_cities():
    sim = FleetSimulator(SimConfig(vehicles=1, duration_s=1, seed=5))
    world = SimWorldMap.from_simulator(sim)
    city = sim.cities[0]
    x, y = city.map.xy((4, 4))
    crop = world.crop(city.name, x - 100.0, y, 0.0, 250.0)
    kinds = {line.kind for line in crop}
    assert kinds == {MapKind.LANE_CENTRE, MapKind.ROAD_EDGE, MapKind.STOP_LINE, MapKind.CROSSWALK}
    assert all(np.hypot(*(line.xy - (x - 100.0, y)).T).max() <= 250.0 + 1e-9 for line in crop)
    def is_straight(xy: np.ndarray) -> bool:
        (ax, ay), (bx, by) = xy[1] - xy[0], xy[-1] - xy[0]
        return abs(ax * by - ay * bx) < 1e-6

    straight = {line.speed_limit_mps for line in crop if line.kind == MapKind.LANE_CENTRE and is_straight(line.xy)}
    turns = {line.speed_limit_mps for line in crop if line.kind == MapKind.LANE_CENTRE} - straight
    assert straight and straight <= {8.0, 13.9, 16.7}  # sim.yaml roads: park, urban/tunnel, elevated
    assert turns and max(turns) < 8.0  # 90° turns: the lateral-acceleration bound, below every road limit
    assert all(math.isnan(line.speed_limit_mps) for line in crop if line.kind != MapKind.LANE_CENTRE)
    with pytest.raises(KeyError, match="unknown city 'atlantis'"):
        world.crop("atlantis", 0.0, 0.0, 0.0, 50.0)


def test_clipping_splits_a_line_that_leaves_and_reenters_the_radius():
    x = np.linspace(-50, 50, 101)
    arc = np.stack([x, 5.0 + 25.0 * np.exp(-(x / 4.0) ** 2)], 1)  # a road bulging out to y = 30 at x = 0
    crop = PolylineMap([MapPolyline(MapKind.ROAD_EDGE, arc)], spacing_m=1.0).crop("", 0.0, 0.0, 0.0, 12.0)
    assert len(crop) == 2  # the middle of the hill is outside 12 m: two pieces
    assert all(np.hypot(*p.xy.T).max() <= 12.0 for p in crop)


def test_pad_map_resamples_chunks_keeps_the_nearest_and_moves_into_the_ego_frame():
    layout = MapLayout(n_polylines=3, n_vertices=5, spacing_m=10.0, radius_m=500.0)
    long_lane = MapPolyline(MapKind.LANE_CENTRE, np.array([[100.0, 50.0], [200.0, 50.0]]), 13.9)  # 100 m, 2 vertices
    far = MapPolyline(MapKind.STOP_LINE, np.array([[400.0, 40.0], [400.0, 60.0]]))
    xy, valid, kind, limit = pad_map([[far, long_lane]], [(100.0, 50.0, math.pi / 2)], layout)
    assert xy.shape == (1, 3, 5, 2) and valid.shape == (1, 3, 5)
    # 100 m at 10 m spacing = 11 vertices -> chunks of 5 sharing ends: 3 chunks, the far stop line dropped
    assert kind[0].tolist() == [MapKind.LANE_CENTRE] * 3 and valid[0].sum() == 13
    assert torch.allclose(limit[0], torch.full((3,), 13.9))
    # the lane runs +x in the map; the frame at (100, 50) heading north sees it going to the right (-y)
    first = xy[0, 0][valid[0, 0]]
    assert torch.allclose(first[:, 0], torch.zeros(5), atol=1e-4)
    assert torch.allclose(first[:, 1], -torch.arange(5, dtype=torch.float32) * 10.0, atol=1e-4)
    assert np.allclose(to_frame(np.array([[100.0, 60.0]]), 100.0, 50.0, math.pi / 2), [[10.0, 0.0]])
    empty = pad_map([[]], [(0.0, 0.0, 0.0)], layout)
    assert not empty[1].any() and (empty[2] == 0).all()
