"""Hostile and broken input, one table: a one-line error, the contract's exit code, and
every store exactly as it was.

Each case prepares its bad input in a fresh directory (a valid control plane sits beside
it in `control.db`), runs `membershipd` as a subprocess, and then checks the SQLite files
byte for byte and the KV namespace's stream sequences on the server.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.plugin import Cli, Namespace, NatsServer, start_nats_server
from membership.demo import build_representative_state
from membership.embedded import EmbeddedServer, free_port
from membership.sqlite import SQLiteStore


@pytest.fixture(scope="module")
def small_payload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server whose max_payload (2 KB) is smaller than a large sealed key's record."""
    base = tmp_path_factory.mktemp("small")
    conf = base / "small.conf"
    conf.write_text("max_payload: 2048\n")
    server = start_nats_server(base, ["-c", str(conf)])
    try:
        yield server
    finally:
        server.server.stop()


@dataclass
class Case:
    """What to run against the prepared directory, and what the user must see."""

    args: list[str]
    code: int
    says: str
    setup: Callable[[Path], None] | None = None


def _random(d: Path) -> None:
    (d / "bad.db").write_bytes(bytes(range(256)) * 64)


def _truncated(d: Path) -> None:
    conn = sqlite3.connect(d / "control.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE IF NOT EXISTS padding (x BLOB)")
    conn.executemany("INSERT INTO padding VALUES (randomblob(2000))", [()] * 50)
    conn.commit()
    conn.close()
    data = (d / "control.db").read_bytes()
    (d / "bad.db").write_bytes(data[: len(data) // 3])


def _foreign(d: Path) -> None:
    conn = sqlite3.connect(d / "bad.db")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()


def _newer(d: Path) -> None:
    shutil.copy(d / "control.db", d / "bad.db")
    conn = sqlite3.connect(d / "bad.db")
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def _bad_utf8(d: Path) -> None:
    shutil.copy(d / "control.db", d / "bad.db")
    conn = sqlite3.connect(d / "bad.db")
    conn.execute(
        "INSERT INTO users (id, public_key, status, created_at) VALUES (CAST(X'C328' AS TEXT), zeroblob(32), 'active', 0)"
    )
    conn.commit()
    conn.close()


def _taken_backup(d: Path) -> None:
    (d / "taken.bak").write_bytes(b"an older backup")


def _readonly_dir(d: Path) -> None:
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    # root ignores mode bits; the immutable attribute stops root as well
    subprocess.run(["chattr", "+i", str(ro)], check=False, capture_output=True)


def _other_history(d: Path) -> None:
    pass  # made on the server by the test, see below


DB = "{dir}/control.db"
BAD = "{dir}/bad.db"
URL = "{url}"

CASES: dict[str, Case] = {
    "random bytes": Case(
        ["migrate-to-kv", "--db", BAD, "--nats-url", URL], 2, "not a membership database", _random
    ),
    "truncated database": Case(
        ["migrate-to-kv", "--db", BAD, "--nats-url", URL], 2, "bad.db", _truncated
    ),
    "another application's database": Case(
        ["migrate-to-kv", "--db", BAD, "--nats-url", URL], 2, "another application", _foreign
    ),
    "newer schema version": Case(
        ["migrate-to-kv", "--db", BAD, "--nats-url", URL], 2, "schema version 2", _newer
    ),
    "invalid UTF-8 in TEXT": Case(
        ["migrate-to-kv", "--db", BAD, "--nats-url", URL], 1, "UTF-8", _bad_utf8
    ),
    "backup target exists": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", URL, "--backup-path", "{dir}/taken.bak"],
        2,
        "taken.bak",
        _taken_backup,
    ),
    "read-only backup directory": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", URL, "--backup-path", "{dir}/ro/b.db"],
        1,
        "ro",
        _readonly_dir,
    ),
    "invalid bucket prefix": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", URL, "--bucket-prefix", "no.dots"],
        2,
        "--bucket-prefix",
    ),
    "malformed URL": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "nats://[::1"], 2, "--nats-url"
    ),
    "wrong-scheme URL": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "http://127.0.0.1:80"], 2, "not a NATS URL"
    ),
    "unreachable URL": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "{closed}"], 1, "cannot connect"
    ),
    "remote URL without --ca": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "nats://db.example.com:4222"], 2, "--ca"
    ),
    "bucket with other history": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", URL], 2, "history 4", _other_history
    ),
    "replicas beyond a single server": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", URL, "--replicas", "3"], 2, "not clustered"
    ),
}


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


@contextmanager
def unlocked(directory: Path) -> Iterator[None]:
    try:
        yield
    finally:
        ro = directory / "ro"
        if ro.exists():
            subprocess.run(["chattr", "-i", str(ro)], check=False, capture_output=True)
            ro.chmod(0o700)


async def _populate(db: Path) -> None:
    store = SQLiteStore.open(db, create=True)
    try:
        await build_representative_state(store)
    finally:
        await store.close()


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_input_is_refused_cleanly(
    name: str, cli: Cli, namespace: Namespace, tmp_path: Path
) -> None:
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    await _populate(work / "control.db")
    if case.setup is not None:
        case.setup(work)
    if case.setup is _other_history:
        from membership.connect import connect_nats

        nc = await connect_nats(namespace.target)
        try:
            await nc.jetstream().create_key_value(bucket=f"{namespace.prefix}_users", history=4)
        finally:
            await nc.close()
    values = {"dir": str(work), "url": namespace.url, "closed": f"nats://127.0.0.1:{free_port()}"}
    args = [a.format(**values) for a in case.args]
    if "--bucket-prefix" not in args:
        args += ["--bucket-prefix", namespace.prefix]
    files_before, kv_before = digests(work), namespace.stream_seqs()

    with unlocked(work):
        result = cli(*args, timeout=60)
        files_after = digests(work)

    assert result.returncode == case.code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert case.says in lines[0]
    assert files_after == files_before
    assert namespace.stream_seqs() == kv_before


def test_locked_database_waits_then_fails_visibly(
    cli: Cli, namespace: Namespace, tmp_path: Path
) -> None:
    import asyncio

    db = tmp_path / "control.db"
    asyncio.run(_populate(db))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock throughout
    try:
        result = cli(
            "migrate-to-kv",
            "--db",
            str(db),
            "--nats-url",
            namespace.url,
            "--bucket-prefix",
            namespace.prefix,
            "--no-backup",
            timeout=60,
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1
    assert "locked" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert namespace.stream_seqs() == {}


async def test_value_larger_than_max_payload_is_refused_before_writing(
    cli: Cli, small_payload_server, tmp_path: Path
) -> None:
    db = tmp_path / "control.db"
    await _populate(db)
    store = SQLiteStore.open(db)
    await store.put_sealed_key("general", "bob", b"\x07" * 4096)  # ~5.5 KB of JSON > 2 KB
    await store.close()
    result = cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        small_payload_server.url,
        "--bucket-prefix",
        "big",
        "--no-backup",
    )
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert "max_payload" in line and "general" in line and "\n" not in line
    assert small_payload_server.stream_seqs("big") == {}


def test_server_that_refuses_the_credentials(cli: Cli, tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    import asyncio

    asyncio.run(_populate(db))
    conf = tmp_path / "auth.conf"
    conf.write_text('authorization { user: "admin", password: "s3cret-pass" }\n')
    conf.chmod(0o600)
    with EmbeddedServer(store_dir=tmp_path / "nats", extra_args=["-c", str(conf)]) as server:
        result = cli(
            "migrate-to-kv", "--db", str(db), "--nats-url", server.url, "--no-backup", timeout=60
        )
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "credentials" in line and "\n" not in line and "s3cret" not in line
