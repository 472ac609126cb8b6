"""Replay throughput: agent-steps per second of the world model with every cost term, in one run.

One generated case (the known-answer generator, seeded; the scenario with the most agents, its agents
switched to the reactive IDM car-follower, the costliest model), 32 agent slots × 80 steps:

- value    — `WorldModel.rollout` + `costs.evaluate` (every configured term) of 1,000 candidate action
             sequences of that case in one batch, as agent-steps/s (candidates × 80 steps × 32 slots / s);
- batches  — the same for growing batches, 64 → 4,096 candidates (64 → 1,000 with --quick);
- loop     — the same world model and costs rolling one candidate at a time in a Python loop (what a
             per-candidate simulator does); `ratio` = value / loop;
- highway-env — an independent driving simulator (`highway-fast-v0`, 32 vehicles, 10 Hz simulation, one
             policy step = one 0.1 s step) stepped with idle actions, as vehicle-steps/s; it is installed
             for the bench only (`pip install highway-env==1.12.1`) and skipped when absent;
- case search — `search.search` of that one case with the configured budget (candidates reported);
- suite_solved — the solved fraction of the generated suite's solvable scenarios (`fleetloop.replay.suite`,
             200 scenarios, 28 with --quick, `--suite 0` skips it); pair_kb_p95 — the 95th percentile of
             those scenarios' serialised ScenarioSolutionPair sizes (kB).

Agent-steps count agent slots, like GPUDrive's figure (its 2.29 M slot-steps/s on an RTX 4080); the
number of agents actually present in the case is printed beside it. Timings are the best of a few
repeats on the same inputs, after one warm-up; the machine's load average is printed with them.
The last line printed is one JSON object.
Run: `python bench/replay.py [--quick] [--device cpu|cuda] [--threads N] [--suite N]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from fleetloop.replay import costs  # noqa: E402
from fleetloop.replay.config import ReplayConfig, load_config, resolve_device  # noqa: E402
from fleetloop.replay.generator import generate_suite  # noqa: E402
from fleetloop.replay.scenario import AgentModel, ScenarioBatch  # noqa: E402
from fleetloop.replay.world import WorldModel  # noqa: E402

SLOTS, STEPS = 32, 80
HIGHWAY_ENV = "pip install highway-env==1.12.1   (or: pip install -e '.[bench]')"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(repeats: int, fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Fastest wall time and fastest process CPU time (s) of `repeats` calls of fn, after one untimed
    warm-up call. CPU time shows what the work costs where other processes share the cores."""
    fn()
    sync(device)
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def bench_case(config: ReplayConfig, device: torch.device) -> tuple[ScenarioBatch, int]:
    """The generated scenario with the most agents present, reactive agents, on `device`."""
    suite = generate_suite(14, 7, config)
    present = suite.valid.any(dim=2).sum(dim=1)
    i = int(present.argmax())
    scen = suite.select([i])
    scen = replace(scen, meta=[replace(m, agent_model=AgentModel.IDM) for m in scen.meta])
    if scen.n_agents != SLOTS or scen.n_steps - scen.current_step - 1 < STEPS:
        raise SystemExit(f"bench case has {scen.n_agents} slots and {scen.n_steps - scen.current_step - 1} "
                         f"future steps; expected {SLOTS} and {STEPS} (scenario config changed?)")
    return scen.to(device), int(present[i])


def candidates(world: WorldModel, scen: ScenarioBatch, n: int, seed: int = 0) -> torch.Tensor:
    """`n` candidate action sequences [1, n, T, 2]: the baseline plus seeded smooth perturbations
    (per-candidate constant offsets and a slow sinusoid), as a search population looks."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    base = world.baseline_actions(scen).cpu()[:, None]
    t = torch.arange(scen.n_steps, dtype=torch.float32) * scen.dt_s
    offset = torch.randn(1, n, 1, 2, generator=g) * torch.tensor([1.5, 0.01])
    wave = torch.randn(1, n, 1, 2, generator=g) * torch.tensor([1.0, 0.01]) * torch.sin(t)[None, None, :, None]
    acts = base + offset + wave
    acts[:, :, : scen.current_step] = 0.0
    return acts.to(scen.device)


def highway_env_rate(steps: int) -> tuple[float, float, int] | None:
    """Vehicle-steps/s of highway-env stepping 32 vehicles at 10 Hz with idle actions, by wall and by CPU
    time, and the vehicle count (None if highway-env is absent)."""
    if importlib.util.find_spec("highway_env") is None:
        return None
    import gymnasium
    import highway_env  # noqa: F401  (registers the environments)

    env = gymnasium.make("highway-fast-v0", config={
        "vehicles_count": SLOTS - 1, "simulation_frequency": 10, "policy_frequency": 10, "duration": 10_000,
        "lanes_count": 3, "offscreen_rendering": True})
    env.reset(seed=0)
    done, n = 0, 0
    vehicles = len(env.unwrapped.road.vehicles)
    t0, c0 = time.perf_counter(), time.process_time()
    while done < steps:
        _, _, terminated, truncated, _ = env.step(1)           # IDLE
        done += 1
        n += len(env.unwrapped.road.vehicles)
        if terminated or truncated:
            env.reset(seed=done)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    env.close()
    return n / seconds, n / cpu, vehicles


def suite_figures(config: ReplayConfig, world: WorldModel, n: int, device: torch.device) -> dict[str, Any]:
    """suite_solved over a generated suite of `n` (seed 1, searched with the `rule@1` policy seed, as the
    suite test does) and the size distribution of the suite's ScenarioSolutionPairs (serialised bytes)."""
    from fleetloop.replay.generator import without_phantoms
    from fleetloop.replay.pair import pair_to_bytes
    from fleetloop.replay.policies import get_policy
    from fleetloop.replay.search import solution_pair
    from fleetloop.replay.suite import run_suite, suite_table

    report = run_suite(n, 1, config, world, get_policy("rule@1", config), device=device)
    print(suite_table(report))
    scen = without_phantoms(generate_suite(n, 1, config, device))
    sizes = torch.tensor([len(pair_to_bytes(solution_pair(scen, report.result, i, config, "rule@1"), config))
                          for i in range(scen.n_scenarios)], dtype=torch.float64) / 1000.0
    p50, p95 = (float(torch.quantile(sizes, q)) for q in (0.5, 0.95))
    print(f"suite: {n} scenarios searched in {report.seconds:.1f} s; solved {report.solved}/{report.solvable} "
          f"solvable; pair size p50 {p50:.1f} kB, p95 {p95:.1f} kB, max {float(sizes.max()):.1f} kB")
    return {"suite_solved": round(report.solved_fraction, 3), "suite_n": n, "suite_search_s": round(report.seconds, 1),
            "pair_kb_p50": round(p50, 2), "pair_kb_p95": round(p95, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches up to 1,000, fewer repeats (< 2 min)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--suite", type=int, default=None,
                        help="generated suite size for suite_solved (default 200, --quick 28; 0 skips it)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own; on a loaded machine 1 avoids OpenMP stalls)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = load_config()
    world = WorldModel(config)
    repeats = 2 if args.quick else 5
    scen, present = bench_case(config, device)
    baseline = world.rollout(scen, world.baseline_actions(scen)[:, None])
    terms = costs.build_terms(config)
    print(f"device {device}, torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"case {scen.meta[0].scenario_id} ({scen.meta[0].family}): {SLOTS} agent slots, {present} agents present, "
          f"{STEPS} steps, IDM agents; {len(terms)} cost terms")

    def full(acts: torch.Tensor) -> costs.CostReport:
        return costs.evaluate(world.rollout(scen, acts), scen, baseline, config, terms)

    sizes = (64, 256, 1000) if args.quick else (64, 256, 1000, 4096)
    batches, rollout_only, cpu_rate = {}, {}, {}
    for n in sizes:
        acts = candidates(world, scen, n)
        reps = repeats if n <= 1000 else max(1, repeats // 2)
        t_full, c_full = best_of(reps, lambda a=acts: full(a), device)
        t_roll, _ = best_of(reps, lambda a=acts: world.rollout(scen, a), device)
        work = n * STEPS * SLOTS
        batches[n], rollout_only[n], cpu_rate[n] = work / t_full, work / t_roll, work / c_full
        print(f"batch {n:>5}: rollout + costs {t_full * 1000:8.1f} ms = {batches[n] / 1e6:6.2f} M agent-steps/s "
              f"(CPU time {c_full * 1000:7.1f} ms = {cpu_rate[n] / 1e6:6.2f} M); rollout alone {t_roll * 1000:7.1f} ms "
              f"= {rollout_only[n] / 1e6:6.2f} M")
    value = batches[1000]

    n_loop = 8 if args.quick else 32
    one_at_a_time = candidates(world, scen, n_loop, seed=1)

    def loop() -> None:
        for c in range(n_loop):
            full(one_at_a_time[:, c:c + 1])
    t_loop, c_loop = best_of(1 if args.quick else 2, loop, device)
    loop_rate, loop_cpu = n_loop * STEPS * SLOTS / t_loop, n_loop * STEPS * SLOTS / c_loop
    print(f"one candidate at a time: {t_loop / n_loop * 1000:7.1f} ms per candidate = {loop_rate / 1e6:6.3f} M "
          f"agent-steps/s; ratio {value / loop_rate:.1f}x (by CPU time {cpu_rate[1000] / loop_cpu:.1f}x)")

    hw = highway_env_rate(200 if args.quick else 1000)
    if hw is None:
        print(f"highway-env: not installed, skipped; to compare: {HIGHWAY_ENV}")
    else:
        print(f"highway-env highway-fast-v0 ({hw[2]} vehicles, 10 Hz): {hw[0]:,.0f} vehicle-steps/s (CPU time "
              f"{hw[1]:,.0f}); the batched world model is {value / hw[0]:,.0f}x that ({cpu_rate[1000] / hw[1]:,.0f}x)")

    from fleetloop.replay.search import search
    t0, c0 = time.perf_counter(), time.process_time()
    result = search(scen, world, None, config)
    sync(device)
    case_s, case_cpu, case_candidates = time.perf_counter() - t0, time.process_time() - c0, int(result.candidates[0])
    print(f"case search: {case_s:.2f} s (CPU time {case_cpu:.2f} s), {case_candidates} candidates, "
          f"{int(result.iterations[0])} iterations{' (early stop)' if bool(result.early_stopped[0]) else ''}")

    n_suite = args.suite if args.suite is not None else (28 if args.quick else 200)
    skipped = {"suite_solved": None, "pair_kb_p95": None}
    suite = suite_figures(config, world, n_suite, device) if n_suite > 0 else skipped
    print(json.dumps({
        "bench": "replay", "value": round(value), "unit": "agent-steps/s", "device": str(device),
        "ratio": round(value / loop_rate, 1), "loop": round(loop_rate), "value_cpu_time": round(cpu_rate[1000]),
        "batches": {str(k): round(v) for k, v in batches.items()},
        "rollout_only": {str(k): round(v) for k, v in rollout_only.items()},
        "highway_env": round(hw[0]) if hw else None, "highway_env_cpu_time": round(hw[1]) if hw else None,
        "agents_present": present,
        "case_search_s": round(case_s, 3), "case_search_cpu_s": round(case_cpu, 3), "case_candidates": case_candidates,
        **suite}))


if __name__ == "__main__":
    main()
