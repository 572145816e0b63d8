"""Schema upgrades: a SQLite file or a KV namespace of an older schema, made current.

Version 2 added the user's NATS identity (``User.nkey``). An older store reads as the
current schema (its users have no nkey) and is never modified by reading; writes are
refused until it is upgraded here. ``migrate-to-kv`` reads an older SQLite source as
it is (the source is never modified) and writes a current namespace.

* SQLite: under the file's write lock, a checked backup first (``VACUUM INTO``, as for
  the migration, unless ``backup=False``), then the schema change and the new
  ``PRAGMA user_version`` in one transaction. A crash leaves the old version or the
  new, never a mix.
* KV: every record whose stored form is older is rewritten (compare-and-swap), then
  the schema record, last. A run cut short leaves the old schema record and a re-run
  finishes; a second run writes nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backup import backup_sqlite, check_backup_target, default_backup_path
from .connect import NatsTarget, close_nats, connect_nats
from .errors import InvalidInputError
from .kv import DEFAULT_PREFIX, KVStore, validate_prefix
from .model import SCHEMA_VERSION
from .sqlite import SQLiteStore

__all__ = ["UpgradeReport", "upgrade_kv", "upgrade_sqlite"]


@dataclass(frozen=True)
class UpgradeReport:
    store: str
    from_version: int
    to_version: int
    backup: str | None
    rewritten: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": self.backup,
            "from_version": self.from_version,
            "rewritten": self.rewritten,
            "store": self.store,
            "to_version": self.to_version,
        }


def upgrade_sqlite(
    db: str | os.PathLike[str],
    *,
    backup: bool = True,
    backup_path: str | os.PathLike[str] | None = None,
) -> UpgradeReport:
    """Upgrade the membership database at ``db`` to :data:`SCHEMA_VERSION`."""
    if backup_path is not None and not backup:
        raise InvalidInputError("--backup-path and --no-backup contradict each other")
    path = Path(db)
    store = SQLiteStore.open(path)
    made: Path | None = None
    try:
        before = store.schema_version
        dest: Path | None = None
        if backup and before < SCHEMA_VERSION:
            dest = Path(backup_path) if backup_path is not None else default_backup_path(path)
            check_backup_target(dest)

        def take_backup() -> None:
            nonlocal made
            if dest is not None:
                made = backup_sqlite(path, dest)

        try:
            store.upgrade(while_locked=take_backup)
        except BaseException:
            if made is not None:  # nothing changed: leave the files as they were
                with contextlib.suppress(OSError):
                    made.unlink()
            raise
        return UpgradeReport(
            store=f"SQLite {path}",
            from_version=before,
            to_version=store.schema_version,
            backup=str(made) if made is not None else None,
            rewritten=0,
        )
    finally:
        store._conn.close()


async def upgrade_kv(target: NatsTarget, prefix: str = DEFAULT_PREFIX) -> UpgradeReport:
    """Upgrade the KV namespace ``prefix`` to :data:`SCHEMA_VERSION`."""
    target.check()
    validate_prefix(prefix)
    nc = await connect_nats(target)
    try:
        kv = await KVStore.open(nc, prefix)
        before = kv.schema_version
        _, rewritten = await kv.upgrade()
        return UpgradeReport(
            store=f"KV {prefix!r} at {target.display()}",
            from_version=before,
            to_version=kv.schema_version,
            backup=None,
            rewritten=rewritten,
        )
    finally:
        await close_nats(nc)
