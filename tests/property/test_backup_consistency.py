"""Backup consistency: the backup is the source at one moment, the moment migrated.

Quietly, for any state: the backup's snapshot equals the source's, the file is 0600 and
sound, and the source file is not modified. Under load: while another thread keeps
writing through ``SQLiteStore``, each migration's backup equals exactly the snapshot it
migrated (same digest as the report, same records as KV right after), that snapshot is
the state after some prefix of the writer's acknowledged writes (one moment, never a
torn one), and once the writer stops, every write it was told succeeded is in the
database: the migration's write lock made writers wait, it lost nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given

from fixtures.plugin import NatsServer, fresh_namespace
from harness.parity import assert_kv_holds, assert_parity, read_sqlite, snapshot_digest
from harness.strategies import Operation, any_states, run_sync, valid_states
from membership.backup import backup_sqlite
from membership.errors import MembershipError
from membership.memory import MemoryStore
from membership.migrate import migrate_sqlite_to_kv
from membership.model import Snapshot
from membership.sqlite import SQLiteStore
from tests.property.support import run, scaled

DEADLINE_S = 30.0


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@given(state=any_states())
def test_the_backup_is_the_source(sqlite_factory: Callable[..., Path], state: Snapshot) -> None:
    db = sqlite_factory(state)
    before = file_sha256(db)
    dest = backup_sqlite(db, db.with_name("backup.db"))
    assert_parity(state, dest, source_name="source", target_name="backup")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    check = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()
    assert file_sha256(db) == before


# -- under load ------------------------------------------------------------------------------


def writer_operations(i: int) -> list[Operation]:
    """Round ``i`` of the writer: every kind of write, each its own transaction."""
    user, room = f"w{i}", f"room {i % 3}"
    key = i.to_bytes(4, "big") * 8
    return [
        Operation("add_user", (user, key), (("created_at", i),)),
        Operation("create_room", (room, user), (("created_at", i),)),
        Operation("add_member", (room, user)),
        Operation("put_sealed_key", (room, user, key[:16])),
        Operation("rekey", (room,)),
        Operation("remove_member", (f"room {(i + 1) % 3}", f"w{i - 1}")),
    ]


@dataclass
class Writer:
    """A thread writing through its own SQLiteStore until told to stop."""

    db: Path
    done: list[tuple[Operation, bool]] = field(default_factory=list)
    failure: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._main, name="sqlite-writer", daemon=True)

    def count(self) -> int:
        with self.lock:
            return len(self.done)

    def _main(self) -> None:
        try:
            asyncio.run(self._write())
        except BaseException as exc:  # handed to the test, which re-raises it
            self.failure = exc

    async def _write(self) -> None:
        store = SQLiteStore.open(self.db)
        try:
            i = 0
            while not self.stop.is_set():
                for op in writer_operations(i):
                    try:
                        await op.call(store)
                        ok = True
                    except MembershipError:
                        ok = False  # refused (a rule) or visibly failed (busy): not done
                    with self.lock:
                        self.done.append((op, ok))
                    # A steady writer, not a flood: leave the migration some GIL.
                    self.stop.wait(0.0005)
                i += 1
        finally:
            await store.close()

    def wait_for(self, count: int) -> None:
        """Poll until the writer has finished ``count`` operations (or fail loudly)."""
        deadline = time.monotonic() + DEADLINE_S
        while self.count() < count:
            if self.failure is not None:
                raise self.failure
            assert time.monotonic() < deadline, f"the writer is stuck at {self.count()} ops"
            time.sleep(0.005)  # polling interval, not synchronisation: the loop checks


def moments(
    start: Snapshot, done: list[tuple[Operation, bool]], snapshots: list[Snapshot]
) -> list[int | None]:
    """For each snapshot, a prefix length of the successful writes that gives it (or None).

    Replays the writes on the reference model. Users are only ever added, so a snapshot
    can only be the state after a prefix with as many users; only those are compared.
    """
    wanted = {len(s.users) for s in snapshots}
    found: dict[str, int] = {}
    store = MemoryStore(start)
    users = len(start.users)

    def note(n: int) -> None:
        if users in wanted:
            found.setdefault(snapshot_digest(run_sync(store.export_snapshot())), n)

    note(0)
    for n, (op, ok) in enumerate(done, 1):
        if ok:
            outcome = run_sync(op.outcome(store))
            assert outcome[0] == "ok", f"{op!r} succeeded on SQLite but not on replay: {outcome}"
            users += op.name == "add_user"
            note(n)
    return [found.get(snapshot_digest(s)) for s in snapshots]


@scaled(0.1)
@given(state=valid_states())
def test_backups_are_consistent_while_another_thread_writes(
    nats_server: NatsServer, sqlite_factory: Callable[..., Path], state: Snapshot
) -> None:
    db = sqlite_factory(state)
    writer = Writer(db)
    migrated: list[tuple[Path, str, Snapshot]] = []

    async def body() -> None:
        async with fresh_namespace(nats_server) as ns:
            for index in range(3):
                seen = writer.count()
                writer.wait_for(seen + 6)  # the writer is busy before each run ...
                backup = db.with_name(f"backup-{index}.db")
                report = await migrate_sqlite_to_kv(
                    db, ns.target, prefix=ns.prefix, backup_path=backup, prune=True
                )
                assert report.verified, report.differences
                async with ns.store(create=False) as kv:
                    taken = read_sqlite(backup)
                    await assert_kv_holds(kv, taken, source_name="backup")
                assert report.digest == snapshot_digest(taken)
                migrated.append((backup, report.digest, taken))
                writer.wait_for(writer.count() + 6)  # ... and after it

    writer.thread.start()
    try:
        run(body())
    finally:
        writer.stop.set()
        writer.thread.join(DEADLINE_S)
    assert not writer.thread.is_alive(), "the writer did not stop"
    if writer.failure is not None:
        raise writer.failure

    final = read_sqlite(db)
    positions = moments(state, writer.done, [taken for _, _, taken in migrated] + [final])
    for (backup, _, _), position in zip(migrated, positions, strict=False):
        assert position is not None, f"{backup.name} is no moment of the writer's history"
    runs = [p for p in positions[:-1] if p is not None]
    assert runs == sorted(runs)
    # Nothing lost: the file ends as every write the writer was told succeeded, in order
    # (states never repeat: users only grow and epochs only rise).
    last_ok = max(n for n, (_, ok) in enumerate(writer.done, 1) if ok)
    assert positions[-1] == last_ok
    assert runs[-1] < last_ok  # and the writer did go on after the last run
