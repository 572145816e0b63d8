"""Crashes and lost servers: whatever happens around the migration, nothing is lost.

`membershipd migrate-to-kv` runs as a real process against a real nats-server. The tests
kill it (SIGKILL) in each phase, or stop the server under it, found by watching what a user
could watch (the backup's temporary file, the server's stream sequences), never by hooks in
the product. Then they check what the issue promises: the source is byte-for-byte unchanged,
no half-written file looks like a backup, a re-run converges and parity holds.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures.plugin import Cli, membershipd_command
from membership.embedded import EmbeddedServer
from tests.helpers import bulk_fill

USERS, ROOMS, EPOCHS = 4000, 40, 3
TOTAL = USERS * (2 + EPOCHS) + ROOMS


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of this test's own, which the test may stop and restart."""
    srv = EmbeddedServer(store_dir=tmp_path / "nats", monitor_port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def kv_written(server: EmbeddedServer) -> int:
    """Messages in the namespace's streams, from the server's own /jsz."""
    import urllib.request

    with urllib.request.urlopen(f"{server.monitor_url}/jsz?streams=true", timeout=5) as r:
        data = json.load(r)
    total = 0
    for account in data.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream["name"].startswith("KV_crash_") and not stream["name"].endswith("_meta"):
                total += stream["state"]["last_seq"]
    return total


@pytest.fixture
def big_db(sqlite_db: Path) -> Path:
    bulk_fill(sqlite_db, users=USERS, rooms=ROOMS, epochs=EPOCHS)
    conn = sqlite3.connect(sqlite_db)  # fatten the sealed keys so the backup takes a while
    conn.execute("UPDATE sealed_keys SET sealed_key = randomblob(4096)")
    conn.commit()
    conn.close()
    return sqlite_db


def start_migration(db: Path, url: str, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *membershipd_command(),
            "migrate-to-kv",
            "--db",
            str(db),
            "--nats-url",
            url,
            "--bucket-prefix",
            "crash",
            "--json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def finished_backups(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".backup-" in p.name and not p.name.startswith(".")]


def partial_backups(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".partial")]


PHASES = {
    "backup": lambda db, srv: bool(partial_backups(db.parent)),
    "writes": lambda db, srv: 0 < kv_written(srv) < TOTAL // 2,
    "verify": lambda db, srv: kv_written(srv) >= TOTAL,
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_killed_anywhere_then_rerun_converges(
    phase: str, big_db: Path, server: EmbeddedServer, cli: Cli, tmp_path: Path
) -> None:
    before = file_hash(big_db)
    proc = start_migration(big_db, server.url, tmp_path)
    try:
        poll(lambda: PHASES[phase](big_db, server) or proc.poll() is not None, 120, phase)
        assert proc.poll() is None, f"the migration ended before the {phase} phase was seen"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    assert file_hash(big_db) == before  # the source is never touched
    for backup in finished_backups(big_db.parent):  # anything named like a backup is whole
        check = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        check.close()
        assert (
            cli("export", "--db", str(backup)).stdout == cli("export", "--db", str(big_db)).stdout
        )

    rerun = cli(
        "migrate-to-kv",
        "--db",
        str(big_db),
        "--nats-url",
        server.url,
        "--bucket-prefix",
        "crash",
        "--json",
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["verified"] is True
    assert not partial_backups(big_db.parent)  # the dead run's leftover was removed
    verify = cli(
        "verify", "--db", str(big_db), "--nats-url", server.url, "--bucket-prefix", "crash"
    )
    assert verify.returncode == 0, verify.stdout
    assert file_hash(big_db) == before


def test_server_stopped_mid_migration_fails_cleanly_then_converges(
    big_db: Path, server: EmbeddedServer, cli: Cli, tmp_path: Path
) -> None:
    proc = start_migration(big_db, server.url, tmp_path, "--no-backup")
    try:
        poll(lambda: kv_written(server) > 0 or proc.poll() is not None, 120, "the first writes")
        assert proc.poll() is None, "the migration ended before the server could be stopped"
        port, store, url = server.port, server.store_dir, server.url
        server.stop()
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - stopped < 40  # bounded: seconds, not a reconnect loop
    assert proc.returncode == 1, err
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line naming the URL (DESIGN.md, Connecting to NATS)
    assert lines[0].startswith("membershipd: error: ") and url in lines[0], lines[0]

    restarted = EmbeddedServer(store_dir=store, port=port, monitor_port=0)
    restarted.start()
    try:
        rerun = cli(
            "migrate-to-kv",
            "--db",
            str(big_db),
            "--nats-url",
            restarted.url,
            "--bucket-prefix",
            "crash",
            "--no-backup",
            "--json",
            timeout=300,
        )
        assert rerun.returncode == 0, rerun.stderr
        assert json.loads(rerun.stdout)["verified"] is True
        assert (
            cli(
                "verify",
                "--db",
                str(big_db),
                "--nats-url",
                restarted.url,
                "--bucket-prefix",
                "crash",
            ).returncode
            == 0
        )
    finally:
        restarted.stop()


def test_a_short_server_restart_is_ridden_out_without_losing_a_write(
    big_db: Path, server: EmbeddedServer, cli: Cli, tmp_path: Path
) -> None:
    """A disconnect shorter than the reconnect window (about 5 s): the run reconnects, sends
    again what was not acknowledged, and completes with every record in KV."""
    proc = start_migration(big_db, server.url, tmp_path, "--no-backup")
    try:
        poll(lambda: kv_written(server) > 0 or proc.poll() is not None, 120, "the first writes")
        assert proc.poll() is None, "the migration ended before the server could be restarted"
        port, store = server.port, server.store_dir
        server.stop()
        server = EmbeddedServer(store_dir=store, port=port, monitor_port=0)
        server.start()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        assert proc.returncode == 0, err
        assert json.loads(out)["verified"] is True
        verify = cli("verify", "--db", str(big_db), "--nats-url", server.url,
                     "--bucket-prefix", "crash")  # fmt: skip
        assert verify.returncode == 0, verify.stdout[:2000]
    finally:
        server.stop()
