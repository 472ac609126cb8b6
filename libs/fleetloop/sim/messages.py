"""The messages of one simulated second: heartbeat, pose batch and perception envelopes of every online
vehicle, built as wire bytes with `fleetloop.sim.wire` and parsed once, then the second's events."""

from __future__ import annotations

import numpy as np

from fleetloop import topics
from fleetloop.sim import wire
from fleetloop.sim.state import ROAD_CODES, FleetState, Vehicle
from fleetloop.v1 import common_pb2

SCHEMA_VERSION = 1


class MessageBuilder:
    """Envelopes of every vehicle for one second; message ids are `<vehicle>/<hb|pose|pe>/<t_ms>` and
    `<vehicle>/ev/<t_ms>/<n>`."""

    def __init__(self, vehicles: list[Vehicle], state: FleetState, start_ms: int) -> None:
        self.vehicles, self.state = vehicles, state
        self._heads = []  # per vehicle, envelope bytes up to the message id's time, per topic
        for veh in vehicles:
            prefix = wire.envelope_prefix(SCHEMA_VERSION, veh.vehicle_id)
            heads = []
            for tag in ("hb", "pose", "pe"):
                mid_len = len(f"{veh.vehicle_id}/{tag}/") + len(str(start_ms))
                heads.append(prefix + wire.K_MESSAGE_ID + wire.varint(mid_len) + f"{veh.vehicle_id}/{tag}/".encode())
            self._heads.append(tuple(heads))
        self._strings: list[tuple[str, bytes]] = [("", b"")] * len(vehicles)  # (task id, heartbeat strings)

    def _heartbeat_strings(self, i: int) -> bytes:
        veh = self.vehicles[i]
        task_id, raw = self._strings[i]
        if task_id != veh.task_id:
            raw = wire.heartbeat_strings(veh.task_id, veh.city.name, veh.park.name, veh.route, veh.software_version)
            self._strings[i] = (veh.task_id, raw)
        return raw

    def second(self, t_ms: int, online: np.ndarray, mode0: np.ndarray, task0: np.ndarray, road0: np.ndarray,
               perception: list[bytes], geo: dict[str, np.ndarray], speed32: np.ndarray,
               events: list[tuple[int, int, common_pb2.VehicleEvent]]) -> list[tuple[str, common_pb2.Envelope]]:
        """(topic, envelope) of every online vehicle's heartbeat, pose and perception, then the events by
        (vehicle, time). `online`, `mode0`, `task0`, `road0`: the state at the second's start; `geo`: the
        (n, 10) samples of `Kinematics.geometry`, `speed32` their speeds as sent."""
        st = self.state
        n = st.n
        pose = wire.POSE.empty(n)
        pose["sample_count"] = wire.SAMPLES
        pose["t_ms"] = t_ms + 100 * np.arange(wire.SAMPLES)
        pose["x_m"], pose["y_m"], pose["lat_deg"], pose["lon_deg"] = geo["x"], geo["y"], geo["lat"], geo["lon"]
        pose["speed_mps"] = speed32
        pose["accel_lon_mps2"], pose["accel_lat_mps2"] = geo["a"], geo["alat"]
        pose["heading_rad"], pose["yaw_rate_rps"], pose["steering_rad"] = geo["heading"], geo["yaw"], geo["steer"]
        pose["throttle"], pose["brake"] = geo["throttle"], geo["brake"]
        pose["gear"] = (~st.parked)[:, None].astype(np.int8)
        pose["mode"] = mode0[:, None]
        hb = wire.HEARTBEAT.empty(n)
        hb["mode"], hb["road_type"], hb["task_state"] = mode0, ROAD_CODES[road0], task0
        hb["connectivity"] = np.where((road0 == 0) | st.parked, common_pb2.CONNECTIVITY_WIFI,
                                      common_pb2.CONNECTIVITY_CELLULAR)
        hb["charging"], hb["parked"] = st.charging, st.parked
        hb["speed_mps"], hb["lat_deg"], hb["lon_deg"] = geo["v"][:, 0], geo["lat"][:, 0], geo["lon"][:, 0]
        hb["x_m"], hb["y_m"] = geo["x"][:, 0], geo["y"][:, 0]
        hb["state_of_charge"], hb["odometer_m"], hb["compute_temp_c"] = \
            st.state_of_charge, st.odometer_m, st.compute_temp_c
        pose_raw, hb_raw = pose.tobytes(), hb.tobytes()
        pose_size, hb_size = wire.POSE.dtype.itemsize, wire.HEARTBEAT.dtype.itemsize
        tail = str(t_ms).encode() + wire.K_TIME + wire.varint(t_ms)
        varints = wire.VARINTS
        from_env = common_pb2.Envelope.FromString
        heads = self._heads
        k_hb, k_pe, hb_topic, pose_topic, pe_topic = (wire.K_HEARTBEAT, wire.K_PERCEPTION, topics.HEARTBEAT,
                                                      topics.POSE, topics.PERCEPTION)
        pose_head = tail + wire.K_POSE + varints[pose_size]
        idx = online.nonzero()[0].tolist()
        strings = {i: self._heartbeat_strings(i) for i in idx}
        heartbeats = [(hb_topic, from_env(b"".join((
            heads[i][0], tail, k_hb, varints[hb_size + len(strings[i])], hb_raw[i * hb_size:(i + 1) * hb_size],
            strings[i])))) for i in idx]
        poses = [(pose_topic, from_env(b"".join((
            heads[i][1], pose_head, pose_raw[i * pose_size:(i + 1) * pose_size])))) for i in idx]
        perceptions = [(pe_topic, from_env(b"".join((
            heads[i][2], tail, k_pe, varints[len(perception[i])], perception[i])))) for i in idx]
        out: list[tuple[str, common_pb2.Envelope]] = heartbeats + poses + perceptions
        seq: dict[int, int] = {}
        for i, t_ev, event in sorted(events, key=lambda e: (e[0], e[1])):
            nseq = seq.get(i, 0)
            seq[i] = nseq + 1
            vid = self.vehicles[i].vehicle_id
            out.append((topics.EVENTS, common_pb2.Envelope(
                schema_version=SCHEMA_VERSION, vehicle_id=vid, event_time_ms=t_ev,
                message_id=f"{vid}/ev/{t_ev}/{nseq}", event=event)))
        return out
