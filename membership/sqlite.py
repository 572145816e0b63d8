"""The SQLite store: one file, WAL, schema version in ``PRAGMA user_version``.

A membership database is recognised by ``PRAGMA application_id`` (``0x554E4942``,
"UNIB") and a known ``user_version``; anything else (random bytes, another
application's database, a newer schema) is refused with a :class:`SchemaError`
before a single byte is written. Opening never changes the file: the journal mode
is set once, by ``init``, and persists in the file.

The tables admit exactly the domains of DESIGN.md (ids of 1..128 UTF-8 bytes,
32-byte public keys, 1..4096-byte sealed keys, epochs >= 1, nkeys of the ``U…``
form) but no foreign keys and no uniqueness of nkeys: legacy files may hold
orphans, and the migration must carry them faithfully. Every write runs in a
``BEGIN IMMEDIATE`` transaction, so its checks and its writes see one state.

Schema versions: 1 had no ``users.nkey``; 2 adds it (and an index on it). A
version 1 file reads as version 2 with no nkeys and is never modified by reading;
writes are refused until :meth:`SQLiteStore.upgrade` (``membershipd upgrade``)
has added the column.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from . import rules
from .errors import DataError, InvalidInputError, MembershipError, SchemaError, StoreError
from .model import (
    OLDEST_SCHEMA_VERSION,
    SCHEMA_VERSION,
    Member,
    Revocation,
    Room,
    SealedKeyRecord,
    Snapshot,
    User,
    now_ms,
    validate_epoch,
    validate_id,
    validate_optional_nkey,
    validate_public_key,
    validate_sealed_key,
)

__all__ = ["APPLICATION_ID", "SCHEMA_SQL", "SCHEMA_SQL_V1", "UPGRADE_SQL", "SQLiteStore"]

APPLICATION_ID: Final = 0x554E4942  # "UNIB"
BUSY_TIMEOUT_S: Final = 5.0

_ID = "CHECK (typeof({0}) = 'text' AND length(CAST({0} AS BLOB)) BETWEEN 1 AND 128)"
_EPOCH = "CHECK (typeof({0}) = 'integer' AND {0} >= 1)"

_NKEY_FORM = (
    "(nkey IS NULL OR (typeof(nkey) = 'text' AND length(nkey) = 56 AND nkey GLOB 'U*' "
    "AND nkey NOT GLOB '*[^A-Z2-7]*'))"
)
"""The shape of a public user nkey; its checksum is checked in Python on every read."""
_NKEY_COLUMN = f"nkey        TEXT    CHECK {_NKEY_FORM}"

_USERS_V1 = f"""
CREATE TABLE users (
    id          TEXT    NOT NULL PRIMARY KEY {_ID.format("id")},
    public_key  BLOB    NOT NULL CHECK (typeof(public_key) = 'blob' AND length(public_key) = 32),
    status      TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at  INTEGER NOT NULL CHECK (typeof(created_at) = 'integer' AND created_at >= 0)
) WITHOUT ROWID;"""
_USERS_V2 = _USERS_V1.replace("created_at >= 0)\n)", f"created_at >= 0),\n    {_NKEY_COLUMN}\n)")
_NKEY_INDEX = "CREATE INDEX users_by_nkey ON users (nkey) WHERE nkey IS NOT NULL;"
_OTHER_TABLES = f"""
CREATE TABLE rooms (
    id          TEXT    NOT NULL PRIMARY KEY {_ID.format("id")},
    epoch       INTEGER NOT NULL {_EPOCH.format("epoch")},
    created_at  INTEGER NOT NULL CHECK (typeof(created_at) = 'integer' AND created_at >= 0)
) WITHOUT ROWID;
CREATE TABLE members (
    room_id      TEXT    NOT NULL {_ID.format("room_id")},
    user_id      TEXT    NOT NULL {_ID.format("user_id")},
    role         TEXT    NOT NULL CHECK (role IN ('owner', 'member')),
    joined_epoch INTEGER NOT NULL {_EPOCH.format("joined_epoch")},
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id);
CREATE TABLE sealed_keys (
    room_id     TEXT    NOT NULL {_ID.format("room_id")},
    epoch       INTEGER NOT NULL {_EPOCH.format("epoch")},
    user_id     TEXT    NOT NULL {_ID.format("user_id")},
    sealed_key  BLOB    NOT NULL
        CHECK (typeof(sealed_key) = 'blob' AND length(sealed_key) BETWEEN 1 AND 4096),
    PRIMARY KEY (room_id, epoch, user_id)
) WITHOUT ROWID;
"""
SCHEMA_SQL: Final = _USERS_V2 + "\n" + _NKEY_INDEX + _OTHER_TABLES
"""The schema ``init`` creates (version 2)."""
SCHEMA_SQL_V1: Final = _USERS_V1 + _OTHER_TABLES
"""Schema version 1, as earlier releases created it (for upgrades and their tests)."""
UPGRADE_SQL: Final = {
    2: (f"ALTER TABLE users ADD COLUMN {_NKEY_COLUMN}", _NKEY_INDEX.rstrip(";")),
}
"""The statements that take a file from version N - 1 to N, run in one transaction."""

TABLES: Final = ("users", "rooms", "members", "sealed_keys")

_SELECT: Final = {
    "users": "SELECT id, public_key, status, created_at, nkey FROM users ORDER BY id",
    "rooms": "SELECT id, epoch, created_at FROM rooms ORDER BY id",
    "members": "SELECT room_id, user_id, role, joined_epoch FROM members ORDER BY room_id, user_id",
    "sealed_keys": "SELECT room_id, epoch, user_id, sealed_key FROM sealed_keys "
    "ORDER BY room_id, epoch, user_id",
}
_TEXT_ID = "(typeof({0}) = 'text' AND length(CAST({0} AS BLOB)) BETWEEN 1 AND 128)"
_POSITIVE = "(typeof({0}) = 'integer' AND {0} >= 1)"
_DOMAIN: Final = {
    "users": " AND ".join(
        (
            _TEXT_ID.format("id"),
            "typeof(public_key) = 'blob' AND length(public_key) = 32",
            "typeof(status) = 'text' AND status IN ('active', 'revoked')",
            "typeof(created_at) = 'integer' AND created_at >= 0",
            _NKEY_FORM,
        )
    ),
    "rooms": " AND ".join(
        (
            _TEXT_ID.format("id"),
            _POSITIVE.format("epoch"),
            "typeof(created_at) = 'integer' AND created_at >= 0",
        )
    ),
    "members": " AND ".join(
        (
            _TEXT_ID.format("room_id"),
            _TEXT_ID.format("user_id"),
            "typeof(role) = 'text' AND role IN ('owner', 'member')",
            _POSITIVE.format("joined_epoch"),
        )
    ),
    "sealed_keys": " AND ".join(
        (
            _TEXT_ID.format("room_id"),
            _POSITIVE.format("epoch"),
            _TEXT_ID.format("user_id"),
            "typeof(sealed_key) = 'blob' AND length(sealed_key) BETWEEN 1 AND 4096",
        )
    ),
}
"""Each record's field domains as one SQL expression: the same rules as the record
constructors (and the table CHECKs), evaluated by SQLite while it scans."""
_CHECKED_SELECT: Final = {
    kind: sql.replace(" FROM", f", ({_DOMAIN[kind]}) FROM", 1) for kind, sql in _SELECT.items()
}
_WIDTH: Final = {"users": 5, "rooms": 3, "members": 4, "sealed_keys": 4}
_TEXT_SELECT: Final = {
    "users": "SELECT id, status, nkey FROM users",
    "rooms": "SELECT id FROM rooms",
    "members": "SELECT room_id, user_id, role FROM members",
    "sealed_keys": "SELECT room_id, user_id FROM sealed_keys",
}


@dataclass(frozen=True)
class _Queries:
    """The statements that read one schema version (version 1 has no ``nkey``)."""

    select: dict[str, str]
    checked: dict[str, str]
    text: dict[str, str]
    domain: dict[str, str]


def _queries(version: int) -> _Queries:
    def adapt(sql: str) -> str:
        return re.sub(r"\bnkey\b", "NULL", sql) if version < 2 else sql

    return _Queries(
        select={k: adapt(v) for k, v in _SELECT.items()},
        checked={k: adapt(v) for k, v in _CHECKED_SELECT.items()},
        text={k: adapt(v) for k, v in _TEXT_SELECT.items()},
        domain={k: adapt(v) for k, v in _DOMAIN.items()},
    )


_QUERIES: Final = {v: _queries(v) for v in range(OLDEST_SCHEMA_VERSION, SCHEMA_VERSION + 1)}

_RECORD: Final[dict[str, Callable[..., Any]]] = {
    "users": User,
    "rooms": Room,
    "members": Member,
    "sealed_keys": SealedKeyRecord,
}


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path))}?mode={mode}"


@contextmanager
def translate_errors(path: Path | str) -> Iterator[None]:
    """Turn ``sqlite3`` exceptions into membership errors that name the file."""
    try:
        yield
    except MembershipError:
        raise
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "file is not a database" in text:
            raise SchemaError(
                f"{path} is not a membership database (SQLite says: {text}); check the --db path"
            ) from exc
        if "malformed" in text:
            raise SchemaError(
                f"{path} is damaged (SQLite says: {text}); restore it from a backup"
            ) from exc
        if "Could not decode to UTF-8" in text:
            raise DataError(
                f"{path} holds text that is not valid UTF-8 (written around the API?); "
                "fix the row, then retry"
            ) from None
        if "locked" in text or "busy" in text:
            raise StoreError(
                f"{path} is locked by another process for more than {BUSY_TIMEOUT_S:g} s; "
                "retry when it is free"
            ) from exc
        if "readonly" in text:
            raise StoreError(f"{path} is read-only here; check its permissions") from exc
        if "unable to open" in text:
            raise StoreError(f"cannot open {path}: check that it is a readable file") from exc
        raise StoreError(f"SQLite error on {path}: {text}") from exc


def _check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """Return the schema version of a membership database, or raise SchemaError.

    Reads the header pragmas and ``sqlite_master`` only: never writes.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            raise SchemaError(
                f"{path} is an empty SQLite database, not a membership database; "
                f"run `membershipd init --db {path}`"
            )
        raise SchemaError(
            f"{path} is a SQLite database of another application "
            f"(application_id {app_id:#x}), not a membership database"
        )
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema version {version}, newer than this membershipd "
            f"understands ({SCHEMA_VERSION}); upgrade unibus-membership"
        )
    if version < OLDEST_SCHEMA_VERSION:
        raise SchemaError(f"{path} has unknown schema version {version}")
    found = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if missing := [t for t in TABLES if t not in found]:
        raise SchemaError(f"{path} lacks the tables {', '.join(missing)}; it is damaged")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(users)")}
    if ("nkey" in columns) != (version >= 2):
        raise SchemaError(
            f"{path} says schema version {version} but its users table "
            + ("has" if "nkey" in columns else "lacks")
            + " the nkey column; it is damaged"
        )
    return int(version)


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        _uri(path, mode),
        uri=True,
        isolation_level=None,
        timeout=BUSY_TIMEOUT_S,
        check_same_thread=False,
    )
    return conn


class SQLiteStore:
    """A membership store in one SQLite file. Open with :meth:`open` or :meth:`init`."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, version: int, clock: Callable[[], int]
    ) -> None:
        self._conn = conn
        self.path = path
        self.schema_version = version
        """The schema version of the file. Records always read as :data:`SCHEMA_VERSION`."""
        self._q = _QUERIES[version]
        self._clock = clock

    # -- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        clock: Callable[[], int] = now_ms,
    ) -> SQLiteStore:
        """Open an existing membership database; with ``create``, make one if absent.

        An existing file that is not a membership database is refused, whether or not
        ``create`` is set, and is never modified.
        """
        p = Path(path)
        if p.is_dir():
            raise InvalidInputError(f"--db {p} is a directory, not a database file")
        if not p.exists() and not create:
            raise InvalidInputError(
                f"database {p} does not exist; create it with `membershipd init --db {p}`"
            )
        if create and not p.parent.is_dir():
            raise InvalidInputError(f"cannot create {p}: directory {p.parent} does not exist")
        with translate_errors(p):
            conn = _connect(p, "rwc" if create else "rw")
            try:
                version = cls._open_checked(conn, p, create)
            except BaseException:
                conn.close()
                raise
        return cls(conn, p, version, clock)

    @classmethod
    def _open_checked(cls, conn: sqlite3.Connection, path: Path, create: bool) -> int:
        try:
            return _check_schema(conn, path)
        except SchemaError:
            if not create:
                raise
        # Create only into a truly empty database, checked again under the write lock.
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == APPLICATION_ID:
                conn.execute("ROLLBACK")
                return _check_schema(conn, path)  # created meanwhile by another process
            if tables or app_id:
                conn.execute("ROLLBACK")
                return _check_schema(conn, path)  # raises: a foreign database
            for statement in SCHEMA_SQL.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("PRAGMA journal_mode = WAL")
        return SCHEMA_VERSION

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection, for the migration's lock and for tests."""
        return self._conn

    def require_current_schema(self) -> None:
        """Refuse to write to a file of an older schema version (reading is fine)."""
        if self.schema_version < SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has schema version {self.schema_version}; this membershipd "
                f"writes version {SCHEMA_VERSION}: run `membershipd upgrade --db {self.path}` "
                "first (it takes a backup)"
            )

    def upgrade(self, while_locked: Callable[[], Any] | None = None) -> list[int]:
        """Take the file to :data:`SCHEMA_VERSION` in one transaction; the versions it
        passed through (empty if it was current).

        Under the write lock the version is read again, so two upgrades at once do the
        work once; ``while_locked`` (the backup) runs there, before any change, so it
        shows exactly the state that is upgraded. The records are unchanged (a version
        1 user gets no nkey).
        """
        done: list[int] = []
        with translate_errors(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version = _check_schema(self._conn, self.path)
                if version < SCHEMA_VERSION and while_locked is not None:
                    while_locked()
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in UPGRADE_SQL[target]:
                        self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version = {target}")
                    done.append(target)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self.schema_version = _check_schema(self._conn, self.path)
        self._q = _QUERIES[self.schema_version]
        return done

    async def close(self) -> None:
        self._conn.close()

    # -- plumbing -----------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self.require_current_schema()
        with translate_errors(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with translate_errors(self.path):
            # Inside the migration's lock the caller's transaction is already consistent.
            started = not self._conn.in_transaction
            if started:
                self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if started and self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def _one(self, kind: str, where: str, args: tuple[Any, ...]) -> Any:
        sql = self._q.select[kind].replace(" ORDER BY", f" WHERE {where} ORDER BY")
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else self._make(kind, row)

    def _many(self, kind: str, where: str = "", args: tuple[Any, ...] = ()) -> list[Any]:
        sql = self._q.select[kind]
        if where:
            sql = sql.replace(" ORDER BY", f" WHERE {where} ORDER BY")
        return [self._make(kind, row) for row in self._conn.execute(sql, args)]

    def _make(self, kind: str, row: tuple[Any, ...]) -> Any:
        try:
            return _RECORD[kind](*row)
        except MembershipError as exc:
            raise DataError(f"{self.path}: a {kind} row is out of its domain: {exc}") from None

    def _user(self, user_id: str) -> User | None:
        user: User | None = self._one("users", "id = ?", (user_id,))
        return user

    def _room(self, room_id: str) -> Room | None:
        room: Room | None = self._one("rooms", "id = ?", (room_id,))
        return room

    def _member(self, room_id: str, user_id: str) -> Member | None:
        member: Member | None = self._one(
            "members", "room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return member

    def _bump(self, conn: sqlite3.Connection, room: Room) -> Room:
        bumped = rules.bumped(room)
        conn.execute("UPDATE rooms SET epoch = ? WHERE id = ?", (bumped.epoch, room.id))
        return bumped

    # -- users --------------------------------------------------------------------

    def _users_with_nkey(self, nkey: str | None) -> list[str]:
        if nkey is None:
            return []
        rows = self._conn.execute("SELECT id FROM users WHERE nkey = ? ORDER BY id", (nkey,))
        return [row[0] for row in rows]

    async def add_user(
        self,
        user_id: str,
        public_key: bytes,
        *,
        created_at: int | None = None,
        nkey: str | None = None,
    ) -> User:
        validate_id(user_id, "user id")
        validate_public_key(public_key)
        validate_optional_nkey(nkey)
        with self._write() as conn:
            rules.check_new_user(self._user(user_id), user_id)
            rules.check_nkey_free(self._users_with_nkey(nkey), nkey, user_id)
            user = User(
                user_id,
                public_key,
                "active",
                self._clock() if created_at is None else created_at,
                nkey,
            )
            conn.execute(
                "INSERT INTO users (id, public_key, status, created_at, nkey) "
                "VALUES (?, ?, ?, ?, ?)",
                (user.id, user.public_key, user.status, user.created_at, user.nkey),
            )
        return user

    async def set_user_nkey(self, user_id: str, nkey: str | None) -> User:
        validate_id(user_id, "user id")
        validate_optional_nkey(nkey)
        with self._write() as conn:
            user = rules.check_set_nkey(self._user(user_id), user_id, nkey)
            rules.check_nkey_free(self._users_with_nkey(nkey), nkey, user_id)
            conn.execute("UPDATE users SET nkey = ? WHERE id = ?", (nkey, user_id))
        return replace(user, nkey=nkey)

    async def revoke_user(self, user_id: str) -> Revocation:
        validate_id(user_id, "user id")
        with self._write() as conn:
            user = rules.require_user(self._user(user_id), user_id)
            was_active = user.status == "active"
            user = replace(user, status="revoked")
            conn.execute("UPDATE users SET status = 'revoked' WHERE id = ?", (user_id,))
            rooms = []
            for member in self._many("members", "user_id = ?", (user_id,)):
                conn.execute(
                    "DELETE FROM members WHERE room_id = ? AND user_id = ?",
                    (member.room_id, user_id),
                )
                room = self._room(member.room_id)
                if room is not None:
                    rooms.append(self._bump(conn, room))
        return Revocation(user, tuple(rooms), was_active)

    async def get_user(self, user_id: str) -> User | None:
        validate_id(user_id, "user id")
        with self._read():
            return self._user(user_id)

    async def list_users(self) -> list[User]:
        with self._read():
            return self._many("users")

    # -- rooms and members ----------------------------------------------------------

    async def create_room(self, room_id: str, owner: str, *, created_at: int | None = None) -> Room:
        validate_id(room_id, "room id")
        validate_id(owner, "user id")
        with self._write() as conn:
            rules.check_create_room(self._room(room_id), self._user(owner), room_id, owner)
            room = Room(room_id, 1, self._clock() if created_at is None else created_at)
            conn.execute(
                "INSERT INTO rooms (id, epoch, created_at) VALUES (?, ?, ?)",
                (room.id, room.epoch, room.created_at),
            )
            conn.execute(
                "INSERT OR REPLACE INTO members (room_id, user_id, role, joined_epoch) "
                "VALUES (?, ?, 'owner', 1)",
                (room_id, owner),
            )
        return room

    async def get_room(self, room_id: str) -> Room | None:
        validate_id(room_id, "room id")
        with self._read():
            return self._room(room_id)

    async def list_rooms(self) -> list[Room]:
        with self._read():
            return self._many("rooms")

    async def add_member(self, room_id: str, user_id: str) -> Member:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        with self._write() as conn:
            room = rules.check_add_member(
                self._room(room_id),
                self._user(user_id),
                self._member(room_id, user_id),
                room_id,
                user_id,
            )
            member = Member(room_id, user_id, "member", room.epoch)
            conn.execute(
                "INSERT INTO members (room_id, user_id, role, joined_epoch) VALUES (?, ?, ?, ?)",
                (room_id, user_id, member.role, member.joined_epoch),
            )
        return member

    async def remove_member(self, room_id: str, user_id: str) -> Room:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        with self._write() as conn:
            room = rules.check_remove_member(
                self._room(room_id), self._member(room_id, user_id), room_id, user_id
            )
            conn.execute(
                "DELETE FROM members WHERE room_id = ? AND user_id = ?", (room_id, user_id)
            )
            return self._bump(conn, room)

    async def get_member(self, room_id: str, user_id: str) -> Member | None:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        with self._read():
            return self._member(room_id, user_id)

    async def list_members(self, room_id: str | None = None) -> list[Member]:
        if room_id is None:
            with self._read():
                return self._many("members")
        validate_id(room_id, "room id")
        with self._read():
            return self._many("members", "room_id = ?", (room_id,))

    async def rekey(self, room_id: str) -> Room:
        validate_id(room_id, "room id")
        with self._write() as conn:
            return self._bump(conn, rules.require_room(self._room(room_id), room_id))

    # -- sealed keys ----------------------------------------------------------------

    async def put_sealed_key(
        self, room_id: str, user_id: str, sealed_key: bytes
    ) -> SealedKeyRecord:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        validate_sealed_key(sealed_key)
        with self._write() as conn:
            room = self._room(room_id)
            epoch = room.epoch if room is not None else 0
            exists = (
                conn.execute(
                    "SELECT 1 FROM sealed_keys WHERE room_id = ? AND epoch = ? AND user_id = ?",
                    (room_id, epoch, user_id),
                ).fetchone()
                is not None
            )
            rules.check_put_sealed_key(
                room, self._user(user_id), self._member(room_id, user_id), exists, room_id, user_id
            )
            record = SealedKeyRecord(room_id, epoch, user_id, sealed_key)
            conn.execute(
                "INSERT INTO sealed_keys (room_id, epoch, user_id, sealed_key) VALUES (?, ?, ?, ?)",
                (room_id, epoch, user_id, sealed_key),
            )
        return record

    async def get_sealed_key(
        self, room_id: str, user_id: str, epoch: int | None = None
    ) -> SealedKeyRecord | None:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        if epoch is not None:
            validate_epoch(epoch)
        with self._read():
            if epoch is None:
                room = self._room(room_id)
                if room is None:
                    return None
                epoch = room.epoch
            record: SealedKeyRecord | None = self._one(
                "sealed_keys",
                "room_id = ? AND epoch = ? AND user_id = ?",
                (room_id, epoch, user_id),
            )
            return record

    async def list_sealed_keys(self, room_id: str | None = None) -> list[SealedKeyRecord]:
        if room_id is None:
            with self._read():
                return self._many("sealed_keys")
        validate_id(room_id, "room id")
        with self._read():
            return self._many("sealed_keys", "room_id = ?", (room_id,))

    # -- snapshots ------------------------------------------------------------------

    def iter_records(self, kind: str) -> Iterator[Any]:
        """Stream one table's records in primary-key order (inside a transaction)."""
        with translate_errors(self.path):
            for row in self._conn.execute(self._q.select[kind]):
                yield self._make(kind, row)

    def iter_rows(self, kind: str, *, checked: bool = False) -> Iterator[tuple[Any, ...]]:
        """Stream one table's rows in primary-key order as tuples of the record's fields.

        The fast path of the migration: no record object per row. Every row is still
        checked against its record's field domains -- by SQLite, in the same scan
        (:data:`_DOMAIN`) -- and a row outside them raises the same
        :class:`DataError` that :meth:`iter_records` raises. Call it inside a
        transaction (:meth:`consistent_read`) to see one moment across tables;
        ``checked`` skips the domain check for a table :meth:`check_rows` has already
        passed in that same transaction.
        """
        width = _WIDTH[kind]
        if checked:
            if not self._conn.in_transaction:
                raise StoreError("iter_rows(checked=True) needs the transaction check_rows ran in")
            with translate_errors(self.path):
                # a for loop, not ``yield from``: closing this generator after the database
                # (a run that failed half-way) must not try to close the cursor
                for row in self._conn.execute(self._q.select[kind]):
                    yield row
            return
        with translate_errors(self.path):
            for row in self._conn.execute(self._q.checked[kind]):
                if not row[width]:
                    self._make(kind, row[:width])  # raises the precise DataError
                    raise DataError(f"{self.path}: a {kind} row is out of its domain")
                if kind == "users" and row[4] is not None:
                    self._check_nkey(row[0], row[4])
                yield row[:width]

    def check_rows(self, kind: str) -> int:
        """Check one table's rows against their record domains; return how many there are.

        Cheaper than reading them: SQLite counts the rows outside the domains itself
        (:data:`_DOMAIN`; if there are any, the first one raises the precise
        :class:`DataError`), and only the TEXT columns come to Python, where each
        value is decoded once -- text that is not UTF-8 raises :class:`DataError`.
        """
        with translate_errors(self.path):
            outside = self._conn.execute(
                f"SELECT count(*) FROM {kind} WHERE NOT ({self._q.domain[kind]})"
            ).fetchone()[0]
            if outside:
                for _ in self.iter_rows(kind):
                    pass
                raise DataError(f"{self.path}: {outside} {kind} row(s) are out of their domain")
            rows = 0
            cursor = self._conn.execute(self._q.text[kind])
            while batch := cursor.fetchmany(4096):
                rows += len(batch)
                if kind == "users":  # the SQL checked an nkey's shape; here its checksum
                    for user_id, _status, nkey in batch:
                        if nkey is not None:
                            self._check_nkey(user_id, nkey)
            return rows

    def _check_nkey(self, user_id: str, nkey: str) -> None:
        try:
            validate_optional_nkey(nkey)
        except InvalidInputError as exc:
            raise DataError(
                f"{self.path}: a users row is out of its domain: user {user_id!r}: {exc}"
            ) from None

    def count(self, kind: str) -> int:
        """The number of rows of one table (inside the caller's transaction, if any)."""
        if kind not in _SELECT:
            raise InvalidInputError(f"unknown record kind {kind!r}")
        with translate_errors(self.path):
            return int(self._conn.execute(f"SELECT count(*) FROM {kind}").fetchone()[0])

    @contextmanager
    def consistent_read(self, while_locked: Callable[[], Any] | None = None) -> Iterator[None]:
        """Pin one moment of the database for every read inside the block.

        Takes the write lock (``BEGIN IMMEDIATE``) on a second connection, starts a
        read transaction on this one and reads, which fixes its snapshot at a moment
        no writer can change; runs ``while_locked`` (the backup, which then shows that
        very moment) and releases the lock. In WAL mode writers go on from there
        while this connection keeps reading the pinned moment, for as long as the
        block lasts; in rollback-journal mode they wait for the block (busy timeout)
        or fail visibly. The file is never modified: both transactions only read.
        """
        with translate_errors(self.path):
            if self._conn.in_transaction:
                raise StoreError(f"{self.path}: a transaction is already open")
            locker = _connect(self.path, "rw")
            try:
                locker.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute("BEGIN")
                    try:
                        self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                        if while_locked is not None:
                            while_locked()
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                finally:
                    locker.execute("ROLLBACK")
            finally:
                locker.close()
        try:
            yield
        finally:
            self._end_read()

    def _end_read(self) -> None:
        if self._conn.in_transaction:
            with translate_errors(self.path):
                self._conn.execute("ROLLBACK")

    def read_snapshot(self) -> Snapshot:
        """The whole state in one read transaction (or the caller's transaction)."""
        with self._read():
            return Snapshot(
                users=tuple(self.iter_records("users")),
                rooms=tuple(self.iter_records("rooms")),
                members=tuple(self.iter_records("members")),
                sealed_keys=tuple(self.iter_records("sealed_keys")),
                schema_version=SCHEMA_VERSION,  # a version 1 file reads as version 2
            )

    async def export_snapshot(self) -> Snapshot:
        return self.read_snapshot()

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the database's write lock (``BEGIN IMMEDIATE``) without writing.

        Writers in other processes wait (busy timeout) or fail visibly while it is
        held; readers, ``VACUUM INTO`` on another connection included, go on. The
        transaction is rolled back, so the file is not modified.
        """
        with translate_errors(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
