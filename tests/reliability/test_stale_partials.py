"""What a killed run leaves behind: the next run removes it, with or without a backup.

A run killed while it backs up leaves ``.<db>.backup-<UTC timestamp>.<pid>.partial`` beside
the database (DESIGN.md, Migration step 3: "the next run removes its leftovers").
:func:`membership.backup.remove_stale_partials` removes exactly those files of that database
whose run is gone, and nothing else; ``migrate-to-kv --no-backup`` must call it too, or a
``--no-backup`` re-run after a kill leaves the half file lying there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.plugin import Cli, Namespace
from membership.backup import backup_sqlite, default_backup_path, remove_stale_partials

STAMP = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) just now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a process that runs until the test ends (it waits on its stdin)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def partial_of(db: Path, pid: int, stamp: datetime = STAMP) -> Path:
    """The temporary file ``backup_sqlite`` writes for a default backup of ``db``."""
    final = default_backup_path(db, stamp)
    return final.with_name(f".{final.name}.{pid}.partial")


def plant(path: Path, content: bytes = b"SQLite format 3\x00 half a backup") -> Path:
    path.write_bytes(content)
    return path


def test_a_stale_partial_of_this_database_is_removed(sqlite_db: Path) -> None:
    stale = plant(partial_of(sqlite_db, dead_pid()))
    numbered = plant(partial_of(sqlite_db, dead_pid()).with_name(stale.name.replace("Z.", "Z-2.")))
    assert remove_stale_partials(sqlite_db) == sorted([stale, numbered])
    assert not stale.exists() and not numbered.exists()
    assert remove_stale_partials(sqlite_db) == []  # idempotent


def test_the_partial_of_a_run_still_going_is_kept(sqlite_db: Path, live_pid: int) -> None:
    running = plant(partial_of(sqlite_db, live_pid))
    assert remove_stale_partials(sqlite_db) == []
    assert running.exists()


def test_a_reused_pid_does_not_keep_a_stale_partial(sqlite_db: Path, live_pid: int) -> None:
    # The file was last written an hour before the process with its pid started: that
    # process is not the run that wrote it.
    reused = plant(partial_of(sqlite_db, live_pid))
    hour_ago = time.time() - 3600
    os.utime(reused, (hour_ago, hour_ago))
    assert remove_stale_partials(sqlite_db) == [reused]
    assert not reused.exists()


def test_nothing_but_this_tools_partials_of_this_database_is_touched(sqlite_db: Path) -> None:
    d, pid = sqlite_db.parent, dead_pid()
    name = partial_of(sqlite_db, pid).name
    other = sqlite_db.with_name("other.db")
    keep = [
        plant(default_backup_path(sqlite_db, STAMP)),  # a finished backup
        plant(partial_of(other, pid)),  # another database's leftover
        plant(d / name.removeprefix(".")),  # not hidden
        plant(d / name.replace(".partial", ".partial.bak")),
        plant(d / name.replace(".partial", ".part")),
        plant(d / name.replace(f".{pid}.", ".pid.")),
        plant(d / name.replace("20240506T070809.123456Z", "latest")),  # not our timestamp
        plant(d / name.replace("20240506T070809.123456Z", "20240506T070809Z")),
        plant(d / name.replace("control.db", "control.dbx")),
        plant(d / name.replace("control.db", "xcontrol.db")),
        plant(d / f".control.db.{pid}.partial"),  # a --backup-path named control.db
        plant(d / "notes.partial"),
    ]
    target = plant(d / "precious.txt", b"not a backup")
    link = d / partial_of(sqlite_db, dead_pid()).name  # exact name, but a symlink
    link.symlink_to(target)
    directory = d / partial_of(sqlite_db, dead_pid()).name  # exact name, but a directory
    directory.mkdir()
    contents = {p: p.read_bytes() for p in [*keep, target]}

    assert remove_stale_partials(sqlite_db) == []
    assert {p: p.read_bytes() for p in contents} == contents
    assert link.is_symlink() and directory.is_dir()
    assert sqlite_db.exists()


def test_a_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    assert remove_stale_partials(tmp_path / "gone" / "control.db") == []


def test_a_backup_removes_the_stale_partials_of_its_database(sqlite_db: Path) -> None:
    stale = plant(partial_of(sqlite_db, dead_pid()))
    dest = sqlite_db.with_name("elsewhere.db")
    backup_sqlite(sqlite_db, dest)
    assert not stale.exists() and dest.exists()
    assert not [p for p in sqlite_db.parent.iterdir() if p.name.endswith(".partial")]


def test_a_no_backup_run_removes_the_partial_a_killed_run_left(
    cli: Cli, sqlite_db: Path, namespace: Namespace
) -> None:
    """``migrate-to-kv --no-backup`` after a killed run: the half backup is gone, the rest
    (a finished backup, another database's leftover, a live run's file) stays."""
    stale = plant(partial_of(sqlite_db, dead_pid()))
    finished = plant(default_backup_path(sqlite_db, STAMP))
    foreign = plant(partial_of(sqlite_db.with_name("other.db"), dead_pid()))
    result = cli(
        "migrate-to-kv",
        "--db",
        str(sqlite_db),
        "--nats-url",
        namespace.url,
        "--bucket-prefix",
        namespace.prefix,
        "--no-backup",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["backup"] is None
    assert not stale.exists(), "a --no-backup run left the killed run's .partial backup"
    assert finished.exists() and foreign.exists()
