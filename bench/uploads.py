"""Upload volume: bytes the case loop pulls from the fleet against the raw-equivalent volume of the
same driving, per vehicle-day.

One run: the fleet simulator drives the fleet, the trigger library finds the events, the
case-assembler's own pure logic (merge gap, cooldowns, tier rules) turns them into cases, and the
vehicle runtime's uploader cuts every requested tier from a ring buffer and writes it as MCAP.

- value    — bytes uploaded per vehicle-day: microlog and minilog are the real MCAP bytes written;
             raw is a *declared* size (window length × ~4 GB per vehicle-minute, ARCHITECTURE §1),
             because the simulator has no sensor frames (a raw file holds the minilog content and
             declares the volume it stands for). Every requested tier is counted as delivered (the
             Wi-Fi wait changes when, not whether).
- baseline — the raw-equivalent volume of the same driving: online vehicle-minutes × 4 GB.
- ratio    — baseline / value: how many times less the loop uploads than "upload everything".
- extra    — continuous minilog (the whole day as real MCAP minilog, a "log all telemetry" strategy)
             and the real MCAP bytes alone, so the raw estimate's weight is visible.

A vehicle-day is 8 operating hours (one shift), scaled from the simulated hours. The last line
printed is one JSON object. Run: `python bench/uploads.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fleetloop import topics
from fleetloop.sim import FleetSimulator, SimConfig
from fleetloop.triggers import detect_recording, load_config
from fleetloop.v1 import cases_pb2, uploads_pb2
from fleetloop.vehicle import RingBuffer, Uploader, load_vehicle_params, open_store, tier_messages, write_mcap

from services.case_assembler import assembly
from services.case_assembler.policy import load_policy

DAY_OPERATING_H = 8.0       # one shift of a delivery van; the ratio does not depend on it


def assemble(triggers, policy) -> list[cases_pb2.Case]:
    """Cases from one fleet's trigger stream, by the service's routing rules (in stream order)."""
    cases: dict[str, cases_pb2.Case] = {}
    latest: dict[str, str] = {}
    cooldowns: dict[tuple[str, str], assembly.Cooldown] = {}
    for trigger in triggers:
        vid = trigger.vehicle_id
        family = policy.family_of.get(trigger.trigger)
        action, case_id = assembly.route(trigger, cases.get(latest.get(vid, "")), cooldowns.get((vid, family)),
                                         policy)
        if action == "merge":
            assembly.add_trigger(cases[case_id], trigger, policy, trigger.end_ms)
        elif action == "suppress":
            assembly.suppress(cases[case_id], trigger, trigger.end_ms)
        elif case_id in cases:
            assembly.add_trigger(cases[case_id], trigger, policy, trigger.end_ms)
        else:
            cases[case_id] = assembly.new_case(trigger, policy, trigger.end_ms)
            latest[vid] = case_id
            if family is not None:
                cooldowns[(vid, family)] = assembly.Cooldown(case_id, trigger.onset_ms)
    return list(cases.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 vehicles x 1 h (under a minute)")
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    vehicles, hours = (10, 1.0) if args.quick else (args.vehicles, args.hours)
    started = time.perf_counter()

    sim = FleetSimulator(SimConfig(vehicles=vehicles, duration_s=int(hours * 3600), seed=args.seed))
    params = load_vehicle_params()
    buffers: dict[str, RingBuffer] = defaultdict(lambda: RingBuffer(hours * 3600 + 60))
    online_s: dict[str, int] = defaultdict(int)
    envelopes = []
    for second in sim.seconds():
        for topic, env in second.messages:
            buffers[env.vehicle_id].append(topic, env)
            envelopes.append(env)
            online_s[env.vehicle_id] += topic == topics.HEARTBEAT
    triggers = detect_recording(envelopes, load_config())
    policy = load_policy()
    cases = assemble(triggers, policy)

    by_tier: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "mcap_bytes": 0, "counted_bytes": 0})
    with tempfile.TemporaryDirectory() as tmp:
        uploader = Uploader(open_store(Path(tmp).as_uri()), params)
        for case in cases:
            for tier in case.tiers:
                request = uploads_pb2.UploadRequest(request_id=f"{case.case_id}-{tier}", case_id=case.case_id,
                                                    tier=tier, window_start_ms=case.window_start_ms,
                                                    window_end_ms=case.window_end_ms, attempt=1)
                answer = uploader.answer(case.vehicle_id, buffers[case.vehicle_id], request)[-1]
                if answer.state != uploads_pb2.UPLOAD_STATE_COMPLETE:
                    continue  # a window cut by the end of the run: not uploaded, not counted
                row = by_tier[tier]
                row["requests"] += 1
                row["mcap_bytes"] += answer.size_bytes
                row["counted_bytes"] += answer.declared_bytes
    continuous_minilog = sum(len(write_mcap(tier_messages("minilog", list(b.items)), {}).data)
                             for b in buffers.values())

    vehicle_days = sum(online_s.values()) / 3600 / DAY_OPERATING_H
    uploaded = sum(r["counted_bytes"] for r in by_tier.values())
    raw_equivalent = sum(online_s.values()) / 60 * params.raw_bytes_per_minute
    real_mcap = sum(r["mcap_bytes"] for r in by_tier.values())
    window_s = sum((c.window_end_ms - c.window_start_ms) / 1000 for c in cases)
    per_day = {
        "uploaded_bytes": uploaded / vehicle_days,
        "raw_equivalent_bytes": raw_equivalent / vehicle_days,
        "real_mcap_bytes": real_mcap / vehicle_days,
        "continuous_minilog_bytes": continuous_minilog / vehicle_days,
        "cases": len(cases) / vehicle_days,
    }
    print(f"fleet: {vehicles} vehicles x {hours:g} h, {sum(online_s.values()) / 3600:.1f} online vehicle-hours "
          f"= {vehicle_days:.2f} vehicle-days of {DAY_OPERATING_H:g} h")
    print(f"triggers {len(triggers)}, cases {len(cases)} "
          f"({sum(len(c.suppressed_trigger_ids) for c in cases)} cooldown repeats folded), "
          f"{window_s / 60:.1f} min of case windows")
    for tier in policy.tier_names:
        row = by_tier.get(tier, {"requests": 0, "mcap_bytes": 0, "counted_bytes": 0})
        kind = "declared (4 GB/min x window)" if tier == "raw" else "real MCAP bytes"
        print(f"  {tier:8s} {row['requests']:5d} uploads  {row['mcap_bytes'] / 1e3:10.1f} kB written  "
              f"{row['counted_bytes'] / 1e3:14.1f} kB counted ({kind})")
    print("per vehicle-day:")
    print(f"  uploaded (micro+mini real, raw declared) {per_day['uploaded_bytes'] / 1e9:10.3f} GB")
    print(f"  raw-equivalent of the same driving        {per_day['raw_equivalent_bytes'] / 1e9:10.1f} GB")
    print(f"  saving                                    {raw_equivalent / uploaded:10.0f}x")
    print(f"  real MCAP bytes written (raw files hold minilog content) {per_day['real_mcap_bytes'] / 1e6:.2f} MB; "
          f"continuous minilog of the whole day {per_day['continuous_minilog_bytes'] / 1e6:.1f} MB")
    print(json.dumps({
        "bench": "uploads", "value": round(per_day["uploaded_bytes"]), "unit": "bytes per vehicle-day",
        "baseline": round(per_day["raw_equivalent_bytes"]), "ratio": round(raw_equivalent / uploaded, 1),
        "baseline_name": "raw-equivalent of the same driving (4 GB per online vehicle-minute)",
        "value_model": "microlog/minilog real MCAP bytes; raw declared = window x 4 GB/min (no sensor frames)",
        "real_mcap_bytes_per_vehicle_day": round(per_day["real_mcap_bytes"]),
        "continuous_minilog_bytes_per_vehicle_day": round(per_day["continuous_minilog_bytes"]),
        "cases_per_vehicle_day": round(per_day["cases"], 2), "triggers": len(triggers), "cases": len(cases),
        "tiers": {t: dict(r) for t, r in by_tier.items()}, "vehicles": vehicles, "hours": hours,
        "seed": args.seed, "wall_s": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
