"""A vehicle's ring buffer: the last `capacity_s` seconds of its messages, by event time."""

from __future__ import annotations

from collections import deque

from fleetloop.v1 import common_pb2


class RingBuffer:
    """Messages of one vehicle, oldest first, dropped once older than `capacity_s` behind the newest.

    Input: (topic, Envelope) in roughly increasing event time (per-second batches of a simulator or a
    vehicle bus). `evicted_until_ms` is the newest event time dropped so far, so a reader can tell a
    window that left the buffer from one the vehicle never recorded.
    """

    def __init__(self, capacity_s: float) -> None:
        self.capacity_ms = int(capacity_s * 1000)
        self.items: deque[tuple[int, str, common_pb2.Envelope]] = deque()
        self.newest_ms = -1
        self.evicted_until_ms = -1

    def append(self, topic: str, envelope: common_pb2.Envelope) -> None:
        t_ms = envelope.event_time_ms
        if t_ms < self.newest_ms - self.capacity_ms:  # arrived after its time left the buffer
            self.evicted_until_ms = max(self.evicted_until_ms, t_ms)
            return
        self.items.append((t_ms, topic, envelope))
        self.newest_ms = max(self.newest_ms, t_ms)
        horizon = self.newest_ms - self.capacity_ms
        while self.items and self.items[0][0] < horizon:
            self.evicted_until_ms = max(self.evicted_until_ms, self.items.popleft()[0])

    def window(self, start_ms: int, end_ms: int) -> list[tuple[int, str, common_pb2.Envelope]]:
        """Messages with start_ms <= event time < end_ms, in event-time order."""
        return sorted((item for item in self.items if start_ms <= item[0] < end_ms), key=lambda item: item[0])

    def covers(self, start_ms: int) -> bool:
        """False once anything at or after `start_ms` may have been evicted."""
        return self.evicted_until_ms < start_ms
