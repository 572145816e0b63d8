"""The migration library against a real JetStream server: faithful, idempotent, refusing."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from membership.canonical import snapshot_digest
from membership.connect import NatsTarget, connect_nats
from membership.demo import build_representative_state
from membership.embedded import free_port
from membership.errors import (
    BackupExistsError,
    BucketConfigError,
    InsecureURLError,
    NatsUnavailableError,
    SchemaError,
    TargetNotEmptyError,
)
from membership.migrate import migrate_sqlite_to_kv, verify_parity
from membership.sqlite import SQLiteStore


async def populate(db: Path) -> None:
    store = SQLiteStore.open(db)
    try:
        await build_representative_state(store)
    finally:
        await store.close()


async def sqlite_snapshot(db: Path):
    store = SQLiteStore.open(db)
    try:
        return await store.export_snapshot()
    finally:
        await store.close()


async def test_migration_is_faithful_and_reports_everything(sqlite_db: Path, namespace) -> None:
    await populate(sqlite_db)
    source = await sqlite_snapshot(sqlite_db)
    file_before = hashlib.sha256(sqlite_db.read_bytes()).hexdigest()

    report = await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix)

    async with namespace.store(create=False) as kv:
        assert await kv.export_snapshot() == source
    assert report.verified and report.replicas == 1
    assert report.digest == snapshot_digest(source)
    assert {k: c.source for k, c in report.records.items()} == source.counts()
    assert {k: c.written for k, c in report.records.items()} == source.counts()
    assert report.backup is not None and Path(report.backup).parent == sqlite_db.parent
    assert await sqlite_snapshot(Path(report.backup)) == source
    assert hashlib.sha256(sqlite_db.read_bytes()).hexdigest() == file_before


async def test_second_run_writes_nothing(sqlite_db: Path, namespace) -> None:
    await populate(sqlite_db)
    await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix, backup=False)
    seqs = namespace.stream_seqs()
    again = await migrate_sqlite_to_kv(
        sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
    )
    assert again.writes == 0 and again.verified and again.backup is None
    assert all(c.unchanged == c.source for c in again.records.values())
    assert namespace.stream_seqs() == seqs and len(seqs) == 5


async def test_a_changed_source_writes_only_the_change(sqlite_db: Path, namespace) -> None:
    await populate(sqlite_db)
    await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix, backup=False)
    store = SQLiteStore.open(sqlite_db)
    await store.rekey("general")
    await store.close()
    report = await migrate_sqlite_to_kv(
        sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
    )
    assert report.verified
    assert {k: c.written for k, c in report.records.items()} == {
        "users": 0,
        "rooms": 1,
        "members": 0,
        "sealed_keys": 0,
    }


async def test_legacy_dirty_state_is_copied_faithfully(sqlite_db: Path, namespace) -> None:
    await populate(sqlite_db)
    conn = sqlite3.connect(sqlite_db)
    conn.execute("INSERT INTO members VALUES ('gone-room', 'alice', 'member', 3)")
    conn.execute("INSERT INTO sealed_keys VALUES ('general', 9, 'ghost', X'0102')")
    conn.execute("INSERT INTO members VALUES ('general', 'carol', 'member', 1)")  # revoked user
    conn.commit()
    conn.close()
    source = await sqlite_snapshot(sqlite_db)
    report = await migrate_sqlite_to_kv(
        sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
    )
    assert report.verified
    result = await verify_parity(sqlite_db, namespace.target, prefix=namespace.prefix)
    assert result.equal
    async with namespace.store(create=False) as kv:
        assert await kv.export_snapshot() == source
    findings = "\n".join(result.findings)
    assert "gone-room" in findings and "epoch 9" in findings and "revoked" in findings


async def test_records_only_in_kv_refuse_before_any_write(sqlite_db: Path, namespace) -> None:
    await populate(sqlite_db)
    await migrate_sqlite_to_kv(sqlite_db, namespace.target, prefix=namespace.prefix, backup=False)
    async with namespace.store() as kv:
        await kv.add_user("zed", b"\x07" * 32)
    store = SQLiteStore.open(sqlite_db)
    await store.rekey("general")  # a real change that must not be written either
    await store.close()
    seqs = namespace.stream_seqs()
    with pytest.raises(TargetNotEmptyError) as info:
        await migrate_sqlite_to_kv(
            sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
        )
    assert info.value.extra == ("users 'zed'",)
    assert namespace.stream_seqs() == seqs

    pruned = await migrate_sqlite_to_kv(
        sqlite_db, namespace.target, prefix=namespace.prefix, backup=False, prune=True
    )
    assert pruned.verified and pruned.records["users"].pruned == 1
    assert (await verify_parity(sqlite_db, namespace.target, prefix=namespace.prefix)).equal


async def test_bucket_with_other_settings_is_refused_naming_both(
    sqlite_db: Path, namespace
) -> None:
    await populate(sqlite_db)
    nc = await connect_nats(namespace.target)
    try:
        await nc.jetstream().create_key_value(bucket=f"{namespace.prefix}_rooms", history=5)
    finally:
        await nc.close()
    with pytest.raises(BucketConfigError, match="history 5") as info:
        await migrate_sqlite_to_kv(
            sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
        )
    assert "history 1" in str(info.value)
    assert set(namespace.stream_seqs()) == {f"KV_{namespace.prefix}_rooms"}


async def test_three_replicas_on_a_single_server_is_refused(sqlite_db: Path, namespace) -> None:
    await populate(sqlite_db)
    with pytest.raises(BucketConfigError, match="not clustered"):
        await migrate_sqlite_to_kv(
            sqlite_db, namespace.target, prefix=namespace.prefix, backup=False, replicas=3
        )


async def test_newer_kv_schema_is_refused(sqlite_db: Path, namespace) -> None:
    await populate(sqlite_db)
    async with namespace.store() as kv:
        await kv.write_schema_version(7)
    with pytest.raises(SchemaError, match="schema version 7"):
        await migrate_sqlite_to_kv(
            sqlite_db, namespace.target, prefix=namespace.prefix, backup=False
        )


async def test_refusals_happen_before_any_backup_or_connection(
    sqlite_db: Path, tmp_path: Path
) -> None:
    await populate(sqlite_db)
    with pytest.raises(InsecureURLError):
        await migrate_sqlite_to_kv(sqlite_db, NatsTarget("nats://nats.example.com:4222"))
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"x")
    with pytest.raises(BackupExistsError):
        await migrate_sqlite_to_kv(
            sqlite_db, NatsTarget(f"nats://127.0.0.1:{free_port()}"), backup_path=taken
        )
    with pytest.raises(NatsUnavailableError):
        await migrate_sqlite_to_kv(sqlite_db, NatsTarget(f"nats://127.0.0.1:{free_port()}"))
    assert not [p.name for p in tmp_path.iterdir() if "backup" in p.name]
