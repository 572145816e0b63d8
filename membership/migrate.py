"""The one-time move from SQLite to JetStream KV, and the parity check that proves it.

:func:`migrate_sqlite_to_kv` follows DESIGN.md's Migration section step by step:

1. refuse a remote URL without ``--ca`` (before any I/O), a bad prefix, a taken
   backup path, a source that is not a membership database;
2. connect, and refuse buckets that exist with other settings;
3. take the source's write lock (``BEGIN IMMEDIATE``), back it up with
   ``VACUUM INTO`` and read it, then release the lock: backup and snapshot are the
   same moment, and writers wait or fail visibly meanwhile;
4. create the buckets that are missing;
5. read the target in bulk; records only in KV refuse the run unless ``prune``;
6. write only what differs, so a second run writes nothing;
7. read KV back through consumers and compare with the source;
8. report counts, backup, replicas and the snapshot digest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audit import invariant_findings
from .backup import backup_sqlite, check_backup_target, default_backup_path
from .canonical import KINDS, snapshot_digest
from .connect import NatsTarget, connect_nats
from .diff import diff_snapshots
from .errors import InvalidInputError, ParityError
from .kv import DEFAULT_PREFIX, ImportCounts, KVStore, validate_prefix
from .model import Snapshot
from .sqlite import SQLiteStore

__all__ = ["MigrationReport", "VerifyResult", "migrate_sqlite_to_kv", "verify_parity"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class MigrationReport:
    backup: str | None
    replicas: int
    verified: bool
    digest: str
    records: dict[str, ImportCounts]
    differences: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` object of the contract (differences are not part of it)."""
        return {
            "backup": self.backup,
            "replicas": self.replicas,
            "verified": self.verified,
            "digest": self.digest,
            "records": {kind: self.records[kind].as_dict() for kind in KINDS},
        }

    @property
    def writes(self) -> int:
        return sum(c.written + c.pruned for c in self.records.values())


@dataclass
class VerifyResult:
    equal: bool
    differences: list[str]
    findings: list[str]
    source_digest: str
    kv_digest: str
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "digest": {"sqlite": self.source_digest, "kv": self.kv_digest},
            "records": self.counts,
            "differences": self.differences,
            "findings": self.findings,
        }


async def migrate_sqlite_to_kv(
    db: str | os.PathLike[str],
    target: NatsTarget,
    *,
    replicas: int = 1,
    backup: bool = True,
    backup_path: str | os.PathLike[str] | None = None,
    prune: bool = False,
    prefix: str = DEFAULT_PREFIX,
    progress: Progress = _quiet,
) -> MigrationReport:
    """Copy the SQLite control plane at ``db`` into the KV namespace ``prefix``."""
    target.check()
    validate_prefix(prefix)
    if not 1 <= replicas <= 5:
        raise InvalidInputError(f"--replicas must be 1 to 5, not {replicas}")
    if backup_path is not None and not backup:
        raise InvalidInputError("--backup-path and --no-backup contradict each other")
    db_path = Path(db)
    source = SQLiteStore.open(db_path)
    try:
        dest: Path | None = None
        if backup:
            dest = Path(backup_path) if backup_path is not None else default_backup_path(db_path)
            check_backup_target(dest)
        nc = await connect_nats(target)
        try:
            kv = KVStore(nc, prefix, source._clock)
            kv.check_bucket_config(replicas, await kv.bucket_configs())
            await kv.read_schema_version()  # a newer namespace is refused before writing
            with source.write_lock():
                if dest is not None:
                    progress(f"backup: writing {dest}")
                    backup_sqlite(db_path, dest)
                snapshot = source.read_snapshot()
            progress(f"read: {sum(snapshot.counts().values())} records from {db_path}")
            await kv.create_buckets(replicas)
            counts = await kv.import_snapshot(snapshot, prune=prune)
            progress(f"write: {sum(c.written + c.pruned for c in counts.values())} writes")
            after = await kv.export_snapshot()
            progress("verify: KV read back through consumers")
            differences = diff_snapshots(snapshot, after)
            replicas_now = [r for r in (await kv.bucket_replicas()).values() if r is not None]
        finally:
            await nc.close()
    finally:
        await source.close()
    return MigrationReport(
        backup=str(dest) if dest is not None else None,
        replicas=min(replicas_now) if replicas_now else replicas,
        verified=not differences,
        digest=snapshot_digest(snapshot),
        records=counts,
        differences=differences,
    )


async def read_kv_snapshot(target: NatsTarget, prefix: str = DEFAULT_PREFIX) -> Snapshot:
    nc = await connect_nats(target)
    try:
        kv = await KVStore.open(nc, prefix)
        return await kv.export_snapshot()
    finally:
        await nc.close()


async def verify_parity(
    db: str | os.PathLike[str], target: NatsTarget, *, prefix: str = DEFAULT_PREFIX
) -> VerifyResult:
    """Compare the SQLite snapshot with the KV snapshot (read through consumers)."""
    target.check()
    validate_prefix(prefix)
    source = SQLiteStore.open(db)
    try:
        nc = await connect_nats(target)
        try:
            kv = await KVStore.open(nc, prefix)
            left = source.read_snapshot()
            right = await kv.export_snapshot()
        finally:
            await nc.close()
    finally:
        await source.close()
    differences = diff_snapshots(left, right)
    return VerifyResult(
        equal=not differences,
        differences=differences,
        findings=invariant_findings(left),
        source_digest=snapshot_digest(left),
        kv_digest=snapshot_digest(right),
        counts=left.counts(),
    )


def require_parity(result: VerifyResult) -> None:
    if not result.equal:
        raise ParityError(
            f"SQLite and KV differ in {len(result.differences)} place(s)", result.differences
        )
