"""A readable difference between two snapshots: which record, which field, both values.

One line per difference, in a stable order (kind, then primary key, then field), so
a diff reads the same in a terminal, a test failure and a golden file::

    rooms['general'].epoch: SQLite 2, KV 1
    users['zed']: only in KV
    sealed_keys['ops', 2, 'bob'].sealed_key: SQLite 48 bytes sha256:1f2e3d4c, KV ...

Byte fields are shown as their length and a short SHA-256 fingerprint, never as
their content: a diff goes to terminals and CI logs.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .canonical import KINDS
from .model import Record, Snapshot

__all__ = ["diff_records", "diff_snapshots", "format_pk", "format_value"]


def format_value(value: Any) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes sha256:{hashlib.sha256(value).hexdigest()[:8]}"
    return repr(value)


def format_pk(kind: str, pk: tuple[Any, ...]) -> str:
    return f"{kind}[{', '.join(repr(p) for p in pk)}]"


def _fields(record: Record) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def diff_records(
    kind: str,
    left: Record | None,
    right: Record | None,
    left_name: str = "SQLite",
    right_name: str = "KV",
) -> list[str]:
    """The lines for one primary key: present on one side only, or field by field."""
    if left is None and right is None:
        return []
    if right is None:
        assert left is not None
        return [f"{format_pk(kind, left.pk)}: only in {left_name}"]
    if left is None:
        return [f"{format_pk(kind, right.pk)}: only in {right_name}"]
    if left == right:
        return []
    name = format_pk(kind, left.pk)
    fa, fb = _fields(left), _fields(right)
    return [
        f"{name}.{field}: {left_name} {format_value(fa[field])}, "
        f"{right_name} {format_value(fb[field])}"
        for field in fa
        if fa[field] != fb[field]
    ]


def diff_snapshots(
    left: Snapshot, right: Snapshot, left_name: str = "SQLite", right_name: str = "KV"
) -> list[str]:
    """Every difference between two snapshots; an empty list means they are equal."""
    lines: list[str] = []
    if left.schema_version != right.schema_version:
        lines.append(
            f"schema_version: {left_name} {left.schema_version}, "
            f"{right_name} {right.schema_version}"
        )
    for kind in KINDS:
        a = {r.pk: r for r in getattr(left, kind)}
        b = {r.pk: r for r in getattr(right, kind)}
        for pk in sorted(a.keys() | b.keys()):
            lines.extend(diff_records(kind, a.get(pk), b.get(pk), left_name, right_name))
    return lines
