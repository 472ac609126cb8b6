"""Log tiers and their MCAP files.

A tier is a view of the same buffered messages at a given density (ARCHITECTURE §1.3, issue 4):

- microlog: pose, heartbeats, vehicle events and the perception summary's scene context
  (weather, light, road, junction, maneuver) without the object list — small, always uploaded;
- minilog: everything in microlog plus the dense perception objects and the planner outputs
  (candidate costs) — what a planning problem needs for replay;
- raw: the full sensor data. The simulator has no sensor frames, so a raw file holds the minilog
  content and declares the sensor volume it stands for in its metadata and manifest.

Every file has one protobuf schema (`fleetloop.v1.Envelope`, with its FileDescriptorSet, so
Foxglove and the `mcap` tools decode it), one channel per source topic (log time = event time in
ns), and a `fleetloop.upload` metadata record naming the case, tier, vehicle and window.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer

from fleetloop import topics
from fleetloop.v1 import common_pb2

TIERS = ("microlog", "minilog", "raw")
SCHEMA_NAME = "fleetloop.v1.Envelope"
METADATA_NAME = "fleetloop.upload"
CHANNELS = {topics.POSE: "/pose", topics.HEARTBEAT: "/heartbeat", topics.EVENTS: "/events",
            topics.PERCEPTION: "/perception"}


def _descriptor_set(file: FileDescriptor) -> bytes:
    """The FileDescriptorSet of `file` and everything it imports, dependencies first."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        out.file.append(proto)

    add(file)
    return out.SerializeToString()


ENVELOPE_SCHEMA = _descriptor_set(common_pb2.DESCRIPTOR)


def tier_messages(tier: str, items: Iterable[tuple[int, str, common_pb2.Envelope]]
                  ) -> list[tuple[int, str, common_pb2.Envelope]]:
    """The buffered (t_ms, topic, envelope) items a tier carries, in the same order.

    Raises ValueError for an unknown tier.
    """
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
    out = []
    for t_ms, topic, env in items:
        if topic not in CHANNELS:
            continue
        if tier == "microlog" and topic == topics.PERCEPTION:
            slim = common_pb2.Envelope()
            slim.CopyFrom(env)
            slim.perception.ClearField("objects")
            slim.perception.ClearField("planner_top_costs")
            env = slim
        out.append((t_ms, topic, env))
    return out


@dataclass(frozen=True)
class McapFile:
    data: bytes
    message_count: int


def write_mcap(items: Iterable[tuple[int, str, common_pb2.Envelope]], metadata: Mapping[str, str]) -> McapFile:
    """One MCAP file (zstd chunks, full index) of the items, plus the `fleetloop.upload` metadata."""
    buffer = io.BytesIO()
    writer = Writer(buffer, compression=CompressionType.ZSTD)
    writer.start(profile="", library="fleetloop")
    schema_id = writer.register_schema(SCHEMA_NAME, "protobuf", ENVELOPE_SCHEMA)
    channel_ids: dict[str, int] = {}
    count = 0
    for t_ms, topic, env in items:
        if topic not in channel_ids:
            channel_ids[topic] = writer.register_channel(CHANNELS[topic], "protobuf", schema_id,
                                                         {"kafka_topic": topic})
        t_ns = t_ms * 1_000_000
        writer.add_message(channel_ids[topic], log_time=t_ns, data=env.SerializeToString(), publish_time=t_ns,
                           sequence=count)
        count += 1
    writer.add_metadata(METADATA_NAME, dict(metadata))
    writer.finish()
    return McapFile(buffer.getvalue(), count)


def read_mcap(data: bytes) -> tuple[dict[str, str], list[tuple[str, int, common_pb2.Envelope]]]:
    """Read a file written by `write_mcap`: (metadata, [(channel, log_time_ms, envelope)]).

    CRCs are validated; a damaged file raises the reader's error.
    """
    reader = make_reader(io.BytesIO(data), validate_crcs=True)
    metadata: dict[str, str] = {}
    for record in reader.iter_metadata():
        if record.name == METADATA_NAME:
            metadata = dict(record.metadata)
    messages = [(channel.topic, message.log_time // 1_000_000, common_pb2.Envelope.FromString(message.data))
                for _, channel, message in reader.iter_messages(log_time_order=True)]
    return metadata, messages
