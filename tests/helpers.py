"""Small helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from membership.errors import MembershipError
from membership.memory import MemoryStore
from membership.sqlite import SQLiteStore
from membership.store import Store

STORE_KINDS = ("memory", "sqlite", "kv")


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
