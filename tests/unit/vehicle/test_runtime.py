"""Vehicle runtime: ring buffer, tiers, MCAP files readable by the `mcap` reader, the file object
store and the uploader's answers (no servers)."""

from __future__ import annotations

import hashlib
import io

import pytest
from fleetloop import topics
from fleetloop.config import ConfigError
from fleetloop.v1 import common_pb2, uploads_pb2
from fleetloop.vehicle import FileObjectStore, RingBuffer, Uploader, open_store, read_mcap
from fleetloop.vehicle.logs import tier_messages
from fleetloop.vehicle.params import load_vehicle_params
from mcap.exceptions import McapError
from mcap.reader import make_reader

from tests.support.fleetdata import T0_MS, drive

PARAMS = load_vehicle_params().model_copy(update={"ring_capacity_s": 120.0})


def perception(vehicle_id: str, t_ms: int) -> common_pb2.Envelope:
    env = common_pb2.Envelope(schema_version=1, vehicle_id=vehicle_id, event_time_ms=t_ms,
                              message_id=f"{vehicle_id}/pe/{t_ms}")
    env.perception.weather = common_pb2.WEATHER_RAIN
    env.perception.planner_top_costs.extend([1.0, 1.02])
    env.perception.objects.add(track_id=7, object_class=common_pb2.OBJECT_CLASS_TRICYCLE, rel_x_m=12.0,
                               confidence=0.8)
    return env


def filled(vehicle_id: str = "veh-1", seconds: int = 100) -> RingBuffer:
    """A buffer fed second by second: heartbeat, pose and perception at 1 Hz."""
    buffer = RingBuffer(PARAMS.ring_capacity_s)
    telemetry = drive(vehicle_id, seconds)
    for s in range(seconds):
        for topic, env in telemetry[2 * s:2 * s + 2]:
            buffer.append(topic, env)
        buffer.append(topics.PERCEPTION, perception(vehicle_id, T0_MS + 1000 * s))
    return buffer


def request(tier: str, start_s: float, end_s: float, request_id: str = "req-1") -> uploads_pb2.UploadRequest:
    return uploads_pb2.UploadRequest(request_id=request_id, case_id="case-1", tier=tier,
                                     window_start_ms=T0_MS + int(start_s * 1000),
                                     window_end_ms=T0_MS + int(end_s * 1000), attempt=1)


def test_ring_buffer_keeps_capacity_and_knows_what_it_evicted():
    buffer = filled(seconds=300)
    assert buffer.newest_ms == T0_MS + 299_000
    assert min(t for t, _, _ in buffer.items) >= buffer.newest_ms - 120_000
    assert not buffer.covers(T0_MS + 100_000) and buffer.covers(T0_MS + 200_000)
    buffer.append(topics.PERCEPTION, perception("veh-1", T0_MS))  # far too late: dropped, never kept
    assert min(t for t, _, _ in buffer.items) >= buffer.newest_ms - 120_000
    window = buffer.window(T0_MS + 200_000, T0_MS + 210_000)
    assert [t for t, _, _ in window] == sorted(t for t, _, _ in window)
    assert {t // 1000 for t, _, _ in window} == {(T0_MS + 1000 * s) // 1000 for s in range(200, 210)}


def test_microlog_drops_objects_and_planner_outputs_minilog_keeps_them():
    buffer = filled()
    before = [(t, topic, env.SerializeToString()) for t, topic, env in buffer.items]
    items = buffer.window(T0_MS, T0_MS + 5000)
    mini = [e for _, t, e in tier_messages("minilog", items) if t == topics.PERCEPTION]
    assert len(mini) == 5
    assert all(len(e.perception.objects) == 1 and len(e.perception.planner_top_costs) == 2 for e in mini)
    micro = [e for _, t, e in tier_messages("microlog", items) if t == topics.PERCEPTION]
    assert len(micro) == 5
    assert all(not e.perception.objects and not e.perception.planner_top_costs for e in micro)
    assert all(e.perception.weather == common_pb2.WEATHER_RAIN for e in micro)
    # The buffer itself is untouched: slimming the microlog works on copies.
    assert [(t, topic, env.SerializeToString()) for t, topic, env in buffer.items] == before
    buffered = [e for _, t, e in items if t == topics.PERCEPTION]
    assert len(buffered) == 5 and all(len(e.perception.objects) == 1 for e in buffered)
    with pytest.raises(ValueError, match="unknown tier"):
        tier_messages("video", items)


@pytest.mark.parametrize("tier", ["microlog", "minilog", "raw"])
def test_uploader_writes_a_complete_readable_mcap_and_an_honest_manifest(tmp_path, tier):
    store = open_store((tmp_path / "objects").as_uri())
    accepted, complete = Uploader(store, PARAMS).answer("veh-1", filled(), request(tier, 40, 55))
    assert accepted.state == uploads_pb2.UPLOAD_STATE_ACCEPTED
    assert complete.state == uploads_pb2.UPLOAD_STATE_COMPLETE and complete.uri.startswith("file://")
    data = store.get(complete.uri)
    assert complete.size_bytes == len(data) and complete.sha256 == hashlib.sha256(data).hexdigest()
    metadata, messages = read_mcap(data)
    assert metadata["case_id"] == "case-1" and metadata["tier"] == tier
    # 15 s of 1 Hz heartbeat, pose and perception: every message of the window, none outside it.
    assert complete.message_count == len(messages) == 45
    assert {ch for ch, _, _ in messages} == {"/heartbeat", "/pose", "/perception"}
    assert all(T0_MS + 40_000 <= t < T0_MS + 55_000 for _, t, _ in messages)
    summary = make_reader(io.BytesIO(data)).get_summary()
    assert summary.statistics.message_count == 45
    assert {s.encoding for s in summary.schemas.values()} == {"protobuf"}
    if tier == "raw":
        assert complete.declared_bytes == int(15 * PARAMS.raw_bytes_per_s)  # declared, not written
        assert complete.declared_bytes > 1000 * complete.size_bytes
    else:
        assert complete.declared_bytes == complete.size_bytes


def test_uploader_refuses_what_it_cannot_deliver(tmp_path):
    uploader = Uploader(open_store((tmp_path / "o").as_uri()), PARAMS)
    buffer = filled(seconds=300)
    (evicted,) = uploader.answer("veh-1", buffer, request("microlog", 10, 25))
    assert evicted.state == uploads_pb2.UPLOAD_STATE_FAILED and not evicted.retryable
    assert "ring buffer" in evicted.error
    (future,) = uploader.answer("veh-1", buffer, request("microlog", 295, 310))
    assert future.state == uploads_pb2.UPLOAD_STATE_FAILED and future.retryable
    (unknown,) = uploader.answer("veh-9", None, request("microlog", 0, 5))
    assert unknown.state == uploads_pb2.UPLOAD_STATE_FAILED


def test_a_damaged_mcap_is_detected_by_the_reader(tmp_path):
    store = open_store((tmp_path / "o").as_uri())
    _, complete = Uploader(store, PARAMS).answer("veh-1", filled(), request("minilog", 40, 55))
    data = bytearray(store.get(complete.uri))
    (chunk,) = make_reader(io.BytesIO(bytes(data))).get_summary().chunk_indexes
    data[chunk.chunk_start_offset + chunk.chunk_length // 2] ^= 0xFF  # damage the logged messages
    assert hashlib.sha256(data).hexdigest() != complete.sha256  # what the assembler checks end to end
    with pytest.raises((McapError, ValueError)):
        read_mcap(bytes(data))


def test_file_store_stays_inside_its_root_and_s3_is_named_not_silently_ignored(tmp_path):
    store = FileObjectStore(tmp_path / "root")
    uri = store.put("a/b.mcap", b"hello")
    assert store.get(uri) == b"hello" and store.stat(uri) == (5, hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(ValueError):
        store.put("../escape", b"x")
    with pytest.raises(ValueError):
        store.get((tmp_path / "elsewhere").as_uri())
    with pytest.raises(ValueError, match="s3"):
        open_store("s3://bucket/prefix")


def test_vehicle_params_come_from_vehicle_yaml_and_bad_values_name_their_key(tmp_path):
    params = load_vehicle_params()
    assert (params.ring_capacity_s, params.raw_bytes_per_s) == (900.0, 4e9 / 60)
    path = tmp_path / "vehicle.yaml"
    path.write_text("ring_buffer: {capacity_s: -1}\nraw: {bytes_per_minute: 4.0e9, per_hour: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_vehicle_params(path)
    assert str(err.value).splitlines() == [
        f"{path}: ring_buffer.capacity_s: Input should be greater than 0 (got -1)",
        f"{path}: raw.per_hour: unknown key",
        f"{path}: charging_sites: required key is missing",
        f"{path}: replay_queue: required key is missing"]
