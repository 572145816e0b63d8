"""Small helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from membership.errors import MembershipError
from membership.memory import MemoryStore
from membership.sqlite import SQLiteStore
from membership.store import Store

STORE_KINDS = ("memory", "sqlite", "kv")


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``p`` (a CLI run) after asserting it succeeded."""
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}"
    return p


def one_line_error(
    p: subprocess.CompletedProcess[str], code: int, *, stdout_empty: bool = False
) -> str:
    """The one stderr line of a CLI run that failed with ``code``, without a traceback
    (and, with ``stdout_empty``, with nothing on stdout)."""
    assert p.returncode == code, f"exit {p.returncode} (want {code}): {p.stderr!r}"
    assert "Traceback" not in p.stderr
    if stdout_empty:
        assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def counting_clock(start: int = 1_700_000_000_000) -> Callable[[], int]:
    """A deterministic clock: every store given one sees the same timestamps."""
    return itertools.count(start).__next__


@asynccontextmanager
async def open_any_store(
    kind: str, tmp_path: Path, namespace: Any, clock: Callable[[], int] | None = None
) -> AsyncIterator[Store]:
    clock = clock or counting_clock()
    if kind == "memory":
        yield MemoryStore(clock=clock)
    elif kind == "sqlite":
        store = SQLiteStore.open(tmp_path / f"{kind}.db", create=True, clock=clock)
        try:
            yield store
        finally:
            await store.close()
    else:
        async with namespace.store(clock=clock) as kv:
            yield kv


async def outcome(coro: Any) -> tuple[str, Any]:
    """("ok", result) or ("error", (class name, message)), to compare stores."""
    try:
        return ("ok", await coro)
    except MembershipError as exc:
        return ("error", (type(exc).__name__, str(exc)))


def bulk_fill(db: Path, users: int, rooms: int, epochs: int = 1, label: str = "u") -> int:
    """Write a valid control plane straight into an initialised database, fast (raw SQL).

    Every user is a member of every room ``n % rooms``; each room is at ``epochs`` with a
    sealed key per member per epoch. Returns the number of records written.
    """
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO users (id, public_key, status, created_at) VALUES (?, ?, 'active', ?)",
                ((f"{label}{n:07}", n.to_bytes(32, "big"), n) for n in range(users)),
            )
            conn.executemany(
                "INSERT INTO rooms VALUES (?, ?, ?)",
                ((f"room{r:05}", epochs, r) for r in range(rooms)),
            )
            conn.executemany(
                "INSERT INTO members VALUES (?, ?, 'member', 1)",
                ((f"room{n % rooms:05}", f"{label}{n:07}") for n in range(users)),
            )
            conn.executemany(
                "INSERT INTO sealed_keys VALUES (?, ?, ?, ?)",
                (
                    (f"room{n % rooms:05}", e, f"{label}{n:07}", (n * 31 + e).to_bytes(48, "big"))
                    for n in range(users)
                    for e in range(1, epochs + 1)
                ),
            )
    finally:
        conn.close()
    return users * (2 + epochs) + rooms
