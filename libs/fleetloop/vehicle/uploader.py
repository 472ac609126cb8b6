"""The uploader: answers one upload request by cutting the window from a vehicle's ring buffer,
writing the tier as an MCAP file to the object store and describing it in manifests."""

from __future__ import annotations

import hashlib

from fleetloop.v1 import uploads_pb2
from fleetloop.vehicle.logs import TIERS, McapFile, tier_messages, write_mcap
from fleetloop.vehicle.objectstore import ObjectStore
from fleetloop.vehicle.params import VehicleParams
from fleetloop.vehicle.ring import RingBuffer

SCHEMA_VERSION = 1
ACCEPTED, COMPLETE, FAILED = (uploads_pb2.UPLOAD_STATE_ACCEPTED, uploads_pb2.UPLOAD_STATE_COMPLETE,
                              uploads_pb2.UPLOAD_STATE_FAILED)


def object_key(vehicle_id: str, request: uploads_pb2.UploadRequest) -> str:
    """Deterministic object name: a repeated request overwrites the same object, never adds one."""
    return f"{vehicle_id}/{request.case_id}/{request.tier}-{request.request_id}.mcap"


def manifest(vehicle_id: str, request: uploads_pb2.UploadRequest, state: int, now_ms: int,
             **fields) -> uploads_pb2.UploadManifest:
    """One manifest step of `request`; its message id is stable across re-sends."""
    message_id = hashlib.sha1(f"{request.request_id}|{state}".encode()).hexdigest()[:24]
    return uploads_pb2.UploadManifest(
        schema_version=SCHEMA_VERSION, vehicle_id=vehicle_id, event_time_ms=now_ms, message_id=message_id,
        request_id=request.request_id, case_id=request.case_id, tier=request.tier,
        window_start_ms=request.window_start_ms, window_end_ms=request.window_end_ms, state=state, **fields)


def cut_tier(vehicle_id: str, buffer: RingBuffer, request: uploads_pb2.UploadRequest,
             params: VehicleParams) -> tuple[McapFile, int]:
    """The MCAP file of `request`'s tier and window cut from `buffer`, and the raw volume it declares
    (bytes; 0 for the light tiers). The uploader and the replay queue's snapshot make the same cut."""
    items = tier_messages(request.tier, buffer.window(request.window_start_ms, request.window_end_ms))
    window_s = (request.window_end_ms - request.window_start_ms) / 1000.0
    declared_raw = int(window_s * params.raw_bytes_per_s) if request.tier == "raw" else 0
    log = write_mcap(items, {
        "case_id": request.case_id, "tier": request.tier, "vehicle_id": vehicle_id,
        "request_id": request.request_id, "window_start_ms": str(request.window_start_ms),
        "window_end_ms": str(request.window_end_ms),
        "declared_raw_bytes": str(declared_raw),
        "note": ("simulated raw: minilog content; the sensor volume is declared, not written"
                 if request.tier == "raw" else ""),
    })
    return log, declared_raw


class Uploader:
    """Cuts windows and writes tiers for one fleet of vehicles into one object store."""

    def __init__(self, store: ObjectStore, params: VehicleParams) -> None:
        self.store = store
        self.params = params

    def answer(self, vehicle_id: str, buffer: RingBuffer | None,
               request: uploads_pb2.UploadRequest) -> list[uploads_pb2.UploadManifest]:
        """The manifests for `request`: ACCEPTED then COMPLETE, or FAILED with a reason.

        Event times of the manifests are the vehicle's newest buffered time (its clock).
        """
        now_ms = buffer.newest_ms if buffer is not None else request.window_end_ms
        if request.tier not in TIERS:
            return [manifest(vehicle_id, request, FAILED, now_ms, error=f"unknown tier {request.tier!r}")]
        if request.window_end_ms <= request.window_start_ms:
            return [manifest(vehicle_id, request, FAILED, now_ms, error="empty window")]
        if buffer is None:
            return [manifest(vehicle_id, request, FAILED, now_ms, error="no data recorded for this vehicle")]
        if not buffer.covers(request.window_start_ms):
            return [manifest(vehicle_id, request, FAILED, now_ms,
                             error=f"window left the ring buffer (kept back to {buffer.evicted_until_ms})")]
        if buffer.newest_ms < request.window_end_ms:
            return [manifest(vehicle_id, request, FAILED, now_ms, retryable=True,
                             error="window not fully recorded yet")]
        accepted = manifest(vehicle_id, request, ACCEPTED, now_ms)
        log, declared_raw = cut_tier(vehicle_id, buffer, request, self.params)
        uri = self.store.put(object_key(vehicle_id, request), log.data)
        complete = manifest(vehicle_id, request, COMPLETE, now_ms, uri=uri, size_bytes=len(log.data),
                            sha256=hashlib.sha256(log.data).hexdigest(), message_count=log.message_count,
                            declared_bytes=declared_raw or len(log.data))
        return [accepted, complete]
