"""replay-validator throughput: cases solved per minute by the service's batch path, batched against one
request at a time, in the same run.

The cases are minilogs the vehicle runtime cuts from a simulated fleet (one hard brake per vehicle,
10 s before and 5 s after, as the case-assembler asks for them). Each case goes the way a request
does in `services/replay_validator` (the budget of validator.yaml's default search configuration, the
default policy, robustness on, no map): `from_minilog`, the search with re-validation
(`Replayer.solve`), the ScenarioSolutionPair serialised. `batched` searches the cases in
ScenarioBatches of validator.yaml's `batch_scenarios`; `single` searches them one at a time; `ratio` =
batched / single. The broker, ClickHouse and the object store are left out: per batch they add
milliseconds against seconds of search. Wall and process CPU time are printed, with the load average.
The last line printed is one JSON object.
Run: `python bench/replay_service.py [--quick] [--cases N] [--device cpu|cuda] [--threads N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from fleetloop.replay.maps import PolylineMap  # noqa: E402
from fleetloop.replay.minilog import from_minilog  # noqa: E402
from fleetloop.replay.pair import pair_to_bytes  # noqa: E402
from fleetloop.replay.replayer import Replayer  # noqa: E402
from fleetloop.replay.scenario import concat  # noqa: E402
from fleetloop.sim import FleetSimulator, ScheduledIncident, SimConfig  # noqa: E402
from fleetloop.v1 import uploads_pb2  # noqa: E402
from fleetloop.vehicle import RingBuffer, Uploader, open_store  # noqa: E402
from fleetloop.vehicle.params import load_vehicle_params  # noqa: E402

from services.replay_validator.plans import Planner, load_validator_config  # noqa: E402


def minilogs(n: int, store_dir: Path) -> list[bytes]:
    """n minilogs, one hard brake per simulated vehicle at staggered times."""
    sim = FleetSimulator(SimConfig(vehicles=n, duration_s=150, seed=5,
                                   incidents=[ScheduledIncident("hard_brake", v, 50 + (v % 5) * 10) for v in range(n)]))
    params = load_vehicle_params()
    buffers: dict[str, RingBuffer] = {}
    for second in sim.seconds():
        for topic, env in second.messages:
            buffers.setdefault(env.vehicle_id, RingBuffer(params.ring_capacity_s)).append(topic, env)
    store = open_store(store_dir.as_uri())
    out = []
    for k, incident in enumerate(sorted(sim.ground_truth.incidents, key=lambda i: i.start_ms)[:n]):
        request = uploads_pb2.UploadRequest(request_id=f"bench-{k}", case_id=f"bench-{k}", tier="minilog",
                                            window_start_ms=incident.start_ms - 10_000,
                                            window_end_ms=incident.start_ms + 5_000, attempt=1)
        *_, complete = Uploader(store, params).answer(incident.vehicle_id, buffers[incident.vehicle_id], request)
        out.append(store.get(complete.uri))
    return out


def solve_all(replayer: Replayer, logs: list[bytes], batch: int, seed: int) -> tuple[float, float, int]:
    """(wall s, CPU s, pair bytes) of solving every log in ScenarioBatches of `batch`."""
    wall, cpu, size = time.perf_counter(), time.process_time(), 0
    no_map = PolylineMap([])
    for start in range(0, len(logs), batch):
        scen = concat([from_minilog(d, no_map, replayer.config, device=replayer.device)
                       for d in logs[start:start + batch]])
        solved = replayer.solve(scen, seed=seed, robust=True)
        size += sum(len(pair_to_bytes(replayer.pair(scen, solved, i, created_ms=0), replayer.config))
                    for i in range(scen.n_scenarios))
    if replayer.device.type == "cuda":
        torch.cuda.synchronize(replayer.device)
    return time.perf_counter() - wall, time.process_time() - cpu, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 cases instead of 32")
    parser.add_argument("--cases", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: replay.yaml's, auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.cases or (8 if args.quick else 32)
    config = load_validator_config()
    planner = Planner(config)
    plan = planner.plan("bench", "", "", None)
    replayer = planner.replayer(plan)
    if args.device:
        replayer = Replayer(replayer.config, torch.device(args.device), plan.policy, config.checkpoints_dir)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        logs = minilogs(n, Path(tmp))
    solve_all(replayer, logs[:1], 1, config.seed)  # warm-up: first-call costs are not throughput
    batched = solve_all(replayer, logs, config.batch_scenarios, config.seed)
    single = solve_all(replayer, logs, 1, config.seed)
    load = os.getloadavg()[0]
    per_min = {name: 60 * n / wall for name, (wall, _, _) in (("batched", batched), ("single", single))}
    budget = dict(plan.budget)
    print(f"{n} cases, search {plan.search_config} {budget}, policy {plan.policy}, {replayer.device}, "
          f"{torch.get_num_threads()} threads, load average {load:.1f}")
    for name, (wall, cpu, size) in (("batched", batched), ("single", single)):
        print(f"{name:8s} {per_min[name]:7.1f} cases/min  wall {wall:6.1f} s  cpu {cpu:6.1f} s  "
              f"pairs {size / n / 1000:.1f} kB/case")
    print(f"ratio    {per_min['batched'] / per_min['single']:.2f}x (batches of {config.batch_scenarios})")
    print(json.dumps({"cases": n, "batch_scenarios": config.batch_scenarios, "device": str(replayer.device),
                      "batched_cases_per_min": round(per_min["batched"], 1),
                      "single_cases_per_min": round(per_min["single"], 1),
                      "ratio": round(per_min["batched"] / per_min["single"], 2),
                      "batched_cpu_s": round(batched[1], 1), "single_cpu_s": round(single[1], 1),
                      "load_average": round(load, 1), **budget}))


if __name__ == "__main__":
    main()
