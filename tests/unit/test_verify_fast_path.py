"""``verify`` on a source large enough for its child process (``membership._source_worker``).

Its fast path proves equality with per-kind counts and keyed set-hashes; these tests
change one thing at a time -- one byte of one KV value, a key only in KV, a key
missing, two values swapped, a row in SQLite -- and check that verify still finds it,
and says exactly what the in-process key-by-key comparison says (``_verify_exact``,
run on the same files as the reference). Errors met by the child come back as the
same one line and exit code as on the in-process path (a small file). Everything runs
``membershipd`` as a user does, against the session's real nats-server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures.plugin import Cli, Namespace
from harness.generate import Shape, generate
from membership._source_worker import FORK_FROM_BYTES
from membership.audit import invariant_findings
from membership.canonical import KINDS, encode_row
from membership.connect import connect_nats
from membership.embedded import free_port
from membership.errors import DataError, SchemaError
from membership.kv import KVStore, RowKeys, bucket_names
from membership.migrate import _verify_exact, migrate_sqlite_to_kv
from membership.sqlite import SQLiteStore
from tests.helpers import one_line_error

SHAPE = Shape(users=240, rooms=60, members_per_room=20, epochs=10, seed=5)
"""13,500 records (12,000 sealed keys): about 1.6 MB, above FORK_FROM_BYTES."""


def big_db(tmp_path: Path, name: str = "control.db") -> Path:
    db = tmp_path / name
    generate(db, SHAPE)
    assert db.stat().st_size >= FORK_FROM_BYTES  # verify forks its child for this file
    return db


def legacy_rows(db: Path) -> None:
    """Rows no API call writes: verify lists them as findings, the migration copies them."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO members VALUES ('ghost room', 'user-0000001', 'member', 1)")
        conn.execute("INSERT INTO sealed_keys VALUES ('room-000001', 99, 'nobody', x'0102')")
    conn.close()


def migrate(db: Path, ns: Namespace) -> None:
    report = asyncio.run(migrate_sqlite_to_kv(db, ns.target, prefix=ns.prefix, backup=False))
    assert report.verified


def rows(db: Path, kind: str) -> list[tuple[Any, ...]]:
    store = SQLiteStore.open(db)
    try:
        with store.consistent_read():
            return list(store.iter_rows(kind))
    finally:
        asyncio.run(store.close())


def entry(db: Path, kind: str, index: int) -> tuple[str, bytes]:
    """(KV key, canonical value) of the source row ``index`` of ``kind``."""
    row = rows(db, kind)[index]
    return RowKeys().key(kind, row), encode_row(kind, row)


def kv_edit(ns: Namespace, kind: str, puts: dict[str, bytes], deletes: tuple[str, ...] = ()):
    """Change a bucket behind membershipd's back, through nats-py's own KV API."""

    async def edit() -> None:
        nc = await connect_nats(ns.target)
        try:
            bucket = await nc.jetstream().key_value(bucket_names(ns.prefix)[kind])
            for key, value in puts.items():
                await bucket.put(key, value)
            for key in deletes:
                await bucket.delete(key)
        finally:
            await nc.close()

    asyncio.run(edit())


def exact(db: Path, ns: Namespace) -> dict[str, Any]:
    """The in-process key-by-key comparison (the reference) of the same stores."""

    async def go() -> dict[str, Any]:
        source = SQLiteStore.open(db)
        nc = await connect_nats(ns.target)
        try:
            kv = await KVStore.open(nc, ns.prefix)
            from membership.progress import NullProgress

            return (await _verify_exact(source, kv, NullProgress())).as_dict()
        finally:
            await nc.close()
            await source.close()

    return asyncio.run(go())


def verify(cli: Cli, db: Path, ns: Namespace, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "verify", "--db", str(db), "--nats-url", ns.url, "--bucket-prefix", ns.prefix, *extra
    )


def assert_found(cli: Cli, db: Path, ns: Namespace, expected: list[str]) -> dict[str, Any]:
    """verify exits 1, lists ``expected`` (and only that), exactly as the exact path does."""
    as_json = verify(cli, db, ns, "--json")
    as_text = verify(cli, db, ns)
    assert as_json.returncode == as_text.returncode == 1, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["equal"] is False
    assert result["differences"] == expected
    assert result == exact(db, ns)
    assert result["digest"]["sqlite"] != result["digest"]["kv"]
    lines = as_text.stdout.splitlines()
    assert lines[0] == f"parity: {len(expected)} difference(s) between SQLite and KV"
    assert [f"  {line}" for line in expected] == lines[1 : 1 + len(expected)]
    error = as_text.stderr.strip().splitlines()
    assert len(error) == 1 and f"differ in {len(expected)} place(s)" in error[0]
    return result


def processes_naming(needle: str) -> list[int]:
    """Live processes whose command line holds ``needle`` (a verify child would)."""
    found = []
    for entry_ in os.listdir("/proc"):
        if not entry_.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry_}/cmdline").read_bytes()
            state = Path(f"/proc/{entry_}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle.encode() in cmdline and state != "Z":
            found.append(int(entry_))
    return found


# -- equal: the fast path's answer is the exact path's ---------------------------------------


def test_an_equal_large_state_is_reported_exactly_as_before(
    cli: Cli, tmp_path: Path, namespace: Namespace
) -> None:
    db = big_db(tmp_path)
    legacy_rows(db)
    migrate(db, namespace)
    as_json = verify(cli, db, namespace, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stderr == ""
    result = json.loads(as_json.stdout)
    assert result == exact(db, namespace)
    store = SQLiteStore.open(db)
    snapshot = store.read_snapshot()
    asyncio.run(store.close())
    export = cli("export", "--db", str(db)).stdout.encode()
    digest = "sha256:" + hashlib.sha256(export).hexdigest()
    assert result["digest"] == {"sqlite": digest, "kv": digest}
    assert result["records"] == {kind: len(getattr(snapshot, kind)) for kind in KINDS}
    assert result["findings"] == invariant_findings(snapshot) != []
    as_text = verify(cli, db, namespace)
    assert as_text.returncode == 0
    total = sum(result["records"].values())
    assert as_text.stdout.splitlines() == [
        f"parity: SQLite and KV are equal ({total} records, {digest})",
        f"findings: {len(result['findings'])} invariant violation(s) in the source",
        *(f"  {line}" for line in result["findings"]),
    ]


# -- one thing differs: always found, named as before ----------------------------------------


def test_one_changed_byte_in_one_kv_value_is_found(
    cli: Cli, tmp_path: Path, namespace: Namespace
) -> None:
    db = big_db(tmp_path)
    migrate(db, namespace)
    key, value = entry(db, "sealed_keys", 7001)
    at = value.index(b'"sealed_key":"') + 20  # inside the base64: still a valid record
    changed = value[:at] + (b"B" if value[at : at + 1] != b"B" else b"C") + value[at + 1 :]
    kv_edit(namespace, "sealed_keys", {key: changed})
    (line,) = assert_found(cli, db, namespace, [_line_of(db, namespace)])["differences"]
    assert ".sealed_key: SQLite 80 bytes sha256:" in line


def _line_of(db: Path, ns: Namespace) -> str:
    (line,) = exact(db, ns)["differences"]
    return str(line)


def test_a_key_only_in_kv_is_found(cli: Cli, tmp_path: Path, namespace: Namespace) -> None:
    db = big_db(tmp_path)
    migrate(db, namespace)
    row = rows(db, "sealed_keys")[123]
    extra = (row[0], row[1], "zz-not-in-sqlite", row[3])
    kv_edit(
        namespace,
        "sealed_keys",
        {RowKeys().key("sealed_keys", extra): encode_row("sealed_keys", extra)},
    )
    assert_found(
        cli, db, namespace, [f"sealed_keys[{row[0]!r}, {row[1]}, 'zz-not-in-sqlite']: only in KV"]
    )


def test_a_key_missing_from_kv_is_found(cli: Cli, tmp_path: Path, namespace: Namespace) -> None:
    db = big_db(tmp_path)
    migrate(db, namespace)
    row = rows(db, "sealed_keys")[11999]
    kv_edit(namespace, "sealed_keys", {}, deletes=(RowKeys().key("sealed_keys", row),))
    assert_found(
        cli, db, namespace, [f"sealed_keys[{row[0]!r}, {row[1]}, {row[2]!r}]: only in SQLite"]
    )


def test_two_values_swapped_between_their_keys_are_found(
    cli: Cli, tmp_path: Path, namespace: Namespace
) -> None:
    """Same count, same multiset of values: only the keys tell them apart. A value under
    another record's key is a data error of the bucket, named as before."""
    db = big_db(tmp_path)
    migrate(db, namespace)
    (key_a, value_a), (key_b, value_b) = entry(db, "members", 10), entry(db, "members", 900)
    kv_edit(namespace, "members", {key_a: value_b, key_b: value_a})
    with pytest.raises(DataError) as info:
        exact(db, namespace)
    for extra in ((), ("--json",)):
        line = one_line_error(
            verify(cli, db, namespace, *extra), DataError.exit_code, stdout_empty=True
        )
        assert line.endswith(str(info.value)) and key_a in line


def test_a_row_changed_in_sqlite_is_found(cli: Cli, tmp_path: Path, namespace: Namespace) -> None:
    db = big_db(tmp_path)
    migrate(db, namespace)
    (room_id,) = rows(db, "rooms")[30][:1]
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE rooms SET epoch = epoch + 1 WHERE id = ?", (room_id,))
    conn.close()
    assert_found(cli, db, namespace, [f"rooms[{room_id!r}].epoch: SQLite 11, KV 10"])


def test_a_newer_kv_schema_is_the_same_error_as_before(
    cli: Cli, tmp_path: Path, namespace: Namespace
) -> None:
    """A KV namespace newer than this membershipd is refused, as before (an older one
    reads as the current schema: tests/property/test_schema_upgrade.py)."""
    db = big_db(tmp_path)
    migrate(db, namespace)
    kv_edit(namespace, "meta", {"schema": b'{"schema_version":3}'})
    with pytest.raises(SchemaError) as info:
        exact(db, namespace)
    line = one_line_error(verify(cli, db, namespace), SchemaError.exit_code, stdout_empty=True)
    assert line.endswith(str(info.value)) and "newer than this membershipd" in line
    assert processes_naming(str(db)) == []


# -- errors met by the child: the same line and exit code as in-process ---------------------


def _break(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("PRAGMA ignore_check_constraints = 1")
        conn.execute(sql)
    conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        # text SQLite holds but Python cannot decode, in the last table read
        "UPDATE sealed_keys SET user_id = CAST(x'75ff' AS TEXT) WHERE room_id = 'room-000000' "
        "AND epoch = 1 AND user_id = (SELECT min(user_id) FROM sealed_keys "
        "WHERE room_id = 'room-000000' AND epoch = 1)",
        # a row outside its record's domain (an empty sealed key)
        "INSERT INTO sealed_keys VALUES ('room-000002', 3, 'user-x', x'')",
    ],
    ids=["not-utf8", "out-of-domain"],
)
def test_a_bad_row_read_by_the_child_is_the_same_one_line_error(
    cli: Cli, tmp_path: Path, namespace: Namespace, sql: str
) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    db = big_db(tmp_path / "big")
    migrate(db, namespace)
    small = tmp_path / "small" / "control.db"
    generate(small, Shape(users=30, rooms=2, members_per_room=20, epochs=10, seed=5))
    assert small.stat().st_size < FORK_FROM_BYTES  # read in-process, as before
    errors = []
    for path in (db, small):
        _break(path, sql)
        p = verify(cli, path, namespace)
        assert p.returncode in (1, 2)
        errors.append(
            (
                p.returncode,
                one_line_error(p, p.returncode, stdout_empty=True).replace(str(path), "<db>"),
            )
        )
    assert errors[0] == errors[1]
    assert processes_naming(str(db)) == []


def test_a_file_that_is_not_a_database_is_refused_as_before(
    cli: Cli, tmp_path: Path, namespace: Namespace
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(FORK_FROM_BYTES + 4096))
    line = one_line_error(verify(cli, junk, namespace), 2, stdout_empty=True)
    assert line.endswith(
        f"{junk} is not a membership database (SQLite says: file is not a "
        "database); check the --db path"
    )


def test_a_missing_namespace_is_the_same_error_and_leaves_no_child(
    cli: Cli, tmp_path: Path, namespace: Namespace
) -> None:
    db = big_db(tmp_path)  # nothing migrated: no buckets under this prefix
    line = one_line_error(verify(cli, db, namespace), 1, stdout_empty=True)
    assert f"no membership data under bucket prefix {namespace.prefix!r}" in line
    assert processes_naming(str(db)) == []


def test_an_unreachable_server_fails_in_seconds_and_kills_the_child(
    cli: Cli, tmp_path: Path
) -> None:
    db = big_db(tmp_path)
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    p = cli("verify", "--db", str(db), "--nats-url", url, timeout=60)
    assert url in one_line_error(p, 1, stdout_empty=True)
    assert time.monotonic() - started < 30
    assert processes_naming(str(db)) == []


# -- the worker itself -----------------------------------------------------------------------


WORKER_KILLED = """
import asyncio, sys
from membership._source_worker import SourceWorker, can_fork

async def main():
    assert can_fork(), "this process must run one thread"
    worker = SourceWorker(sys.argv[1], b"k" * 32)
    worker.start()
    try:
        worker._process.kill()  # the OOM killer, an operator ...
        await worker.result()
    except Exception as exc:
        print(type(exc).__name__, exc)
    finally:
        worker.stop()

asyncio.run(main())
"""


def test_a_child_that_dies_without_an_answer_is_one_clear_error(tmp_path: Path) -> None:
    db = big_db(tmp_path)
    p = subprocess.run(
        [sys.executable, "-c", WORKER_KILLED, str(db)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.startswith("StoreError ") and "ended without an answer" in p.stdout
    assert processes_naming(str(db)) == []
