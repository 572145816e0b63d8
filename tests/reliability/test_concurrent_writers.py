"""Concurrent writers during a migration: every write lands or fails visibly, none is lost.

A second process keeps adding users to the SQLite control plane while `migrate-to-kv`
runs. The migration holds the source's write lock only while it backs up and reads, so the
writer waits (busy timeout) and goes on. Afterwards `verify` must tell the truth about what
KV lacks, and a re-run must bring KV to parity with every write that succeeded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import bulk_fill


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def logged(log: Path) -> tuple[set[str], list[str]]:
    ok: set[str] = set()
    errors: list[str] = []
    for line in log.read_text().splitlines():
        status, user_id, *_rest = line.split(" ", 2)
        (ok.add(user_id) if status == "ok" else errors.append(line))
    return ok, errors


def test_no_write_is_silently_lost(cli, sqlite_db: Path, namespace, tmp_path: Path) -> None:
    bulk_fill(sqlite_db, users=1500, rooms=20, epochs=2)
    log, stop = tmp_path / "writer.log", tmp_path / "stop"
    log.touch()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.writer",
            "--db",
            str(sqlite_db),
            "--log",
            str(log),
            "--stop",
            str(stop),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_for(lambda: len(logged(log)[0]) >= 20, 30, "the writer's first writes")
        migrated = cli(
            "migrate-to-kv",
            "--db",
            str(sqlite_db),
            "--nats-url",
            namespace.url,
            "--bucket-prefix",
            namespace.prefix,
            "--json",
        )
        assert migrated.returncode == 0, migrated.stderr
        report = json.loads(migrated.stdout)
        during = len(logged(log)[0])
        wait_for(lambda: len(logged(log)[0]) >= during + 20, 30, "writes after the migration")
    finally:
        stop.touch()
        writer.wait(30)
    assert writer.returncode == 0

    ok, errors = logged(log)
    assert not errors, errors[:5]  # writers waited for the lock; none failed
    source = json.loads(cli("export", "--db", str(sqlite_db)).stdout)
    in_sqlite = {u["id"] for u in source["users"]}
    assert ok <= in_sqlite  # every acknowledged write is in the source

    # The migration read one consistent moment: the backup shows exactly what it migrated.
    backup = json.loads(cli("export", "--db", report["backup"]).stdout)
    assert report["records"]["users"]["source"] == len(backup["users"])
    kv = json.loads(
        cli("export", "--nats-url", namespace.url, "--bucket-prefix", namespace.prefix).stdout
    )
    assert kv == backup

    # verify tells the truth: exactly the writes after that moment are missing from KV
    late = sorted(in_sqlite - {u["id"] for u in kv["users"]})
    assert late, "the writer made no write after the migration's read"
    verify = cli(
        "verify",
        "--db",
        str(sqlite_db),
        "--nats-url",
        namespace.url,
        "--bucket-prefix",
        namespace.prefix,
        "--json",
    )
    assert verify.returncode == 1
    assert json.loads(verify.stdout)["differences"] == [
        f"users[{user_id!r}]: only in SQLite" for user_id in late
    ]

    # a re-run brings KV to parity with every write that succeeded
    rerun = cli(
        "migrate-to-kv",
        "--db",
        str(sqlite_db),
        "--nats-url",
        namespace.url,
        "--bucket-prefix",
        namespace.prefix,
        "--no-backup",
        "--json",
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["records"]["users"]["written"] == len(late)
    final = json.loads(
        cli("export", "--nats-url", namespace.url, "--bucket-prefix", namespace.prefix).stdout
    )
    assert ok <= {u["id"] for u in final["users"]}
    assert (
        cli(
            "verify",
            "--db",
            str(sqlite_db),
            "--nats-url",
            namespace.url,
            "--bucket-prefix",
            namespace.prefix,
        ).returncode
        == 0
    )
