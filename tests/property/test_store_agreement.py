"""Store agreement: the differential state machine over MemoryStore, SQLite and KV.

See :mod:`harness.differential`. Each Hypothesis example is one machine with its own
SQLite files, KV namespaces and event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from fixtures.plugin import Namespace, NatsServer, unique_prefix
from harness.differential import StoreAgreement
from harness.parity import assert_parity
from harness.strategies import Operation, write_sqlite
from membership.errors import InvariantError
from membership.memory import MemoryStore
from membership.model import MAX_INT, Member, Room, Snapshot, User
from membership.sqlite import SQLiteStore
from membership.store import Store


def test_memory_sqlite_and_kv_agree_at_every_step(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run_state_machine_as_test(
        lambda: StoreAgreement(
            lambda: Namespace(nats_server, unique_prefix("sm")),
            tmp_path_factory.mktemp("machine"),
        ),
        settings=settings(
            max_examples=max(5, settings.default.max_examples // 4),
            stateful_step_count=40,
        ),
    )


# -- a finding of the state machine, pinned ------------------------------------------------

TOP = Snapshot(
    users=(User("alice", b"\x01" * 32, "active", 0), User("bob", b"\x02" * 32, "active", 0)),
    rooms=(Room("top", MAX_INT, 0),),
    members=(Member("top", "alice", "owner", 1), Member("top", "bob", "member", 1)),
)
"""A room at the highest epoch there is: bumping it again is refused."""


@asynccontextmanager
async def loaded(kind: str, state: Snapshot, tmp_path: Path, namespace) -> AsyncIterator[Store]:
    if kind == "memory":
        yield MemoryStore(state)
    elif kind == "sqlite":
        store = SQLiteStore.open(write_sqlite(state, tmp_path / "top.db"))
        try:
            yield store
        finally:
            await store.close()
    else:
        async with namespace.store() as kv:
            await kv.import_snapshot(state)
            yield kv


@pytest.mark.parametrize("kind", ["memory", "sqlite", "kv"])
@pytest.mark.parametrize(
    "op",
    [
        Operation("remove_member", ("top", "bob")),
        Operation("revoke_user", ("bob",)),
    ],
    ids=repr,
)
async def test_a_refused_epoch_bump_writes_nothing(
    kind: str, op: Operation, tmp_path: Path, namespace
) -> None:
    async with loaded(kind, TOP, tmp_path, namespace) as store:
        with pytest.raises(InvariantError, match="highest epoch"):
            await op.call(store)
        assert_parity(TOP, await store.export_snapshot(), source_name="before", target_name=kind)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "kv"])
async def test_rekey_at_the_highest_epoch_is_refused_cleanly(
    kind: str, tmp_path: Path, namespace
) -> None:
    async with loaded(kind, TOP, tmp_path, namespace) as store:
        with pytest.raises(InvariantError, match="highest epoch"):
            await store.rekey("top")
        assert_parity(TOP, await store.export_snapshot(), source_name="before", target_name=kind)
