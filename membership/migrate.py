"""The one-time move from SQLite to JetStream KV, and the parity check that proves it.

:func:`migrate_sqlite_to_kv` follows DESIGN.md's Migration section step by step, as a
stream: memory does not grow with the state.

1. Refuse a remote URL without ``--ca`` (before any I/O), a bad prefix, a taken
   backup path, a source that is not a membership database.
2. Connect, and refuse buckets that exist with other settings or a newer schema.
3. **backup** -- pin one moment of the source: take its write lock, open a read
   transaction, back it up with ``VACUUM INTO`` (which then shows that very moment)
   and release the lock. Every later read of the run streams from that pinned
   snapshot, in primary-key order, while writers go on.
4. **read** -- check the whole source and decide, per record kind, what its bucket
   needs, before anything is created or written:

   * an empty (or missing) bucket: every row is checked (field domains, UTF-8 text,
     value size against the server's ``max_payload``); all of it will be written;
   * a bucket untouched since the last verified run (its stream state is the one
     recorded in ``<prefix>_meta`` under ``last_verified_run``) and a kind whose
     canonical bytes hash to the recorded digest: nothing to do, already proven;
   * otherwise the source stream is joined with a bulk read of the bucket (one
     consumer, never a get per key) key by key, comparing the exact bytes; what
     differs is marked for writing, keys only in KV are collected.

   Records in KV that the source lacks refuse the run unless ``prune``. A run that
   fails or is refused before its first write removes the backup it took.
5. **write** -- create missing buckets, stream the source again (same pinned
   snapshot) and publish only what differs, pipelined with a bounded window of
   unacknowledged messages, each ack checked (:class:`membership.kv.Publisher`);
   then the tombstones of ``prune``.
6. **verify** -- every bucket written to is read back whole through a consumer and
   its content compared with what it must hold: an order-independent sum of keyed
   BLAKE2b hashes of every (key, value), with a secret key drawn per run, over what
   was read versus what step 4 found equal plus what step 5 had acknowledged. A
   bucket not written to was compared in step 4 (or proven by the last-run record)
   and must still be in that state. Any mismatch falls back to a full key-by-key
   comparison against the source, which names each difference.
7. Report counts, backup, replicas and the snapshot digest (the SHA-256 of exactly
   what ``membershipd export`` prints, computed over the stream). A verified run
   that wrote something records its digests and stream states as the new
   ``last_verified_run``; a run that wrote nothing writes nothing, that record
   included, so stream sequences stay as they were.

:func:`verify_parity` (``membershipd verify``) always compares everything, exact
bytes, every bucket read through a consumer; it never trusts the last-run record. A
large source is reduced to per-kind counts and keyed set-hashes by a child process
while this one reads the buckets (:mod:`membership._source_worker`); when anything
differs, the key-by-key comparison names every difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ._source_worker import FORK_FROM_BYTES, SourceSummary, SourceWorker, can_fork
from ._source_worker import SetHash as _SetHash
from ._source_worker import feeder as _feeder
from ._source_worker import source_rows as _source
from .audit import FindingsCollector
from .backup import (
    backup_sqlite,
    check_backup_target,
    default_backup_path,
    remove_stale_partials,
)
from .canonical import (
    KINDS,
    MAX_ENCODED_BYTES,
    SnapshotDigest,
    decode_record,
    encode_record,
)
from .connect import NatsTarget, close_nats, connect_nats
from .diff import diff_records, format_pk
from .errors import (
    DataError,
    InvalidInputError,
    NatsUnavailableError,
    ParityError,
    StoreError,
    TargetNotEmptyError,
)
from .kv import (
    _KV_OP,
    DEFAULT_PREFIX,
    BulkReader,
    Entry,
    ImportCounts,
    KVStore,
    Publisher,
    RowKeys,
    StreamState,
    validate_prefix,
)
from .model import SCHEMA_VERSION, Record, Snapshot, now_ms
from .progress import NullProgress, Progress, as_progress
from .sqlite import SQLiteStore

__all__ = ["MigrationReport", "VerifyResult", "migrate_sqlite_to_kv", "verify_parity"]

WRITE_ORDER: Final = KINDS
"""Users and rooms before what refers to them; prunes go the other way round."""
DIGEST_ORDER: Final = tuple(k for k in SnapshotDigest.ORDER if k in KINDS)
"""The order ``export`` lists the kinds in: reading in it needs no spooling."""
LAST_RUN_FORMAT: Final = 1
_ADVANCE_EVERY: Final = 4096
_CHUNK: Final = 256
_LOOKAHEAD: Final = 16384


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
    checks: dict[str, str] = field(default_factory=dict)
    """Per kind, how the run found what to write: ``fresh`` (an empty bucket),
    ``compared`` (key by key against a bulk read), ``proven`` (unchanged since the
    last verified run). Not part of the ``--json`` contract."""

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


# -- building blocks -----------------------------------------------------------------------


def _pk(kind: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if kind == "sealed_keys":
        return (row[0], row[1], row[2])
    if kind == "members":
        return (row[0], row[1])
    return (row[0],)


Pair = Callable[[int, str, bytes, tuple[Any, ...], bytes | None], None]


async def _join(
    source: Iterator[tuple[str, bytes, tuple[Any, ...]]],
    reader: BulkReader,
    on_pair: Pair,
    progress: Progress,
) -> dict[str, bytes]:
    """Join a source stream with a bucket read by key; return the keys only in KV.

    ``on_pair(ordinal, key, value, row, kv_value)`` is called once per source record,
    ``kv_value`` None when the bucket lacks the key. The bucket arrives in stream
    order, which for a bucket this migration wrote is key order too, so both sides
    advance together and only records out of place wait in memory: the state is
    never held, only the disorder between the bucket's history and key order.

    The server delivers the bucket more slowly than this process takes it in, so
    the source is read in small chunks while messages are on their way (up to
    :data:`_LOOKAHEAD` records ahead), yielding to the event loop between chunks:
    the source side costs little more than the read itself.
    """
    waiting_source: dict[str, tuple[int, bytes, tuple[Any, ...]]] = {}
    waiting_kv: dict[str, bytes] = {}
    ordinal = 0  # source records read
    taken = 0  # bucket entries taken
    exhausted = False
    while True:
        busy = False
        if exhausted or taken - ordinal < _LOOKAHEAD:  # else the bucket waits for the source
            batch = await reader.take()
            if batch:
                busy = True
                taken += len(batch)
                for key, value, _reply in batch:
                    early = waiting_source.pop(key, None)
                    if early is None:
                        waiting_kv[key] = value
                    else:
                        on_pair(early[0], key, early[1], early[2], value)
                progress.advance(len(batch))
            elif reader.finished:
                break
        if not exhausted and ordinal - taken < _LOOKAHEAD:  # else the source waits
            busy = True
            for _ in range(_CHUNK):
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                key, payload, row = item
                found = waiting_kv.pop(key, None)
                if found is None:
                    waiting_source[key] = (ordinal, payload, row)
                else:
                    on_pair(ordinal, key, payload, row, found)
                ordinal += 1
            await asyncio.sleep(0)  # let the reader take in what has arrived meanwhile
        if not busy:
            await reader.wait()
    for key, payload, row in source:  # the bucket is read: the rest is not in KV
        on_pair(ordinal, key, payload, row, waiting_kv.pop(key, None))
        ordinal += 1
        if not ordinal % _ADVANCE_EVERY:
            progress.advance(_ADVANCE_EVERY)
    for key, (number, payload, row) in waiting_source.items():
        on_pair(number, key, payload, row, None)
    return waiting_kv


@dataclass
class _Kind:
    """What one record kind needs in this run, and what it got."""

    kind: str
    counts: ImportCounts
    mode: str = "compared"  # "fresh": empty bucket; "proven": unchanged since last run
    need: bytearray = field(default_factory=bytearray)
    extras: dict[str, bytes] = field(default_factory=dict)
    expected: _SetHash | None = None
    state: StreamState | None = None  # the bucket's state when it was read or proven
    kind_digest: str = ""
    checked: bool = False  # the rows passed check_rows (the write may skip the domain check)

    @property
    def writes(self) -> int:
        return self.counts.written + self.counts.pruned


def _valid_last_run(record: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The per-kind part of a ``last_verified_run`` record this code understands."""
    if (
        not record
        or record.get("format") != LAST_RUN_FORMAT
        or record.get("schema_version") != SCHEMA_VERSION
    ):
        return {}
    buckets = record.get("buckets")
    if not isinstance(buckets, dict):
        return {}
    return {k: v for k, v in buckets.items() if k in KINDS and isinstance(v, dict)}


# -- the migration -------------------------------------------------------------------------


async def migrate_sqlite_to_kv(
    db: str | os.PathLike[str],
    target: NatsTarget,
    *,
    replicas: int = 1,
    backup: bool = True,
    backup_path: str | os.PathLike[str] | None = None,
    prune: bool = False,
    prefix: str = DEFAULT_PREFIX,
    progress: Progress | Callable[[str], None] = _quiet,
) -> MigrationReport:
    """Copy the SQLite control plane at ``db`` into the KV namespace ``prefix``.

    ``progress`` is a :class:`membership.progress.Progress`, or a plain callable
    that receives one line per finished phase. A run that fails or is refused
    before its first write leaves everything as it was: no bucket created, and the
    backup it took removed again.
    """
    target.check()
    validate_prefix(prefix)
    if not 1 <= replicas <= 5:
        raise InvalidInputError(f"--replicas must be 1 to 5, not {replicas}")
    if backup_path is not None and not backup:
        raise InvalidInputError("--backup-path and --no-backup contradict each other")
    report = as_progress(progress)
    db_path = Path(db)
    source = SQLiteStore.open(db_path)
    dest: Path | None = None
    made: Path | None = None
    run: _Run | None = None
    try:
        if backup:
            dest = Path(backup_path) if backup_path is not None else default_backup_path(db_path)
            check_backup_target(dest)
        nc = await connect_nats(target)
        try:
            kv = KVStore(nc, prefix, source._clock)
            kv.check_bucket_config(replicas, await kv.bucket_configs())
            # A newer namespace, or an older one not upgraded yet, is refused before writing.
            stored = await kv.read_schema_version()
            if stored is not None:
                kv.schema_version = stored
                kv.require_current_schema()
            run = _Run(source, kv, report, secrets.token_bytes(32))

            def take_backup() -> None:
                nonlocal made
                if dest is None:  # no backup this time: still remove what killed runs left
                    remove_stale_partials(db_path)
                else:
                    report.start("backup")
                    made = backup_sqlite(db_path, dest)
                    size = dest.stat().st_size / 1e6
                    report.done(f"{dest} ({size:.1f} MB, integrity checked)")

            with source.consistent_read(while_locked=take_backup):
                await run.read(prune)
                await kv.create_buckets(replicas)
                await run.write()
                differences = await run.verify()
            replicas_now = [r for r in (await kv.bucket_replicas()).values() if r is not None]
        except NatsUnavailableError as exc:  # the server was lost mid-run: name it
            raise NatsUnavailableError(f"NATS at {target.display()}: {exc}") from exc
        finally:
            await close_nats(nc)
    except BaseException:
        if made is not None and (run is None or not run.writing):
            with contextlib.suppress(OSError):
                made.unlink()  # nothing was written: leave the files as they were
        raise
    finally:
        await source.close()
    return MigrationReport(
        backup=str(dest) if dest is not None else None,
        replicas=min(replicas_now) if replicas_now else replicas,
        verified=not differences,
        digest=run.digest.hexdigest(),
        records={kind: run.kinds[kind].counts for kind in KINDS},
        differences=differences,
        checks={kind: run.kinds[kind].mode for kind in KINDS},
    )


class _Run:
    """One migration's state between its phases."""

    def __init__(self, source: SQLiteStore, kv: KVStore, report: Progress, secret: bytes) -> None:
        self.source = source
        self.kv = kv
        self.report = report
        self.secret = secret
        self.keys = RowKeys()
        self.digest = SnapshotDigest(SCHEMA_VERSION)  # an older source reads as the current
        self.kinds: dict[str, _Kind] = {}
        self.schema_written = False
        self.writing = False
        self.max_payload = int(kv._nc.max_payload or 0)

    # -- read ----------------------------------------------------------------------

    async def read(self, prune: bool) -> None:
        """Read and check the whole source, compare it with what KV holds; write nothing.

        Every source row is read, checked against its domain, encoded, measured
        against the server's ``max_payload`` and hashed here, before any bucket is
        created, so bad input is refused while every store is still as it was.
        """
        source, kv = self.source, self.kv
        totals = {kind: source.count(kind) for kind in KINDS}
        last_run = _valid_last_run(await kv.read_last_run())
        self.report.start("read", sum(totals.values()))
        in_kv = 0
        for kind in DIGEST_ORDER:
            item = self.kinds[kind] = _Kind(kind, ImportCounts(source=totals[kind]))
            item.expected = _SetHash(self.secret)
            item.state = await kv.stream_state(kind)  # None: the bucket does not exist yet
            in_kv += _messages(item.state)
            recorded = last_run.get(kind)
            if item.state is None or item.state.messages == 0:
                item.mode = "fresh"  # everything is written: check now, encode while writing
                if self.max_payload and self.max_payload < MAX_ENCODED_BYTES[kind]:
                    item.kind_digest = self._scan(kind)  # values must be measured one by one
                else:
                    self._check_count(kind, source.check_rows(kind))
                    item.checked = True
                    self.report.advance(totals[kind])
            elif recorded is not None and _same_state(recorded, item.state):
                item.kind_digest = self._scan(kind)
                if item.kind_digest == recorded.get("digest"):
                    item.mode = "proven"
                    item.counts.unchanged = totals[kind]
                else:  # the source changed: compare after all, digest already fed
                    await self._compare(item, feed_digest=False)
            else:
                await self._compare(item, feed_digest=True)
        extras = {kind: self.kinds[kind].extras for kind in KINDS}
        unchanged = sum(k.counts.unchanged for k in self.kinds.values())
        self.report.done(
            f"{sum(totals.values()):,} source records; {in_kv:,} messages in KV, "
            f"{unchanged:,} records already equal"
        )
        if any(extras.values()) and not prune:
            described = [
                f"{kind} {kv._describe(kind, key, extras[kind][key])}"
                for kind in KINDS
                for key in sorted(extras[kind])
            ]
            raise TargetNotEmptyError(
                f"KV namespace {kv.prefix!r} holds {len(described)} record(s) that the "
                "source lacks; nothing was written. Rerun with --prune to delete them",
                described,
            )

    def _checked(self, kind: str) -> Iterator[tuple[str, bytes, tuple[Any, ...]]]:
        """The source of one kind, each value fed to the digest and size-checked."""
        digest, limit = self.digest, self.max_payload
        digest.begin(kind)
        for key, payload, row in _source(self.source, kind, self.keys):
            if limit and len(payload) > limit:
                raise DataError(
                    f"{format_pk(kind, _pk(kind, row))} is {len(payload)} bytes as JSON, more "
                    f"than the server's max_payload ({limit}); nothing was written. Raise "
                    "max_payload on the server"
                )
            digest.add(payload)
            yield key, payload, row
        digest.end()

    def _scan(self, kind: str) -> str:
        count = 0
        for _ in self._checked(kind):
            count += 1
            if not count % _ADVANCE_EVERY:
                self.report.advance(_ADVANCE_EVERY)
        self.report.advance(count % _ADVANCE_EVERY)
        self._check_count(kind, count)
        return self.digest.kind_digest(kind)

    def _check_count(self, kind: str, seen: int) -> None:
        if seen != self.kinds[kind].counts.source:
            raise StoreError(f"{kind}: the source changed while it was read; rerun")

    async def _compare(self, item: _Kind, *, feed_digest: bool) -> None:
        kind, counts, need = item.kind, item.counts, item.need
        expected = item.expected
        assert expected is not None
        need.extend(bytes(counts.source))
        seen = 0

        def on_pair(
            ordinal: int, key: str, payload: bytes, row: tuple[Any, ...], value: bytes | None
        ) -> None:
            if value == payload:
                counts.unchanged += 1
                expected.add(key, payload)
            else:
                need[ordinal] = 1

        def rows() -> Iterator[tuple[str, bytes, tuple[Any, ...]]]:
            nonlocal seen
            source = self._checked(kind) if feed_digest else _source(self.source, kind, self.keys)
            for item in source:
                seen += 1
                if seen > counts.source:
                    break  # checked below
                yield item

        async with BulkReader(self.kv, kind) as reader:
            item.extras = await _join(rows(), reader, on_pair, self.report)
        self._check_count(kind, seen)
        if feed_digest:
            item.kind_digest = self.digest.kind_digest(kind)

    # -- write ---------------------------------------------------------------------

    async def write(self) -> None:
        kv = self.kv
        total = sum(
            k.counts.source if k.mode == "fresh" else sum(k.need) + len(k.extras)
            for k in self.kinds.values()
        )
        self.report.start("write", total)
        self.writing = True
        async with Publisher(kv) as publisher:
            for kind in WRITE_ORDER:
                item = self.kinds[kind]
                if item.mode == "proven":
                    continue
                written = await self._write_kind(item, publisher)
                item.counts.written = written
                self.report.advance(written % _ADVANCE_EVERY)
            for kind in reversed(WRITE_ORDER):  # what refers to others goes first
                item = self.kinds[kind]
                for key in sorted(item.extras):
                    await publisher.publish(kv.subject(kind, key), b"", {_KV_OP: "DEL"})
                    item.counts.pruned += 1
                self.report.advance(len(item.extras))
        self.schema_written = await kv.write_schema_version(SCHEMA_VERSION)
        writes = sum(k.writes for k in self.kinds.values())
        self.report.done(f"{writes:,} writes ({publisher.acked:,} acknowledged)")

    async def _write_kind(self, item: _Kind, publisher: Publisher) -> int:
        """Publish what ``item`` needs: everything (fresh) or the records marked."""
        kind, expected = item.kind, item.expected
        assert expected is not None
        subject = self.kv.subject(kind, "")
        publish, expect, report = publisher.publish, expected.add, self.report
        written = 0
        if item.mode == "fresh":
            feed = None
            if not item.kind_digest:  # hashed while writing: nothing is encoded twice
                self.digest.begin(kind)
                add = self.digest.add

                def feed(payload: bytes, _row: tuple[Any, ...]) -> None:
                    add(payload)

            source = _source(self.source, kind, self.keys, feed, checked=item.checked)
            for key, payload, _row in source:
                await publish(subject + key, payload)
                expect(key, payload)
                written += 1
                if not written % _ADVANCE_EVERY:
                    report.advance(_ADVANCE_EVERY)
            self._check_count(kind, written)
            if feed is not None:
                item.kind_digest = self.digest.end()
            return written
        need = item.need
        for ordinal, (key, payload, _row) in enumerate(_source(self.source, kind, self.keys)):
            if need[ordinal]:
                await publish(subject + key, payload)
                expect(key, payload)
                written += 1
                if not written % _ADVANCE_EVERY:
                    report.advance(_ADVANCE_EVERY)
        return written

    # -- verify --------------------------------------------------------------------

    async def verify(self) -> list[str]:
        kv = self.kv
        before = {kind: await kv.stream_state(kind) for kind in KINDS}
        to_read = [
            kind
            for kind in KINDS
            if self.kinds[kind].writes or before[kind] != self.kinds[kind].state
        ]
        self.report.start("verify", sum(_messages(before[kind]) for kind in to_read))
        failed: list[str] = []
        read = 0
        for kind in to_read:
            actual = _SetHash(self.secret)
            async with BulkReader(kv, kind) as reader:
                async for batch in reader:
                    actual.add_entries(batch)
                    self.report.advance(len(batch))
                read += reader.delivered
            expected = self.kinds[kind].expected
            if expected is None or not actual.matches(expected):
                failed.append(kind)
        differences: list[str] = []
        if failed:
            diff = _Diff(self.source, kv)
            for kind in failed:
                await diff.kind(kind, self.report)
            differences = diff.lines()
        self.report.done(
            f"{read:,} records of {len(to_read)} bucket(s) read back through consumers; "
            + ("equal to the source" if not differences else f"{len(differences)} difference(s)")
        )
        after = {kind: await kv.stream_state(kind) for kind in KINDS}
        wrote = self.schema_written or any(k.writes for k in self.kinds.values())
        if not differences and wrote and after == before:
            await self._record_run(after)
        return differences

    async def _record_run(self, states: dict[str, StreamState | None]) -> None:
        buckets: dict[str, Any] = {}
        for kind in KINDS:
            state = states[kind]
            if state is None:
                return
            buckets[kind] = {
                **state.as_dict(),
                "digest": self.kinds[kind].kind_digest,
                "records": self.kinds[kind].counts.source,
            }
        await self.kv.write_last_run(
            {
                "format": LAST_RUN_FORMAT,
                "digest": self.digest.hexdigest(),
                "schema_version": SCHEMA_VERSION,
                "verified_at": now_ms(),
                "buckets": buckets,
            }
        )


def _messages(state: StreamState | None) -> int:
    return state.messages if state is not None else 0


def _same_state(recorded: dict[str, Any], state: StreamState) -> bool:
    try:
        return StreamState.from_dict(recorded) == state
    except Exception:
        return False


# -- the full comparison -------------------------------------------------------------------


class _Diff:
    """A key-by-key comparison of source and bucket that names every difference.

    Used by ``verify`` always, and by the migration when its own check fails. Each
    differing record is decoded on both sides and compared field by field
    (:func:`membership.diff.diff_records`); only differences are held in memory.
    """

    def __init__(self, source: SQLiteStore, kv: KVStore) -> None:
        self.source = source
        self.kv = kv
        self.keys = RowKeys()
        self._lines: list[tuple[int, tuple[Any, ...], list[str]]] = []
        self._changed: dict[str, dict[str, Record | None]] = {kind: {} for kind in KINDS}
        """Per kind, source key -> KV's record where it differs (None: KV lacks it)."""
        self._only_kv: dict[str, list[Record]] = {kind: [] for kind in KINDS}

    async def kind(
        self,
        kind: str,
        progress: Progress,
        on_row: Callable[[bytes, tuple[Any, ...]], None] | None = None,
    ) -> None:
        """Compare one kind; ``on_row(value, row)`` sees every source row in key order."""
        order = KINDS.index(kind)
        lines, changed, kv = self._lines, self._changed[kind], self.kv

        def on_pair(
            ordinal: int, key: str, payload: bytes, row: tuple[Any, ...], value: bytes | None
        ) -> None:
            if value == payload:
                return
            left = decode_record(kind, payload)
            right = None if value is None else kv._decode(kind, Entry(key, value, 0))
            changed[key] = right
            found = diff_records(kind, left, right)
            if found:
                lines.append((order, left.pk, found))

        async with BulkReader(kv, kind) as reader:
            extras = await _join(
                _source(self.source, kind, self.keys, on_row), reader, on_pair, progress
            )
        for key, value in extras.items():
            record = kv._decode(kind, Entry(key, value, 0))
            self._only_kv[kind].append(record)
            lines.append((order, record.pk, diff_records(kind, None, record)))

    def lines(self) -> list[str]:
        self._lines.sort(key=lambda item: (item[0], item[1]))
        return [line for _, _, found in self._lines for line in found]

    def kv_digest(self, schema_version: int) -> str:
        """The snapshot digest of the KV side: the source with KV's differences applied.

        Streams the source once more; holds only the differences.
        """
        digest = SnapshotDigest(schema_version)
        for kind in DIGEST_ORDER:
            changed = self._changed[kind]
            inserted = iter(sorted(self._only_kv[kind], key=lambda r: r.pk))
            nxt = next(inserted, None)
            digest.begin(kind)
            for key, payload, row in _source(self.source, kind, self.keys):
                pk = _pk(kind, row)
                while nxt is not None and nxt.pk < pk:
                    digest.add(encode_record(nxt))
                    nxt = next(inserted, None)
                if key not in changed:
                    digest.add(payload)
                elif (record := changed[key]) is not None:
                    digest.add(encode_record(record))
            while nxt is not None:
                digest.add(encode_record(nxt))
                nxt = next(inserted, None)
            digest.end()
        return digest.hexdigest()


# -- verify --------------------------------------------------------------------------------


async def read_kv_snapshot(target: NatsTarget, prefix: str = DEFAULT_PREFIX) -> Snapshot:
    nc = await connect_nats(target)
    try:
        kv = await KVStore.open(nc, prefix)
        return await kv.export_snapshot()
    finally:
        await close_nats(nc)


async def verify_parity(
    db: str | os.PathLike[str],
    target: NatsTarget,
    *,
    prefix: str = DEFAULT_PREFIX,
    progress: Progress | Callable[[str], None] | None = None,
) -> VerifyResult:
    """Compare the SQLite source with the KV buckets: every record, exact bytes.

    The source is streamed from one read transaction, each bucket is read through a
    consumer (never a direct get); the digests and the invariant findings are
    computed over the same stream, so neither snapshot is ever held in memory.

    A source of :data:`FORK_FROM_BYTES` or more is streamed by a child process
    (:mod:`membership._source_worker`) while this one reads the buckets, each side
    reduced to per-kind counts and keyed set-hashes of its (key, value) pairs: when
    they all agree, and the schema versions too, the stores are equal. When anything
    differs, the full key-by-key comparison runs (:func:`_verify_exact`, also the
    path of small sources) and names every difference, as it always has.
    """
    target.check()
    validate_prefix(prefix)
    report = as_progress(progress)
    source = SQLiteStore.open(db)  # a file that is not a membership database stops here
    try:
        path = source.path
        forked = _source_bytes(path) >= FORK_FROM_BYTES and can_fork()
        total = None
        if forked and not isinstance(report, NullProgress):
            with source.consistent_read():
                total = sum(source.count(kind) for kind in KINDS)
    except BaseException:
        await source.close()
        raise
    if not forked:
        try:
            nc = await connect_nats(target)
            try:
                kv = await KVStore.open(nc, prefix)
                return await _verify_exact(source, kv, report)
            finally:
                await close_nats(nc)
        finally:
            await source.close()
    await source.close()  # the child must not inherit an open SQLite connection
    secret = secrets.token_bytes(32)
    worker = SourceWorker(path, secret)
    worker.start()
    try:
        nc = await connect_nats(target)
        try:
            kv = await KVStore.open(nc, prefix)
            report.start("verify", total)
            summary = await _read_beside(kv, worker, secret, report)
            if summary is not None:
                counts = summary.counts
                report.done(f"{sum(counts.values()):,} records compared; equal")
                return VerifyResult(
                    equal=True,
                    differences=[],
                    findings=summary.findings,
                    source_digest=summary.digest,
                    kv_digest=summary.digest,
                    counts=counts,
                )
            source = SQLiteStore.open(path)  # something differs: name it, key by key
            try:
                return await _verify_exact(source, kv, report)
            finally:
                await source.close()
        finally:
            await close_nats(nc)
    finally:
        worker.stop()


def _source_bytes(path: Path) -> int:
    size = 0
    for name in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            size += name.stat().st_size
    return size


async def _read_beside(
    kv: KVStore, worker: SourceWorker, secret: bytes, report: Progress
) -> SourceSummary | None:
    """Set-hash every bucket while the worker summarises the source.

    The summary when every kind and the schema version agree, None when anything
    differs; the first error of either side is raised (the other side is stopped).
    """

    if kv.schema_version != SCHEMA_VERSION:  # an older namespace: named by the exact path
        return None

    async def read() -> dict[str, _SetHash]:
        hashes: dict[str, _SetHash] = {}
        for kind in KINDS:
            hashed = hashes[kind] = _SetHash(secret)
            async with BulkReader(kv, kind) as reader:
                async for batch in reader:
                    hashed.add_entries(batch)
                    report.advance(len(batch))
        return hashes

    reading = asyncio.ensure_future(read())
    summarising = asyncio.ensure_future(worker.result())
    try:
        await asyncio.wait({reading, summarising}, return_when=asyncio.FIRST_EXCEPTION)
        for task in (summarising, reading):  # the source's error first, as in-process
            if task.done() and task.exception() is not None:
                task.result()
        hashes, summary = await reading, await summarising
    finally:
        for task in (reading, summarising):  # stopped, and no exception left unretrieved
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if all(summary.matches(kind, hashes[kind]) for kind in KINDS):
        return summary
    return None


async def _verify_exact(source: SQLiteStore, kv: KVStore, report: Progress) -> VerifyResult:
    """The key-by-key comparison in this process: every difference named."""
    kv_version = kv.schema_version
    digest = SnapshotDigest(SCHEMA_VERSION)  # an older source reads as the current schema
    findings = FindingsCollector()
    counts: dict[str, int] = {}
    with source.consistent_read():
        report.start("verify", sum(source.count(kind) for kind in KINDS))
        diff = _Diff(source, kv)
        for kind in KINDS:  # users and rooms first: findings look them up
            digest.begin(kind)
            await diff.kind(kind, report, _feeder(kind, digest, findings))
            digest.end()
            counts[kind] = digest.count(kind)
        differences = diff.lines()
        if kv_version != SCHEMA_VERSION:  # an older namespace needs `membershipd upgrade`
            differences.insert(0, f"schema_version: SQLite {SCHEMA_VERSION}, KV {kv_version}")
        source_digest = digest.hexdigest()
        # KV reads as the current schema too (an older namespace's records as upgraded)
        kv_digest = diff.kv_digest(SCHEMA_VERSION) if differences else source_digest
        report.done(
            f"{sum(counts.values()):,} records compared; "
            + ("equal" if not differences else f"{len(differences)} difference(s)")
        )
    return VerifyResult(
        equal=not differences,
        differences=differences,
        findings=findings.findings(),
        source_digest=source_digest,
        kv_digest=kv_digest,
        counts=counts,
    )


def require_parity(result: VerifyResult) -> None:
    if not result.equal:
        raise ParityError(
            f"SQLite and KV differ in {len(result.differences)} place(s)", result.differences
        )
