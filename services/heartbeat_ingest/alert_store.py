"""The alert lifecycle in Redis: `fl:ingest:alert:<id>` holds the serialized Alert (30-day TTL),
`fl:ingest:alerts` (sorted set by event time) is the permanent index. Monitor updates merge by
revision, so a replayed or duplicated update never opens a second alert or undoes a person's
acknowledgement."""

from __future__ import annotations

from collections.abc import Sequence

from fleetloop.monitors import acknowledge, apply_monitor_update, resolve
from fleetloop.state import connect, key
from fleetloop.v1 import alerts_pb2

INDEX = key("ingest", "alerts")
ALERT_TTL_S = 30 * 86_400  # a month of history for reviews; the alerts topic is the long-term record


def alert_key(alert_id: str) -> str:
    return key("ingest", "alert", alert_id)


class AlertStore:
    def __init__(self, url: str) -> None:
        # Alerts are stored as protobuf bytes, so this client does not decode responses.
        self.client = connect(url, decode_responses=False)

    async def get(self, alert_id: str) -> alerts_pb2.Alert | None:
        raw = await self.client.get(alert_key(alert_id))
        return None if raw is None else alerts_pb2.Alert.FromString(raw)

    async def put(self, alert: alerts_pb2.Alert) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(alert_key(alert.alert_id), alert.SerializeToString(), ex=ALERT_TTL_S)
            pipe.zadd(INDEX, {alert.alert_id: alert.event_ms})
            await pipe.execute()

    async def merge(self, updates: Sequence[alerts_pb2.Alert]) -> list[alerts_pb2.Alert]:
        """Apply monitor updates; returns the stored views that changed (to publish)."""
        changed = []
        for update in updates:
            stored = await self.get(update.alert_id)
            merged = apply_monitor_update(stored, update)
            if stored is None or merged.revision != stored.revision or merged.state != stored.state:
                await self.put(merged)
                changed.append(merged)
        return changed

    async def acknowledge(self, alert_id: str, actor: str, at_ms: int, note: str) -> alerts_pb2.Alert | None:
        stored = await self.get(alert_id)
        if stored is None:
            return None
        updated = acknowledge(stored, actor, at_ms, note)
        await self.put(updated)
        return updated

    async def resolve(self, alert_id: str, actor: str, at_ms: int, note: str) -> alerts_pb2.Alert | None:
        stored = await self.get(alert_id)
        if stored is None:
            return None
        updated = resolve(stored, actor, at_ms, note)
        await self.put(updated)
        return updated

    async def newest(self, limit: int, offset: int = 0) -> list[alerts_pb2.Alert]:
        ids = await self.client.zrevrange(INDEX, offset, offset + limit - 1)
        if not ids:
            return []
        raws = await self.client.mget([alert_key(i.decode()) for i in ids])
        return [alerts_pb2.Alert.FromString(raw) for raw in raws if raw is not None]

    async def count(self) -> int:
        return await self.client.zcard(INDEX)

    async def close(self) -> None:
        await self.client.aclose()
