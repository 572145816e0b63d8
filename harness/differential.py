"""The differential state machine: one operation, three stores, one answer.

:class:`StoreAgreement` is a Hypothesis ``RuleBasedStateMachine`` in the manner of
Hypothesis' own ``tests/nocover/test_database_agreement.py``. Every rule is one call of the
:class:`~membership.store.Store` API, applied to the reference :class:`MemoryStore`, to a
:class:`SQLiteStore` on a real file and to a :class:`KVStore` on a real JetStream server.
After each step:

* the three results are equal, refusals included: same error class, same message;
* after any write (refused or not) the three snapshots are equal, so a refused operation
  that wrote half of itself on one store is caught where it happens.

At random points the machine migrates the SQLite file with the real migration
(:func:`membership.migrate.migrate_sqlite_to_kv`) into a fresh namespace, with or without a
backup, and checks parity (through an independent raw read of the buckets and the
documented key layout), the backup's snapshot, and sometimes idempotence. It may then
*adopt* the migrated namespace as its KV store, so the following operations run on
migrated data, which is what a real deployment does. A persistent "mirror" namespace is
re-migrated now and then, with or without ``--prune``, and must converge (or refuse,
listing exactly the records it would have had to delete).

The machine may start from an empty store or from a drawn state, valid or legacy-dirty,
loaded into each store its own way (constructor, raw SQL, ``import_snapshot``): the
stores must agree on how they treat dirt, too.

State machines are synchronous: each instance runs its coroutines on its own event loop
(``loop.run_until_complete``) and closes it in ``teardown``. Timestamps come from one
deterministic counting clock per store, so ``created_at`` agrees.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from nats.aio.client import Client

from membership import migrate
from membership.client import ServiceStore
from membership.connect import connect_nats
from membership.errors import TargetNotEmptyError
from membership.kv import KVStore
from membership.memory import MemoryStore
from membership.model import Snapshot
from membership.service import MembershipService
from membership.sqlite import SQLiteStore
from membership.store import Store

from .parity import (
    NamespaceLike,
    assert_idempotent,
    assert_kv_holds,
    assert_parity,
    read_sqlite,
)
from .strategies import (
    NKEY_POOL,
    OPERATION_IDS,
    Operation,
    Sizes,
    dirty_states,
    ids,
    operation_public_key,
    operation_sealed_key,
    run_sync,
    valid_states,
    write_sqlite,
)

__all__ = ["DisposableNamespace", "StoreAgreement", "counting_clock"]

T = TypeVar("T")
MIGRATIONS_PER_MACHINE = 3
"""Of each kind: a migration costs what dozens of store operations cost."""
KINDS = ("users", "rooms", "members", "sealed_keys")


class DisposableNamespace(NamespaceLike, Protocol):
    """A KV namespace the machine can delete when done (fixtures.plugin.Namespace)."""

    async def delete(self) -> None: ...


def counting_clock(start: int = 1_700_000_000_000) -> Callable[[], int]:
    """The same sequence of timestamps for every store that gets one."""
    return itertools.count(start).__next__


_PUBLIC_KEYS = st.integers(0, 9).map(operation_public_key)  # 9 is one byte short
_SEALED_KEYS = st.integers(0, 11).map(operation_sealed_key)  # 11 is empty
_NKEYS = st.none() | st.sampled_from(
    [*NKEY_POOL[:3], NKEY_POOL[0][:-1] + "A"]
)  # the last: bad checksum
_START = Sizes(
    users=6,
    rooms=3,
    members_per_room=4,
    keys_per_room=5,
    min_users=2,
    min_rooms=1,
)
"""Initial states: never empty (the rules start from scratch often enough), and small.

Room epochs range over the whole domain, up to ``2**63 - 1``; the strategies draw
``2**63 - 2`` on purpose, so the machine bumps rooms onto the highest epoch and is then
refused the next bump. The stores agree there: a refused ``remove_member``, ``revoke_user``
or ``rekey`` writes nothing on any of them (same error, same snapshot), which
``tests/property/test_store_agreement.py`` also pins store by store:
``test_a_refused_epoch_bump_writes_nothing`` and
``test_rekey_at_the_highest_epoch_is_refused_cleanly``.
"""
_INITIAL = st.one_of(valid_states(_START), dirty_states(_START))


class StoreAgreement(RuleBasedStateMachine):
    """MemoryStore, SQLiteStore and KVStore driven in lockstep; see the module docstring."""

    def __init__(self, new_namespace: Callable[[], DisposableNamespace], workdir: Path) -> None:
        super().__init__()
        self._new_namespace = new_namespace
        self._workdir = workdir
        self._loop = asyncio.new_event_loop()
        self._files = itertools.count()
        self._namespaces: list[DisposableNamespace] = []
        self._nc: Client | None = None
        self._sqlite: SQLiteStore | None = None
        self._memory = MemoryStore()
        self._kv: KVStore | None = None
        self._kv_namespace: DisposableNamespace | None = None
        self._kv_clock = counting_clock()
        self._served: MemoryStore | None = None
        self._service: MembershipService | None = None
        self._service_nc: Client | None = None
        self._client_nc: Client | None = None
        self._remote: ServiceStore | None = None
        self._mirror: DisposableNamespace | None = None
        self._mirrored: Snapshot | None = None
        self._runs = {"fresh": 0, "mirror": 0}

    # -- plumbing ----------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def _namespace(self) -> DisposableNamespace:
        ns = self._new_namespace()
        self._namespaces.append(ns)
        return ns

    def _drop_namespace(self, ns: DisposableNamespace) -> None:
        self._namespaces.remove(ns)
        self._run(ns.delete())

    @property
    def stores(self) -> dict[str, Store]:
        assert self._sqlite is not None and self._kv is not None and self._remote is not None
        return {
            "memory": self._memory,
            "sqlite": self._sqlite,
            "kv": self._kv,
            "service": self._remote,
        }

    def _open_kv(self, ns: DisposableNamespace, *, create: bool) -> KVStore:
        if self._nc is None:
            self._nc = self._run(connect_nats(ns.target))
        return self._run(KVStore.open(self._nc, ns.prefix, create=create, clock=self._kv_clock))

    def _same(self, op: Operation, *, wrote: bool) -> Any:
        """Apply ``op`` to every store; results (or errors) must be equal."""
        results = {name: self._run(op.outcome(store)) for name, store in self.stores.items()}
        expected = results["memory"]
        for name in ("sqlite", "kv", "service"):
            assert results[name] == expected, (
                f"{op!r}: the stores disagree\n  memory: {expected!r}\n  {name}: {results[name]!r}"
            )
        if wrote:
            self._snapshots_agree(f"after {op!r}")
        return expected

    def _snapshots_agree(self, when: str) -> Snapshot:
        reference = self._run(self._memory.export_snapshot())
        assert self._sqlite is not None and self._kv is not None
        assert self._remote is not None
        for name, snap in (
            ("SQLite", self._sqlite.read_snapshot()),
            ("KV", self._run(self._kv.export_snapshot())),
            ("service", self._run(self._remote.export_snapshot())),
        ):
            try:
                assert_parity(reference, snap, source_name="memory", target_name=name)
            except AssertionError as exc:
                raise AssertionError(f"{when}: {exc}") from None
        return reference

    # -- start ---------------------------------------------------------------------------

    @initialize(state=_INITIAL)
    def load(self, state: Snapshot) -> None:
        """Load the same (possibly dirty) state into each store, each its own way."""
        self._memory = MemoryStore(state, clock=counting_clock())
        path = write_sqlite(state, self._workdir / f"source-{next(self._files)}.db")
        self._sqlite = SQLiteStore.open(path, clock=counting_clock())
        self._kv_namespace = self._namespace()
        self._kv = self._open_kv(self._kv_namespace, create=True)
        self._run(self._kv.import_snapshot(state))
        self._start_service(state)
        self._snapshots_agree("after loading the initial state")

    def _start_service(self, state: Snapshot) -> None:
        """The fourth implementation: ``membershipd serve``'s service over NATS, in front
        of a reference store of its own, driven through :class:`ServiceStore`."""
        assert self._kv_namespace is not None
        target = self._kv_namespace.target
        prefix = f"sm.{self._kv_namespace.prefix}"
        self._served = MemoryStore(state, clock=counting_clock())
        self._service_nc = self._run(connect_nats(target))
        self._service = MembershipService(self._service_nc, self._served, subject_prefix=prefix)
        self._run(self._service.start())
        self._client_nc = self._run(connect_nats(target))
        self._remote = ServiceStore(self._client_nc, prefix)

    # -- choosing ids --------------------------------------------------------------------
    #
    # Operations only meet when their ids do: each rule draws mostly from what the
    # reference model holds now, sometimes from a small pool, and (for what it adds) from
    # the whole id domain; an exotic id, once added, is drawn again from the state.

    def _state(self) -> Snapshot:
        return run_sync(self._memory.export_snapshot())

    def _draw_id(self, data: st.DataObject, present: list[str], new: bool = False) -> str:
        """Mostly an id that exists; for ``new`` ones mostly one that does not (yet)."""
        roll = data.draw(st.integers(0, 5))
        if present and (roll >= 4 if new else roll < 4):
            return str(data.draw(st.sampled_from(sorted(present))))
        if new and roll % 2:
            return str(data.draw(ids()))
        return str(data.draw(st.sampled_from(OPERATION_IDS)))

    def _user(self, data: st.DataObject, new: bool = False) -> str:
        state = self._state()
        return self._draw_id(data, [u.id for u in state.users], new)

    def _room(self, data: st.DataObject, new: bool = False) -> str:
        state = self._state()
        present = {r.id for r in state.rooms} | {m.room_id for m in state.members}
        return self._draw_id(data, list(present), new)

    def _member(self, data: st.DataObject) -> tuple[str, str]:
        members = [m.pk for m in self._state().members]
        if members and data.draw(st.integers(0, 3)) > 0:
            room, user = data.draw(st.sampled_from(members))
            return str(room), str(user)
        return self._room(data), self._user(data)

    # -- the Store API --------------------------------------------------------------------

    @rule(
        data=st.data(),
        key=_PUBLIC_KEYS,
        created_at=st.none() | st.integers(0, 2**63 - 1),
        nkey=_NKEYS,
    )
    def add_user(
        self, data: st.DataObject, key: bytes, created_at: int | None, nkey: str | None
    ) -> None:
        given = () if created_at is None else (("created_at", created_at),)
        if nkey is not None:
            given += (("nkey", nkey),)
        user = self._user(data, new=True)
        self._same(Operation("add_user", (user, key), given), wrote=True)

    @rule(data=st.data(), nkey=_NKEYS)
    def set_user_nkey(self, data: st.DataObject, nkey: str | None) -> None:
        self._same(Operation("set_user_nkey", (self._user(data), nkey)), wrote=True)

    @rule(data=st.data())
    def revoke_user(self, data: st.DataObject) -> None:
        self._same(Operation("revoke_user", (self._user(data),)), wrote=True)

    @rule(data=st.data())
    def create_room(self, data: st.DataObject) -> None:
        room, owner = self._room(data, new=True), self._user(data)
        self._same(Operation("create_room", (room, owner)), wrote=True)

    @rule(data=st.data())
    def add_member(self, data: st.DataObject) -> None:
        state, room = self._state(), self._room(data)
        members = {m.pk for m in state.members}
        outsiders = [u.id for u in state.users if (room, u.id) not in members]
        user = self._draw_id(data, outsiders)  # mostly someone who is not in yet
        self._same(Operation("add_member", (room, user)), wrote=True)

    @rule(data=st.data())
    def remove_member(self, data: st.DataObject) -> None:
        self._same(Operation("remove_member", self._member(data)), wrote=True)

    @rule(data=st.data())
    def rekey(self, data: st.DataObject) -> None:
        self._same(Operation("rekey", (self._room(data),)), wrote=True)

    @rule(data=st.data(), key=_SEALED_KEYS)
    def put_sealed_key(self, data: st.DataObject, key: bytes) -> None:
        room, user = self._member(data)
        self._same(Operation("put_sealed_key", (room, user, key)), wrote=True)

    @rule(data=st.data())
    def get_user(self, data: st.DataObject) -> None:
        self._same(Operation("get_user", (self._user(data),)), wrote=False)

    @rule(data=st.data())
    def get_member(self, data: st.DataObject) -> None:
        self._same(Operation("get_member", self._member(data)), wrote=False)

    @rule(data=st.data())
    def get_room(self, data: st.DataObject) -> None:
        self._same(Operation("get_room", (self._room(data),)), wrote=False)

    @rule(data=st.data(), epoch=st.none() | st.integers(0, 6))
    def get_sealed_key(self, data: st.DataObject, epoch: int | None) -> None:
        room, user = self._member(data)
        self._same(Operation("get_sealed_key", (room, user, epoch)), wrote=False)

    @rule(data=st.data(), everything=st.booleans())
    def list_members_and_keys(self, data: st.DataObject, everything: bool) -> None:
        room = None if everything else self._room(data)
        self._same(Operation("list_members", (room,)), wrote=False)
        self._same(Operation("list_sealed_keys", (room,)), wrote=False)

    @rule(rooms_first=st.booleans())
    def list_users_and_rooms(self, rooms_first: bool) -> None:
        ops = [Operation("list_users", ()), Operation("list_rooms", ())]
        for op in reversed(ops) if rooms_first else ops:
            self._same(op, wrote=False)

    # -- the migration, at random points -----------------------------------------------------

    @precondition(lambda self: self._runs["fresh"] < MIGRATIONS_PER_MACHINE)
    @rule(backup=st.booleans(), again=st.booleans(), adopt=st.booleans())
    def migrate_into_fresh_namespace(self, backup: bool, again: bool, adopt: bool) -> None:
        """Migrate the SQLite file now; KV must equal the reference, byte for byte."""
        assert self._sqlite is not None and self._nc is not None
        self._runs["fresh"] += 1
        reference = self._snapshots_agree("before migrating")
        ns = self._namespace()
        backup_path = self._workdir / f"backup-{next(self._files)}.db" if backup else None
        report = self._run(
            migrate.migrate_sqlite_to_kv(
                self._sqlite.path,
                ns.target,
                prefix=ns.prefix,
                backup=backup,
                backup_path=backup_path,
            )
        )
        assert report.verified, report.differences
        assert {k: c.written for k, c in report.records.items()} == reference.counts()
        migrated = self._open_kv(ns, create=False)
        self._run(assert_kv_holds(migrated, reference, source_name="memory"))
        if backup_path is not None:
            assert report.backup == str(backup_path)
            assert_parity(reference, read_sqlite(backup_path), target_name="backup")
        if again:
            self._run(assert_idempotent(self._sqlite.path, ns))
        if adopt:  # carry on with the migrated namespace as the KV store
            assert self._kv_namespace is not None
            self._drop_namespace(self._kv_namespace)
            self._kv, self._kv_namespace = migrated, ns
            self._snapshots_agree("after adopting the migrated namespace")
        else:
            self._drop_namespace(ns)

    @precondition(lambda self: self._runs["mirror"] < MIGRATIONS_PER_MACHINE)
    @rule(prune=st.booleans())
    def migrate_into_the_mirror(self, prune: bool) -> None:
        """Re-migrate into one long-lived namespace: converge, or refuse before writing."""
        assert self._sqlite is not None
        self._runs["mirror"] += 1
        reference = self._snapshots_agree("before migrating into the mirror")
        if self._mirror is None:
            self._mirror = self._namespace()
        previous = self._mirrored or Snapshot()
        stale = {
            kind: {r.pk for r in getattr(previous, kind)} - {r.pk for r in getattr(reference, kind)}
            for kind in KINDS
        }
        must_refuse = not prune and any(stale.values())
        seqs = self._mirror.stream_seqs()
        refusal: TargetNotEmptyError | None = None
        try:
            report = self._run(
                migrate.migrate_sqlite_to_kv(
                    self._sqlite.path,
                    self._mirror.target,
                    prefix=self._mirror.prefix,
                    backup=False,
                    prune=prune,
                )
            )
        except TargetNotEmptyError as exc:
            refusal = exc
        if refusal is not None:
            assert must_refuse, f"refused although the mirror holds nothing stale: {refusal}"
            assert len(refusal.extra) == sum(len(v) for v in stale.values())
            assert self._mirror.stream_seqs() == seqs, "a refused migration wrote something"
            return
        assert not must_refuse, f"not refused although the mirror holds stale {stale}"
        assert report.verified, report.differences
        assert {k: c.pruned for k, c in report.records.items()} == {
            k: len(v) for k, v in stale.items()
        }
        mirror = self._open_kv(self._mirror, create=False)
        self._run(assert_kv_holds(mirror, reference, source_name="memory"))
        self._mirrored = reference

    # -- the end -------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self._service is not None:
                self._run(self._service.stop())
            for nc in (self._client_nc, self._service_nc):
                if nc is not None:
                    self._run(nc.close())
            if self._sqlite is not None:
                self._run(self._sqlite.close())
            for ns in list(self._namespaces):
                self._run(ns.delete())
            if self._nc is not None:
                self._run(self._nc.close())
        finally:
            self._loop.close()
