"""trigger-engine over a simulated backlog: how cross-topic alignment decides what it finds.

The backlog (tests/support/enginedata.py: 4 vehicles x 25 min, 25 injected incidents) is published to a
fresh embedded broker before the engine starts, so the four input topics arrive in fetch order,
minutes apart in event time. Two variants of the in-process engine drain it, each on its own broker:

- shipped     — the timestamp-synchronised input watermark (max.task.idle semantics);
- lateness    — the same engine with the input watermark switched off, so each runner closes its
                seconds on its own newest event time minus the runner's 2 s lateness only.

For each: the wall time to drain the backlog (batch 2,000, checkpoints included), the events emitted,
how many are byte-identical to `detect_recording`, the injected incidents found, and the records the
runners skipped as stale. **Baseline**, same run: `detect_recording` over the same messages in
process (no broker): the library alone. The last line printed is one JSON object.

    .venv/bin/python bench/trigger_engine.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetloop.bus import Bus  # noqa: E402
from fleetloop.config import Settings  # noqa: E402
from fleetloop.embedded import start_broker  # noqa: E402

from services.trigger_engine.service import TriggerEngine  # noqa: E402
from tests.support.enginedata import as_raw, emitted, expected_events, publish, simulate  # noqa: E402

MATCH_SLACK_MS = 5_000


class LatenessOnly(TriggerEngine):
    """The engine without its input watermark: every runner evaluates up to its own newest time − 2 s."""

    async def input_watermark(self, partition: int) -> int | None:
        return None


async def drain(engine_class: type[TriggerEngine], raw: list, workdir: Path) -> dict:
    broker, bootstrap = start_broker()
    try:
        await publish(bootstrap, raw)
        settings = Settings(kafka_bootstrap_servers=bootstrap, redis_url="redis://unused", data_dir=workdir,
                            grpc_port=0, consumer_batch_max=2000, consumer_poll_ms=100)
        bus = Bus(bootstrap)
        await bus.start()
        engine = engine_class(settings, None, bus)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(engine.run(stop))
        while await engine.consumer.lag() != 0:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        await bus.stop()
        got = await emitted(bootstrap)
    finally:
        broker.kill()
        broker.wait(timeout=10)
    stats = Counter()
    for runner in engine.runners.values():
        stats.update(runner.stats)
    return {"seconds": elapsed, "events": got, "stale": stats["stale"], "records": engine.consumer.records_done}


def found_incidents(events: list, incidents: list) -> int:
    found = 0
    for inc in incidents:
        for trigger in inc.expected_triggers:
            found += any(e.vehicle_id == inc.vehicle_id and e.trigger == trigger
                         and inc.start_ms - MATCH_SLACK_MS <= e.onset_ms <= inc.end_ms + MATCH_SLACK_MS
                         for e in events)
    return found


async def main() -> dict:
    messages, incidents = simulate()
    raw = as_raw(messages)
    started = time.perf_counter()
    expected = expected_events(messages)
    t_library = time.perf_counter() - started
    wanted = {e.SerializeToString(deterministic=True) for e in expected}
    n_incidents = sum(len(i.expected_triggers) for i in incidents)
    results = {}
    with tempfile.TemporaryDirectory(prefix="fleetloop-bench-") as tmp:
        for name, engine_class in (("shipped", TriggerEngine), ("lateness", LatenessOnly)):
            results[name] = await drain(engine_class, raw, Path(tmp) / name)
    print(f"backlog: {len(raw):,} messages, {len(incidents)} incidents, {len(expected)} events from detect_recording")
    for name, label in (("shipped", "input watermark (shipped)  "), ("lateness", "runner's 2 s lateness only")):
        r = results[name]
        same = sum(e.SerializeToString(deterministic=True) in wanted for e in r["events"])
        r["identical"], r["found"] = same, found_incidents(r["events"], incidents)
        print(f"{label}: drained in {r['seconds']:5.1f} s, {len(r['events'])} events ({same} byte-identical to "
              f"detect_recording), incidents found {r['found']} of {n_incidents}, "
              f"{r['stale']:,} records skipped as stale")
    shipped = results["shipped"]
    assert shipped["identical"] == len(shipped["events"]) == len(expected), "the shipped engine must match the library"
    print(f"baseline detect_recording (in process, no broker): {t_library:.2f} s; "
          f"engine / baseline wall time {shipped['seconds'] / t_library:.1f}x")
    return {"bench": "trigger_engine", "value": round(shipped["seconds"], 2), "unit": "s to drain the backlog",
            "baseline": round(t_library, 2), "ratio": round(shipped["seconds"] / t_library, 1),
            "found": shipped["found"], "found_lateness_only": results["lateness"]["found"],
            "stale_lateness_only": results["lateness"]["stale"], "incidents": n_incidents}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same run (it is already under a minute)")
    parser.parse_args()
    print(json.dumps(asyncio.run(main())))
