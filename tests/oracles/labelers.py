"""Reference labelers (a test oracle): one small pure function per tag family over one vehicle-second,
and `label_second`, which packs them into a `LabelRow`.

Production labels with `fleetloop.labels.batch.label_seconds`, vectorised over many seconds; the
tests check that it equals `label_second` here row by row, bit for bit. This version says what each
label means one second at a time, so a labeler change is written here first and the batch follows.

Each labeler takes the second's `SecondInputs` and the taxonomy thresholds and returns a
`FamilyLabels`: the tags it could evaluate (True/False) and the numeric values it could
compute. A tag it cannot evaluate (its input is missing or UNSPECIFIED) is simply absent,
which makes it UNKNOWN for the row — never a guess, never a crash.

Frames and units follow common.proto: objects in the ego frame (+x ahead, +y left, m,
m/s); pose samples at 10 Hz (m/s, m/s², rad/s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from fleetloop.codec import pose_columns
from fleetloop.labels.codes import (
    CLASS_TAGS,
    CONNECTIVITY_TAGS,
    JUNCTION_TAGS,
    LIGHT_TAGS,
    MODE_TAGS,
    MPS_TO_KPH,
    RARE_CLASSES,
    ROAD_TAGS,
    SPEED_BANDS,
    TASK_TAGS,
    VEHICLE_CLASSES,
    VRU_CLASSES,
    WEATHER_TAGS,
)
from fleetloop.labels.row import LabelRow
from fleetloop.labels.taxonomy import Taxonomy
from fleetloop.triggers import criticality
from fleetloop.triggers import load_config as load_triggers
from fleetloop.v1 import common_pb2 as pb


@dataclass(frozen=True)
class ObjectArrays:
    """The second's perceived objects, column-wise; shape (num_objects,) each. `gap_m`: the bumper
    gap ahead (m), `rel_x_m` read by the summary's position reference (UNSPECIFIED, BUMPER_GAP: as
    sent; BOX_CENTRE: less half the object's and the ego's lengths, the ego's from the summary or
    else triggers.yaml criticality.ego_length_m) through `criticality.box_offsets`."""

    cls: np.ndarray
    gap_m: np.ndarray
    y_m: np.ndarray
    vx_mps: np.ndarray
    vy_mps: np.ndarray
    confidence: np.ndarray
    from_occlusion: np.ndarray

    @classmethod
    def from_summary(cls, summary: pb.PerceptionSummary) -> ObjectArrays:
        objs = summary.objects
        ego_l = summary.ego_length_m if summary.HasField("ego_length_m") and summary.ego_length_m > 0 \
            else float(load_triggers().criticality.ego_length_m)
        rel_x = np.fromiter((o.rel_x_m for o in objs), np.float64, len(objs))
        length = np.fromiter((o.length_m for o in objs), np.float64, len(objs))
        return cls(
            cls=np.fromiter((o.object_class for o in objs), np.int32, len(objs)),
            gap_m=criticality.box_offsets(rel_x, length, ego_l,
                                          summary.position_reference != pb.POSITION_REFERENCE_BOX_CENTRE,
                                          to_gap=True),
            y_m=np.fromiter((o.rel_y_m for o in objs), np.float64, len(objs)),
            vx_mps=np.fromiter((o.rel_vx_mps for o in objs), np.float64, len(objs)),
            vy_mps=np.fromiter((o.rel_vy_mps for o in objs), np.float64, len(objs)),
            confidence=np.fromiter((o.confidence for o in objs), np.float64, len(objs)),
            from_occlusion=np.fromiter((o.emerged_from_occlusion for o in objs), bool, len(objs)),
        )

    @property
    def distance_m(self) -> np.ndarray:
        return np.hypot(self.gap_m, self.y_m)


@dataclass(frozen=True)
class SecondInputs:
    """What one vehicle-second offers the labelers; any part may be missing (None).

    pose: the PoseBatch decoded by `fleetloop.codec.pose_columns` (name -> array of
    shape (num_samples,)), None when there was no batch or it held no samples.
    """

    heartbeat: pb.Heartbeat | None
    pose: dict[str, np.ndarray] | None
    perception: pb.PerceptionSummary | None
    objects: ObjectArrays | None = None

    @classmethod
    def of(cls, heartbeat: pb.Heartbeat | None, pose: pb.PoseBatch | None,
           perception: pb.PerceptionSummary | None) -> SecondInputs:
        """Decode the pose columns and object arrays; a PoseBatch with no samples counts as missing.

        A malformed PoseBatch raises `fleetloop.codec.Rejected` (callers validate input with
        `codec.pose_arrays` first and dead-letter what fails).
        """
        columns = pose_columns(pose) if pose is not None and pose.sample_count > 0 else None
        objects = ObjectArrays.from_summary(perception) if perception is not None else None
        return cls(heartbeat, columns, perception, objects)

    def ego_speed_mps(self) -> float | None:
        """Mean pose speed over the second, else the heartbeat's speed, else None."""
        if self.pose is not None:
            return float(np.mean(self.pose["speed_mps"], dtype=np.float64))
        if self.heartbeat is not None:
            return float(self.heartbeat.speed_mps)
        return None


@dataclass
class FamilyLabels:
    """A labeler's output: evaluated tags (name -> bool) and numeric values (name -> float)."""

    tags: dict[str, bool] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    def one_hot(self, names: Mapping[int, str], value: int) -> None:
        """Set the one tag `names[value]` and clear its siblings; UNSPECIFIED leaves all unknown."""
        if value in names:
            for key, name in names.items():
                self.tags[name] = key == value


Labeler = Callable[[SecondInputs, Mapping[str, float]], FamilyLabels]


def label_environment(inputs: SecondInputs, th: Mapping[str, float]) -> FamilyLabels:
    """Weather and light from the perception summary."""
    out = FamilyLabels()
    if inputs.perception is not None:
        out.one_hot(WEATHER_TAGS, inputs.perception.weather)
        out.one_hot(LIGHT_TAGS, inputs.perception.light)
    return out


def label_road(inputs: SecondInputs, th: Mapping[str, float]) -> FamilyLabels:
    """Road type (heartbeat, else perception), junction, crosswalk, lanes, speed limit."""
    out = FamilyLabels()
    road_type = inputs.heartbeat.road_type if inputs.heartbeat is not None else pb.ROAD_TYPE_UNSPECIFIED
    if road_type == pb.ROAD_TYPE_UNSPECIFIED and inputs.perception is not None:
        road_type = inputs.perception.road_type
    out.one_hot(ROAD_TAGS, road_type)
    p = inputs.perception
    if p is None:
        return out
    if p.junction_type == pb.JUNCTION_TYPE_NONE:
        out.tags.update({name: False for name in JUNCTION_TAGS.values()})
    else:
        out.one_hot(JUNCTION_TAGS, p.junction_type)
    if p.junction_type != pb.JUNCTION_TYPE_UNSPECIFIED:
        out.tags["junction.any"] = p.junction_type != pb.JUNCTION_TYPE_NONE
    out.tags["crosswalk"] = p.crosswalk
    out.tags["turn.unprotected"] = p.unprotected_turn
    if p.lane_count > 0:
        out.values["road.lane_count"] = float(p.lane_count)
        out.tags["lanes.single"] = p.lane_count == 1
        out.tags["lanes.multi"] = p.lane_count > 1
        out.tags["lane.rightmost"] = p.lane_index == 0
        out.tags["lane.leftmost"] = p.lane_index == p.lane_count - 1
    if p.speed_limit_mps > 0:
        limit_kph = p.speed_limit_mps * MPS_TO_KPH
        out.values["road.speed_limit_kph"] = limit_kph
        out.tags["speed_limit.low"] = limit_kph <= th["low_speed_limit_kph"]
    return out


def label_agents(inputs: SecondInputs, th: Mapping[str, float]) -> FamilyLabels:
    """Agent classes present, counts, lead vehicle, cut-in, oncoming, crowd, crossing VRUs."""
    out = FamilyLabels()
    o = inputs.objects
    if o is None:
        return out
    for cls, name in CLASS_TAGS.items():
        out.tags[name] = bool(np.any(o.cls == cls))
    is_vehicle = np.isin(o.cls, VEHICLE_CLASSES)
    is_ped = o.cls == pb.OBJECT_CLASS_PEDESTRIAN
    dist = o.distance_m
    out.values.update({
        "agent.count": float(o.cls.size),
        "agent.vehicle_count": float(np.count_nonzero(is_vehicle)),
        "agent.pedestrian_count": float(np.count_nonzero(is_ped)),
        "agent.cyclist_count": float(np.count_nonzero(o.cls == pb.OBJECT_CLASS_CYCLIST)),
        "agent.tricycle_count": float(np.count_nonzero(o.cls == pb.OBJECT_CLASS_TRICYCLE)),
    })
    if o.cls.size:
        out.values["agent.min_distance_m"] = float(dist.min())
    out.tags["agent.pedestrian_from_occlusion"] = bool(np.any(is_ped & o.from_occlusion))

    in_corridor = is_vehicle & (o.gap_m > 0) & (o.gap_m < th["lead_max_distance_m"]) \
        & (np.abs(o.y_m) < th["lead_corridor_half_width_m"])
    out.tags["agent.lead_vehicle"] = bool(in_corridor.any())
    lead_close = False
    if in_corridor.any():
        lead = int(np.argmin(np.where(in_corridor, o.gap_m, np.inf)))
        gap_m = float(o.gap_m[lead])
        closing_mps = -float(o.vx_mps[lead])
        out.values["agent.lead_distance_m"] = gap_m
        lead_close = gap_m < th["lead_close_distance_m"]
        if closing_mps > 0:
            ttc_s = gap_m / closing_mps
            out.values["agent.lead_ttc_s"] = ttc_s
            lead_close = lead_close or ttc_s < th["lead_close_ttc_s"]
    out.tags["agent.lead_close"] = lead_close

    abs_y = np.abs(o.y_m)
    out.tags["agent.cut_in"] = bool(np.any(
        is_vehicle & (o.gap_m > 0) & (o.gap_m < th["cut_in_max_distance_m"])
        & (abs_y > th["cut_in_min_abs_y_m"]) & (abs_y < th["cut_in_max_abs_y_m"])
        & (o.vy_mps * np.sign(o.y_m) < -th["cut_in_min_lateral_speed_mps"])))
    ego_speed = inputs.ego_speed_mps()
    if ego_speed is not None:
        # Object ground speed along ego's heading = relative speed + ego speed.
        out.tags["agent.oncoming"] = bool(np.any(
            is_vehicle & (o.gap_m > 0) & (o.vx_mps + ego_speed < -th["oncoming_min_speed_mps"])))
    near_peds = np.count_nonzero(is_ped & (dist < th["crowd_radius_m"]))
    out.tags["agent.crowd"] = near_peds >= th["crowd_min_pedestrians"]
    is_vru = np.isin(o.cls, VRU_CLASSES)
    out.tags["agent.vru_close"] = bool(np.any(is_vru & (dist < th["vru_close_distance_m"])))
    moving_across = (np.abs(o.vy_mps) > th["crossing_min_lateral_speed_mps"]) \
        & ((o.vy_mps * o.y_m < 0) | (abs_y < th["lead_corridor_half_width_m"]))
    out.tags["agent.crossing"] = bool(np.any(
        is_vru & (o.gap_m > 0) & (o.gap_m < th["crossing_max_distance_m"]) & moving_across))
    return out


def label_ego(inputs: SecondInputs, th: Mapping[str, float]) -> FamilyLabels:
    """Ego motion from the 10 Hz pose samples (speed falls back to the heartbeat) and the
    planner's maneuver (u-turn, lane change, turns)."""
    out = FamilyLabels()
    speed = inputs.ego_speed_mps()
    if speed is not None:
        speed_kph = speed * MPS_TO_KPH
        out.values["ego.speed_kph"] = speed_kph
        bounds = (th["speed_band_low_kph"], th["speed_band_medium_kph"], th["speed_band_high_kph"],
                  th["speed_band_very_high_kph"])
        band = int(np.searchsorted(bounds, speed_kph, side="right"))
        out.tags.update({name: i == band for i, name in enumerate(SPEED_BANDS)})
    maneuver = inputs.perception.maneuver if inputs.perception is not None else ""
    if inputs.perception is not None:
        out.tags["ego.u_turn"] = maneuver == "u_turn"
        out.tags["ego.lane_change"] = maneuver.startswith("lane_change")
    pose = inputs.pose
    if pose is None:
        if speed is not None:
            out.tags["ego.stopped"] = speed < th["stopped_max_speed_mps"]
        if maneuver:
            out.tags["ego.turn_left"] = maneuver == "turn_left"
            out.tags["ego.turn_right"] = maneuver == "turn_right"
        return out
    v = pose["speed_mps"].astype(np.float64)
    a_lon = pose["accel_lon_mps2"].astype(np.float64)
    a_lat = pose["accel_lat_mps2"].astype(np.float64)
    yaw = pose["yaw_rate_rps"].astype(np.float64)
    gear = pose["gear"]
    stopped = bool(v.max() < th["stopped_max_speed_mps"])
    out.tags["ego.stopped"] = stopped
    out.tags["ego.reversing"] = bool(np.any((gear == -1) & (v > th["reversing_min_speed_mps"])))
    turning = float(v.mean()) > th["turn_min_speed_mps"] and yaw.size > 0
    mean_yaw = float(yaw.mean()) if yaw.size else 0.0
    yaw_left = turning and mean_yaw > th["turn_min_abs_yaw_rate_rps"]
    yaw_right = turning and mean_yaw < -th["turn_min_abs_yaw_rate_rps"]
    out.tags["ego.turn_left"] = yaw_left or maneuver == "turn_left"
    out.tags["ego.turn_right"] = yaw_right or maneuver == "turn_right"
    if yaw.size:
        out.values["ego.max_abs_yaw_rate_rps"] = float(np.abs(yaw).max())
    if a_lat.size:
        max_lat = float(np.abs(a_lat).max())
        out.values["ego.max_abs_accel_lat_mps2"] = max_lat
        out.tags["ego.high_lateral_accel"] = max_lat > th["high_lateral_accel_mps2"]
    if a_lon.size:
        mean_a, min_a = float(a_lon.mean()), float(a_lon.min())
        out.values["ego.accel_lon_mps2"] = mean_a
        out.values["ego.min_accel_lon_mps2"] = min_a
        out.tags["ego.accelerate"] = mean_a > th["accelerate_min_accel_mps2"]
        out.tags["ego.brake"] = mean_a < th["brake_max_accel_mps2"]
        out.tags["ego.hard_brake"] = min_a < th["hard_brake_max_accel_mps2"]
        out.tags["ego.cruise"] = (not stopped and abs(mean_a) < th["cruise_max_abs_accel_mps2"]
                                  and not out.tags["ego.turn_left"] and not out.tags["ego.turn_right"])
    return out


def label_perception(inputs: SecondInputs, th: Mapping[str, float]) -> FamilyLabels:
    """Perception confidence, rare objects, scene density, planner near-ties."""
    out = FamilyLabels()
    o = inputs.objects
    if o is None:
        return out
    near = o.distance_m < th["low_confidence_radius_m"]
    out.tags["perception.low_confidence"] = bool(np.any(near & (o.confidence < th["low_confidence_threshold"])))
    out.tags["perception.rare_object"] = bool(np.any(np.isin(o.cls, RARE_CLASSES)))
    out.tags["perception.many_objects"] = o.cls.size >= th["many_objects_min"]
    if o.cls.size:
        out.values["perception.min_confidence"] = float(o.confidence.min())
    costs = np.sort(np.asarray(inputs.perception.planner_top_costs, np.float64))
    if costs.size >= 2:
        gap = float((costs[1] - costs[0]) / max(abs(costs[0]), 1e-9))
        out.values["planner.top_cost_gap"] = gap
        out.tags["planner.uncertain"] = gap < th["planner_tie_relative_gap"]
    return out


def label_mode(inputs: SecondInputs, th: Mapping[str, float]) -> FamilyLabels:
    """Driving mode (last pose sample, else heartbeat), mode change, task and vehicle state."""
    out = FamilyLabels()
    hb = inputs.heartbeat
    modes = inputs.pose["mode"] if inputs.pose is not None else None
    if modes is not None:
        out.tags["mode.changed"] = bool(np.any(modes != modes[0]))
    mode = int(modes[-1]) if modes is not None else (hb.mode if hb is not None else pb.DRIVING_MODE_UNSPECIFIED)
    out.one_hot(MODE_TAGS, mode)
    if hb is None:
        return out
    out.one_hot(TASK_TAGS, hb.task_state)
    out.one_hot(CONNECTIVITY_TAGS, hb.connectivity)
    out.tags["vehicle.parked"] = hb.parked
    out.tags["vehicle.charging"] = hb.charging
    out.values["vehicle.state_of_charge"] = hb.state_of_charge
    out.values["vehicle.compute_temp_c"] = hb.compute_temp_c
    return out


def label_data(inputs: SecondInputs, th: Mapping[str, float]) -> FamilyLabels:
    """Which inputs the second had; always known, so partial rows are easy to find."""
    return FamilyLabels(tags={
        "data.no_heartbeat": inputs.heartbeat is None,
        "data.no_pose": inputs.pose is None,
        "data.no_perception": inputs.perception is None,
    })


LABELERS: dict[str, Labeler] = {
    "environment": label_environment,
    "road": label_road,
    "agents": label_agents,
    "ego": label_ego,
    "perception": label_perception,
    "mode": label_mode,
    "data": label_data,
}


def label_second(vehicle_id: str, second_ms: int, heartbeat: pb.Heartbeat | None,
                 pose: pb.PoseBatch | None, perception: pb.PerceptionSummary | None,
                 taxonomy: Taxonomy) -> LabelRow:
    """Label one vehicle-second.

    vehicle_id: the envelope's vehicle id. second_ms: any event time inside the second,
    epoch ms UTC (floored to the second). heartbeat / pose / perception: that second's
    messages, each may be None. Returns a LabelRow whose `known` bitset marks the tags the
    inputs allowed to evaluate; everything else is unknown (e.g. no perception => weather,
    light, agents unknown, and `data.no_perception` is TRUE). Numeric values are rounded
    to float32, the column type, so the row equals what the table returns. A malformed
    PoseBatch (column lengths not matching sample_count) raises `fleetloop.codec.Rejected`;
    validate with `codec.pose_arrays` upstream and dead-letter it.
    """
    inputs = SecondInputs.of(heartbeat, pose, perception)
    tags = known = 0
    values: dict[str, float] = {}
    for family, labeler in LABELERS.items():
        result = labeler(inputs, taxonomy.thresholds)
        for name, value in result.tags.items():
            tag = taxonomy.tag(name)
            if tag.family != family:
                raise ValueError(f"labeler {family!r} emitted {name!r} of family {tag.family!r}")
            known |= 1 << tag.bit
            if value:
                tags |= 1 << tag.bit
        for name, number in result.values.items():
            if np.isfinite(number):
                values[name] = float(np.float32(number))
    park = heartbeat.park if heartbeat is not None else ""
    city = heartbeat.city if heartbeat is not None else ""
    return LabelRow(vehicle_id=vehicle_id, ts_ms=second_ms - second_ms % 1000, tags=tags, known=known,
                    values=values, taxonomy_version=taxonomy.version, park=park, city=city)
