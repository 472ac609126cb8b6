"""One vehicle's trigger runner: the same code on the vehicle, in the cloud and over recordings.

`TriggerRunner.feed(envelope)` buffers messages by event-time second and evaluates every trigger
over the seconds the watermark has passed (newest event time − `runner.allowed_lateness_s`), as
one `Frames` batch. Open episodes carry across batches, so where the batch boundaries fall changes
when an event is emitted, never which events there are. Input rules:

- duplicates (same `message_id`, or same bytes when it is empty) of a buffered message: skipped;
- input older than the evaluated horizon (late, out of order, or a re-sent duplicate of an
  evaluated second): skipped and counted as `stale`; the events are already out;
- NaN/inf and implausible values: masked in `frames` and counted as `masked_values`; a pose batch
  whose columns do not match its `sample_count` is dropped whole and counted as `malformed_pose`;
- pose gaps: each trigger's `bridge_gap_s` says how long a gap its episodes survive (sub-second
  for braking and weaving dynamics, two minutes for a vehicle stuck in place);
- another vehicle's messages or an envelope without payload: skipped and counted.

`snapshot()`/`restore()` checkpoint everything (buffer included), so a service that restores
the checkpoint and re-reads its input from the matching offsets emits no event twice and loses none.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable

from fleetloop.triggers.base import Detection, Trigger, build_triggers, ms
from fleetloop.triggers.config import TriggerConfig
from fleetloop.triggers.frames import FrameCarry, Frames, build_frames
from fleetloop.v1 import common_pb2, triggers_pb2

STATE_VERSION = 1


def trigger_id(vehicle_id: str, trigger: str, onset_ms: int) -> str:
    """Deterministic event id: the same incident found anywhere gets the same id."""
    return hashlib.sha1(f"{vehicle_id}|{trigger}|{onset_ms}".encode()).hexdigest()[:24]


class TriggerRunner:
    """Runs every enabled trigger of `config` over one vehicle's message stream (see module doc)."""

    def __init__(self, config: TriggerConfig, vehicle_id: str) -> None:
        self.config = config
        self.vehicle_id = vehicle_id
        self.triggers: list[Trigger] = build_triggers(config)
        self.lateness_ms = ms(config.runner.allowed_lateness_s)
        self.sanity = config.section("sanity")  # build_frames reads plain limits; dumped once, not per batch
        self.pending: dict[int, list[common_pb2.Envelope]] = defaultdict(list)
        self.pending_ids: set[str] = set()
        self.closed_until_ms = -1
        self.max_event_ms = -1
        self.carry = FrameCarry()
        self.counters: Counter[str] = Counter()

    def feed(self, envelope: common_pb2.Envelope) -> list[triggers_pb2.TriggerEvent]:
        """Accept one message; return the events completed by the seconds it lets close."""
        self._accept(envelope)
        return self._advance(self.max_event_ms - self.lateness_ms)

    def feed_many(self, envelopes: Iterable[common_pb2.Envelope],
                  input_watermark_ms: int | None = None) -> list[triggers_pb2.TriggerEvent]:
        """Accept a batch of messages, then evaluate once (a consumer's poll, a recording).

        `input_watermark_ms` (epoch ms) caps the evaluation for a consumer that merges several
        topics: seconds are closed only up to min(own newest time, input watermark) − allowed
        lateness, so a topic that lags behind the others in a backlog is waited for, not dropped.
        None means no cap (all inputs are in time order already).
        """
        for env in envelopes:
            self._accept(env)
        watermark = self.max_event_ms if input_watermark_ms is None else min(self.max_event_ms, input_watermark_ms)
        return self._advance(watermark - self.lateness_ms)

    def flush(self) -> list[triggers_pb2.TriggerEvent]:
        """End of stream: evaluate everything buffered and close every open episode."""
        events = self._advance((max(self.pending) + 1) * 1000) if self.pending else []
        detections = [d for trig in self.triggers for d in trig.finish()]
        return events + self._events(detections)

    def drop_pending(self) -> int:
        """Forget the buffered, not yet evaluated input and close the stream up to the newest event seen
        (a replay of it is then stale, never evaluated late); returns the number of messages dropped."""
        dropped = sum(len(envs) for envs in self.pending.values())
        self.pending.clear()
        self.pending_ids.clear()
        self.closed_until_ms = max(self.closed_until_ms, self.max_event_ms + 1)
        return dropped

    @property
    def stats(self) -> dict[str, int]:
        """Counters: accepted, duplicate, stale, wrong_vehicle, empty, masked_values, malformed_pose."""
        return {k: v for k, v in self.counters.items() if v}

    def snapshot(self) -> bytes:
        """The whole runner state, compact: open episodes, carry, buffered messages, counters."""
        carry = {"frames": self.carry.snapshot(), "triggers": {t.name: t.snapshot() for t in self.triggers}}
        state = triggers_pb2.TriggerRunnerState(
            state_version=STATE_VERSION, vehicle_id=self.vehicle_id, config_version=self.config.version,
            closed_until_ms=self.closed_until_ms, max_event_ms=self.max_event_ms,
            pending=[e for s in sorted(self.pending) for e in self.pending[s]],
            carry=zlib.compress(json.dumps(carry, separators=(",", ":")).encode()),
            counters=dict(self.counters),
        )
        return state.SerializeToString()

    @classmethod
    def restore(cls, data: bytes, config: TriggerConfig) -> TriggerRunner:
        """Restore a runner from `snapshot()`. Raises ValueError for an unknown state version."""
        state = triggers_pb2.TriggerRunnerState.FromString(data)
        if state.state_version != STATE_VERSION:
            raise ValueError(f"unknown trigger runner state version {state.state_version}")
        runner = cls(config, state.vehicle_id)
        runner.closed_until_ms = state.closed_until_ms
        runner.max_event_ms = state.max_event_ms
        for env in state.pending:
            runner.pending[env.event_time_ms // 1000].append(env)
            runner.pending_ids.add(_message_key(env))
        carry = json.loads(zlib.decompress(state.carry))
        runner.carry = FrameCarry.restore(carry["frames"])
        for trig in runner.triggers:
            if trig.name in carry["triggers"]:
                trig.restore(carry["triggers"][trig.name])
        runner.counters.update(dict(state.counters))
        return runner

    def _accept(self, env: common_pb2.Envelope) -> None:
        if env.vehicle_id != self.vehicle_id:
            self.counters["wrong_vehicle"] += 1
            return
        if env.WhichOneof("payload") is None:
            self.counters["empty"] += 1
            return
        if env.event_time_ms < self.closed_until_ms:
            self.counters["stale"] += 1
            return
        key = _message_key(env)
        if key in self.pending_ids:
            self.counters["duplicate"] += 1
            return
        self.pending_ids.add(key)
        self.pending[env.event_time_ms // 1000].append(env)
        self.max_event_ms = max(self.max_event_ms, env.event_time_ms)
        self.counters["accepted"] += 1

    def _advance(self, watermark_ms: int) -> list[triggers_pb2.TriggerEvent]:
        """Evaluate every buffered second that ends at or before `watermark_ms`."""
        until_ms = (watermark_ms // 1000) * 1000
        if until_ms <= self.closed_until_ms or (self.closed_until_ms < 0 and not self.pending):
            return []
        seconds = sorted(s for s in self.pending if s * 1000 < until_ms)
        envelopes = []
        for s in seconds:
            for env in self.pending.pop(s):
                self.pending_ids.discard(_message_key(env))
                envelopes.append(env)
        frames, self.carry = build_frames(envelopes, self.carry, self.sanity)
        self.counters["masked_values"] += frames.masked
        self.counters["malformed_pose"] += frames.malformed
        self.closed_until_ms = until_ms
        return self._events(self._evaluate(frames, until_ms))

    def _evaluate(self, frames: Frames, horizon_ms: int) -> list[Detection]:
        return [d for trig in self.triggers for d in trig.update(frames, horizon_ms)]

    def _events(self, detections: list[Detection]) -> list[triggers_pb2.TriggerEvent]:
        specs = self.config.triggers
        out = []
        for d in sorted(detections, key=lambda d: (d.onset_ms, d.trigger)):
            spec = specs[d.trigger]
            out.append(triggers_pb2.TriggerEvent(
                trigger_id=trigger_id(self.vehicle_id, d.trigger, d.onset_ms), vehicle_id=self.vehicle_id,
                trigger=d.trigger, category=int(d.category), severity=d.severity, weight=spec.weight,
                onset_ms=d.onset_ms, peak_ms=d.peak_ms, end_ms=d.end_ms, window_pre_s=spec.window_pre_s,
                window_post_s=spec.window_post_s, measurements=dict(d.measurements), detail=d.detail,
                config_version=self.config.version,
            ))
        return out


def _message_key(env: common_pb2.Envelope) -> str:
    if env.message_id:
        return env.message_id
    return hashlib.sha1(env.SerializeToString(deterministic=True)).hexdigest()


def detect_recording(envelopes: Iterable[common_pb2.Envelope],
                     config: TriggerConfig) -> list[triggers_pb2.TriggerEvent]:
    """All events of a recorded or simulated trajectory (any number of vehicles, any order).

    Each vehicle's messages are evaluated as one batch and then flushed; the result is sorted by
    vehicle, onset and trigger name.
    """
    by_vehicle: dict[str, list[common_pb2.Envelope]] = defaultdict(list)
    for env in envelopes:
        by_vehicle[env.vehicle_id].append(env)
    events = []
    for vehicle_id in sorted(by_vehicle):
        runner = TriggerRunner(config, vehicle_id)
        events.extend(runner.feed_many(by_vehicle[vehicle_id]))
        events.extend(runner.flush())
    return sorted(events, key=lambda e: (e.vehicle_id, e.onset_ms, e.trigger))
