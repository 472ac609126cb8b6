"""`fleetloop replay train` and `fleetloop replay policies`: behaviour cloning of a new `bc@<n>` policy on
the simulated fleet, and the policies a checkpoint directory offers.

The functions are mounted by `fleetloop.commands.replay` (e.g. ``app.command("train")(train)``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

CHECKPOINTS = typer.Option(Path("checkpoints"), "--checkpoints",
                           help="checkpoint directory: bc@<n>.safetensors + bc@<n>.json")


def train(
    checkpoints: Path = CHECKPOINTS,
    seed: int = typer.Option(0, help="training seed (split, initialisation, minibatches)"),
    vehicles: int = typer.Option(None, help="simulated fleet size (default: replay.yaml policies.bc.vehicles)"),
    minutes: float = typer.Option(None, help="simulated driving per vehicle, minutes (default: bc.duration_s)"),
    steps: int = typer.Option(None, help="Adam steps (default: policies.bc.steps)"),
    version: int = typer.Option(None, help="version to write (default: one past the newest in --checkpoints)"),
    config: Path = typer.Option(None, help="replay.yaml to use instead of the packaged one"),
) -> None:
    """Train a behaviour-cloning policy on the simulated fleet's driving and save it as bc@<n>."""
    from fleetloop.replay.config import load_config
    from fleetloop.replay.train import train_behaviour_cloning

    cfg = load_config(config)
    started = time.monotonic()
    try:
        result = train_behaviour_cloning(cfg, checkpoints, seed=seed, vehicles=vehicles,
                                         duration_s=None if minutes is None else int(round(60 * minutes)),
                                         steps=steps, version=version)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    elapsed = time.monotonic() - started
    typer.echo(f"{result.spec}: validation loss {result.val_loss:.3f} (constant action {result.constant_val_loss:.3f}, "
               f"untrained {result.initial_val_loss:.3f}), training loss {result.final_train_loss:.3f}")
    typer.echo(f"  {result.n_scenarios} windows, {result.n_train_samples} training / {result.n_val_samples} "
               f"validation samples, {result.steps} steps, {elapsed:.1f} s")
    typer.echo(f"  {result.weights_path} ({result.weights_bytes} bytes, sha256 {result.sha256[:16]}...)")
    typer.echo(json.dumps({**result.as_dict(), "seconds": round(elapsed, 2)}, sort_keys=True))


def policies(checkpoints: Path = CHECKPOINTS) -> None:
    """List the policies `name@version` that can be loaded (built-ins and the checkpoints in --checkpoints)."""
    from fleetloop.replay.policies import list_policies

    for spec in list_policies(checkpoints):
        typer.echo(spec)
