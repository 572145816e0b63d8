"""Canonical JSON: the one encoding wherever bytes are compared.

KV values, ``membershipd export`` and golden snapshots all come from here, so a
byte-for-byte comparison means the same thing everywhere:

* UTF-8, non-ASCII written as itself (``ensure_ascii=False``);
* object keys sorted, separators ``,`` and ``:`` (no spaces);
* ``bytes`` as standard base64 with padding; integers as JSON integers;
* lists of records sorted by primary key (the :class:`Snapshot` sorts them);
* ``export`` output is the snapshot object followed by one ``\\n``.

The snapshot digest is ``sha256:`` + the hex SHA-256 of exactly the bytes that
``membershipd export`` prints (trailing newline included), so an auditor can check
it with ``membershipd export --db X | sha256sum``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from .errors import DataError, MembershipError
from .model import Member, Record, Room, SealedKeyRecord, Snapshot, User

__all__ = [
    "KINDS",
    "KIND_OF",
    "decode_record",
    "decode_snapshot",
    "dumps",
    "encode_record",
    "record_from_dict",
    "record_to_dict",
    "snapshot_bytes",
    "snapshot_chunks",
    "snapshot_digest",
    "snapshot_to_dict",
]

KINDS: Final = ("users", "rooms", "members", "sealed_keys")
"""The four record kinds, in the order reports and diffs list them."""

RECORD_TYPES: Final[dict[str, type[Record]]] = {
    "users": User,
    "rooms": Room,
    "members": Member,
    "sealed_keys": SealedKeyRecord,
}
KIND_OF: Final[dict[type[Record], str]] = {v: k for k, v in RECORD_TYPES.items()}

_FIELDS: Final[dict[str, dict[str, type]]] = {
    "users": {"id": str, "public_key": bytes, "status": str, "created_at": int},
    "rooms": {"id": str, "epoch": int, "created_at": int},
    "members": {"room_id": str, "user_id": str, "role": str, "joined_epoch": int},
    "sealed_keys": {"room_id": str, "epoch": int, "user_id": str, "sealed_key": bytes},
}


def dumps(obj: Any) -> str:
    """Canonical JSON text of plain data (dicts, lists, str, int, bool, None)."""
    return json.dumps(
        obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def record_to_dict(record: Record) -> dict[str, Any]:
    kind = KIND_OF[type(record)]
    out: dict[str, Any] = {}
    for name in _FIELDS[kind]:
        value = getattr(record, name)
        out[name] = base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
    return out


def encode_record(record: Record) -> bytes:
    """The canonical JSON of one record, as stored in a KV value."""
    return dumps(record_to_dict(record)).encode("utf-8")


def record_from_dict(kind: str, data: Mapping[str, Any]) -> Record:
    """Build a record of ``kind`` from its canonical dict, checking every field.

    Raises :class:`DataError` (never ``KeyError``/``TypeError``) for anything that is
    not exactly a record of that kind: missing or extra fields, wrong JSON types,
    bad base64, values outside their domain.
    """
    fields = _FIELDS.get(kind)
    if fields is None:
        raise DataError(f"unknown record kind {kind!r}")
    if not isinstance(data, Mapping):
        raise DataError(f"{kind} record must be a JSON object, not {type(data).__name__}")
    if set(data) != set(fields):
        missing = sorted(set(fields) - set(data))
        extra = sorted(set(data) - set(fields))
        raise DataError(f"{kind} record has missing fields {missing} / unknown fields {extra}")
    values: dict[str, Any] = {}
    for name, typ in fields.items():
        value = data[name]
        if typ is bytes:
            if not isinstance(value, str):
                raise DataError(f"{kind} record field {name} must be base64 text")
            try:
                values[name] = base64.b64decode(value.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                raise DataError(f"{kind} record field {name} is not valid base64") from None
            if base64.b64encode(values[name]).decode("ascii") != value:
                raise DataError(f"{kind} record field {name} is not canonical base64")
        elif typ is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise DataError(f"{kind} record field {name} must be an integer")
            values[name] = value
        else:
            if not isinstance(value, str):
                raise DataError(f"{kind} record field {name} must be a string")
            values[name] = value
    try:
        return RECORD_TYPES[kind](**values)
    except MembershipError as exc:
        raise DataError(f"{kind} record out of domain: {exc}") from None


def decode_record(kind: str, raw: bytes) -> Record:
    """Parse a KV value back into a record; :class:`DataError` if it is not one."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DataError(f"{kind} value is not UTF-8 JSON") from None
    return record_from_dict(kind, data)


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "schema_version": snapshot.schema_version,
        **{kind: [record_to_dict(r) for r in getattr(snapshot, kind)] for kind in KINDS},
    }


def snapshot_chunks(schema_version: int, records: Mapping[str, Iterable[Record]]) -> Iterator[str]:
    """Yield the canonical export text piece by piece, without building it whole.

    ``records`` maps each kind to its records *in primary-key order*. Joining the
    chunks gives exactly ``dumps(snapshot_to_dict(...)) + "\\n"`` (a unit test pins
    this), so a digest can be computed over a stream of a million records.
    """
    # Top-level keys in sorted order: members, rooms, schema_version, sealed_keys, users.
    first = True
    for key in sorted((*KINDS, "schema_version")):
        yield ("{" if first else ",") + json.dumps(key) + ":"
        first = False
        if key == "schema_version":
            yield str(int(schema_version))
            continue
        yield "["
        sep = ""
        for record in records[key]:
            yield sep + dumps(record_to_dict(record))
            sep = ","
        yield "]"
    yield "}\n"


def snapshot_bytes(snapshot: Snapshot) -> bytes:
    """Exactly what ``membershipd export`` prints for ``snapshot``."""
    return "".join(
        snapshot_chunks(snapshot.schema_version, {k: getattr(snapshot, k) for k in KINDS})
    ).encode("utf-8")


def snapshot_digest(snapshot: Snapshot) -> str:
    """``sha256:<hex>`` of :func:`snapshot_bytes`; equal snapshots, equal digests."""
    return "sha256:" + hashlib.sha256(snapshot_bytes(snapshot)).hexdigest()


def decode_snapshot(text: str | bytes) -> Snapshot:
    """Parse ``export`` output back into a :class:`Snapshot` (:class:`DataError` if not one)."""
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DataError("snapshot is not UTF-8 JSON") from None
    if not isinstance(data, dict) or set(data) != {*KINDS, "schema_version"}:
        raise DataError(
            "a snapshot is an object with exactly the keys "
            + ", ".join(sorted((*KINDS, "schema_version")))
        )
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DataError("snapshot schema_version must be a positive integer")
    lists: dict[str, tuple[Any, ...]] = {}
    for kind in KINDS:
        items = data[kind]
        if not isinstance(items, list):
            raise DataError(f"snapshot {kind} must be a list")
        lists[kind] = tuple(record_from_dict(kind, item) for item in items)
    return Snapshot(
        users=lists["users"],
        rooms=lists["rooms"],
        members=lists["members"],
        sealed_keys=lists["sealed_keys"],
        schema_version=version,
    )
