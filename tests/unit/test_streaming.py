"""The streaming migration's parts: encoding rows, digesting a stream, joining a bucket
read with the source, the last-verified-run record, and reading one pinned moment of
SQLite. Against a real nats-server and real SQLite files."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.plugin import NatsServer, fresh_namespace
from harness.strategies import any_states, state_pairs, write_sqlite
from membership.audit import invariant_findings
from membership.canonical import (
    KINDS,
    MAX_ENCODED_BYTES,
    SnapshotDigest,
    encode_record,
    encode_row,
    row_encoder,
    snapshot_digest,
)
from membership.diff import diff_snapshots
from membership.errors import DataError, StoreError, TargetNotEmptyError
from membership.kv import BulkReader, Publisher, RowKeys, key_of
from membership.migrate import migrate_sqlite_to_kv, verify_parity
from membership.model import MAX_INT, Member, Room, SealedKeyRecord, Snapshot, User
from membership.nkey import generate_user_keypair
from membership.sqlite import SQLiteStore
from tests.helpers import bulk_fill
from tests.property.support import run

FIELDS = {
    "users": ("id", "public_key", "status", "created_at", "nkey"),
    "rooms": ("id", "epoch", "created_at"),
    "members": ("room_id", "user_id", "role", "joined_epoch"),
    "sealed_keys": ("room_id", "epoch", "user_id", "sealed_key"),
}


def row_of(kind: str, record: object) -> tuple[object, ...]:
    return tuple(getattr(record, name) for name in FIELDS[kind])


# -- encoding and digests, no server -------------------------------------------------------


@given(state=any_states())
def test_rows_encode_and_key_exactly_like_records(state: Snapshot) -> None:
    keys = RowKeys()
    for kind in KINDS:
        encode, key = row_encoder(kind), keys.key_function(kind)
        for record in getattr(state, kind):
            row = row_of(kind, record)
            assert encode(row) == encode_row(kind, row) == encode_record(record)
            assert key(row) == keys.key(kind, row) == key_of(record)


@given(state=any_states(), order=st.permutations(KINDS))
def test_the_streamed_digest_is_the_export_digest_in_any_order_of_kinds(
    state: Snapshot, order: list[str]
) -> None:
    digest = SnapshotDigest(state.schema_version)
    for kind in order:
        digest.begin(kind)
        for record in getattr(state, kind):
            digest.add(encode_record(record))
        digest.end()
    assert digest.hexdigest() == snapshot_digest(state)
    for kind in KINDS:  # a kind's own digest: the SHA-256 of its JSON array in the export
        array = "[" + ",".join(encode_record(r).decode() for r in getattr(state, kind)) + "]"
        assert digest.kind_digest(kind) == "sha256:" + hashlib.sha256(array.encode()).hexdigest()
        assert digest.count(kind) == len(getattr(state, kind))


def test_no_record_encodes_beyond_its_bound() -> None:
    worst_id = "\x01" * 128  # every byte becomes a 6-byte \u0001 escape
    worst = {
        "users": User(worst_id, b"\xff" * 32, "revoked", MAX_INT, generate_user_keypair().public),
        "rooms": Room(worst_id, MAX_INT, MAX_INT),
        "members": Member(worst_id, worst_id, "member", MAX_INT),
        "sealed_keys": SealedKeyRecord(worst_id, MAX_INT, worst_id, b"\xff" * 4096),
    }
    for kind, record in worst.items():
        size = len(encode_record(record))
        assert MAX_ENCODED_BYTES[kind] // 2 < size <= MAX_ENCODED_BYTES[kind], (kind, size)


# -- SQLite: one pinned moment, checked rows ---------------------------------------------------


def test_consistent_read_holds_writers_only_while_pinning(sqlite_db: Path) -> None:
    bulk_fill(sqlite_db, users=50, rooms=2)
    store = SQLiteStore.open(sqlite_db)
    writer = sqlite3.connect(sqlite_db, timeout=0.05, isolation_level=None)
    blocked: list[str] = []

    def while_locked() -> None:  # the backup's moment: no writer gets in
        try:
            writer.execute(
                "INSERT INTO users (id, public_key, status, created_at) VALUES ('during', zeroblob(32), 'active', 1)"
            )
        except sqlite3.OperationalError as exc:
            blocked.append(str(exc))

    try:
        with store.consistent_read(while_locked=while_locked):
            writer.execute(
                "INSERT INTO users (id, public_key, status, created_at) VALUES ('after', zeroblob(32), 'active', 1)"
            )
            seen = {row[0] for row in store.iter_rows("users")}  # still the pinned moment
            assert store.count("users") == 50 == len(seen)
        assert blocked and "locked" in blocked[0]
        assert "after" not in seen and "during" not in seen
        with store.consistent_read():
            assert "after" in {row[0] for row in store.iter_rows("users")}
    finally:
        writer.close()
        run(store.close())


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("INSERT INTO rooms VALUES ('r', 0, 1)", "epoch"),
        (
            "INSERT INTO users (id, public_key, status, created_at) VALUES ('u', zeroblob(31), 'active', 1)",
            "public key",
        ),
        ("INSERT INTO sealed_keys VALUES ('r', 1, CAST(X'FF' AS TEXT), X'01')", "UTF-8"),
    ],
)
def test_rows_outside_their_domain_are_refused(sqlite_db: Path, sql: str, says: str) -> None:
    conn = sqlite3.connect(sqlite_db)
    conn.execute("PRAGMA ignore_check_constraints = ON")  # written around the schema
    conn.execute(sql)
    conn.commit()
    conn.close()
    kind = sql.split()[2]
    store = SQLiteStore.open(sqlite_db)
    try:
        with store.consistent_read():
            with pytest.raises(DataError, match=says):
                store.check_rows(kind)
            with pytest.raises(DataError, match=says):
                list(store.iter_rows(kind))
    finally:
        run(store.close())


# -- KV: bulk reads and pipelined writes -------------------------------------------------------


async def test_bulk_reader_sees_exactly_the_live_keys_across_many_requests(namespace) -> None:
    async with namespace.store() as kv:
        subject = kv.subject("users", "")
        async with Publisher(kv) as publisher:
            for i in range(300):
                await publisher.publish(f"{subject}k{i}", b"v%d" % i)
            for i in range(0, 300, 15):  # tombstones
                await publisher.publish(f"{subject}k{i}", b"", {"KV-Operation": "DEL"})
            for i in range(1, 300, 29):  # overwrites
                await publisher.publish(f"{subject}k{i}", b"new%d" % i)
        live = {f"k{i}": b"v%d" % i for i in range(300) if i % 15}
        live.update({f"k{i}": b"new%d" % i for i in range(1, 300, 29)})  # after the tombstones
        bucket = await kv._js.key_value(kv.buckets["users"])
        async with BulkReader(kv, "users", batch=7) as reader:
            read = {}
            async for batch in reader:
                assert len(batch) <= 7 * 4  # never more than the requests in flight
                for key, value, reply in batch:
                    read[key] = value
                    assert (await bucket.get(key)).revision == int(reply.split(".")[5])
        assert read == live
        assert {e.key: e.value for e in await kv.scan("users")} == live


async def test_an_acknowledgement_that_reports_an_error_is_raised(namespace) -> None:
    async with namespace.store() as kv:

        async def write() -> None:
            async with Publisher(kv) as publisher:
                await publisher.publish(kv.subject("users", "k0"), b"a")
                await publisher.publish(  # compare-and-swap against a revision it does not have
                    kv.subject("users", "k1"), b"b", {"Nats-Expected-Last-Subject-Sequence": "99"}
                )

        with pytest.raises(StoreError, match=r"refused \$KV\..*_users\.k1 \(10071"):
            await write()


# -- the migration ---------------------------------------------------------------------------


async def raw_put(namespace, kind: str, key: str, value: bytes, headers=None) -> None:
    async with namespace.store(create=False) as kv:
        await kv._js.publish(kv.subject(kind, key), value, headers=headers)


async def last_run(namespace) -> dict:
    async with namespace.store(create=False) as kv:
        return await kv.read_last_run()


async def test_the_last_run_record_proves_an_unchanged_state_and_any_change_falls_back(
    sqlite_db: Path, namespace
) -> None:
    bulk_fill(sqlite_db, users=40, rooms=4, epochs=2)

    async def migrate():
        report = await migrate_sqlite_to_kv(
            sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
        )
        assert report.verified, report.differences
        assert (await verify_parity(sqlite_db, namespace.target, prefix=namespace.prefix)).equal
        return report

    first = await migrate()
    assert set(first.checks.values()) == {"fresh"}
    record = await last_run(namespace)
    seqs = namespace.stream_seqs()
    assert record["digest"] == first.digest
    for kind, bucket in (("users", "users"), ("sealed_keys", "keys")):
        assert record["buckets"][kind]["last_seq"] == seqs[f"KV_{namespace.prefix}_{bucket}"]

    second = await migrate()  # nothing changed: proven without reading the buckets
    assert set(second.checks.values()) == {"proven"} and second.writes == 0
    assert namespace.stream_seqs() == seqs and await last_run(namespace) == record

    key = f"room{1:05}.2.u{1:07}"
    await raw_put(namespace, "sealed_keys", key, b'{"tampered":true}')
    third = await migrate()  # a bucket written behind the migration's back: compared
    assert third.checks == {**second.checks, "sealed_keys": "compared"}
    assert third.records["sealed_keys"].written == 1 and third.writes == 1
    assert set((await migrate()).checks.values()) == {"proven"}  # recorded again

    await raw_put(namespace, "users", "u0000003", b"", {"KV-Operation": "DEL"})
    fourth = await migrate()
    assert fourth.checks["users"] == "compared" and fourth.records["users"].written == 1

    async with namespace.store(create=False) as kv:  # a message purged, nothing appended
        await kv._js.purge_stream(kv.stream("rooms"), subject=kv.subject("rooms", "room00002"))
    fifth = await migrate()
    assert fifth.checks["rooms"] == "compared" and fifth.records["rooms"].written == 1

    store = SQLiteStore.open(sqlite_db)
    await store.rekey("room00003")  # the source changed, the buckets did not
    await store.close()
    sixth = await migrate()
    assert sixth.checks["rooms"] == "compared" and sixth.records["rooms"].written == 1
    assert sixth.checks["sealed_keys"] == "proven"


async def test_a_run_that_only_compares_records_nothing_and_writes_nothing(
    sqlite_db: Path, namespace
) -> None:
    """A bucket re-created with the same content: equal, so zero writes, and no new record."""
    bulk_fill(sqlite_db, users=20, rooms=2)
    await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix, backup=False)
    async with namespace.store(create=False) as kv:
        rooms = await kv.scan("rooms")
        await kv._js.delete_key_value(kv.buckets["rooms"])
        await kv.create_buckets(1)
        await kv.publish_all((kv.subject("rooms", e.key), e.value, None) for e in rooms)
    record, seqs = await last_run(namespace), namespace.stream_seqs()
    for _ in range(2):
        report = await migrate_sqlite_to_kv(
            sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
        )
        assert report.verified and report.writes == 0 and report.checks["rooms"] == "compared"
        assert namespace.stream_seqs() == seqs and await last_run(namespace) == record


async def test_verify_never_trusts_the_last_run_record(sqlite_db: Path, namespace) -> None:
    bulk_fill(sqlite_db, users=20, rooms=2)
    await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix, backup=False)
    await raw_put(namespace, "users", "u0000004", b"", {"KV-Operation": "DEL"})
    async with namespace.store(create=False) as kv:  # forge a record covering the change
        record = await kv.read_last_run()
        record["buckets"]["users"].update((await kv.stream_state("users")).as_dict())
        await kv.write_last_run(record)
    result = await verify_parity(sqlite_db, namespace.target, prefix=namespace.prefix)
    assert result.differences == ["users['u0000004']: only in SQLite"]


async def test_a_bucket_out_of_key_order_is_joined_by_key(sqlite_db: Path, namespace) -> None:
    """Written newest-first (as years of API writes might leave it): still key by key."""
    bulk_fill(sqlite_db, users=3000, rooms=30, epochs=2)
    store = SQLiteStore.open(sqlite_db)
    state = await store.export_snapshot()
    await store.close()
    async with namespace.store() as kv:
        items = [
            (kv.subject(kind, key_of(r)), encode_record(r), None)
            for kind in KINDS
            for r in getattr(state, kind)
        ]
        await kv.publish_all(reversed(items))
    changed = {"u0000007", "u0002999", "u0001500"}
    conn = sqlite3.connect(sqlite_db)
    conn.executemany("UPDATE users SET status = 'revoked' WHERE id = ?", [(u,) for u in changed])
    conn.commit()
    conn.close()
    report = await migrate_sqlite_to_kv(
        sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
    )
    assert report.verified and report.checks["sealed_keys"] == "compared"
    assert {k: c.written for k, c in report.records.items()} == {
        "users": 3,
        "rooms": 0,
        "members": 0,
        "sealed_keys": 0,
    }
    assert report.records["sealed_keys"].unchanged == len(state.sealed_keys)


async def test_a_refused_run_leaves_no_backup_and_no_write(sqlite_db: Path, namespace) -> None:
    bulk_fill(sqlite_db, users=10, rooms=1)
    await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix, backup=False)
    await raw_put(namespace, "users", "zed", encode_record(User("zed", b"\x01" * 32, "active", 1)))
    files, seqs = sorted(sqlite_db.parent.iterdir()), namespace.stream_seqs()
    with pytest.raises(TargetNotEmptyError):
        await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix)
    assert sorted(sqlite_db.parent.iterdir()) == files  # the backup it took is gone again
    assert namespace.stream_seqs() == seqs


@settings(max_examples=max(5, settings.default.max_examples // 2))
@given(pair=state_pairs())
def test_streamed_verify_gives_the_snapshot_diff_digests_and_findings(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, pair
) -> None:
    """SQLite holds S1, KV holds S2: verify streams both and must say what the in-memory
    diff, digests and findings of the two snapshots say, line for line."""
    s1, s2 = pair
    db = write_sqlite(s1, tmp_path_factory.mktemp("verify") / "s1.db")

    async def body() -> None:
        async with fresh_namespace(nats_server) as ns:
            async with ns.store() as kv:
                await kv.import_snapshot(s2, prune=True)
            result = await verify_parity(db, ns.target, prefix=ns.prefix)
        assert result.differences == diff_snapshots(s1, s2)
        assert result.equal == (s1 == s2)
        assert result.source_digest == snapshot_digest(s1)
        assert result.kv_digest == snapshot_digest(s2)
        assert result.findings == invariant_findings(s1)
        assert result.counts == s1.counts()

    run(body())
