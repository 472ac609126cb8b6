"""The nightly compute budget a vehicle needs for its replay queue (issue 12 §4 speed figure).

The seed's estimate is 10 cases x 1,000 rollouts a night. A simulated fleet of 10 vehicles each brakes
hard once; each vehicle's ring buffer holds its case window, which `ReplayQueue.offer` snapshots. The
queue then works every window with vehicle.yaml's search budget (8 iterations x 128 candidates = 1,024
rollouts plus the seeds per case) in slices of `replay_queue.slice_iterations`, saving its progress
after each, as a parked vehicle does; the compute seconds it charges are the figure (`value`). In the
same run, case by case after each sliced one, the same window is searched unsliced by one `Replayer.solve`
(`baseline`; `ratio` = sliced / unsliced, the cost of pausing), and at the end all of them in one batch.
The pairs must be identical to the unsliced ones (checked). Process CPU time is printed beside wall time
(the VM is shared). The last line printed is one JSON object.
Run: `python bench/replay_queue.py [--quick] [--cases N] [--threads N]` (`--threads 1` on a shared machine:
torch's idle threads spin and inflate CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from fleetloop.replay.maps import SimWorldMap  # noqa: E402
from fleetloop.replay.minilog import from_minilog  # noqa: E402
from fleetloop.replay.pair import pair_to_bytes  # noqa: E402
from fleetloop.replay.scenario import concat  # noqa: E402
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig  # noqa: E402
from fleetloop.v1 import common_pb2, triggers_pb2  # noqa: E402
from fleetloop.vehicle import RingBuffer  # noqa: E402
from fleetloop.vehicle.params import load_vehicle_params  # noqa: E402
from fleetloop.vehicle.replay_queue import ReplayQueue, vehicle_replayer  # noqa: E402


def fleet_windows(n: int, ring_capacity_s: float) -> tuple[dict[str, RingBuffer], SimWorldMap, list]:
    """n hard brakes, one per vehicle (from 60 s on, staggered), recorded in per-vehicle ring buffers. Not
    every vehicle finds a straight road at speed in time, so 2n + 2 are simulated and the first n brakes kept."""
    vehicles = 2 * n + 2
    sim = FleetSimulator(SimConfig(vehicles=vehicles, duration_s=150, seed=3,
                                   incidents=[ScheduledIncident("hard_brake", i, 60 + 2 * i) for i in range(vehicles)]))
    buffers: dict[str, RingBuffer] = {}
    for second in sim.seconds():
        for topic, env in second.messages:
            buffers.setdefault(env.vehicle_id, RingBuffer(ring_capacity_s)).append(topic, env)
    incidents = sorted(sim.ground_truth.incidents, key=lambda i: i.vehicle_id)[:n]
    if len(incidents) < n:
        sys.exit(f"only {len(incidents)} of {n} hard brakes happened in the simulation")
    return buffers, SimWorldMap.from_simulator(sim), incidents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 cases instead of 10 (~2 min on the shared 2-core VM)")
    parser.add_argument("--cases", type=int, default=None, help="cases (default 10, --quick 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.cases or (3 if args.quick else 10)
    params = load_vehicle_params()
    rq = params.replay_queue
    replayer = vehicle_replayer(params, device="cpu")
    buffers, world_map, incidents = fleet_windows(n, params.ring_capacity_s)
    site = params.charging_sites[0]
    ready = common_pb2.Heartbeat(gear=common_pb2.GEAR_PARK, charging=True, lat_deg=site.lat_deg,
                                 lon_deg=site.lon_deg, state_of_charge=0.9, compute_temp_c=45.0)
    pairs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        queues = {}
        for incident in incidents:
            vid = incident.vehicle_id
            queues[vid] = ReplayQueue(Path(tmp) / vid, vid, params, replayer, world_map, utc_offset_h=8)
            trigger = triggers_pb2.TriggerEvent(
                trigger_id=f"hb-{vid}", vehicle_id=vid, trigger="hard_brake", severity=0.7, onset_ms=incident.start_ms,
                peak_ms=incident.start_ms, end_ms=incident.start_ms, window_pre_s=10.0, window_post_s=5.0)
            offer = queues[vid].offer(trigger, buffers[vid], case_id=f"case-{vid}")
            assert offer.outcome == "queued", offer
        minilogs = {vid: (q.items_dir / f"{q.pending()[0].item_id}.mcap").read_bytes() for vid, q in queues.items()}
        queued_ms = {vid: q.pending()[0].queued_ms for vid, q in queues.items()}
        now_ms = max(queued_ms.values())
        scenes = {vid: from_minilog(data, world_map, replayer.config, device=replayer.device)
                  for vid, data in minilogs.items()}
        replayer.solve(next(iter(scenes.values())), seed=rq.seed, robust=False)  # warm-up, untimed

        # Case by case, sliced (as the vehicle works: one slice per step, progress saved after each) and
        # then unsliced (one Replayer.solve), so both see the same load on the shared machine.
        slices, sliced_s, sliced_cpu, unsliced_s, unsliced_cpu = 0, 0.0, 0.0, 0.0, 0.0
        candidates, early, same = [], 0, True
        for vid, q in queues.items():
            c0 = time.process_time()
            while q.step(ready, now_ms).state == "searched":
                slices += 1
            slices += 1
            sliced_cpu += time.process_time() - c0
            sliced_s += q.spent_s
            (product,) = q.uploads(common_pb2.CONNECTIVITY_WIFI)
            t0, c0 = time.perf_counter(), time.process_time()
            solved = replayer.solve(scenes[vid], seed=rq.seed, robust=False)
            unsliced_s, unsliced_cpu = unsliced_s + time.perf_counter() - t0, unsliced_cpu + time.process_time() - c0
            candidates.append(int(solved.result.candidates[0]))
            early += int(solved.result.early_stopped[0])
            unsliced_pair = pair_to_bytes(replayer.pair(scenes[vid], solved, 0, created_ms=queued_ms[vid]),
                                          replayer.config)
            pairs[vid] = Path(product.path).read_bytes()
            same &= unsliced_pair == pairs[vid]

    # all cases in one batch
    t0 = time.perf_counter()
    replayer.solve(concat(list(scenes.values())), seed=rq.seed, robust=False)
    batch_s = time.perf_counter() - t0

    rollouts = sum(candidates)
    pair_bytes, minilog_bytes = sum(len(p) for p in pairs.values()), sum(len(m) for m in minilogs.values())
    per_case = sliced_s / n
    print(f"cases: {n} simulated hard brakes; search {rq.search} -> {rollouts / n:.0f} rollouts per case "
          f"(min {min(candidates)}, max {max(candidates)}; {early} stopped early)")
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")
    print(f"sliced ({rq.slice_iterations} iteration per slice, {slices} slices, progress saved after each): "
          f"{sliced_s:.2f} s ({sliced_cpu:.2f} s CPU) = {per_case:.2f} s ({sliced_cpu / n:.2f} s CPU) per case")
    print(f"unsliced, one Replayer.solve per case: {unsliced_s:.2f} s ({unsliced_cpu:.2f} s CPU); "
          f"sliced / unsliced = {sliced_s / unsliced_s:.2f} ({sliced_cpu / unsliced_cpu:.2f} by CPU time)")
    print(f"one batch of all {n}: {batch_s:.2f} s")
    print(f"pairs identical to the unsliced search: {same}")
    print(f"upload: {pair_bytes / 1000:.1f} kB of pairs instead of {minilog_bytes / 1000:.1f} kB of minilogs")
    print(f"nightly budget for 10 cases x ~1,000 rollouts: {per_case * 10:.1f} s "
          f"({sliced_cpu / n * 10:.1f} s CPU; vehicle.yaml nightly_budget_s {rq.nightly_budget_s:.0f} s)")
    print(json.dumps({"bench": "replay_queue", "value": round(per_case * 10, 2),
                      "unit": "s of compute per night for 10 cases x ~1,000 rollouts (sliced)",
                      "baseline": round(unsliced_s / n * 10, 2), "ratio": round(sliced_s / unsliced_s, 3),
                      "value_cpu": round(sliced_cpu / n * 10, 2), "ratio_cpu": round(sliced_cpu / unsliced_cpu, 3),
                      "pairs_identical": same}))
    if not same:
        sys.exit("sliced and unsliced pairs differ")


if __name__ == "__main__":
    main()
