"""`fleetloop replay …`: the counterfactual replay from the terminal.

In this process (the replay library, no services):

- `suite`: search the generated known-answer suite and print the per-family table and totals;
- `scenario --minilog FILE`: one scenario from a minilog MCAP as a vehicle uploads it, its map from the
  simulated world (the simulator of `--sim-seed`, `--sim-vehicles`, `--sim-duration-s`, the demo's by
  default); prints baseline vs solution per cost term, the decisions, the triggers the baseline fires
  and the solution does not, and the robustness verdict; `--out` writes the ScenarioSolutionPair,
  `--xosc` an OpenSCENARIO file of it;
- `policies`, `train`: the policy registry and behaviour cloning (`commands/replay_train.py`).

Through the replay-validator's ReplayService (address: FLEETLOOP_REPLAY_GRPC, else endpoints.json REPLAY_GRPC):
- `case CASE_ID`: ask for a case's replay, wait for the solution and print it (`--no-wait`: only its id);
- `show SOLUTION_ID`: one solution, baseline vs solution per cost term, verdict, triggers, pair;
- `list`: solutions filtered by case, vehicle, policy, verdict, a page at a time.

Bad input (an unknown policy, a minilog without ego pose, NaN states, an empty window) ends with
`error: …` on stderr and exit code 2.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import typer

from fleetloop.commands.replay_train import policies, train

app = typer.Typer(help="Counterfactual replay: search what-if ego trajectories for a case", no_args_is_help=True)
app.command("train")(train)
app.command("policies")(policies)

POLICY = typer.Option("rule@1", "--policy", help="policy name@version whose plan seeds the search")
CHECKPOINTS = typer.Option(Path("checkpoints"), "--checkpoints", help="directory of learned policy checkpoints")
METHOD = typer.Option(None, "--method", help="cem | mppi (default: replay.yaml search.method)")
ITERATIONS = typer.Option(None, "--iterations", help="refinement iterations (default: search.iterations)")
CANDIDATES = typer.Option(None, "--candidates",
                          help="candidates per iteration (default: search.candidates_per_iteration)")
SEED = typer.Option(0, "--seed", help="search seed (noise and perturbations)")
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda (default: replay.yaml device)")
CONFIG = typer.Option(None, "--config", help="replay.yaml to use instead of the packaged one")


def _replayer(config_path: Path | None, method: str | None, iterations: int | None, candidates: int | None,
              device: str | None, policy: str, checkpoints: Path) -> Any:
    """The command's replay set-up (`fleetloop.replay.replayer`, the one the replay-validator uses)."""
    from fleetloop.replay.replayer import Replayer

    return Replayer.build(policy=policy, checkpoints=checkpoints, config_path=config_path, device=device,
                          search={"method": method, "iterations": iterations, "candidates_per_iteration": candidates})


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", err=True)
    return typer.Exit(2)


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3f}"


@app.command()
def suite(n: int = typer.Option(200, "--n", help="scenarios, spread over every family"),
          suite_seed: int = typer.Option(1, "--suite-seed", help="generator seed (same seed, same suite)"),
          policy: str = POLICY, checkpoints: Path = CHECKPOINTS, method: str = METHOD, iterations: int = ITERATIONS,
          candidates: int = CANDIDATES, seed: int = SEED, device: str = DEVICE, config: Path = CONFIG,
          as_json: bool = typer.Option(False, "--json", help="also print the totals as one JSON line")) -> None:
    """Search the generated known-answer suite; print the per-family table and the totals."""
    from fleetloop.replay.scenario import ScenarioError
    from fleetloop.replay.suite import run_suite, suite_table

    try:
        setup = _replayer(config, method, iterations, candidates, device, policy, checkpoints)
        report = run_suite(n, suite_seed, setup.config, setup.world, setup.policy, setup.device, seed)
    except (ScenarioError, ValueError, KeyError) as exc:
        raise _fail(exc) from None
    typer.echo(suite_table(report))
    per_case = report.seconds / max(len(report.verdicts), 1)
    typer.echo(f"solved {report.solved}/{report.solvable} = {100 * report.solved_fraction:.1f} % of the solvable "
               f"scenarios; control regressions {sum(v.regression for v in report.family('good_driving'))}; "
               f"phantom hard brakes {sum(v.hard_braking for v in report.family('phantom_obstacle'))}; "
               f"{report.seconds:.1f} s ({per_case:.2f} s per scenario, {report.budget['method']}, "
               f"{report.budget['iterations']} x {report.budget['candidates_per_iteration']} + seeds, "
               f"policy {policy}, {setup.device})")
    if as_json:
        typer.echo(json.dumps({"n": len(report.verdicts), "solvable": report.solvable, "solved": report.solved,
                               "solved_fraction": round(report.solved_fraction, 4), "seconds": round(report.seconds, 2),
                               **report.budget, "policy": policy, "device": str(setup.device)}, sort_keys=True))


@app.command()
def scenario(minilog: Path = typer.Option(..., "--minilog", exists=True, dir_okay=False,
                                          help="a minilog MCAP as a vehicle uploads it"),
             at_ms: int = typer.Option(None, "--at-ms", help="decision point, epoch ms (default: the latest the log "
                                                              "covers with a full horizon)"),
             sim_seed: int = typer.Option(7, "--sim-seed", help="seed of the simulated fleet whose map is used"),
             sim_vehicles: int = typer.Option(50, "--sim-vehicles", help="size of that simulated fleet"),
             sim_duration_s: int = typer.Option(3600, "--sim-duration-s", help="its simulated duration (s)"),
             no_map: bool = typer.Option(False, "--no-map", help="no map crop (map terms judge nothing)"),
             policy: str = POLICY, checkpoints: Path = CHECKPOINTS, method: str = METHOD,
             iterations: int = ITERATIONS, candidates: int = CANDIDATES, seed: int = SEED, device: str = DEVICE,
             config: Path = CONFIG,
             robust: bool = typer.Option(True, "--robust/--no-robust", help="re-validate under perturbations"),
             out: Path = typer.Option(None, "--out", help="write the ScenarioSolutionPair here (protobuf, zlib)"),
             xosc: Path = typer.Option(None, "--xosc", help="write the pair as OpenSCENARIO here")) -> None:
    """Replay one scenario from a minilog: baseline vs solution per cost term, decisions, triggers."""
    from fleetloop.replay.maps import PolylineMap, SimWorldMap
    from fleetloop.replay.minilog import from_minilog
    from fleetloop.replay.scenario import ScenarioError
    from fleetloop.sim import FleetSimulator, SimConfig

    try:
        setup = _replayer(config, method, iterations, candidates, device, policy, checkpoints)
        world_map: Any = PolylineMap([]) if no_map else SimWorldMap.from_simulator(
            FleetSimulator(SimConfig(vehicles=sim_vehicles, seed=sim_seed, duration_s=sim_duration_s)))
        scen = from_minilog(minilog.read_bytes(), world_map, setup.config, at_ms=at_ms, device=setup.device)
        solved = setup.solve(scen, seed=seed, robust=robust)
    except (ScenarioError, ValueError, KeyError) as exc:
        raise _fail(exc) from None
    _print_scenario(scen, solved.result, solved.verdict, solved.seconds, setup.config)
    if out or xosc:
        _write_pair(scen, solved, setup, out, xosc)


def _print_scenario(scen: Any, result: Any, verdict: Any, seconds: float, config: Any) -> None:
    from fleetloop.replay.pair import DecisionThresholds, describe_decisions, ego_trajectories
    from fleetloop.report import table

    meta = scen.meta[0]
    at_ms = meta.t0_ms + round(1000 * scen.dt_s * scen.current_step)
    typer.echo(f"scenario {meta.scenario_id} (case {meta.case_id or '-'}, vehicle {meta.vehicle_id or '-'}, "
               f"decision at {at_ms} ms, {scen.n_agents} agent slots x {scen.n_steps} steps)")
    typer.echo(f"searched {int(result.candidates[0])} candidates in {int(result.iterations[0])} iteration(s) "
               f"({result.method}, {result.device}) in {seconds:.2f} s; solution from {result.source[0]}; "
               f"Pareto front {int(result.front_size[0])}")
    rows = [[name, _fmt(b), _fmt(s), _fmt(s - b)] for name, (b, s) in result.cost_change[0].items()]
    base, sol = result.baseline_report, result.solution_report
    rows.append(["total", _fmt(float(base.total[0, 0])), _fmt(float(sol.total[0, 0])),
                 _fmt(float(sol.total[0, 0] - base.total[0, 0]))])
    rows.append(["score", _fmt(float(base.score[0, 0])), _fmt(float(sol.score[0, 0])),
                 _fmt(float(sol.score[0, 0] - base.score[0, 0]))])
    rows.append(["gates pass", str(bool(base.gates_pass[0, 0])), str(bool(sol.gates_pass[0, 0])), ""])
    typer.echo(table(["cost term", "baseline", "solution", "change"], rows))
    baseline = {k: v[0] for k, v in ego_trajectories(result.baseline, 0, [0]).items()}
    solution = {k: v[0] for k, v in ego_trajectories(result.solution, 0, [0]).items()}
    decisions = describe_decisions(baseline, solution, scen.dt_s, DecisionThresholds.from_config(config),
                                   start_step=scen.current_step) if result.source[0] != "baseline" else []
    typer.echo("decisions: " + ("; ".join(d.text for d in decisions) if decisions else "none (drives as logged)"))
    removed = result.triggers_removed[0]
    added = result.triggers_added(0)
    typer.echo("triggers fired by the baseline, not by the solution: "
               + (", ".join(f"{k} x{v}" for k, v in sorted(removed.items())) or "none"))
    typer.echo("triggers the solution fires and the baseline does not: "
               + (", ".join(f"{k} x{v}" for k, v in sorted(added.items())) or "none"))
    if verdict is not None:
        s = verdict.summary(0)
        w = s["worst"]
        typer.echo(f"robustness: wins {100 * s['win_rate']:.0f} % of {s['perturbations']} perturbations, passes "
                   f"the gates in {100 * s['solution_gate_rate']:.0f} %; worst: {w['kind']} ({w['magnitude']:+.2f}) "
                   f"solution {w['solution_total']:.2f} vs baseline {w['baseline_total']:.2f}")


def _write_pair(scen: Any, solved: Any, setup: Any, out: Path | None, xosc: Path | None) -> None:
    from fleetloop.replay.export import write_openscenario
    from fleetloop.replay.pair import pair_to_bytes

    pair = setup.pair(scen, solved, 0, created_ms=int(time.time() * 1000))
    if out:
        data = pair_to_bytes(pair, setup.config)
        out.write_bytes(data)
        typer.echo(f"wrote {out} ({len(data):,} bytes)")
    if xosc:
        write_openscenario(pair, xosc)
        typer.echo(f"wrote {xosc}")


# --- the replay-validator service (ReplayService): `case`, `show`, `list` ------------------------------------------


MAX_POLLED = 1000  # solutions of one case looked through while `replay case --wait` polls (ListSolutions' page)


def _call(method: str, request: Any) -> Any:
    """One ReplayService call on the replay-validator; a failure is one line and exit code 2."""
    from fleetloop.commands.rpc import call, endpoint
    from fleetloop.v1 import replay_service_pb2_grpc

    return call(endpoint("REPLAY_GRPC"), replay_service_pb2_grpc.ReplayServiceStub, method, request)


def _verdict(value: int) -> str:
    from fleetloop.v1 import replay_service_pb2

    return replay_service_pb2.SolutionVerdict.Name(value).removeprefix("SOLUTION_VERDICT_").lower()


def _print_solution(s: Any) -> None:
    from fleetloop.report import table

    typer.echo(f"solution {s.solution_id}: case {s.case_id} (vehicle {s.vehicle_id}), policy {s.policy}, search "
               f"{s.search_config} ({s.search_config_version}); verdict {_verdict(s.verdict)}, solution from "
               f"{s.source}")
    rows = [[t.name, _fmt(t.baseline), _fmt(t.solution), _fmt(t.solution - t.baseline)] for t in s.terms]
    rows.append(["total", _fmt(s.baseline_total), _fmt(s.solution_total), _fmt(s.solution_total - s.baseline_total)])
    rows.append(["score", _fmt(s.baseline_score), _fmt(s.solution_score), _fmt(s.solution_score - s.baseline_score)])
    typer.echo(table(["cost term", "baseline", "solution", "change"], rows))
    typer.echo("triggers fired by the baseline, not by the solution: "
               + (", ".join(f"{k} x{v}" for k, v in sorted(s.triggers_removed.items())) or "none"))
    typer.echo("triggers the solution fires and the baseline does not: "
               + (", ".join(f"{k} x{v}" for k, v in sorted(s.triggers_added.items())) or "none"))
    robust = (f"wins {100 * s.win_rate:.0f} % of {s.perturbations} perturbations" if s.perturbations
              else "not re-validated")
    typer.echo(f"robustness: {robust}; searched {s.candidates} candidates in {s.iterations} iteration(s) on "
               f"{s.device}, {s.batch_scenarios} case(s) together in {s.search_seconds:.2f} s")
    typer.echo(f"pair: {s.pair_key} ({s.pair_size_bytes:,} bytes)")


@app.command()
def show(solution_id: str = typer.Argument(..., help="a solution id (from `replay case` or `replay list`)")) -> None:
    """One solution of the replay-validator: baseline vs solution per cost term, verdict, triggers, pair."""
    from fleetloop.v1 import replay_service_pb2

    _print_solution(_call("GetSolution", replay_service_pb2.GetSolutionRequest(solution_id=solution_id)))


@app.command("list")
def list_solutions(case: str = typer.Option("", "--case", help="case id"),
                   vehicle: str = typer.Option("", "--vehicle", help="vehicle id"),
                   policy: str = typer.Option("", "--policy", help="policy name@version"),
                   verdict: str = typer.Option("", "--verdict", help="improved, fragile or baseline_stands"),
                   page_size: int = typer.Option(50, "--page-size", help="solutions per page (at most 1,000)"),
                   page_token: str = typer.Option("", "--page-token", help="the token a previous page printed")
                   ) -> None:
    """Solutions matching every given filter, newest request first."""
    from fleetloop.commands.rpc import fail
    from fleetloop.report import table
    from fleetloop.v1 import replay_service_pb2

    verdicts = {_verdict(v): v for v in replay_service_pb2.SolutionVerdict.values() if v}
    if verdict and verdict not in verdicts:
        fail(f"--verdict: {verdict!r} is not one of {', '.join(verdicts)}")
    response = _call("ListSolutions", replay_service_pb2.ListSolutionsRequest(
        case_id=case, vehicle_id=vehicle, policy=policy, verdict=verdicts.get(verdict, 0), page_size=page_size,
        page_token=page_token))
    typer.echo(table(["solution", "case", "vehicle", "policy", "search", "verdict", "baseline", "solution total",
                      "triggers removed", "pair bytes"], [
        [s.solution_id, s.case_id, s.vehicle_id, s.policy, s.search_config, _verdict(s.verdict),
         _fmt(s.baseline_total), _fmt(s.solution_total), ",".join(sorted(s.triggers_removed)) or "-",
         f"{s.pair_size_bytes:,}"] for s in response.solutions]))
    if response.next_page_token:
        typer.echo(f"more: --page-token {response.next_page_token}")


@app.command("case")
def replay_case(case_id: str = typer.Argument(..., help="the case to replay"),
                policy: str = typer.Option("", "--policy", help="policy name@version (default: the validator's)"),
                search_config: str = typer.Option("", "--search-config",
                                                  help="named search configuration (default: the validator's)"),
                method: str = METHOD, iterations: int = ITERATIONS, candidates: int = CANDIDATES,
                wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for the solution and print it"),
                wait_s: float = typer.Option(300.0, "--wait-s", help="give up waiting after this many seconds")
                ) -> None:
    """Ask the replay-validator to replay a case; prints the solution id (and, with --wait, the solution)."""
    from fleetloop.commands.rpc import fail
    from fleetloop.v1 import replay_service_pb2

    overrides = replay_service_pb2.SearchOverrides()
    for name, value in (("method", method), ("iterations", iterations), ("candidates_per_iteration", candidates)):
        if value is not None:
            setattr(overrides, name, value)
    request = replay_service_pb2.ReplayCaseRequest(case_id=case_id, policy=policy, search_config=search_config,
                                                   requested_by="fleetloop replay case")
    if overrides.ListFields():
        request.overrides.CopyFrom(overrides)
    response = _call("ReplayCase", request)
    typer.echo(f"solution {response.solution_id}" + (" (already solved)" if response.already_solved
                                                      else f" requested (request {response.request_id})"))
    if not wait:
        return
    # polled through ListSolutions: an empty page, not an error, while the solution is not there yet
    deadline = time.monotonic() + wait_s
    poll = replay_service_pb2.ListSolutionsRequest(case_id=case_id, page_size=MAX_POLLED)
    while True:
        found = [s for s in _call("ListSolutions", poll).solutions if s.solution_id == response.solution_id]
        if found:
            solution = found[0]
            break
        if time.monotonic() > deadline:
            fail(f"no solution after {wait_s:.0f} s; `fleetloop replay show {response.solution_id}` later")
        time.sleep(0.5)
    _print_solution(solution)
