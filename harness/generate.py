"""A large, realistic control plane written straight into a new SQLite file.

``python -m harness.generate --db big.db --users 20000 --rooms 5000 --members-per-room 20
--epochs 10`` writes 1M sealed keys in a few seconds: raw SQL inserts in primary-key order
into an initialised membership database, one transaction, no journal sync. The same
``--seed`` gives the same state (the same ``membershipd export`` bytes) on every run.

The state is valid (the API could have produced it) and shaped like a real one:

* every room is at epoch ``--epochs``; each epoch bump rotated one member out and one
  in, so ``members_per_room`` users hold a sealed key at each epoch, removed members
  keep the keys of the epochs they could read, and current members joined at
  different epochs;
* the owner is the longest-standing current member;
* a few ids carry dots, spaces, wildcards and non-ASCII (they exercise the key
  encoding), the rest look like ``user-0001234`` and ``room-000123``;
* some users who are in no room are revoked;
* sealed keys are 80 bytes (an X25519 sealed box of a 32-byte room key),
  public keys 32 bytes.

Counts are exact: ``rooms * members_per_room`` members and
``rooms * members_per_room * epochs`` sealed keys.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from membership.errors import MembershipError
from membership.sqlite import SQLiteStore

__all__ = ["Shape", "generate", "main"]

BASE_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z
SEALED_KEY_BYTES = 80
SPECIAL_EVERY = 97  # one id in this many is "unusual" (dots, spaces, wildcards, non-ASCII)


@dataclass(frozen=True)
class Shape:
    users: int
    rooms: int
    members_per_room: int
    epochs: int
    seed: int = 0
    revoked_fraction: float = 0.05

    def check(self) -> None:
        if min(self.users, self.rooms, self.members_per_room, self.epochs) < 1:
            raise ValueError("--users, --rooms, --members-per-room and --epochs must be >= 1")
        if self.users < self.members_per_room + self.epochs - 1:
            raise ValueError(
                f"--users must be at least --members-per-room + --epochs - 1 "
                f"({self.members_per_room + self.epochs - 1}): each room rotates through "
                "that many distinct users"
            )
        if not 0.0 <= self.revoked_fraction <= 1.0:
            raise ValueError("--revoked-fraction must be between 0 and 1")

    @property
    def counts(self) -> dict[str, int]:
        members = self.rooms * self.members_per_room
        return {
            "users": self.users,
            "rooms": self.rooms,
            "members": members,
            "sealed_keys": members * self.epochs,
        }


def user_id(n: int) -> str:
    if n % SPECIAL_EVERY == 7:
        return f"ops.bot {n} ü*>"
    return f"user-{n:07d}"


def room_id(n: int) -> str:
    if n % SPECIAL_EVERY == 11:
        return f"team.{n} ünï/="
    return f"room-{n:06d}"


def _rooms(shape: Shape, rng: random.Random) -> list[tuple[str, list[int]]]:
    """Per room (sorted by id): the users it rotated through, oldest first."""
    window = shape.members_per_room + shape.epochs - 1
    rooms = [(room_id(r), rng.sample(range(shape.users), window)) for r in range(shape.rooms)]
    rooms.sort(key=lambda item: item[0])
    return rooms


def _members(shape: Shape, rooms: list[tuple[str, list[int]]]) -> Iterator[tuple[object, ...]]:
    m, e = shape.members_per_room, shape.epochs
    for rid, pool in rooms:
        # pool[i] holds keys for epochs max(1, i-m+2) .. min(e, i+1); current: i >= e-1.
        current = sorted(
            ((user_id(pool[i]), max(1, i - m + 2)) for i in range(e - 1, e - 1 + m)),
        )
        owner = min(current, key=lambda item: (item[1], item[0]))[0]
        for uid, joined in current:
            yield (rid, uid, "owner" if uid == owner else "member", joined)


def _sealed_keys(
    shape: Shape, rooms: list[tuple[str, list[int]]], rng: random.Random
) -> Iterator[tuple[object, ...]]:
    m = shape.members_per_room
    for rid, pool in rooms:
        for epoch in range(1, shape.epochs + 1):
            holders = sorted(user_id(u) for u in pool[epoch - 1 : epoch - 1 + m])
            for uid in holders:
                yield (rid, epoch, uid, rng.randbytes(SEALED_KEY_BYTES))


def generate(db: Path, shape: Shape) -> dict[str, int]:
    """Create ``db`` (which must not exist) holding a state of ``shape``; return the counts."""
    shape.check()
    if db.exists():
        raise FileExistsError(f"{db} exists; harness.generate writes a new file only")
    rng = random.Random(shape.seed)
    rooms = _rooms(shape, rng)
    current = bytearray(shape.users)
    for _, pool in rooms:
        for u in pool[shape.epochs - 1 :]:
            current[u] = 1
    users = sorted(
        (
            user_id(n),
            rng.randbytes(32),
            "revoked" if not current[n] and rng.random() < shape.revoked_fraction else "active",
            BASE_MS + n * 1000 + rng.randrange(1000),
        )
        for n in range(shape.users)
    )
    room_rows = [
        (rid, shape.epochs, BASE_MS + 86_400_000 + i * 1000) for i, (rid, _) in enumerate(rooms)
    ]
    _init_database(db)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO users (id, public_key, status, created_at) VALUES (?, ?, ?, ?)", users
        )
        conn.executemany("INSERT INTO rooms VALUES (?, ?, ?)", room_rows)
        conn.executemany("INSERT INTO members VALUES (?, ?, ?, ?)", _members(shape, rooms))
        conn.executemany(
            "INSERT INTO sealed_keys VALUES (?, ?, ?, ?)", _sealed_keys(shape, rooms, rng)
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except BaseException:
        conn.close()
        db.unlink(missing_ok=True)
        raise
    conn.close()
    return shape.counts


def _init_database(db: Path) -> None:
    """``membershipd init`` without an event loop: the schema, application id, WAL."""
    import asyncio

    asyncio.run(SQLiteStore.open(db, create=True).close())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.generate",
        description="Write a large, valid, deterministic control plane into a new SQLite file.",
    )
    parser.add_argument("--db", type=Path, required=True, help="the new database file")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--rooms", type=int, required=True)
    parser.add_argument("--members-per-room", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True, help="every room's current epoch")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same state (default 0)")
    parser.add_argument(
        "--revoked-fraction",
        type=float,
        default=0.05,
        help="share of users in no room that are revoked (default 0.05)",
    )
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    shape = Shape(
        args.users, args.rooms, args.members_per_room, args.epochs, args.seed, args.revoked_fraction
    )
    started = time.perf_counter()
    try:
        counts = generate(args.db, shape)
    except (ValueError, FileExistsError, MembershipError) as exc:
        print(f"harness.generate: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "db": str(args.db),
                    "shape": asdict(shape),
                    "records": counts,
                    "seconds": round(seconds, 3),
                }
            )
        )
    else:
        total = sum(counts.values())
        print(
            f"wrote {args.db}: {total} records ({', '.join(f'{v} {k}' for k, v in counts.items())}) "
            f"in {seconds:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
