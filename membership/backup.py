"""A consistent, checked, never-half-written backup of the SQLite source.

``VACUUM INTO`` writes a compact copy of the database as one reader sees it. It goes
into a hidden temporary name created 0600, is checked with ``PRAGMA
integrity_check``, flushed to disk, and only then linked to its final name, which
fails rather than overwrite anything. So a file with the final name is always a
complete backup; a killed run leaves only a ``.partial`` file, which the next run
in the same directory removes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from .errors import BackupExistsError, StoreError
from .sqlite import translate_errors

__all__ = ["PARTIAL_SUFFIX", "backup_sqlite", "check_backup_target", "default_backup_path"]

PARTIAL_SUFFIX: Final = ".partial"


def default_backup_path(db_path: Path, now: datetime | None = None) -> Path:
    """``<db>.backup-<UTC timestamp>`` beside the database, never an existing file."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    candidate = db_path.with_name(f"{db_path.name}.backup-{stamp}")
    n = 1
    while candidate.exists():
        candidate = db_path.with_name(f"{db_path.name}.backup-{stamp}-{n}")
        n += 1
    return candidate


def check_backup_target(path: Path) -> None:
    """Refuse a taken backup path or a missing directory, before anything is done."""
    if path.exists() or path.is_symlink():
        raise BackupExistsError(
            f"backup path {path} already exists; a backup is never overwritten: "
            "choose another --backup-path or move that file"
        )
    if not path.parent.is_dir():
        raise StoreError(f"cannot write backup {path}: directory {path.parent} does not exist")


def _remove_leftovers(directory: Path, patterns: tuple[str, ...]) -> None:
    """Remove ``.partial`` files of earlier runs whose process is gone."""
    leftovers = {p for pattern in patterns for p in directory.glob(pattern)}
    for leftover in sorted(leftovers):
        pid_text = leftover.name[: -len(PARTIAL_SUFFIX)].rsplit(".", 1)[-1]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            leftover.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def backup_sqlite(source: Path, dest: Path) -> Path:
    """Back up the database at ``source`` into ``dest`` (which must not exist).

    Runs on its own connection, so the caller may hold the source's write lock on
    another one: the backup then shows exactly the state the caller reads.
    """
    check_backup_target(dest)
    # Default backups of this database (any timestamp) and earlier tries at this very path.
    _remove_leftovers(
        dest.parent,
        (
            f".{glob.escape(source.name)}.backup-*{PARTIAL_SUFFIX}",
            f".{glob.escape(dest.name)}.*{PARTIAL_SUFFIX}",
        ),
    )
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise StoreError(
            f"cannot write backup in {dest.parent}: {exc.strerror}; choose --backup-path "
            "in a writable directory"
        ) from None
    os.close(fd)
    try:
        with translate_errors(source):
            conn = sqlite3.connect(
                f"file:{source}?mode=ro", uri=True, isolation_level=None, timeout=5.0
            )
            try:
                conn.execute("VACUUM INTO ?", (str(tmp),))
            finally:
                conn.close()
        with translate_errors(tmp):
            check = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
            try:
                result = [r[0] for r in check.execute("PRAGMA integrity_check")]
            finally:
                check.close()
        if result != ["ok"]:
            raise StoreError(f"backup {tmp} failed its integrity check: {result[:3]}")
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, dest)  # fails instead of overwriting a file created meanwhile
        except FileExistsError:
            raise BackupExistsError(
                f"backup path {dest} appeared meanwhile; not overwritten"
            ) from None
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return dest
