"""CLI user errors are one line on stderr and exit code 2, never a traceback (issue 10 §6)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fleetloop.cli import app
from typer.testing import CliRunner


def closed_port() -> int:
    """A local port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """FLEETLOOP_FLEET_GRPC points at a port with no server; no endpoints.json is around."""
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("FLEETLOOP_FLEET_GRPC", address)
    monkeypatch.setenv("FLEETLOOP_DATA_DIR", str(tmp_path))
    return address


def one_line_error(args: list[str]) -> str:
    """Run the CLI; assert exit 2 with one error line and no traceback; return the line."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_fleet_list_with_an_unknown_status_names_the_choices(no_server: str) -> None:
    assert "online, offline, stopped" in one_line_error(["fleet", "list", "--status", "bogus"])


@pytest.mark.parametrize("args", [["fleet", "list"], ["fleet", "summary"], ["fleet", "vehicle", "v-0001"]])
def test_fleet_commands_with_no_server_say_so_in_one_line(no_server: str, args: list[str]) -> None:
    assert no_server in one_line_error(args)


def test_fleet_commands_with_no_address_say_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLEETLOOP_FLEET_GRPC", raising=False)
    monkeypatch.setenv("FLEETLOOP_DATA_DIR", str(tmp_path))
    assert "FLEETLOOP_FLEET_GRPC" in one_line_error(["fleet", "list"])


def test_sim_with_no_broker_address_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`fleetloop sim` finds the broker through the same finder as every command (commands/rpc.endpoint)."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("FLEETLOOP_DATA_DIR", str(tmp_path))
    assert "set KAFKA_BOOTSTRAP_SERVERS or start `fleetloop up` first" in one_line_error(["sim", "--vehicles", "1"])
    (tmp_path / "endpoints.json").write_text('{"FLEET_GRPC": "127.0.0.1:1"}')  # up's file without the key
    assert "KAFKA_BOOTSTRAP_SERVERS" in one_line_error(["sim", "--vehicles", "1"])


@pytest.mark.parametrize("args", [["serve", "miner"], ["up"], ["fleet", "list"], ["sim", "--vehicles", "1"]])
def test_a_bad_environment_variable_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.setenv("FLEETLOOP_GRPC_PORT", "abc")
    monkeypatch.delenv("FLEETLOOP_FLEET_GRPC", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    line = one_line_error(args)
    assert line.startswith("error: environment: FLEETLOOP_GRPC_PORT:") and "'abc'" in line


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"fleetloop {version('fleetloop')}"
