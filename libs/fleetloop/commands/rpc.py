"""Finding a fleetloop server and calling it from the command line.

The address of a service (and the broker's, for `fleetloop sim`) comes from, in order: the command's
flag, the environment variable `FLEETLOOP_<KEY>` (e.g. FLEETLOOP_FLEET_GRPC; the broker's is the
conventional KAFKA_BOOTSTRAP_SERVERS), the `<KEY>` entry of the running `fleetloop up`'s endpoints.json
under the data dir: `endpoint` is the one finder. Every command calls its RPCs through `call` (or `stream`): a failed
call is one line on stderr and exit code 2, never a traceback (docs/ARCHITECTURE.md, gRPC services).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import grpc
import typer

from fleetloop.config import ConfigError, Settings

USER_ERROR_EXIT = 2


def endpoint(key: str, flag: str | None = None, env_name: str | None = None) -> str:
    """The address of `key` (an endpoints.json key, e.g. "FLEET_GRPC"): `flag`, else the environment
    variable `env_name` (default FLEETLOOP_<key>), else the running `fleetloop up`'s endpoints.json."""
    if flag:
        return flag
    env_name = env_name or f"FLEETLOOP_{key}"
    if os.environ.get(env_name):
        return os.environ[env_name]
    path = settings_from_env().data_dir / "endpoints.json"
    if path.exists():
        known = json.loads(path.read_text())
        if key in known:
            return known[key]
    fail(f"set {env_name} or start `fleetloop up` first")


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings.from_env for a command: a bad variable (e.g. FLEETLOOP_GRPC_PORT=abc) is one error line naming
    it, exit code 2, not a traceback."""
    try:
        return Settings.from_env(environ)
    except ConfigError as exc:
        fail(str(exc))


def fail(message: str) -> NoReturn:
    """Print `message` as one error line and leave with the user-error exit code."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USER_ERROR_EXIT)


def call(address: str, make_stub: Callable[[grpc.Channel], Any], method: str, request: Any) -> Any:
    """One unary RPC `method` on the stub `make_stub` builds for `address`; returns the response.

    A server that is not there, or one that refuses the request, ends the command with one line.
    """
    with grpc.insecure_channel(address) as channel:
        try:
            return getattr(make_stub(channel), method)(request)
        except grpc.RpcError as err:
            _rpc_failed(address, err)


def stream(address: str, make_stub: Callable[[grpc.Channel], Any], method: str, request: Any) -> Iterator[Any]:
    """The responses of the server-streaming RPC `method`, one by one; failures end the command as in `call`."""
    with grpc.insecure_channel(address) as channel:
        try:
            yield from getattr(make_stub(channel), method)(request)
        except grpc.RpcError as err:
            _rpc_failed(address, err)


def _rpc_failed(address: str, err: grpc.RpcError) -> NoReturn:
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        fail(f"no fleetloop server answers at {address} (is `fleetloop up` running?)")
    fail(f"{err.code().name}: {err.details()}" if err.details() else err.code().name)
