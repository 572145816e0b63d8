"""The backup: consistent, 0600, integrity-checked, never overwrites, never half-written."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from membership.backup import backup_sqlite, default_backup_path
from membership.demo import build_representative_state
from membership.errors import BackupExistsError, StoreError
from membership.sqlite import SQLiteStore


def snapshot_of(path: Path):
    async def go():
        store = SQLiteStore.open(path)
        try:
            return await store.export_snapshot()
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture
def populated(sqlite_db: Path) -> Path:
    async def go() -> None:
        store = SQLiteStore.open(sqlite_db)
        await build_representative_state(store)
        await store.close()

    asyncio.run(go())
    return sqlite_db


def test_backup_reopens_with_identical_data_and_mode_0600(populated: Path, tmp_path: Path) -> None:
    dest = tmp_path / "b.db"
    backup_sqlite(populated, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert snapshot_of(dest) == snapshot_of(populated)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_existing_backup_path_is_refused_and_kept(populated: Path, tmp_path: Path) -> None:
    dest = tmp_path / "taken"
    dest.write_bytes(b"precious")
    with pytest.raises(BackupExistsError, match="taken"):
        backup_sqlite(populated, dest)
    assert dest.read_bytes() == b"precious"


def test_a_directory_that_is_a_file_is_a_clear_error(populated: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(StoreError, match="file"):
        backup_sqlite(populated, not_a_dir / "b.db")


def test_missing_directory_is_a_clear_error(populated: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        backup_sqlite(populated, tmp_path / "no" / "b.db")


def test_leftover_partial_of_a_dead_run_is_removed(populated: Path, tmp_path: Path) -> None:
    dest = tmp_path / "b.db"
    leftover = tmp_path / ".b.db.999999999.partial"  # no such pid
    leftover.write_bytes(b"half a backup")
    backup_sqlite(populated, dest)
    assert not leftover.exists()
    assert snapshot_of(dest) == snapshot_of(populated)


def test_default_path_sits_beside_the_database_and_never_collides(populated: Path) -> None:
    first = default_backup_path(populated)
    assert first.parent == populated.parent and first.name.startswith("control.db.backup-")
    first.write_bytes(b"")
    assert default_backup_path(populated) != first or not first.exists()
