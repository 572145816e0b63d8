"""Schema v1 -> v2 (the users' NATS identities), proven on random control planes.

Three ways an older control plane meets this release, each checked against the real
server and real SQLite files:

* a v1 SQLite file upgraded in place (``membershipd upgrade --db``): same records, a
  backup of the v1 file, the schema a fresh ``init`` makes, and a second run a no-op;
* a v1 SQLite file as the *source* of ``migrate-to-kv``: read as it is (never modified),
  written as a v2 namespace with parity and idempotence;
* a v1 KV namespace (what an earlier release migrated) upgraded in place
  (``membershipd upgrade --nats-url``): every value rewritten into the v2 form, the
  schema record last, and a second run writing nothing.

A v1 store reads as v2 with no nkeys, and refuses writes until upgraded.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.plugin import NatsServer, fresh_namespace
from harness.parity import assert_idempotent, assert_kv_holds, assert_parity, snapshot_digest
from harness.strategies import any_states, valid_states, write_sqlite
from membership.canonical import dumps, record_to_dict
from membership.errors import SchemaError
from membership.kv import KVStore, key_of
from membership.migrate import migrate_sqlite_to_kv, verify_parity
from membership.model import SCHEMA_VERSION, Snapshot
from membership.nkey import generate_user_keypair
from membership.sqlite import SQLiteStore
from membership.upgrade import upgrade_kv, upgrade_sqlite
from tests.property.support import KINDS, run, scaled


def without_nkeys(state: Snapshot) -> Snapshot:
    """The state as schema v1 can hold it: no user has a NATS identity."""
    return replace(state, users=tuple(replace(u, nkey=None) for u in state.users))


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def schema_of(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        rows = []
        for table in ("users", "rooms", "members", "sealed_keys"):
            rows += [(table, *r) for r in conn.execute(f"PRAGMA table_info({table})")]
            rows += [(table, *r) for r in conn.execute(f"PRAGMA index_list({table})")]
        return rows
    finally:
        conn.close()


def v1_user_value(user: object) -> bytes:
    """A user's KV value as schema v1 wrote it: no ``nkey`` field."""
    data = record_to_dict(user)  # type: ignore[arg-type]
    del data["nkey"]
    return dumps(data).encode()


@scaled(0.5)
@given(state=any_states().map(without_nkeys))
def test_a_v1_file_upgrades_in_place_keeping_every_record(
    tmp_path_factory: pytest.TempPathFactory, state: Snapshot
) -> None:
    work = tmp_path_factory.mktemp("v1")
    db = write_sqlite(state, work / "old.db", schema_version=1)
    reference = write_sqlite(state, work / "fresh.db")  # what `init` + the rows give
    before = file_hash(db)
    assert_parity(state, db, source_name="drawn", target_name="v1 file")  # reads as v2

    async def refused() -> None:
        store = SQLiteStore.open(db)
        try:
            with pytest.raises(SchemaError, match="membershipd upgrade"):
                await store.add_user("new", b"\x01" * 32)
        finally:
            await store.close()

    run(refused())
    assert file_hash(db) == before  # a refused write changes nothing

    report = upgrade_sqlite(db)
    assert (report.from_version, report.to_version) == (1, SCHEMA_VERSION)
    assert report.backup is not None
    backup = Path(report.backup)
    assert backup.stat().st_mode & 0o777 == 0o600
    assert SQLiteStore.open(backup).schema_version == 1  # the backup is the v1 file
    assert_parity(state, backup, source_name="drawn", target_name="backup")
    assert_parity(state, db, source_name="drawn", target_name="upgraded file")
    assert schema_of(db) == schema_of(reference)
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()

    after = file_hash(db)
    again = upgrade_sqlite(db)
    assert (again.from_version, again.to_version, again.backup) == (2, 2, None)
    assert file_hash(db) == after  # a second upgrade changes nothing


@scaled(0.5)
@given(state=any_states().map(without_nkeys))
def test_a_v1_file_migrates_as_it_is_into_a_v2_namespace(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, state: Snapshot
) -> None:
    db = write_sqlite(state, tmp_path_factory.mktemp("v1src") / "old.db", schema_version=1)
    before = file_hash(db)

    async def go() -> None:
        async with fresh_namespace(nats_server, "v1") as ns:
            report = await migrate_sqlite_to_kv(db, ns.target, prefix=ns.prefix, backup=False)
            assert report.verified, report.differences
            assert report.digest == snapshot_digest(state)
            async with ns.store(create=False) as kv:
                assert kv.schema_version == SCHEMA_VERSION
                await assert_kv_holds(kv, state)
            await assert_idempotent(db, ns)
            result = await verify_parity(db, ns.target, prefix=ns.prefix)
            assert result.equal, result.differences

    run(go())
    assert file_hash(db) == before  # the source is never modified


async def write_v1_namespace(kv: KVStore, state: Snapshot) -> None:
    """What an earlier release's migration left: v1 user values, schema record 1."""
    js = kv._nc.jetstream()
    for kind in KINDS:
        for record in getattr(state, kind):
            value = v1_user_value(record) if kind == "users" else None
            if value is None:
                from membership.canonical import encode_record

                value = encode_record(record)
            await js.publish(kv.subject(kind, key_of(record)), value)
    await js.publish(kv.subject("meta", "schema"), b'{"schema_version":1}')


@scaled(0.5)
@given(state=any_states().map(without_nkeys), nkey=st.booleans())
def test_a_v1_namespace_upgrades_in_place_and_a_second_run_writes_nothing(
    nats_server: NatsServer, state: Snapshot, nkey: bool
) -> None:
    async def go() -> None:
        async with fresh_namespace(nats_server, "v1kv") as ns:
            async with ns.store(create=True) as kv:
                await write_v1_namespace(kv, state)
            async with ns.store(create=False) as kv:
                assert kv.schema_version == 1
                assert await kv.export_snapshot() == state  # reads as v2, no nkeys
                with pytest.raises(SchemaError, match="membershipd upgrade"):
                    await kv.add_user("new", b"\x01" * 32)
                if state.users:
                    with pytest.raises(SchemaError, match="membershipd upgrade"):
                        await kv.set_user_nkey(state.users[0].id, generate_user_keypair().public)
            seqs = ns.stream_seqs()
            report = await upgrade_kv(ns.target, ns.prefix)
            assert (report.from_version, report.to_version) == (1, SCHEMA_VERSION)
            assert report.rewritten == len(state.users)
            moved = ns.stream_seqs()
            for kind, bucket in (("rooms", "rooms"), ("members", "members"), ("keys", "keys")):
                name = f"KV_{ns.prefix}_{bucket}"
                assert moved[name] == seqs[name], kind  # only users and meta are rewritten
            async with ns.store(create=False) as kv:
                assert kv.schema_version == SCHEMA_VERSION
                await assert_kv_holds(kv, state)  # every value canonical v2, key by key
                if nkey and state.users and state.users[0].status == "active":
                    await kv.set_user_nkey(state.users[0].id, generate_user_keypair().public)
            settled = ns.stream_seqs()
            again = await upgrade_kv(ns.target, ns.prefix)
            assert (again.from_version, again.rewritten) == (SCHEMA_VERSION, 0)
            assert ns.stream_seqs() == settled  # nothing written the second time

    run(go())


@given(state=valid_states().map(without_nkeys))
def test_migrating_into_a_v1_namespace_is_refused_before_any_write(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, state: Snapshot
) -> None:
    db = write_sqlite(state, tmp_path_factory.mktemp("into-v1") / "control.db")

    async def go() -> None:
        async with fresh_namespace(nats_server, "tov1") as ns:
            async with ns.store(create=True) as kv:
                await write_v1_namespace(kv, state)
            seqs = ns.stream_seqs()
            with pytest.raises(SchemaError, match="membershipd upgrade --nats-url"):
                await migrate_sqlite_to_kv(db, ns.target, prefix=ns.prefix, backup=False)
            assert ns.stream_seqs() == seqs
            result = await verify_parity(db, ns.target, prefix=ns.prefix)
            assert not result.equal
            assert result.differences[0] == f"schema_version: SQLite {SCHEMA_VERSION}, KV 1"

    run(go())


def test_a_killed_kv_upgrade_is_finished_by_the_next_run(nats_server: NatsServer) -> None:
    """A run cut short after rewriting some users (the schema record still says 1)."""
    state = Snapshot(
        users=tuple(
            replace(u, nkey=None)
            for u in asyncio.run(_three_users()).users  # a small fixed allowlist
        )
    )

    async def go() -> None:
        async with fresh_namespace(nats_server, "half") as ns:
            async with ns.store(create=True) as kv:
                await write_v1_namespace(kv, state)
                # the first user already rewritten in the v2 form, as a killed run leaves it
                from membership.canonical import encode_record

                first = state.users[0]
                await kv._nc.jetstream().publish(
                    kv.subject("users", key_of(first)), encode_record(first)
                )
            report = await upgrade_kv(ns.target, ns.prefix)
            assert report.rewritten == len(state.users) - 1
            async with ns.store(create=False) as kv:
                await assert_kv_holds(kv, state)

    run(go())


async def _three_users() -> Snapshot:
    from membership.memory import MemoryStore

    store = MemoryStore()
    for i, name in enumerate(("alice", "b.o b", "ünï")):
        await store.add_user(name, bytes([i + 1]) * 32)
    return await store.export_snapshot()
