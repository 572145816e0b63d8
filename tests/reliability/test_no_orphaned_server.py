"""No nats-server outlives the membershipd that started it, even one killed by SIGKILL.

A killed `membershipd serve`, `cluster run` or embedded-default command used to leave
its nats-server running: holding the client port, the JetStream store directory and,
for serve, an authorization that no longer follows the allowlist. Each server is now
started so that it gets SIGTERM when its parent dies (Linux's parent-death signal,
armed by a launcher that then becomes nats-server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.cluster import _children, poll_until
from fixtures.plugin import membershipd_command
from membership.embedded import find_nats_server, free_port
from membership.nkey import generate_user_keypair
from tests.serve.conftest import spawn_serve, wait_ready

# Linux only, by design: the parent-death signal (prctl PR_SET_PDEATHSIG) exists nowhere
# else, and elsewhere `dying_with_this_process` leaves the command as it is. CI and the
# machines this project runs on are Linux, where these tests always run.
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def the_nats_server_child(parent: int) -> int:
    """The one child of ``parent``, once it is nats-server itself (the launcher exec'd)."""
    binary = str(find_nats_server())

    def found() -> int | None:
        for pid in _children(parent):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.decode() == binary:
                return pid
        return None

    return int(poll_until(found, 30, f"the nats-server started by {parent}"))


def kill_and_expect_its_server_gone(proc: subprocess.Popen[str], server: int) -> None:
    assert running(server)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    poll_until(lambda: not running(server), 30, f"nats-server {server} to exit")


def test_a_killed_embedded_default_takes_its_server_with_it(tmp_path: Path) -> None:
    """The embedded server of `demo`, `migrate-to-kv` and friends."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from membership.embedded import EmbeddedServer\n"
        f"EmbeddedServer(store_dir=Path({str(tmp_path / 'nats')!r})).start()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        kill_and_expect_its_server_gone(proc, the_nats_server_child(proc.pid))
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_serve_takes_its_server_with_it(tmp_path: Path, cli) -> None:
    db = tmp_path / "c.db"
    assert cli("init", "--db", str(db)).returncode == 0
    listen = f"127.0.0.1:{free_port()}"
    admin = generate_user_keypair().public
    args = ["--db", str(db), "--client-listen", listen, "--admin-nkey", admin]
    proc = spawn_serve(*args, cwd=tmp_path)
    try:
        wait_ready(proc, args)
        kill_and_expect_its_server_gone(proc, the_nats_server_child(proc.pid))
        assert os.path.exists(db)  # and the database is as it was: still a store
        assert cli("user", "list", "--db", str(db)).returncode == 0
    finally:
        proc.kill()
        proc.communicate()


def test_a_killed_cluster_node_takes_its_server_with_it(tmp_path: Path) -> None:
    secret = tmp_path / "route.secret"
    secret.write_text("a route secret that is long enough to pass the check\n")
    secret.chmod(0o600)
    route = free_port()  # a one-node cluster: its only route is to itself
    log = (tmp_path / "node.log").open("w")
    proc = subprocess.Popen(
        [
            *membershipd_command(),
            "cluster",
            "run",
            "--server-name",
            "solo",
            "--store-dir",
            str(tmp_path / "solo"),
            "--cluster-pass-file",
            str(secret),
            "--client-listen",
            f"127.0.0.1:{free_port()}",
            "--cluster-listen",
            f"127.0.0.1:{route}",
            "--routes",
            f"nats://127.0.0.1:{route}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        text=True,
    )  # fmt: skip (nats-server shares its output: a file, so no pipe waits for an orphan)
    try:
        kill_and_expect_its_server_gone(proc, the_nats_server_child(proc.pid))
    finally:
        proc.kill()
        proc.wait()
        log.close()
