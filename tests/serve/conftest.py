"""Fixtures for `membershipd serve`: the command run as an operator runs it."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.plugin import membershipd_command
from membership.embedded import free_port
from membership.nkey import UserKeyPair, generate_user_keypair

READY_WITHIN = 60.0


@dataclass
class Served:
    """A running `membershipd serve` and what it printed when it was ready."""

    proc: subprocess.Popen[str]
    info: dict[str, Any]
    args: list[str]
    stderr: str = ""
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return str(self.info["url"])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        """Signal it, wait for it to end; its exit status and the rest of its stderr."""
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
            try:
                _, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
                raise AssertionError(f"serve did not stop within {timeout:g} s: {err}") from None
            self.stderr += err
        return self.proc.returncode, self.stderr


def spawn_serve(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `membershipd serve ARGS --json` without waiting for it."""
    return subprocess.Popen(
        [*membershipd_command(), "serve", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def wait_ready(proc: subprocess.Popen[str], args: list[str]) -> Served:
    """Wait (with a deadline) for the ready line a started serve prints on stdout."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + READY_WITHIN
    line = ""
    while time.monotonic() < deadline and proc.poll() is None:
        if selector.select(timeout=0.1):
            line = proc.stdout.readline()
            break
    selector.close()
    if not line:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
        raise AssertionError(
            f"serve was not ready within {READY_WITHIN:g} s: exit {proc.returncode}: {err}"
        )
    return Served(proc, json.loads(line), args)


def start_serve(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Served:
    """Start `membershipd serve ARGS --json`; return once it printed its ready line."""
    return wait_ready(spawn_serve(*args, cwd=cwd, env=env), list(args))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """A factory: ``serve("--db", path, ...)`` -> :class:`Served`; all stopped at the end."""
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Served:
        served = start_serve(*args, cwd=tmp_path, env=env)
        started.append(served)
        return served

    def start_all(*commands: list[str]) -> list[Served]:
        """Start several at once (cluster nodes wait for each other), then wait for all."""
        procs = [(spawn_serve(*c, cwd=tmp_path), c) for c in commands]
        ready = []
        try:
            for proc, command in procs:
                ready.append(wait_ready(proc, command))
        finally:
            started.extend(ready)
            for proc, _ in procs[len(ready) :]:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        return ready

    start.all = start_all  # type: ignore[attr-defined]
    yield start
    for served in started:
        served.stop()


@pytest.fixture
def admin() -> UserKeyPair:
    return generate_user_keypair()


@pytest.fixture
def listen() -> str:
    return f"127.0.0.1:{free_port()}"
