"""Parity and idempotence gates, with failures that read like an auditor's note.

``assert_parity(source, target)``
    the two snapshots are equal; otherwise an :class:`ParityFailure` whose message lists
    every difference, one line each, as ``membershipd verify`` prints them (which record
    kind, which primary key, which field, both values; byte fields as a length and a
    fingerprint, never their content), plus both snapshot digests.
``assert_kv_layout(kv, snapshot)``
    the buckets hold exactly the keys and bytes the README documents for ``snapshot``:
    each key computed by an independent implementation of the documented encoding
    (:func:`reference_key`), each value the canonical JSON of its record.
``assert_idempotent(db, namespace)``
    a second migration writes nothing: zero writes reported, every stream's last sequence
    unchanged on the server's own ``/jsz``, and the same snapshot before and after.

Sources and targets may be snapshots, SQLite stores or database paths (sync), or any
:class:`~membership.store.Store` through :func:`snapshot_of` (async).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from membership import migrate
from membership.canonical import KINDS, decode_record, encode_record
from membership.canonical import snapshot_digest as _digest
from membership.connect import NatsTarget, connect_nats
from membership.diff import diff_snapshots, format_pk
from membership.errors import MembershipError
from membership.kv import BUCKET_SUFFIXES, KVStore
from membership.migrate import MigrationReport
from membership.model import Member, Record, Room, SealedKeyRecord, Snapshot, User
from membership.sqlite import SQLiteStore
from membership.store import Store

from .strategies import run_sync

__all__ = [
    "BOOKKEEPING_META_KEYS",
    "IdempotenceFailure",
    "LayoutFailure",
    "NamespaceLike",
    "ParityFailure",
    "assert_idempotent",
    "assert_kv_holds",
    "assert_kv_layout",
    "assert_parity",
    "bucket_contents",
    "diff_bucket_contents",
    "expected_bucket_contents",
    "layout_view",
    "read_sqlite",
    "readable_diff",
    "reference_encode",
    "reference_key",
    "snapshot_digest",
    "snapshot_from_contents",
    "snapshot_of",
]

SyncSource = Snapshot | SQLiteStore | str | os.PathLike[str]
AnySource = SyncSource | Store

MAX_LINES = 60
"""Differences shown in one failure message; the rest are counted."""


class ParityFailure(AssertionError):
    """Two snapshots differ; ``diff`` holds every difference line."""

    def __init__(self, message: str, diff: Sequence[str]) -> None:
        super().__init__(message)
        self.diff = tuple(diff)


class LayoutFailure(AssertionError):
    """The raw KV buckets are not the documented layout of the snapshot."""

    def __init__(self, message: str, diff: Sequence[str]) -> None:
        super().__init__(message)
        self.diff = tuple(diff)


class IdempotenceFailure(AssertionError):
    """A second migration changed something; ``problems`` says what."""

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


def _bulleted(lines: Sequence[str]) -> str:
    shown = [f"  {line}" for line in lines[:MAX_LINES]]
    if len(lines) > MAX_LINES:
        shown.append(f"  ... and {len(lines) - MAX_LINES} more")
    return "\n".join(shown)


# -- snapshots of anything --------------------------------------------------------------------


def read_sqlite(path: str | os.PathLike[str]) -> Snapshot:
    """The snapshot of a membership database file (read in one transaction)."""
    store = SQLiteStore.open(path)
    try:
        return store.read_snapshot()
    finally:
        run_sync(store.close())


def _sync_snapshot(source: SyncSource) -> Snapshot:
    if isinstance(source, Snapshot):
        return source
    if isinstance(source, SQLiteStore):
        return source.read_snapshot()
    if isinstance(source, (str, os.PathLike)):
        return read_sqlite(source)
    raise TypeError(
        f"cannot take a snapshot of {type(source).__name__} synchronously; "
        "use `await snapshot_of(store)`"
    )


async def snapshot_of(source: AnySource) -> Snapshot:
    """The snapshot of a Snapshot, a database path, or any store (KV included)."""
    if isinstance(source, (Snapshot, SQLiteStore, str, os.PathLike)):
        return _sync_snapshot(source)
    return await source.export_snapshot()


def snapshot_digest(source: SyncSource) -> str:
    """``sha256:…`` of the canonical export, as ``membershipd export | sha256sum`` gives."""
    return _digest(_sync_snapshot(source))


# -- parity -----------------------------------------------------------------------------------


def readable_diff(
    source: Snapshot, target: Snapshot, source_name: str = "SQLite", target_name: str = "KV"
) -> list[str]:
    """One line per difference (kind, primary key, field, both values); [] if equal.

    The same lines ``membershipd verify`` prints, from :func:`membership.diff.diff_snapshots`.
    """
    return diff_snapshots(source, target, source_name, target_name)


def assert_parity(
    source: SyncSource,
    target: SyncSource,
    *,
    source_name: str = "SQLite",
    target_name: str = "KV",
) -> None:
    """Raise :class:`ParityFailure` with the readable diff unless both snapshots are equal."""
    left, right = _sync_snapshot(source), _sync_snapshot(target)
    lines = readable_diff(left, right, source_name, target_name)
    if not lines and left != right:  # the diff must never miss what equality sees
        lines = ["snapshots differ in a way the readable diff does not show (a harness bug)"]
    if lines:
        raise ParityFailure(
            f"{source_name} and {target_name} differ in {len(lines)} place(s):\n"
            f"{_bulleted(lines)}\n"
            f"  digests: {source_name} {_digest(left)}, {target_name} {_digest(right)}",
            lines,
        )


# -- the documented KV layout -----------------------------------------------------------------

_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def reference_encode(value: str) -> str:
    """The README's key encoding, written again from its text (not from keycodec).

    Keep ``A-Z a-z 0-9 -`` and ``_`` (but escape a leading ``_``), write every other UTF-8
    byte as ``=XX`` in upper-case hex.
    """
    out = []
    for i, byte in enumerate(value.encode("utf-8")):
        char = chr(byte)
        if char in _KEEP and not (i == 0 and char == "_"):
            out.append(char)
        else:
            out.append(f"={byte:02X}")
    return "".join(out)


def reference_key(record: Record) -> str:
    """The key the README says ``record`` lives under in its bucket."""
    if isinstance(record, (User, Room)):
        return reference_encode(record.id)
    if isinstance(record, Member):
        return f"{reference_encode(record.room_id)}.{reference_encode(record.user_id)}"
    if isinstance(record, SealedKeyRecord):
        return (
            f"{reference_encode(record.room_id)}.{record.epoch}.{reference_encode(record.user_id)}"
        )
    raise TypeError(f"not a record: {record!r}")


def expected_bucket_contents(snapshot: Snapshot) -> dict[str, dict[str, bytes]]:
    """Bucket suffix (``users``, ``rooms``, ``members``, ``keys``, ``meta``) -> key -> value."""
    out: dict[str, dict[str, bytes]] = {}
    for kind in KINDS:
        out[BUCKET_SUFFIXES[kind]] = {
            reference_key(r): encode_record(r) for r in getattr(snapshot, kind)
        }
    out["meta"] = {"schema": b'{"schema_version":%d}' % snapshot.schema_version}
    return out


BOOKKEEPING_META_KEYS = frozenset({"last_verified_run"})
"""Keys of ``<prefix>_meta`` that record migration runs, not the control plane.

They differ between two namespaces holding the same records (they name stream states),
so layout and convergence checks leave them out; idempotence checks keep them (a run
that writes nothing must not rewrite them either). Any other unknown key fails the
layout check: an undocumented change of the layout is caught, not ignored.
"""


def layout_view(contents: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """``contents`` without the bookkeeping keys of the meta bucket."""
    return {
        suffix: {
            k: v for k, v in keys.items() if suffix != "meta" or k not in BOOKKEEPING_META_KEYS
        }
        for suffix, keys in contents.items()
    }


async def bucket_contents(kv: KVStore) -> dict[str, dict[str, bytes]]:
    """What the buckets hold, raw: bucket suffix -> key -> value (revisions left out)."""
    out: dict[str, dict[str, bytes]] = {}
    for kind, suffix in BUCKET_SUFFIXES.items():
        out[suffix] = {entry.key: entry.value for entry in await kv.scan(kind)}
    return out


def snapshot_from_contents(contents: Mapping[str, Mapping[str, bytes]]) -> Snapshot:
    """Decode raw bucket contents into a snapshot, without the store's read path.

    An independent reader: every value is parsed by the canonical decoder alone, so a bug
    in :meth:`KVStore.export_snapshot` cannot hide one in the data (or the other way round).
    """
    records: dict[str, list[Any]] = {}
    for kind in KINDS:
        bucket = contents.get(BUCKET_SUFFIXES[kind], {})
        records[kind] = [decode_record(kind, value) for value in bucket.values()]
    meta = contents.get("meta", {}).get("schema")
    version = json.loads(meta)["schema_version"] if meta is not None else 0
    return Snapshot(
        users=tuple(records["users"]),
        rooms=tuple(records["rooms"]),
        members=tuple(records["members"]),
        sealed_keys=tuple(records["sealed_keys"]),
        schema_version=version,
    )


def _fingerprint(value: bytes) -> str:
    return f"{len(value)} bytes sha256:{hashlib.sha256(value).hexdigest()[:8]}"


def _describe_value(suffix: str, value: bytes) -> str:
    """The record a raw value holds, named by kind and primary key, else a fingerprint."""
    kind = next((k for k, s in BUCKET_SUFFIXES.items() if s == suffix), suffix)
    if kind in KINDS:
        try:
            return format_pk(kind, decode_record(kind, value).pk)
        except MembershipError:
            pass
    return f"value {_fingerprint(value)}"


def diff_bucket_contents(
    expected: Mapping[str, Mapping[str, bytes]],
    actual: Mapping[str, Mapping[str, bytes]],
    expected_name: str = "expected",
    actual_name: str = "KV",
) -> list[str]:
    """One line per key that is missing, unexpected, or holds other bytes."""
    lines: list[str] = []
    for suffix in sorted(expected.keys() | actual.keys()):
        want, have = expected.get(suffix, {}), actual.get(suffix, {})
        for key in sorted(want.keys() | have.keys()):
            where = f"bucket {suffix} key {key!r}"
            if key not in have:
                lines.append(
                    f"{where}: only in {expected_name} ({_describe_value(suffix, want[key])})"
                )
            elif key not in want:
                lines.append(
                    f"{where}: only in {actual_name} ({_describe_value(suffix, have[key])})"
                )
            elif want[key] != have[key]:
                lines.append(
                    _value_difference(
                        where, suffix, want[key], have[key], expected_name, actual_name
                    )
                )
    return lines


def _alone(kind: str, record: Record) -> Snapshot:
    """A snapshot holding just ``record``."""
    return Snapshot(**{kind: (record,)})  # type: ignore[arg-type]


def _value_difference(
    where: str, suffix: str, want: bytes, have: bytes, expected_name: str, actual_name: str
) -> str:
    kind = next((k for k, s in BUCKET_SUFFIXES.items() if s == suffix), None)
    if kind in KINDS:
        try:
            a, b = decode_record(kind, want), decode_record(kind, have)
        except MembershipError:
            pass
        else:
            fields = diff_snapshots(_alone(kind, a), _alone(kind, b), expected_name, actual_name)
            if fields:
                return f"{where}: " + "; ".join(fields)
            # Same record, other bytes: the encoding is not canonical.
    return f"{where}: {expected_name} {_fingerprint(want)}, {actual_name} {_fingerprint(have)}"


async def assert_kv_layout(
    kv: KVStore, snapshot: Snapshot, contents: Mapping[str, Mapping[str, bytes]] | None = None
) -> None:
    """Raise :class:`LayoutFailure` unless the buckets are exactly the documented layout."""
    if contents is None:
        contents = await bucket_contents(kv)
    lines = diff_bucket_contents(expected_bucket_contents(snapshot), layout_view(contents))
    if lines:
        raise LayoutFailure(
            f"KV namespace {kv.prefix!r} is not the documented layout of the snapshot "
            f"({len(lines)} difference(s)):\n{_bulleted(lines)}",
            lines,
        )


async def assert_kv_holds(
    kv: KVStore, snapshot: Snapshot, source_name: str = "SQLite"
) -> dict[str, dict[str, bytes]]:
    """Parity first (a record-level diff reads best), then the byte-level layout.

    One bulk read of every bucket serves both; its :func:`layout_view` is returned, for
    comparing two namespaces byte for byte.
    """
    contents = await bucket_contents(kv)
    assert_parity(snapshot, snapshot_from_contents(contents), source_name=source_name)
    await assert_kv_layout(kv, snapshot, contents)
    return layout_view(contents)


# -- idempotence ---------------------------------------------------------------------------------


class NamespaceLike(Protocol):
    """A KV namespace on a server whose ``/jsz`` we can read (fixtures.plugin.Namespace)."""

    @property
    def target(self) -> NatsTarget: ...

    @property
    def prefix(self) -> str: ...

    def stream_seqs(self) -> dict[str, int]: ...


async def _kv_contents(namespace: NamespaceLike) -> dict[str, dict[str, bytes]]:
    nc = await connect_nats(namespace.target)
    try:
        return await bucket_contents(await KVStore.open(nc, namespace.prefix))
    finally:
        await nc.close()


async def assert_idempotent(
    db: str | os.PathLike[str], namespace: NamespaceLike, *, prune: bool = False
) -> MigrationReport:
    """Migrate ``db`` into ``namespace`` again and prove that nothing changed.

    Checks, and reports together: zero writes in the report (every record ``unchanged``),
    every stream's ``last_seq`` as before (from the server's ``/jsz``, not from our own
    client), the same snapshot and the same raw bucket bytes before and after, and a
    verified report. Returns the second report.
    """
    raw_before = await _kv_contents(namespace)
    seqs_before = namespace.stream_seqs()
    report = await migrate.migrate_sqlite_to_kv(
        Path(db), namespace.target, prefix=namespace.prefix, backup=False, prune=prune
    )
    seqs_after = namespace.stream_seqs()
    raw_after = await _kv_contents(namespace)

    problems: list[str] = []
    if report.writes:
        per_kind = ", ".join(
            f"{kind} {c.written} written/{c.pruned} pruned"
            for kind, c in report.records.items()
            if c.written or c.pruned
        )
        problems.append(f"the second migration reported {report.writes} write(s): {per_kind}")
    for kind, counts in report.records.items():
        if counts.unchanged != counts.source:
            problems.append(
                f"{kind}: {counts.unchanged} of {counts.source} record(s) reported unchanged"
            )
    for stream in sorted(seqs_before.keys() | seqs_after.keys()):
        a, b = seqs_before.get(stream), seqs_after.get(stream)
        if a != b:
            problems.append(f"stream {stream}: last_seq {a} before, {b} after")
    if not seqs_before:
        problems.append(f"no streams of namespace {namespace.prefix!r} on the server to compare")
    problems += readable_diff(
        snapshot_from_contents(raw_before),
        snapshot_from_contents(raw_after),
        "first run",
        "second run",
    )
    problems += diff_bucket_contents(raw_before, raw_after, "first run", "second run")
    if not report.verified:
        problems += [f"not verified: {line}" for line in report.differences]
    if problems:
        raise IdempotenceFailure(
            f"migrating {Path(db).name} again into {namespace.prefix!r} was not a no-op "
            f"({len(problems)} problem(s)):\n{_bulleted(problems)}",
            problems,
        )
    return report
