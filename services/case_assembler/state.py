"""case-assembler hot state in Redis (keys fl:case-assembler:<what>:<id>, all with TTLs except the
`active` index): cases, the trigger → case map, each vehicle's latest case, cooldowns, link state
from heartbeats, daily budget usage and the fleet watermark. One batch's changes are written in one
MULTI/EXEC transaction, so a crash leaves the state of the previous batch or of this one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from fleetloop.state import key
from fleetloop.v1 import cases_pb2

from services.case_assembler.assembly import Cooldown, DayUsage, VehicleLink
from services.case_assembler.rows import case_from_json, case_json

SERVICE = "case-assembler"
CASE_TTL_S = 90 * 86_400        # cases stay hot for a quarter: adjudication and cooldown lookups
TRIGGER_TTL_S = 30 * 86_400     # dedup horizon of the trigger stream: longer than its Kafka retention
VEHICLE_TTL_S = 7 * 86_400      # latest case, cooldowns and link state of a vehicle gone for a week are moot
USAGE_TTL_S = 3 * 86_400        # a day's budget counter, kept a little past its day


@dataclass
class Changes:
    """Everything one batch (or one adjudication) changed, to be written at once."""

    cases: dict[str, cases_pb2.Case] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)            # trigger_id -> case id (or "~<id>": suppressed)
    latest: dict[str, str] = field(default_factory=dict)            # vehicle -> case id
    cooldowns: dict[tuple[str, str], Cooldown] = field(default_factory=dict)
    links: dict[str, VehicleLink] = field(default_factory=dict)
    usage: dict[str, DayUsage] = field(default_factory=dict)
    watermark_ms: int = 0


class CaseState:
    """Reads and writes the hot state. Values are JSON strings."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def active_cases(self) -> list[cases_pb2.Case]:
        ids = sorted(await self.client.smembers(key(SERVICE, "active")))
        return [c for c in await self.cases(ids) if c is not None]

    async def cases(self, case_ids: list[str]) -> list[cases_pb2.Case | None]:
        if not case_ids:
            return []
        values = await self.client.mget([key(SERVICE, "case", cid) for cid in case_ids])
        return [case_from_json(v) if v else None for v in values]

    async def routes(self, trigger_ids: list[str]) -> dict[str, str]:
        if not trigger_ids:
            return {}
        values = await self.client.mget([key(SERVICE, "trigger", tid) for tid in trigger_ids])
        return {tid: v for tid, v in zip(trigger_ids, values, strict=True) if v}

    async def latest(self, vehicle_id: str) -> str | None:
        return await self.client.get(key(SERVICE, "latest", vehicle_id))

    async def cooldown(self, vehicle_id: str, family: str) -> Cooldown | None:
        value = await self.client.get(key(SERVICE, "cooldown", f"{vehicle_id}:{family}"))
        return Cooldown(**json.loads(value)) if value else None

    async def link(self, vehicle_id: str) -> VehicleLink:
        value = await self.client.get(key(SERVICE, "link", vehicle_id))
        return VehicleLink(**json.loads(value)) if value else VehicleLink()

    async def usage(self, vehicle_id: str, day: int) -> DayUsage:
        value = await self.client.get(key(SERVICE, "usage", f"{vehicle_id}:{day}"))
        return DayUsage(**json.loads(value)) if value else DayUsage(day=day)

    async def all_usage(self) -> list[DayUsage]:
        """Every vehicle-day budget counter still held (for reports)."""
        keys = [k async for k in self.client.scan_iter(match=key(SERVICE, "usage", "*"), count=1000)]
        values = await self.client.mget(keys) if keys else []
        return [DayUsage(**json.loads(v)) for v in values if v]

    async def watermark_ms(self) -> int:
        return int(await self.client.get(key(SERVICE, "watermark")) or 0)

    async def save(self, changes: Changes) -> None:
        pipe = self.client.pipeline(transaction=True)
        for cid, case in changes.cases.items():
            pipe.set(key(SERVICE, "case", cid), case_json(case), ex=CASE_TTL_S)
            if any(u.status not in (cases_pb2.UPLOAD_STATUS_COMPLETE, cases_pb2.UPLOAD_STATUS_EXPIRED,
                                    cases_pb2.UPLOAD_STATUS_FAILED) for u in case.uploads):
                pipe.sadd(key(SERVICE, "active"), cid)
            else:
                pipe.srem(key(SERVICE, "active"), cid)
        for tid, route in changes.routes.items():
            pipe.set(key(SERVICE, "trigger", tid), route, ex=TRIGGER_TTL_S)
        for vid, cid in changes.latest.items():
            pipe.set(key(SERVICE, "latest", vid), cid, ex=VEHICLE_TTL_S)
        for (vid, family), cool in changes.cooldowns.items():
            pipe.set(key(SERVICE, "cooldown", f"{vid}:{family}"), json.dumps(cool.__dict__), ex=VEHICLE_TTL_S)
        for vid, link in changes.links.items():
            pipe.set(key(SERVICE, "link", vid), json.dumps(link.__dict__), ex=VEHICLE_TTL_S)
        for vid, usage in changes.usage.items():
            pipe.set(key(SERVICE, "usage", f"{vid}:{usage.day}"), json.dumps(usage.__dict__), ex=USAGE_TTL_S)
        if changes.watermark_ms:
            pipe.set(key(SERVICE, "watermark", ""), changes.watermark_ms, ex=CASE_TTL_S)
        await pipe.execute()
