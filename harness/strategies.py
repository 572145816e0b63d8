"""Hypothesis strategies for whole control planes, and for operation sequences.

Three families of states, all :class:`membership.model.Snapshot` values:

``valid_states``
    what the API can produce: users first, rooms over them, members over both (active
    users only; the owner role only for a member who joined at epoch 1), sealed keys over
    members and epochs up to the room's epoch (at the current epoch only for a current
    member; past epochs for anyone, revoked users included), revoked users, rekeyed rooms.
    ``invariant_findings`` finds nothing in them (a property pins that).
``dirty_states``
    a valid state plus at least one "legacy" row the API refuses to write: orphan members,
    members who are revoked or joined above the room's epoch, sealed keys above the room's
    epoch, keys of non-members at the current epoch, keys of missing rooms or users. Only
    raw SQL can write them (:func:`write_sqlite`); the migration must copy them faithfully.
``large_states``
    a few hundred records, built from one drawn seed with :mod:`random` rather than from
    hundreds of Hypothesis draws (which would overrun its buffer and shrink for ever). The
    small strategies give readable, shrunk failures; the large ones give scale.

Both small and large states come out of one builder, :func:`build_state`, which asks a
:class:`Chooser` for every decision: :class:`DrawChooser` answers with Hypothesis draws,
:class:`RandomChooser` with a seeded ``random.Random``.

Ids come from the whole domain of DESIGN.md: dots, spaces, ``*``, ``>``, ``/``, ``=``, case
pairs, non-ASCII, 128-byte ids, ``_kv``..., control characters, and arbitrary Unicode text
without lone surrogates.

:func:`operations` / :func:`operation_sequences` draw calls of the :class:`~membership.store.Store`
API (refused ones included); :func:`reachable_states` applies such a sequence to a
:class:`~membership.memory.MemoryStore`.
"""

from __future__ import annotations

import functools
import hashlib
import random
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

from membership.errors import MembershipError
from membership.memory import MemoryStore
from membership.model import (
    MAX_ID_BYTES,
    MAX_INT,
    MAX_SEALED_KEY_BYTES,
    PUBLIC_KEY_BYTES,
    SCHEMA_VERSION,
    Member,
    Role,
    Room,
    SealedKeyRecord,
    Snapshot,
    Status,
    User,
)
from membership.nkey import user_keypair_from_raw
from membership.sqlite import APPLICATION_ID, SCHEMA_SQL_V1, SQLiteStore
from membership.store import Store

__all__ = [
    "DIRT_KINDS",
    "LARGE",
    "NKEY_POOL",
    "OPERATION_IDS",
    "SMALL",
    "SPECIAL_IDS",
    "Chooser",
    "DrawChooser",
    "Operation",
    "RandomChooser",
    "Sizes",
    "any_states",
    "build_state",
    "dirty_states",
    "fit_id",
    "ids",
    "key_material",
    "large_states",
    "operation_public_key",
    "operation_sealed_key",
    "operation_sequences",
    "operations",
    "reachable_states",
    "run_sync",
    "setup_operations",
    "state_pairs",
    "valid_states",
    "write_sqlite",
]

T = TypeVar("T")

# -- ids ----------------------------------------------------------------------------------

SPECIAL_IDS: tuple[str, ...] = (
    "alice",
    "a.b",
    ".",
    "a.",
    ".a",
    "sp ace",
    " ",
    "*",
    ">",
    "a.*.>",
    "a/b",
    "=",
    "=3D",
    "=5Fkv",
    "Case",
    "case",
    "CASE",
    "ünï",
    "ÜNÏ",
    "ß",
    "SS",
    "🔑",
    "_kv",
    "_kvstore",
    "_",
    "-",
    "-dash",
    "1",
    "12",
    "\x00nul",
    "tab\there",
    "line\nbreak",
    "x" * MAX_ID_BYTES,
    "é" * (MAX_ID_BYTES // 2),
    "🔑" * (MAX_ID_BYTES // 4),
    "a.b" * 42 + "ab",
)
"""Ids that have broken key encodings and SQL before; every one is 1..128 UTF-8 bytes."""

_ID_ALPHABET = "aZ09_-.=*>/ \t\x00éßÜ€🔑中"
"""Characters of 1 to 4 UTF-8 bytes, safe and unsafe for NATS keys, for random ids."""


def fit_id(value: str) -> str:
    """Cut ``value`` to at most 128 UTF-8 bytes on a character boundary."""
    data = value.encode("utf-8")
    if len(data) <= MAX_ID_BYTES:
        return value
    return data[:MAX_ID_BYTES].decode("utf-8", "ignore")


_ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=24)
_LONG_TEXT = st.text(st.sampled_from(_ID_ALPHABET), min_size=100, max_size=128)
_IDS = st.one_of(
    st.sampled_from(SPECIAL_IDS),
    st.text(st.sampled_from("abcXYZ019_-"), min_size=1, max_size=12),
    _ANY_TEXT.map(fit_id),
    _LONG_TEXT.map(fit_id),
    st.sampled_from(SPECIAL_IDS).map(lambda s: fit_id(s.swapcase())),
)


def ids() -> st.SearchStrategy[str]:
    """Any legal id, biased towards the ones that break things."""
    return _IDS


def key_material(seed: int, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes (stand-in keys: nothing is sealed here)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


NKEY_POOL: tuple[str, ...] = tuple(
    user_keypair_from_raw(key_material(10_000 + i, 32)).public for i in range(24)
)
"""Public user nkeys for generated users (deterministic; their seeds are no secret)."""


# -- sizes and choosers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Upper bounds of a generated state (``large`` ones also have lower bounds)."""

    users: int
    rooms: int
    members_per_room: int
    keys_per_room: int
    min_users: int = 0
    min_rooms: int = 0
    max_epoch: int = MAX_INT
    """The highest room epoch drawn (a room at ``MAX_INT`` cannot be bumped again)."""


SMALL = Sizes(users=6, rooms=4, members_per_room=5, keys_per_room=6)
LARGE = Sizes(users=40, rooms=12, members_per_room=20, keys_per_room=30, min_users=20, min_rooms=6)


class Chooser(Protocol):
    """Every decision :func:`build_state` makes, answered by Hypothesis or by a seed."""

    def integer(self, lo: int, hi: int) -> int: ...
    def boolean(self) -> bool: ...
    def pick(self, options: Sequence[T]) -> T: ...
    def new_id(self) -> str: ...
    def public_key(self) -> bytes: ...
    def sealed_key(self) -> bytes: ...
    def timestamp(self) -> int: ...
    def nkey(self) -> str | None:
        """A user's NATS identity from :data:`NKEY_POOL`, or None (no identity)."""
        ...

    def epoch(self, top: int | None = None) -> int:
        """An epoch ``<= top`` (biased to ``top`` and small ones), or any if ``top`` is None."""
        ...


class DrawChooser:
    """Decisions as Hypothesis draws: small states that shrink to readable failures."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return int(self._draw(st.integers(lo, hi)))

    def boolean(self) -> bool:
        return bool(self._draw(st.booleans()))

    def pick(self, options: Sequence[T]) -> T:
        # An index shrinks towards the first option, like sampled_from, and costs less.
        return options[int(self._draw(st.integers(0, len(options) - 1)))]

    def new_id(self) -> str:
        return str(self._draw(ids()))

    def public_key(self) -> bytes:
        return bytes(self._draw(_PUBLIC_KEYS))

    def sealed_key(self) -> bytes:
        return bytes(self._draw(_SEALED_KEYS))

    def timestamp(self) -> int:
        return int(self._draw(_TIMESTAMPS))

    def nkey(self) -> str | None:
        found: str | None = self._draw(_NKEYS)
        return found

    def epoch(self, top: int | None = None) -> int:
        if top is None:
            return int(self._draw(_EPOCHS))
        return int(self._draw(_epochs_up_to(top)))


@functools.lru_cache(maxsize=256)
def _epochs_up_to(top: int) -> st.SearchStrategy[int]:
    return st.one_of(st.just(top), st.integers(1, min(top, 6)), st.integers(1, top))


_PUBLIC_KEYS = st.one_of(
    st.binary(min_size=PUBLIC_KEY_BYTES, max_size=PUBLIC_KEY_BYTES),
    st.integers(0, 2**32).map(lambda s: key_material(s, PUBLIC_KEY_BYTES)),
)
_SEALED_KEYS = st.one_of(
    st.binary(min_size=1, max_size=48),
    st.builds(
        key_material,
        st.integers(0, 2**32),
        st.sampled_from([1, 255, 256, 1000, MAX_SEALED_KEY_BYTES]),
    ),
)
_NKEYS = st.one_of(st.none(), st.sampled_from(NKEY_POOL))
_TIMESTAMPS = st.one_of(st.integers(0, 2**42), st.sampled_from([0, 1_764_547_200_000, MAX_INT]))
_EPOCHS = st.one_of(st.integers(1, 6), st.sampled_from([MAX_INT - 1]), st.integers(1, MAX_INT))


class RandomChooser:
    """Decisions from a seeded ``random.Random``: large states at the cost of one draw."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self._rng.randint(lo, hi)

    def boolean(self) -> bool:
        return self._rng.random() < 0.5

    def pick(self, options: Sequence[T]) -> T:
        return self._rng.choice(options)

    def new_id(self) -> str:
        rng = self._rng
        roll = rng.random()
        if roll < 0.2:
            return rng.choice(SPECIAL_IDS)
        if roll < 0.3:
            return fit_id(rng.choice(SPECIAL_IDS).swapcase())
        size = rng.randint(100, 128) if roll > 0.9 else rng.randint(1, 16)
        return fit_id("".join(rng.choice(_ID_ALPHABET) for _ in range(size)))

    def public_key(self) -> bytes:
        return key_material(self._rng.getrandbits(32), PUBLIC_KEY_BYTES)

    def sealed_key(self) -> bytes:
        size = MAX_SEALED_KEY_BYTES if self._rng.random() < 0.02 else self._rng.randint(1, 120)
        return key_material(self._rng.getrandbits(32), size)

    def timestamp(self) -> int:
        return self._rng.choice([0, MAX_INT, self._rng.randint(0, 2**42)])

    def nkey(self) -> str | None:
        return None if self._rng.random() < 0.4 else self._rng.choice(NKEY_POOL)

    def epoch(self, top: int | None = None) -> int:
        if top is None:
            return self._rng.choice([1, 1, 2, 3, 5, self._rng.randint(1, 40), MAX_INT - 1])
        return self._rng.choice([top, self._rng.randint(1, min(top, 6)), self._rng.randint(1, top)])


# -- building states -----------------------------------------------------------------------------


def _distinct_ids(c: Chooser, lo: int, hi: int, taken: set[str] | None = None) -> list[str]:
    """``lo..hi`` distinct ids; sometimes with the case twin of one of them."""
    target = c.integer(lo, hi)
    out: list[str] = []
    seen = set(taken or ())
    attempts = 0
    while len(out) < target and attempts < 4 * target + 8:
        attempts += 1
        value = c.new_id()
        if value not in seen:
            seen.add(value)
            out.append(value)
    if out and len(out) < hi and c.boolean():
        twin = fit_id(c.pick(out).swapcase())
        if twin not in seen:
            out.append(twin)
    return out


def _valid(c: Chooser, sizes: Sizes) -> Snapshot:
    statuses: tuple[Status, ...] = ("active", "active", "revoked")
    users = []
    nkeys_taken: set[str] = set()
    for uid in _distinct_ids(c, sizes.min_users, sizes.users):
        user = User(uid, c.public_key(), c.pick(statuses), c.timestamp())
        nkey = c.nkey()
        if nkey is not None and nkey not in nkeys_taken:  # one identity, one user
            nkeys_taken.add(nkey)
            user = replace(user, nkey=nkey)
        users.append(user)
    # Room ids may equal user ids: they live in other buckets and must not collide.
    rooms = [
        Room(rid, min(c.epoch(), sizes.max_epoch), c.timestamp())
        for rid in _distinct_ids(c, sizes.min_rooms, sizes.rooms)
    ]
    active = [u.id for u in users if u.status == "active"]
    everyone = [u.id for u in users]
    members: list[Member] = []
    keys: dict[tuple[str, int, str], SealedKeyRecord] = {}
    for room in rooms:
        current: list[str] = []
        if active:
            for _ in range(c.integer(0, min(sizes.members_per_room, len(active)))):
                uid = c.pick(active)
                if uid in current:
                    continue
                current.append(uid)
                joined = c.epoch(room.epoch)
                roles: tuple[Role, ...] = ("owner", "member") if joined == 1 else ("member",)
                members.append(Member(room.id, uid, c.pick(roles), joined))
        if not everyone:
            continue
        for _ in range(c.integer(0, sizes.keys_per_room)):
            epoch = c.epoch(room.epoch)
            # At the current epoch only a current member holds a key; past epochs are
            # history, which any user (revoked or removed since) may have.
            candidates = current if epoch == room.epoch else everyone
            if not candidates:
                continue
            record = SealedKeyRecord(room.id, epoch, c.pick(candidates), c.sealed_key())
            keys.setdefault(record.pk, record)
    return Snapshot(tuple(users), tuple(rooms), tuple(members), tuple(keys.values()))


DIRT_KINDS: tuple[str, ...] = (
    "orphan member (no room)",
    "orphan member (no user)",
    "revoked member",
    "member joined above the room's epoch",
    "sealed key above the room's epoch",
    "sealed key of a non-member at the current epoch",
    "sealed key of a missing room",
    "sealed key of a missing user",
    "users sharing an nkey",
)


def _fresh_id(c: Chooser, taken: set[str]) -> str:
    for _ in range(8):
        value = c.new_id()
        if value not in taken:
            return value
    n = 0
    while f"missing-{n}" in taken:
        n += 1
    return f"missing-{n}"


def _add_dirt(c: Chooser, snap: Snapshot, kind: str) -> Snapshot:
    """Add one row of ``kind`` that ``invariant_findings`` reports; keep every pk unique."""
    users = {u.id: u for u in snap.users}
    rooms = {r.id: r for r in snap.rooms}
    members = {m.pk: m for m in snap.members}
    keys = {k.pk: k for k in snap.sealed_keys}
    # Every id in use anywhere, so that an orphan's missing room or user stays missing.
    taken = set(users) | set(rooms)
    taken |= {m.room_id for m in snap.members} | {m.user_id for m in snap.members}
    taken |= {k.room_id for k in snap.sealed_keys} | {k.user_id for k in snap.sealed_keys}

    def some_user() -> str:
        if not users:
            uid = _fresh_id(c, taken)
            users[uid] = User(uid, c.public_key(), "active", c.timestamp())
            taken.add(uid)
        return c.pick(sorted(users))

    def some_room(below_max: bool = False) -> Room:
        choices = [r for r in rooms.values() if not below_max or r.epoch < MAX_INT]
        if not choices:
            rid = _fresh_id(c, taken)
            rooms[rid] = Room(rid, c.integer(1, 4), c.timestamp())
            taken.add(rid)
            return rooms[rid]
        return c.pick(sorted(choices, key=lambda r: r.id))

    if kind == "orphan member (no room)":
        rid = _fresh_id(c, taken)
        uid = c.pick([*sorted(users), _fresh_id(c, taken | {rid})])
        members[(rid, uid)] = Member(rid, uid, c.pick(("owner", "member")), c.epoch())
    elif kind == "orphan member (no user)":
        room = some_room()
        uid = _fresh_id(c, taken)
        members[(room.id, uid)] = Member(room.id, uid, "member", c.epoch(room.epoch))
    elif kind == "revoked member":
        room = some_room()
        uid = some_user()
        users[uid] = replace(users[uid], status="revoked")
        members.setdefault((room.id, uid), Member(room.id, uid, "member", c.epoch(room.epoch)))
    elif kind == "member joined above the room's epoch":
        room = some_room(below_max=True)
        uid = some_user()
        users[uid] = replace(users[uid], status="active")
        # A user made active again must not keep an old key at a room's current epoch
        # without membership; that would be dirt of another kind, which is fine too.
        members[(room.id, uid)] = Member(
            room.id, uid, "member", c.integer(room.epoch + 1, min(room.epoch + 5, MAX_INT))
        )
    elif kind == "sealed key above the room's epoch":
        room = some_room(below_max=True)
        uid = some_user()
        epoch = c.integer(room.epoch + 1, min(room.epoch + 5, MAX_INT))
        keys[(room.id, epoch, uid)] = SealedKeyRecord(room.id, epoch, uid, c.sealed_key())
    elif kind == "sealed key of a non-member at the current epoch":
        room = some_room()
        outsiders = [u for u in sorted(users) if (room.id, u) not in members]
        uid = c.pick(outsiders) if outsiders else _fresh_id(c, taken)
        if uid not in users:
            users[uid] = User(uid, c.public_key(), "active", c.timestamp())
        keys[(room.id, room.epoch, uid)] = SealedKeyRecord(room.id, room.epoch, uid, c.sealed_key())
    elif kind == "sealed key of a missing room":
        rid = _fresh_id(c, taken)
        uid = some_user()
        epoch = c.epoch()
        keys[(rid, epoch, uid)] = SealedKeyRecord(rid, epoch, uid, c.sealed_key())
    elif kind == "sealed key of a missing user":
        room = some_room()
        uid = _fresh_id(c, taken)
        epoch = c.epoch(room.epoch)
        keys[(room.id, epoch, uid)] = SealedKeyRecord(room.id, epoch, uid, c.sealed_key())
    elif kind == "users sharing an nkey":
        first = some_user()
        second = _fresh_id(c, taken)
        nkey = users[first].nkey or c.pick(NKEY_POOL)
        users[first] = replace(users[first], nkey=nkey)
        users[second] = User(second, c.public_key(), "active", c.timestamp(), nkey)
    else:
        raise ValueError(f"unknown dirt kind {kind!r}")
    return Snapshot(
        tuple(users.values()), tuple(rooms.values()), tuple(members.values()), tuple(keys.values())
    )


def build_state(c: Chooser, sizes: Sizes = SMALL, *, dirty: bool = False) -> Snapshot:
    """A valid state, or (``dirty``) a valid state with one to four legacy rows added."""
    snap = _valid(c, sizes)
    if dirty:
        for _ in range(c.integer(1, 4)):
            snap = _add_dirt(c, snap, c.pick(DIRT_KINDS))
    return snap


@st.composite
def _drawn_state(draw: st.DrawFn, sizes: Sizes, dirty: bool) -> Snapshot:
    return build_state(DrawChooser(draw), sizes, dirty=dirty)


def valid_states(sizes: Sizes = SMALL) -> st.SearchStrategy[Snapshot]:
    """States the API could have produced, from empty to ``sizes``."""
    return _drawn_state(sizes, False)


def dirty_states(sizes: Sizes = SMALL) -> st.SearchStrategy[Snapshot]:
    """Valid states plus at least one legacy row that breaks an API invariant."""
    return _drawn_state(sizes, True)


def large_states(*, dirty: bool | None = None) -> st.SearchStrategy[Snapshot]:
    """A few hundred records from one seed (valid, dirty, or either when ``None``)."""
    flags = st.booleans() if dirty is None else st.just(dirty)
    return st.builds(
        lambda seed, d: build_state(RandomChooser(random.Random(seed)), LARGE, dirty=d),
        st.integers(0, 2**64 - 1),
        flags,
    )


def any_states() -> st.SearchStrategy[Snapshot]:
    """Valid or dirty, mostly small, now and then large (one branch in five)."""
    return st.one_of(
        valid_states(),
        dirty_states(),
        valid_states(),
        dirty_states(),
        large_states(),
    )


def _changed(c: Chooser, snap: Snapshot) -> Snapshot:
    """A variation of ``snap``: records dropped, fields changed, records added."""
    out: dict[str, list[Any]] = {}
    for kind in ("users", "rooms", "members", "sealed_keys"):
        kept = []
        for record in getattr(snap, kind):
            roll = c.integer(0, 9)
            if roll == 0:
                continue  # dropped: the prune must delete it
            if roll == 1:
                if isinstance(record, User):
                    flipped: Status = "revoked" if record.status == "active" else "active"
                    record = replace(record, status=flipped)
                    if c.boolean():  # a changed identity too (S2 may then share one: dirt)
                        record = replace(record, nkey=c.nkey())
                elif isinstance(record, Room) and record.epoch < MAX_INT:
                    record = replace(record, epoch=record.epoch + 1)
                elif isinstance(record, Member):
                    role: Role = "member" if record.role == "owner" else "owner"
                    record = replace(record, role=role)
                elif isinstance(record, SealedKeyRecord):
                    record = replace(record, sealed_key=c.sealed_key())
            kept.append(record)
        out[kind] = kept
    extra = build_state(c, SMALL, dirty=c.boolean())
    for kind in out:
        present = {r.pk for r in out[kind]}
        out[kind] += [r for r in getattr(extra, kind) if r.pk not in present]
    return Snapshot(
        tuple(out["users"]), tuple(out["rooms"]), tuple(out["members"]), tuple(out["sealed_keys"])
    )


@st.composite
def state_pairs(draw: st.DrawFn) -> tuple[Snapshot, Snapshot]:
    """(S1, S2): S2 a changed S1 (drops, changed fields, additions) or unrelated to it."""
    first = draw(st.one_of(valid_states(), dirty_states()))
    c = DrawChooser(draw)
    if c.integer(0, 4) == 0:
        return first, draw(st.one_of(valid_states(), dirty_states()))
    return first, _changed(c, first)


# -- SQLite files of any state -------------------------------------------------------------------


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (MemoryStore, SQLiteStore) without a loop.

    Strategies and helpers may run inside a running event loop, where ``asyncio.run`` is
    refused; the in-process stores never await anything, so one ``send`` finishes them.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"{coro!r} suspended; run it on an event loop instead")


def write_sqlite(
    snapshot: Snapshot, path: str | Path, *, schema_version: int = SCHEMA_VERSION
) -> Path:
    """Write ``snapshot`` exactly (legacy dirt included) into a new membership database.

    The file is created with the product's own schema (``SQLiteStore.open(create=True)``);
    the rows go in with raw SQL, since the API refuses the dirty ones. With
    ``schema_version=1`` the file is what an earlier release made (:data:`SCHEMA_SQL_V1`,
    no nkeys: the users' nkeys must all be None).
    """
    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p} exists; write_sqlite makes a fresh database")
    if snapshot.schema_version != SCHEMA_VERSION:
        raise ValueError(f"schema_version {snapshot.schema_version} is not {SCHEMA_VERSION}")
    if schema_version == 1:
        if any(u.nkey is not None for u in snapshot.users):
            raise ValueError("a schema version 1 file has no nkeys")
        conn = sqlite3.connect(p, isolation_level=None)
        conn.executescript(SCHEMA_SQL_V1)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.close()
    elif schema_version == SCHEMA_VERSION:
        run_sync(SQLiteStore.open(p, create=True).close())
    else:
        raise ValueError(f"write_sqlite writes schema version 1 or {SCHEMA_VERSION}")
    conn = sqlite3.connect(p, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if schema_version == 1:
            conn.executemany(
                "INSERT INTO users (id, public_key, status, created_at) VALUES (?, ?, ?, ?)",
                [(u.id, u.public_key, u.status, u.created_at) for u in snapshot.users],
            )
        else:
            conn.executemany(
                "INSERT INTO users (id, public_key, status, created_at, nkey) "
                "VALUES (?, ?, ?, ?, ?)",
                [(u.id, u.public_key, u.status, u.created_at, u.nkey) for u in snapshot.users],
            )
        conn.executemany(
            "INSERT INTO rooms (id, epoch, created_at) VALUES (?, ?, ?)",
            [(r.id, r.epoch, r.created_at) for r in snapshot.rooms],
        )
        conn.executemany(
            "INSERT INTO members (room_id, user_id, role, joined_epoch) VALUES (?, ?, ?, ?)",
            [(m.room_id, m.user_id, m.role, m.joined_epoch) for m in snapshot.members],
        )
        conn.executemany(
            "INSERT INTO sealed_keys (room_id, epoch, user_id, sealed_key) VALUES (?, ?, ?, ?)",
            [(k.room_id, k.epoch, k.user_id, k.sealed_key) for k in snapshot.sealed_keys],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return p


# -- operation sequences ----------------------------------------------------------------------------

OPERATION_IDS: tuple[str, ...] = (
    "alice",
    "Alice",
    "bob",
    "a.b",
    "*",
    ">",
    "_kv",
    "ünï",
    "🔑" * (MAX_ID_BYTES // 4),
)
"""A small pool, so that operations meet each other (duplicates, missing, revoked ...)."""

_BAD_IDS: tuple[str, ...] = ("", "x" * (MAX_ID_BYTES + 1))
_BAD_NKEY = NKEY_POOL[0][:-1] + ("A" if NKEY_POOL[0][-1] != "A" else "B")  # checksum broken


def operation_public_key(i: int) -> bytes:
    """Nine good public keys and, for ``i == 9``, one a byte short."""
    return key_material(i, PUBLIC_KEY_BYTES - (i == 9))


def operation_sealed_key(i: int) -> bytes:
    """Ten good sealed keys of 1..64 bytes, the largest legal one, and an empty one."""
    if i == 10:
        return key_material(i, MAX_SEALED_KEY_BYTES)
    return key_material(i, 0 if i == 11 else 1 + 7 * i)


@dataclass(frozen=True)
class Operation:
    """One call of the Store API; ``repr`` is the call, with key material as its length."""

    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        def show(value: Any) -> str:
            return f"<{len(value)} bytes>" if isinstance(value, bytes) else repr(value)

        shown = [show(a) for a in self.args] + [f"{k}={show(v)}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(shown)})"

    def call(self, store: Store) -> Coroutine[Any, Any, Any]:
        method: Callable[..., Coroutine[Any, Any, Any]] = getattr(store, self.name)
        return method(*self.args, **dict(self.kwargs))

    async def outcome(self, store: Store) -> tuple[str, Any]:
        """``("ok", result)`` or ``("error", (class name, message))``."""
        try:
            return ("ok", await self.call(store))
        except MembershipError as exc:
            return ("error", (type(exc).__name__, str(exc)))


def operations(pool: Sequence[str] = OPERATION_IDS) -> st.SearchStrategy[Operation]:
    """One Store call over a small id pool; now and then an invalid id, key or epoch."""
    some_id = st.sampled_from([*pool, *pool, *_BAD_IDS])  # one bad id in ten
    good_id = st.sampled_from(pool)
    pk = st.integers(0, 9).map(operation_public_key)
    sealed = st.integers(0, 11).map(operation_sealed_key)

    def op(name: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[Operation]:
        return st.tuples(*args).map(lambda a: Operation(name, a))

    nkey = st.one_of(st.none(), st.sampled_from([*NKEY_POOL[:3], _BAD_NKEY]))

    def add_with_nkey(args: tuple[str, bytes, str | None]) -> Operation:
        return Operation("add_user", args[:2], (("nkey", args[2]),))

    return st.one_of(
        op("add_user", some_id, pk),
        op("add_user", good_id, pk),
        st.tuples(good_id, pk, nkey).map(add_with_nkey),
        op("set_user_nkey", some_id, nkey),
        op("revoke_user", some_id),
        op("create_room", good_id, some_id),
        op("add_member", good_id, some_id),
        op("add_member", good_id, good_id),
        op("remove_member", good_id, good_id),
        op("rekey", some_id),
        op("put_sealed_key", good_id, some_id, sealed),
        op("put_sealed_key", good_id, good_id, sealed),
        op("get_user", some_id),
        op("get_room", good_id),
        op("get_member", good_id, some_id),
        op("get_sealed_key", good_id, good_id, st.one_of(st.none(), st.integers(0, 4))),
        op("list_members", st.one_of(st.none(), good_id)),
        op("list_sealed_keys", st.one_of(st.none(), good_id)),
    )


def operation_sequences(
    min_size: int = 0, max_size: int = 40, pool: Sequence[str] = OPERATION_IDS
) -> st.SearchStrategy[list[Operation]]:
    return st.lists(operations(pool), min_size=min_size, max_size=max_size)


@st.composite
def setup_operations(draw: st.DrawFn, pool: Sequence[str] = OPERATION_IDS) -> list[Operation]:
    """Users, rooms owned by them, members: a start that lets random operations succeed."""
    users = draw(st.lists(st.sampled_from(pool), unique=True, min_size=1, max_size=len(pool)))
    ops = [
        Operation(
            "add_user",
            (u, key_material(i, PUBLIC_KEY_BYTES)),
            (("nkey", NKEY_POOL[i] if draw(st.booleans()) else None),),
        )
        for i, u in enumerate(users)
    ]
    for room in draw(st.lists(st.sampled_from(pool), unique=True, max_size=4)):
        owner = draw(st.sampled_from(users))
        ops.append(Operation("create_room", (room, owner)))
        joined = [owner, *draw(st.lists(st.sampled_from(users), unique=True, max_size=3))]
        ops += [Operation("add_member", (room, user)) for user in joined[1:]]
        ops += [
            Operation("put_sealed_key", (room, user, operation_sealed_key(i)))
            for i, user in enumerate(joined)
            if draw(st.booleans())
        ]
    return ops


def _apply_to_memory(ops: Sequence[Operation]) -> Snapshot:
    store = MemoryStore(clock=iter(range(1_700_000_000_000, 1_800_000_000_000)).__next__)
    for op in ops:
        run_sync(op.outcome(store))
    return run_sync(store.export_snapshot())


@st.composite
def reachable_states(draw: st.DrawFn, max_size: int = 40) -> Snapshot:
    """The state that a setup and then random operations leave in the reference model.

    The operations draw their ids from a few of :data:`OPERATION_IDS`, so that they meet.
    """
    pool = draw(st.lists(st.sampled_from(OPERATION_IDS), unique=True, min_size=2, max_size=5))
    setup = draw(setup_operations(pool))
    ops = draw(operation_sequences(min_size=1, max_size=max_size, pool=pool))
    return _apply_to_memory(setup + ops)
