"""The SQLite side of ``verify``, computed beside the KV read, in a child process.

One Python thread cannot read a bucket (nats-py parses every message) and stream the
source (rows, canonical JSON, keys, digests, findings) at once: each costs about as
much as the other. :func:`summarise_source` reduces the source, in one consistent
read, to what parity needs -- per kind the count and an order-independent keyed
set-hash of its (KV key, canonical value) pairs (:class:`SetHash`), the snapshot
digest and the invariant findings -- and :class:`SourceWorker` runs it in a forked
child while the parent reads the buckets; equal counts and set-hashes prove the
stores equal without joining them key by key.

The child is forked from a process that has one thread and no SQLite connection
open (a forked SQLite connection, or a lock some other thread held at the fork, is
not safe to use); :func:`can_fork` tells. It opens the file itself, sends one
message back on a pipe (the summary, or the :class:`MembershipError` it met, by
class and message, so the parent raises the very error the in-process path would)
and exits; a parent that fails or is interrupted kills it, and a child whose parent
died stops by itself. Nothing crosses a command line: the set-hash secret is in the
forked memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, Final

from . import errors
from .audit import FindingsCollector
from .canonical import KINDS, SnapshotDigest, row_encoder
from .errors import MembershipError, StoreError
from .kv import RowKeys
from .model import SCHEMA_VERSION
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = [
    "CHILD_NICENESS",
    "FORK_FROM_BYTES",
    "SetHash",
    "SourceSummary",
    "SourceWorker",
    "can_fork",
    "feeder",
    "source_rows",
    "summarise_source",
]

FORK_FROM_BYTES: Final = 1 << 20
"""Below this size (database and WAL) the source is read in-process: forking, the
second open and the pipe cost more than the overlap saves (about 8k records)."""
CHILD_NICENESS: Final = 2
"""The source side costs about two thirds of the bucket side (which the parent and the
server share): at niceness 2 (a CPU weight of 0.64 against 1) both sides tend to end
together on a busy machine, and on an idle one the parent, the longer path, goes first."""
_ORPHAN_CHECK_EVERY: Final = 1 << 14
_PR_SET_PDEATHSIG: Final = 1


class SetHash:
    """An order-independent digest of a set of (key, value) pairs.

    The sum modulo 2**256 of keyed BLAKE2b hashes: two sets with equal sums and
    counts are equal unless someone who knows the key (drawn per run, never stored)
    built a collision. The bucket is read in stream order, the source in key order;
    this compares them without sorting or holding either.
    """

    MASK: Final = (1 << 256) - 1

    def __init__(self, secret: bytes) -> None:
        self._keyed = blake2b(digest_size=32, key=secret)  # copied: the key block once
        self.total = 0
        self.count = 0

    def add(self, key: str, value: bytes) -> None:
        # Keys never hold a NUL, so (key, value) pairs cannot run into each other.
        digest = self._keyed.copy()
        digest.update(key.encode() + b"\0" + value)
        self.total += int.from_bytes(digest.digest(), "little")  # reduced in matches()
        self.count += 1

    def add_entries(self, entries: Iterable[tuple[str, bytes, Any]]) -> None:
        """:meth:`add` of every ``(key, value, _)`` (a :class:`BulkReader` batch)."""
        copy, number = self._keyed.copy, int.from_bytes
        total, count = self.total, self.count
        for key, value, _ in entries:
            digest = copy()
            digest.update(key.encode() + b"\0" + value)
            total += number(digest.digest(), "little")
            count += 1
        self.total, self.count = total, count

    @property
    def value(self) -> int:
        return self.total & self.MASK

    def matches(self, other: SetHash) -> bool:
        return self.count == other.count and (self.total - other.total) & self.MASK == 0


def source_rows(
    store: SQLiteStore,
    kind: str,
    keys: RowKeys,
    feed: Callable[[bytes, tuple[Any, ...]], None] | None = None,
    *,
    checked: bool = False,
) -> Iterator[tuple[str, bytes, tuple[Any, ...]]]:
    """(KV key, canonical value, row) of one kind, in primary-key order.

    ``feed(value, row)`` (a digest, a findings check) sees each row first, in order;
    ``checked``: the rows passed :meth:`SQLiteStore.check_rows` in this transaction.
    """
    key, encode = keys.key_function(kind), row_encoder(kind)
    rows = store.iter_rows(kind, checked=checked)
    if feed is None:
        for row in rows:
            yield key(row), encode(row), row
    else:
        for row in rows:
            payload = encode(row)
            feed(payload, row)
            yield key(row), payload, row


def feeder(
    kind: str, digest: SnapshotDigest, findings: FindingsCollector
) -> Callable[[bytes, tuple[Any, ...]], None]:
    """``feed(value, row)`` for :func:`source_rows`: the snapshot digest and the findings."""
    add = digest.add
    if kind == "users":

        def feed(payload: bytes, row: tuple[Any, ...]) -> None:
            add(payload)
            findings.user(row[0], row[2], row[4])

    elif kind == "rooms":

        def feed(payload: bytes, row: tuple[Any, ...]) -> None:
            add(payload)
            findings.room(row[0], row[1])

    elif kind == "members":

        def feed(payload: bytes, row: tuple[Any, ...]) -> None:
            add(payload)
            findings.member(row[0], row[1], row[3])

    else:
        check = findings.sealed_key_check()

        def feed(payload: bytes, row: tuple[Any, ...]) -> None:
            add(payload)
            check(row[0], row[1], row[2])

    return feed


@dataclass(frozen=True)
class SourceSummary:
    """What ``verify`` needs of the source, read in one transaction."""

    schema_version: int
    counts: dict[str, int]
    set_hashes: dict[str, int]
    """Per kind, :attr:`SetHash.value` over its (KV key, canonical value) pairs."""
    digest: str
    findings: list[str]

    def matches(self, kind: str, read: SetHash) -> bool:
        return self.counts[kind] == read.count and self.set_hashes[kind] == read.value


def summarise_source(
    db: str | os.PathLike[str], secret: bytes, *, parent: int | None = None
) -> SourceSummary:
    """Stream the whole source once, in one consistent read, into a :class:`SourceSummary`.

    The rows go through the very code the in-process ``verify`` uses (domain checks,
    canonical encoding, keys, digest, findings), so a row it would refuse is refused
    here with the same error. ``parent``: stop if that process is gone.
    """
    store = SQLiteStore.open(db)
    try:
        with store.consistent_read():
            digest = SnapshotDigest(SCHEMA_VERSION)
            findings = FindingsCollector()
            keys = RowKeys()
            counts: dict[str, int] = {}
            hashes: dict[str, int] = {}
            for kind in KINDS:  # users and rooms first: findings look them up
                digest.begin(kind)
                counts[kind], hashes[kind] = _summarise_kind(
                    store, kind, keys, feeder(kind, digest, findings), secret, parent
                )
                digest.end()
            return SourceSummary(
                schema_version=SCHEMA_VERSION,
                counts=counts,
                set_hashes=hashes,
                digest=digest.hexdigest(),
                findings=findings.findings(),
            )
    finally:
        store.connection.close()


def _summarise_kind(
    store: SQLiteStore,
    kind: str,
    keys: RowKeys,
    feed: Callable[[bytes, tuple[Any, ...]], None],
    secret: bytes,
    parent: int | None,
) -> tuple[int, int]:
    """(count, :attr:`SetHash.value`) of one kind: :func:`source_rows` and
    :meth:`SetHash.add` in one loop, the child's hot path."""
    key, encode = keys.key_function(kind), row_encoder(kind)
    copy, number = blake2b(digest_size=32, key=secret).copy, int.from_bytes
    total = count = 0
    for row in store.iter_rows(kind):
        payload = encode(row)
        feed(payload, row)
        digest = copy()
        digest.update(key(row).encode() + b"\0" + payload)
        total += number(digest.digest(), "little")
        count += 1
        if not count % _ORPHAN_CHECK_EVERY and parent is not None and os.getppid() != parent:
            raise SystemExit(1)  # nobody waits for the answer
    return count, total & SetHash.MASK


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))  # every OS thread, not only Python's
    except OSError:
        return threading.active_count()


def can_fork() -> bool:
    """Forking is safe here: Linux, and this process runs no other thread.

    A thread holding a lock (SQLite's, an allocator's, a library's) at the fork
    would leave it locked for ever in the child; a process with other threads
    reads the source in-process instead.
    """
    if not sys.platform.startswith("linux") or _thread_count() != 1:
        return False
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _child(db: str, secret: bytes, reader: Connection, writer: Connection, parent: int) -> None:
    """The child process: one message on ``writer``, then exit without cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    reader.close()  # so that a dead parent means a broken pipe here, not a hang
    _die_with(parent)
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    message: tuple[Any, ...]
    try:
        message = ("ok", summarise_source(db, secret, parent=parent))
    except MembershipError as exc:
        message = ("error", type(exc).__name__, str(exc))
    except SystemExit:
        return
    except BaseException:  # a bug: the parent shows it, with this traceback
        message = ("crash", traceback.format_exc())
    try:
        writer.send(message)
    except OSError:
        pass  # the parent is gone
    finally:
        writer.close()


def _die_with(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (checked besides, while reading)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os._exit(1)


def _error(name: str, text: str) -> MembershipError:
    """The child's :class:`MembershipError` again, same class, same message."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, MembershipError):
        return cls(text)
    return StoreError(text)


class SourceWorker:
    """:func:`summarise_source` in a forked child: :meth:`start`, ``await``
    :meth:`result`, and always :meth:`stop` (it kills a child still running)."""

    def __init__(self, db: str | os.PathLike[str], secret: bytes) -> None:
        self._db = str(db)
        self._secret = secret
        self._process: Any = None
        self._reader: Connection | None = None

    def start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        reader, writer = context.Pipe(duplex=False)
        for stream in (sys.stdout, sys.stderr):  # the child must not write them out again
            if stream is not None:
                stream.flush()
        process = context.Process(
            target=_child,
            args=(self._db, self._secret, reader, writer, os.getpid()),
            name="membershipd verify: source",
            daemon=True,
        )
        try:
            process.start()
        finally:
            writer.close()
        self._process, self._reader = process, reader

    async def result(self) -> SourceSummary:
        """The child's summary; its error raised here; :class:`StoreError` if it died."""
        reader = self._reader
        assert reader is not None, "start() first"
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(reader.fileno(), readable)
        try:
            await ready
        finally:
            loop.remove_reader(reader.fileno())
        try:
            message = reader.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise StoreError(
                f"reading {self._db}: the process reading the source ended without an "
                f"answer (exit code {self._process.exitcode}); rerun the command"
            ) from None
        self._process.join(5)
        if message[0] == "ok":
            summary: SourceSummary = message[1]
            return summary
        if message[0] == "error":
            raise _error(message[1], message[2])
        raise RuntimeError(f"reading the source {self._db} failed in its process:\n{message[1]}")

    def stop(self) -> None:
        """Kill the child if it still runs, reap it, close the pipe."""
        process, self._process = self._process, None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join()
            process.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
