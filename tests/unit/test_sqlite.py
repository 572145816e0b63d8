"""SQLite: recognise our files, refuse every other one, and never modify what we refuse."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from membership.errors import DataError, InvalidInputError, SchemaError
from membership.sqlite import APPLICATION_ID, SQLiteStore


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_creates_a_wal_database_with_our_ids(sqlite_db: Path) -> None:
    conn = sqlite3.connect(sqlite_db)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_opening_again_is_fine_and_create_does_not_reset(sqlite_db: Path) -> None:
    async def go() -> None:
        store = SQLiteStore.open(sqlite_db, create=True)
        await store.add_user("alice", b"\x01" * 32)
        await store.close()
        again = SQLiteStore.open(sqlite_db, create=True)
        assert [u.id for u in await again.list_users()] == ["alice"]
        await again.close()

    asyncio.run(go())


def test_missing_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(InvalidInputError, match=r"nope\.db"):
        SQLiteStore.open(path)
    assert not path.exists()


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.commit()
    conn.close()


def _newer(path: Path) -> None:
    asyncio.run(SQLiteStore.open(path, create=True).close())
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _truncated(path: Path) -> None:
    async def fill() -> None:
        store = SQLiteStore.open(path, create=True)
        for i in range(300):
            await store.add_user(f"user-{i:04}" + "x" * 100, bytes([i % 256]) * 32)
        await store.close()

    asyncio.run(fill())
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_foreign, "another application"),
        (_newer, "schema version 99"),
        (_random, "not a membership database"),
    ],
)
@pytest.mark.parametrize("create", [False, True])
def test_foreign_files_are_refused_untouched(
    tmp_path: Path, make, message: str, create: bool
) -> None:
    path = tmp_path / "x.db"
    make(path)
    before = digest(path)
    with pytest.raises(SchemaError, match=message):
        SQLiteStore.open(path, create=create)
    assert digest(path) == before


def test_truncated_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    _truncated(path)
    before = digest(path)

    async def go() -> None:
        store = SQLiteStore.open(path)
        try:
            await store.export_snapshot()
        finally:
            await store.close()

    with pytest.raises((SchemaError, DataError)):
        asyncio.run(go())
    assert digest(path) == before


def test_empty_sqlite_file_is_not_a_membership_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(SchemaError, match="membershipd init"):
        SQLiteStore.open(path)


def test_invalid_utf8_written_around_the_api_is_a_data_error(sqlite_db: Path) -> None:
    conn = sqlite3.connect(sqlite_db)
    conn.execute(
        "INSERT INTO users (id, public_key, status, created_at) VALUES (CAST(X'66FF6F' AS TEXT), zeroblob(32), 'active', 0)"
    )
    conn.commit()
    conn.close()

    async def go() -> None:
        store = SQLiteStore.open(sqlite_db)
        try:
            await store.export_snapshot()
        finally:
            await store.close()

    with pytest.raises(DataError, match="UTF-8"):
        asyncio.run(go())


def test_schema_admits_exactly_the_domains(sqlite_db: Path) -> None:
    conn = sqlite3.connect(sqlite_db)
    bad_rows = [
        "INSERT INTO users (id, public_key, status, created_at) VALUES ('', zeroblob(32), 'active', 0)",
        f"INSERT INTO users (id, public_key, status, created_at) VALUES ('{'x' * 129}', zeroblob(32), 'active', 0)",
        "INSERT INTO users (id, public_key, status, created_at) VALUES ('a', zeroblob(31), 'active', 0)",
        "INSERT INTO users (id, public_key, status, created_at) VALUES ('a', zeroblob(32), 'paused', 0)",
        "INSERT INTO users (id, public_key, status, created_at) VALUES (X'00', zeroblob(32), 'active', 0)",
        "INSERT INTO users VALUES ('a', zeroblob(32), 'active', 0, 'SUAXXX')",
        f"INSERT INTO users VALUES ('a', zeroblob(32), 'active', 0, '{'U' + 'a' * 55}')",
        f"INSERT INTO users VALUES ('a', zeroblob(32), 'active', 0, '{'U' * 57}')",
        "INSERT INTO users VALUES ('a', zeroblob(32), 'active', 0, X'55')",
        "INSERT INTO rooms VALUES ('r', 0, 0)",
        "INSERT INTO rooms VALUES ('r', 'two', 0)",
        "INSERT INTO members VALUES ('r', 'u', 'admin', 1)",
        "INSERT INTO sealed_keys VALUES ('r', 1, 'u', zeroblob(0))",
        "INSERT INTO sealed_keys VALUES ('r', 1, 'u', zeroblob(4097))",
    ]
    for sql in bad_rows:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(sql)
    # but orphans are admitted: legacy files hold them and the migration copies them
    conn.execute("INSERT INTO members VALUES ('no-room', 'no-user', 'member', 7)")
    conn.commit()
    conn.close()
