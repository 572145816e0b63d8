"""A consistent, checked, never-half-written backup of the SQLite source.

``VACUUM INTO`` writes a compact copy of the database as one reader sees it. It goes
into a hidden temporary name created 0600, is checked with ``PRAGMA
integrity_check``, flushed to disk, and only then linked to its final name, which
fails rather than overwrite anything. So a file with the final name is always a
complete backup; a killed run leaves only a ``.partial`` file, which the next run
on the same database removes (:func:`remove_stale_partials`, with or without
``--no-backup``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from .errors import BackupExistsError, StoreError
from .sqlite import translate_errors

__all__ = [
    "PARTIAL_SUFFIX",
    "backup_sqlite",
    "check_backup_target",
    "default_backup_path",
    "remove_stale_partials",
]

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


_STAMP: Final = r"\d{8}T\d{6}\.\d{6}Z(?:-\d+)?"
"""What :func:`default_backup_path` puts after ``.backup-``."""


def _partial_name(dest_name: str) -> re.Pattern[str]:
    """The exact name of this tool's temporary file for a backup named ``dest_name``.

    ``dest_name`` is a regular expression for the final name; the result matches
    ``.<final name>.<pid>.partial`` and captures the pid.
    """
    return re.compile(rf"\.{dest_name}\.(\d+){re.escape(PARTIAL_SUFFIX)}")


def remove_stale_partials(db_path: Path) -> list[Path]:
    """Remove what killed runs left of default backups of the database at ``db_path``.

    Only files named exactly as :func:`backup_sqlite` names its temporary file for a
    :func:`default_backup_path` of this database (``.<db>.backup-<UTC
    timestamp>.<pid>.partial``, beside the database), only regular files, and only
    when the run that made one is gone. A run with ``--no-backup`` calls this too, so
    every run removes its predecessors' leftovers. Returns the files removed.
    """
    db_path = Path(db_path)
    pattern = _partial_name(re.escape(f"{db_path.name}.backup-") + _STAMP)
    return _remove_leftovers(db_path.parent, pattern)


def _remove_leftovers(directory: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the files in ``directory`` named ``pattern`` whose run is gone."""
    removed: list[Path] = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return removed
    for leftover in entries:
        match = pattern.fullmatch(leftover.name)
        if match is None:
            continue
        try:
            info = leftover.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or _owner_running(int(match[1]), info.st_mtime):
            continue
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def _owner_running(pid: int, modified: float) -> bool:
    """Whether the run that wrote a partial file last modified at ``modified`` still runs.

    A process with that pid that started after the file was last written is not its
    writer (pids are reused), so the file is stale all the same.
    """
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _start_time(pid)
    return started is None or started <= modified + 1.0  # /proc/stat's boot time is in s


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (Unix time, from /proc), or None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of proc(5): starttime, in clock ticks since boot
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def backup_sqlite(source: Path, dest: Path) -> Path:
    """Back up the database at ``source`` into ``dest`` (which must not exist).

    Runs on its own connection, so the caller may hold the source's write lock on
    another one: the backup then shows exactly the state the caller reads.
    """
    check_backup_target(dest)
    # Default backups of this database (any timestamp) and earlier tries at this very path.
    remove_stale_partials(source)
    _remove_leftovers(dest.parent, _partial_name(re.escape(dest.name)))
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
