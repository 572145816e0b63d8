"""What a store holds, at a glance: ``membershipd inspect``.

In the spirit of ``consul snapshot inspect`` and ``etcdutl snapshot status``, an
:class:`Inspection` tells an operator or an auditor, for a SQLite file (a backup
included) or a KV namespace:

* the schema version and the snapshot digest (the same ``sha256:…`` that
  ``migrate-to-kv`` reports and ``membershipd export | sha256sum`` gives);
* per record kind, how many records and how many bytes they take as canonical JSON,
  which is exactly what the KV values hold, so the figures are the same on both
  stores when the snapshots are equal, and the largest record (KV values are
  bounded by the server's ``max_payload``);
* how many rooms are at each key epoch;
* the invariant findings of :func:`membership.audit.invariant_findings` (orphans,
  keys above the room's epoch, ...), which a legacy source may hold;
* where the data lives: the SQLite file and its size on disk, or each bucket's
  replicas, history, messages (tombstones included) and bytes.

Reading is all it does: a SQLite file is opened like ``export`` opens it, a KV
namespace is read through consumers, and nothing is written.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats.js.errors
from nats.aio.client import Client

from .audit import invariant_findings
from .canonical import KINDS, encode_record, snapshot_bytes, snapshot_digest
from .connect import NatsTarget, close_nats, connect_nats
from .kv import DEFAULT_PREFIX, KVStore, jetstream, nats_errors, validate_prefix
from .model import SCHEMA_VERSION, Snapshot
from .sqlite import SQLiteStore

__all__ = [
    "BucketStats",
    "Inspection",
    "KindStats",
    "format_inspection",
    "inspect_kv",
    "inspect_snapshot",
    "inspect_sqlite",
]

EXACT_EPOCH_LINES: Final = 12
"""Up to this many distinct epochs the table lists each; beyond, it groups them."""


@dataclass(frozen=True)
class KindStats:
    """One record kind: how many records, their canonical JSON bytes, the largest one."""

    count: int = 0
    bytes: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "bytes": self.bytes, "largest": self.largest}


@dataclass(frozen=True)
class BucketStats:
    """One KV bucket as the server reports it (``None`` fields: the bucket is missing)."""

    replicas: int | None
    history: int | None
    messages: int | None
    bytes: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "replicas": self.replicas,
            "history": self.history,
            "messages": self.messages,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class Inspection:
    """What one store holds. :meth:`as_dict` is the ``inspect --json`` object."""

    schema_version: int
    digest: str
    export_bytes: int
    records: dict[str, KindStats]
    room_epochs: list[tuple[int, int]]
    """(epoch, number of rooms at that epoch), by epoch."""
    findings: list[str]
    store: dict[str, Any] = field(default_factory=dict)
    """Where the data lives: ``{"kind": "sqlite", ...}`` or ``{"kind": "kv", ...}``."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "schema_version": self.schema_version,
            "digest": self.digest,
            "export_bytes": self.export_bytes,
            "records": {kind: self.records[kind].as_dict() for kind in KINDS},
            "room_epochs": [{"epoch": e, "rooms": n} for e, n in self.room_epochs],
            "findings": self.findings,
        }


def inspect_snapshot(
    snapshot: Snapshot, store: dict[str, Any] | None = None, stored_version: int | None = None
) -> Inspection:
    """The store-independent part: equal snapshots give equal inspections.

    ``stored_version``: the schema version the store is written in, where it is older
    than the snapshot's (records always read in the current schema)."""
    records: dict[str, KindStats] = {}
    for kind in KINDS:
        sizes = [len(encode_record(r)) for r in getattr(snapshot, kind)]
        records[kind] = KindStats(len(sizes), sum(sizes), max(sizes, default=0))
    epochs = Counter(room.epoch for room in snapshot.rooms)
    return Inspection(
        schema_version=snapshot.schema_version if stored_version is None else stored_version,
        digest=snapshot_digest(snapshot),
        export_bytes=len(snapshot_bytes(snapshot)),
        records=records,
        room_epochs=sorted(epochs.items()),
        findings=invariant_findings(snapshot),
        store=dict(store or {}),
    )


def _file_bytes(path: Path) -> int:
    """The database file plus its write-ahead log, as they are on disk now."""
    total = 0
    for name in (path, path.with_name(path.name + "-wal")):
        try:
            total += os.stat(name).st_size
        except FileNotFoundError:
            continue
    return total


async def inspect_sqlite(db: str | os.PathLike[str]) -> Inspection:
    """Inspect a membership database (or a backup of one); it is only read."""
    path = Path(db)
    source = SQLiteStore.open(path)
    try:
        snapshot = source.read_snapshot()
    finally:
        await source.close()
    return inspect_snapshot(
        snapshot,
        {"kind": "sqlite", "path": str(path), "file_bytes": _file_bytes(path)},
        source.schema_version,
    )


async def _bucket_stats(nc: Client, kv: KVStore) -> dict[str, BucketStats]:
    js = jetstream(nc)
    out: dict[str, BucketStats] = {}
    for kind, bucket in kv.buckets.items():
        async with nats_errors(f"reading bucket {bucket}"):
            try:
                info = await js.stream_info(kv.stream(kind))
            except nats.js.errors.NotFoundError:
                out[bucket] = BucketStats(None, None, None, None)
                continue
        out[bucket] = BucketStats(
            replicas=info.config.num_replicas or 1,
            history=info.config.max_msgs_per_subject,
            messages=info.state.messages,
            bytes=info.state.bytes,
        )
    return out


async def inspect_kv(target: NatsTarget, prefix: str = DEFAULT_PREFIX) -> Inspection:
    """Inspect the KV namespace ``prefix``, read through consumers; nothing is written."""
    target.check()  # a remote URL without --ca is refused before connecting
    validate_prefix(prefix)
    nc = await connect_nats(target)
    try:
        kv = await KVStore.open(nc, prefix)
        snapshot = await kv.export_snapshot()
        buckets = await _bucket_stats(nc, kv)
    finally:
        await close_nats(nc)
    return inspect_snapshot(
        snapshot,
        {
            "kind": "kv",
            "url": target.display(),
            "prefix": prefix,
            "buckets": {name: stats.as_dict() for name, stats in sorted(buckets.items())},
        },
        kv.schema_version,
    )


# -- the table -----------------------------------------------------------------------------


def _epoch_groups(room_epochs: list[tuple[int, int]]) -> list[tuple[str, int]]:
    """Each epoch on its own line when there are few; else power-of-two ranges."""
    if len(room_epochs) <= EXACT_EPOCH_LINES:
        return [(str(epoch), rooms) for epoch, rooms in room_epochs]
    groups: dict[int, int] = {}
    for epoch, rooms in room_epochs:
        low = 1 << (epoch.bit_length() - 1)  # 1, 2-3, 4-7, 8-15, ...
        groups[low] = groups.get(low, 0) + rooms
    return [
        (str(low) if low == 1 else f"{low}-{2 * low - 1}", rooms)
        for low, rooms in sorted(groups.items())
    ]


def format_inspection(inspection: Inspection) -> list[str]:
    """The human-readable table that ``membershipd inspect`` prints, line by line."""
    store = inspection.store
    lines: list[str] = []
    if store.get("kind") == "sqlite":
        lines.append(
            f"store           SQLite {store['path']} ({store['file_bytes']} bytes on disk)"
        )
    elif store.get("kind") == "kv":
        lines.append(
            f"store           JetStream KV {store['url']}, bucket prefix {store['prefix']}"
        )
    lines += [
        f"schema version  {inspection.schema_version}"
        + (
            f" (reads as {SCHEMA_VERSION}; `membershipd upgrade` makes it writable)"
            if inspection.schema_version < SCHEMA_VERSION
            else ""
        ),
        f"digest          {inspection.digest}",
        f"export size     {inspection.export_bytes} bytes",
        "",
        f"{'records':<16}{'count':>9}{'bytes':>12}{'largest':>10}",
    ]
    for kind in KINDS:
        s = inspection.records[kind]
        lines.append(f"  {kind:<14}{s.count:>9}{s.bytes:>12}{s.largest:>10}")
    count = sum(s.count for s in inspection.records.values())
    size = sum(s.bytes for s in inspection.records.values())
    lines.append(f"  {'total':<14}{count:>9}{size:>12}")
    lines.append("")
    if inspection.room_epochs:
        lines.append(f"{'room epochs':<16}{'rooms':>9}")
        for label, rooms in _epoch_groups(inspection.room_epochs):
            lines.append(f"  {'epoch ' + label:<14}{rooms:>9}")
    else:
        lines.append("room epochs     no rooms")
    if store.get("kind") == "kv":
        lines.append("")
        lines.append(f"{'buckets':<24}{'replicas':>9}{'history':>8}{'messages':>10}{'bytes':>12}")
        for name, b in store["buckets"].items():
            if b["replicas"] is None:
                lines.append(f"  {name:<22}  missing")
                continue
            lines.append(
                f"  {name:<22}{b['replicas']:>9}{b['history']:>8}{b['messages']:>10}{b['bytes']:>12}"
            )
    lines.append("")
    if inspection.findings:
        lines.append(f"findings        {len(inspection.findings)} invariant violation(s)")
        lines += [f"  {line}" for line in inspection.findings]
    else:
        lines.append("findings        none")
    return lines
