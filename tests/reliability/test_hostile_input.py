"""Hostile and broken input, one table: a one-line error, the contract's exit code, and
every store exactly as it was (issue 6, point 5).

Each case prepares its bad input in a fresh directory (a valid control plane sits beside
it in ``control.db``), runs ``membershipd migrate-to-kv`` as a subprocess against the
server the case names, and then checks, whatever the case:

* the exit code of the contract, nothing on stdout, exactly one line on stderr that
  names the thing (each of the case's ``says``), no traceback, no secret;
* it ended within the case's time bound (and, for the locked database, only after
  waiting for the lock);
* every file in the directory has the sha256 it had before (a WAL with content counts
  as a file, so a write that sits in the WAL is seen too);
* the ``last_seq`` of every stream on that server, from its own ``/jsz``, is unchanged
  (so no bucket was created either).

Servers: the session's plain server, a server with a 2 KiB ``max_payload``, a TLS server
(certificates from trustme, as in tests/cluster/test_tls.py) and a server that requires
a user and password. A bucket that exists with *other replicas* needs a cluster: that
case is tests/cluster/test_bucket_settings.py.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from fixtures.plugin import Cli, NatsServer, start_nats_server, unique_prefix
from membership.connect import NatsTarget, connect_nats
from membership.demo import build_representative_state
from membership.embedded import free_port
from membership.sqlite import BUSY_TIMEOUT_S, SQLiteStore
from tests.cluster.test_tls import _tls_server

SMALL_PAYLOAD = 2048
PASSWORD = f"s3cret-{uuid.uuid4().hex}"  # the server's; no output may show it
WRONG = f"wr0ng-{uuid.uuid4().hex}"  # what the client offers; no output may show it either


# -- the servers a case can run against ------------------------------------------------------


@pytest.fixture(scope="module")
def small_payload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server whose max_payload (2 KiB) is smaller than a large sealed key's record."""
    base = tmp_path_factory.mktemp("small")
    conf = base / "small.conf"
    conf.write_text(f"max_payload: {SMALL_PAYLOAD}\n")
    server = start_nats_server(base, ["-c", str(conf)])
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture(scope="module")
def tls_only_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server that requires TLS, its certificate from a CA of its own (trustme)."""
    with _tls_server(tmp_path_factory, mutual=False) as server:
        yield server.server


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server that requires user ``admin`` with :data:`PASSWORD`."""
    base = tmp_path_factory.mktemp("auth")
    conf = base / "auth.conf"
    conf.write_text(f'authorization {{ user: "admin", password: "{PASSWORD}" }}\n')
    conf.chmod(0o600)
    server = start_nats_server(base, ["-c", str(conf)])
    try:
        yield server
    finally:
        server.server.stop()


# -- the table -------------------------------------------------------------------------------


@dataclass
class Case:
    """What to run against the prepared directory, and what the user must see.

    ``args``, ``says`` and ``never`` are templates: ``{dir}`` the case's directory,
    ``{url}`` the server's URL, ``{hostport}`` its ``127.0.0.1:PORT``, ``{closed}`` a
    URL where nothing listens, ``{prefix}`` the case's bucket prefix.
    """

    args: list[str]
    code: int
    says: tuple[str, ...]
    """Each of these is in the one error line."""
    setup: Callable[[Path], None] | None = None
    """Makes the bad input in the directory (before the digests are taken)."""
    kv_setup: Callable[[NatsTarget, str], Awaitable[None]] | None = None
    """Makes the bad state on the server, given the target and the prefix."""
    holding: Callable[[Path], AbstractContextManager[object]] | None = None
    """Held while the command runs (another process's lock)."""
    server: str = "nats_server"
    """The fixture of the server the case runs against."""
    never: tuple[str, ...] = ()
    """Secrets that must not appear on stdout or stderr."""
    within: float = 30.0
    """Seconds the command may take: a refusal never hangs."""
    waits: float = 0.0
    """Seconds the command must wait before it gives up (a lock's busy timeout)."""


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


def _copy_and_run(d: Path, *sql: str) -> None:
    shutil.copy(d / "control.db", d / "bad.db")
    conn = sqlite3.connect(d / "bad.db")
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()


def _newer(d: Path) -> None:
    _copy_and_run(d, "PRAGMA user_version = 3")


def _bad_utf8(d: Path) -> None:
    _copy_and_run(
        d,
        "INSERT INTO users (id, public_key, status, created_at) "
        "VALUES (CAST(X'C328' AS TEXT), zeroblob(32), 'active', 0)",
    )


def _oversize(d: Path) -> None:
    # ~5.5 KB of JSON, more than the server's 2 KiB max_payload
    _copy_and_run(
        d,
        "UPDATE sealed_keys SET sealed_key = zeroblob(4096) "
        "WHERE room_id = 'general' AND user_id = 'bob'",
    )


def _taken_backup(d: Path) -> None:
    (d / "taken.bak").write_bytes(b"an older backup")


def _readonly_dir(d: Path) -> None:
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    # root ignores mode bits; the immutable attribute stops root as well
    subprocess.run(["chattr", "+i", str(ro)], check=False, capture_output=True)


def _other_ca(d: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(d / "other-ca.pem"))


async def _users_bucket_with_history_4(target: NatsTarget, prefix: str) -> None:
    nc = await connect_nats(target)
    try:
        await nc.jetstream().create_key_value(bucket=f"{prefix}_users", history=4)
    finally:
        await nc.close()


@contextmanager
def _write_lock(d: Path) -> Iterator[None]:
    """Another process's writer holds the lock of control.db for the whole run."""
    holder = sqlite3.connect(d / "control.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


DB = "{dir}/control.db"
BAD = "{dir}/bad.db"
URL = "{url}"
MIGRATE_BAD = ["migrate-to-kv", "--db", BAD, "--nats-url", URL]
MIGRATE = ["migrate-to-kv", "--db", DB, "--nats-url", URL]

CASES: dict[str, Case] = {
    "random bytes": Case(MIGRATE_BAD, 2, ("not a membership database", BAD), _random),
    "truncated database": Case(MIGRATE_BAD, 2, ("damaged", BAD), _truncated),
    "another application's database": Case(MIGRATE_BAD, 2, ("another application", BAD), _foreign),
    "newer schema version": Case(MIGRATE_BAD, 2, ("schema version 3", BAD), _newer),
    "invalid UTF-8 in TEXT": Case(MIGRATE_BAD, 1, ("UTF-8", BAD), _bad_utf8),
    "locked database": Case(MIGRATE, 1, ("locked", DB), holding=_write_lock, waits=BUSY_TIMEOUT_S),
    "read-only backup directory": Case(
        [*MIGRATE, "--backup-path", "{dir}/ro/b.db"], 1, ("{dir}/ro",), _readonly_dir
    ),
    "backup target exists": Case(
        [*MIGRATE, "--backup-path", "{dir}/taken.bak"],
        2,
        ("{dir}/taken.bak", "already exists"),
        _taken_backup,
    ),
    "value larger than max_payload": Case(
        MIGRATE_BAD,
        1,
        ("max_payload", f"({SMALL_PAYLOAD})", "general"),
        _oversize,
        server="small_payload_server",
    ),
    "bucket with other history": Case(
        MIGRATE,
        2,
        ("{prefix}_users", "history 4", "history 1"),
        kv_setup=_users_bucket_with_history_4,
    ),
    "replicas beyond a single server": Case(
        [*MIGRATE, "--replicas", "3"], 2, ("not clustered", "--replicas 1")
    ),
    "invalid bucket prefix": Case(
        [*MIGRATE, "--bucket-prefix", "no.dots"], 2, ("--bucket-prefix", "no.dots")
    ),
    "malformed URL": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "nats://[::1"], 2, ("--nats-url", "[::1")
    ),
    "wrong-scheme URL": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "http://127.0.0.1:80"],
        2,
        ("not a NATS URL", "http://127.0.0.1:80"),
    ),
    "unreachable URL": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "{closed}"],
        1,
        ("cannot connect", "{closed}"),
        within=20,
    ),
    "remote URL without --ca": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", "nats://db.example.com:4222"],
        2,
        ("--ca", "db.example.com"),
        within=10,
    ),
    "wrong CA": Case(
        [*MIGRATE, "--ca", "{dir}/other-ca.pem"],
        1,
        ("{url}", "certificate verification failed", "--ca"),
        _other_ca,
        server="tls_only_server",
        within=15,
    ),
    "server refuses the credentials": Case(
        ["migrate-to-kv", "--db", DB, "--nats-url", f"nats://admin:{WRONG}@{{hostport}}"],
        1,
        ("refused the credentials", "{hostport}"),
        server="auth_server",
        never=(WRONG, PASSWORD),
        within=20,
    ),
    "server wants credentials, none given": Case(
        MIGRATE,
        1,
        ("refused the credentials", "{url}"),
        server="auth_server",
        never=(PASSWORD,),
        within=20,
    ),
}


def digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``: what a run must leave as it was.

    SQLite's shared-memory index (``-shm``) is a reader's scratch space and an empty WAL is
    the same as none; a WAL with content is a write and is counted.
    """
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
        and not p.name.endswith("-shm")
        and not (p.name.endswith("-wal") and p.stat().st_size == 0)
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
    name: str, cli: Cli, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case = CASES[name]
    server: NatsServer = request.getfixturevalue(case.server)
    if case.server == "nats_server":
        prefix = request.getfixturevalue("namespace").prefix  # deleted after the test
    else:
        prefix = unique_prefix("hostile")
    work = tmp_path / "work"
    work.mkdir()
    await _populate(work / "control.db")
    if case.setup is not None:
        case.setup(work)
    if case.kv_setup is not None:
        await case.kv_setup(server.target, prefix)
    values = {
        "dir": str(work),
        "url": server.url,
        "hostport": server.url.split("://", 1)[1],
        "closed": f"nats://127.0.0.1:{free_port()}",
        "prefix": prefix,
    }
    args = [a.format(**values) for a in case.args]
    if "--bucket-prefix" not in args:
        args += ["--bucket-prefix", prefix]
    files_before, kv_before = digests(work), server.stream_seqs()

    with unlocked(work):
        with case.holding(work) if case.holding is not None else nullcontext():
            started = time.monotonic()
            result = cli(*args, timeout=case.within + 30)
            took = time.monotonic() - started
        files_after = digests(work)

    assert result.returncode == case.code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in case.says:
        assert part.format(**values) in lines[0], lines[0]
    for secret in case.never:
        assert secret not in result.stdout + result.stderr
    assert case.waits <= took < case.within, f"took {took:.1f} s"
    assert files_after == files_before
    assert server.stream_seqs() == kv_before
