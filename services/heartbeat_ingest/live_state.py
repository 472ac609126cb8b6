"""Each vehicle's live state in Redis: `fl:ingest:vehicle:<id>` (hash, TTL) and the fleet index
`fl:ingest:last_seen` (sorted set, permanent). Writes are ordered by event time: a replayed or
late heartbeat never overwrites a newer state."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from fleetloop.state import key
from fleetloop.v1 import common_pb2

SERVICE = "ingest"
LAST_SEEN = key(SERVICE, "last_seen")
STATE_TTL_S = 86_400  # a day: long enough to answer "where was it last", short enough to expire retired vehicles

_UPDATE_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], 'last_seen_ms') or '0')
if tonumber(ARGV[1]) < current then return 0 end
redis.call('HSET', KEYS[1], 'last_seen_ms', ARGV[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'GT', ARGV[1], ARGV[3])
return 1
"""

STATE_FIELDS = ("mode", "speed_mps", "lat_deg", "lon_deg", "road_type", "task_id", "task_state", "park",
                "city", "software_version")


def vehicle_key(vehicle_id: str) -> str:
    return key(SERVICE, "vehicle", vehicle_id)


class LiveState:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._update = client.register_script(_UPDATE_IF_NEWER)

    async def apply(self, heartbeats: Sequence[common_pb2.Envelope]) -> None:
        """Write the newest heartbeat of each vehicle in the batch."""
        newest: dict[str, common_pb2.Envelope] = {}
        for env in heartbeats:
            seen = newest.get(env.vehicle_id)
            if seen is None or env.event_time_ms >= seen.event_time_ms:
                newest[env.vehicle_id] = env
        if not newest:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for vehicle_id, env in newest.items():
                hb = env.heartbeat
                fields: list[str | int | float] = []
                for name in STATE_FIELDS:
                    fields += [name, getattr(hb, name)]
                await self._update(keys=[vehicle_key(vehicle_id), LAST_SEEN],
                                   args=[env.event_time_ms, STATE_TTL_S, vehicle_id, *fields], client=pipe)
            await pipe.execute()

    async def watermark_ms(self) -> int:
        """The fleet's event-time watermark: the newest heartbeat of any vehicle."""
        top = await self.client.zrange(LAST_SEEN, -1, -1, withscores=True)
        return int(top[0][1]) if top else 0

    async def vehicle(self, vehicle_id: str) -> dict[str, str] | None:
        state = await self.client.hgetall(vehicle_key(vehicle_id))
        if state:
            return state
        last_seen = await self.client.zscore(LAST_SEEN, vehicle_id)
        return None if last_seen is None else {"last_seen_ms": str(int(last_seen))}

    async def all_vehicles(self) -> list[dict[str, str]]:
        ids = await self.client.zrange(LAST_SEEN, 0, -1, withscores=True)
        async with self.client.pipeline(transaction=False) as pipe:
            for vehicle_id, _ in ids:
                pipe.hgetall(vehicle_key(vehicle_id))
            states = await pipe.execute()
        out = []
        for (vehicle_id, last_seen), state in zip(ids, states, strict=True):
            out.append({"vehicle_id": vehicle_id, "last_seen_ms": str(int(last_seen)), **state})
        return out
