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
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from json.encoder import encode_basestring
from typing import IO, Any, Final

from .errors import DataError, MembershipError
from .model import SCHEMA_VERSION, Member, Record, Room, SealedKeyRecord, Snapshot, User

__all__ = [
    "KINDS",
    "KIND_OF",
    "MAX_ENCODED_BYTES",
    "SnapshotDigest",
    "decode_record",
    "decode_snapshot",
    "dumps",
    "encode_record",
    "encode_row",
    "record_from_dict",
    "record_to_dict",
    "row_encoder",
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


class _OptionalStr:
    """Field type marker: a JSON string or null."""


_FIELDS: Final[dict[str, dict[str, type]]] = {
    "users": {
        "id": str,
        "public_key": bytes,
        "status": str,
        "created_at": int,
        "nkey": _OptionalStr,
    },
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


def record_from_dict(
    kind: str, data: Mapping[str, Any], schema_version: int = SCHEMA_VERSION
) -> Record:
    """Build a record of ``kind`` from its canonical dict, checking every field.

    Raises :class:`DataError` (never ``KeyError``/``TypeError``) for anything that is
    not exactly a record of that kind: missing or extra fields, wrong JSON types,
    bad base64, values outside their domain. With ``schema_version`` 1 (a namespace
    not upgraded yet) a user may come in its version 1 form, without ``nkey``, and
    reads as a version 2 user with none.
    """
    fields = _FIELDS.get(kind)
    if fields is None:
        raise DataError(f"unknown record kind {kind!r}")
    if not isinstance(data, Mapping):
        raise DataError(f"{kind} record must be a JSON object, not {type(data).__name__}")
    if schema_version < 2 and kind == "users" and "nkey" not in data:
        data = {**data, "nkey": None}
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
        elif typ is _OptionalStr:
            if value is not None and not isinstance(value, str):
                raise DataError(f"{kind} record field {name} must be a string or null")
            values[name] = value
        else:
            if not isinstance(value, str):
                raise DataError(f"{kind} record field {name} must be a string")
            values[name] = value
    try:
        return RECORD_TYPES[kind](**values)
    except MembershipError as exc:
        raise DataError(f"{kind} record out of domain: {exc}") from None


def decode_record(kind: str, raw: bytes, schema_version: int = SCHEMA_VERSION) -> Record:
    """Parse a KV value back into a record; :class:`DataError` if it is not one.

    ``schema_version``: that of the namespace the value comes from
    (:func:`record_from_dict`)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DataError(f"{kind} value is not UTF-8 JSON") from None
    return record_from_dict(kind, data, schema_version)


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
    if version > SCHEMA_VERSION:
        raise DataError(
            f"snapshot schema_version {version} is newer than this membershipd "
            f"understands ({SCHEMA_VERSION})"
        )
    lists: dict[str, tuple[Any, ...]] = {}
    for kind in KINDS:
        items = data[kind]
        if not isinstance(items, list):
            raise DataError(f"snapshot {kind} must be a list")
        lists[kind] = tuple(record_from_dict(kind, item, version) for item in items)
    # An older snapshot reads as the current schema (version 1 users get no nkey).
    return Snapshot(
        users=lists["users"],
        rooms=lists["rooms"],
        members=lists["members"],
        sealed_keys=lists["sealed_keys"],
        schema_version=SCHEMA_VERSION,
    )


# -- streaming: rows straight to canonical bytes, and a digest over a stream ---------------

_b64 = binascii.b2a_base64
_ROW_FORMAT: Final = {
    "users": '{{"created_at":{3:d},"id":{0},"nkey":{4},"public_key":"{1}","status":{2}}}',
    "rooms": '{{"created_at":{2:d},"epoch":{1:d},"id":{0}}}',
    "members": '{{"joined_epoch":{3:d},"role":{2},"room_id":{0},"user_id":{1}}}',
    "sealed_keys": '{{"epoch":{1:d},"room_id":{0},"sealed_key":"{3}","user_id":{2}}}',
}


def encode_row(kind: str, row: Sequence[Any]) -> bytes:
    """:func:`encode_record` of a record given as its field values, in field order.

    The migration streams a million rows; building a record object and a dict for
    each costs several times more than the I/O. This formats the same canonical JSON
    directly (sorted keys, compact, ``ensure_ascii=False`` string escaping by the very
    function :mod:`json` uses, standard padded base64). The row must already be in
    its record's domain (:meth:`membership.sqlite.SQLiteStore.iter_rows` checks
    that); a property test pins ``encode_row == encode_record`` on arbitrary records.
    """
    if kind == "sealed_keys":
        room_id, epoch, user_id, sealed_key = row
        text = _ROW_FORMAT[kind].format(
            encode_basestring(room_id),
            epoch,
            encode_basestring(user_id),
            _b64(sealed_key, newline=False).decode("ascii"),
        )
    elif kind == "members":
        room_id, user_id, role, joined_epoch = row
        text = _ROW_FORMAT[kind].format(
            encode_basestring(room_id),
            encode_basestring(user_id),
            encode_basestring(role),
            joined_epoch,
        )
    elif kind == "users":
        user_id, public_key, status, created_at, nkey = row
        text = _ROW_FORMAT[kind].format(
            encode_basestring(user_id),
            _b64(public_key, newline=False).decode("ascii"),
            encode_basestring(status),
            created_at,
            "null" if nkey is None else encode_basestring(nkey),
        )
    elif kind == "rooms":
        room_id, epoch, created_at = row
        text = _ROW_FORMAT[kind].format(encode_basestring(room_id), epoch, created_at)
    else:
        raise DataError(f"unknown record kind {kind!r}")
    return text.encode("utf-8")


MAX_ENCODED_BYTES: Final = {"users": 1024, "rooms": 1024, "members": 2048, "sealed_keys": 8192}
"""No record's canonical JSON is larger: ids of at most 128 UTF-8 bytes (each written
as itself, or at worst as a 6-byte ``\\u00XX`` escape), 64-bit integers, base64 of at
most 4096 bytes. Against a server's ``max_payload`` at or above these, no value needs
measuring (a property test pins the bounds with worst-case records)."""


def row_encoder(kind: str) -> Callable[[Sequence[Any]], bytes]:
    """:func:`encode_row` for one kind, without the dispatch: the migration's hot loop."""
    b64, esc = _b64, encode_basestring
    fmt = _ROW_FORMAT[kind].format if kind in _ROW_FORMAT else None
    if fmt is None:
        raise DataError(f"unknown record kind {kind!r}")
    if kind == "sealed_keys":

        def encode(row: Sequence[Any]) -> bytes:
            return fmt(
                esc(row[0]), row[1], esc(row[2]), b64(row[3], newline=False).decode("ascii")
            ).encode()

    elif kind == "members":

        def encode(row: Sequence[Any]) -> bytes:
            return fmt(esc(row[0]), esc(row[1]), esc(row[2]), row[3]).encode()

    elif kind == "users":

        def encode(row: Sequence[Any]) -> bytes:
            return fmt(
                esc(row[0]),
                b64(row[1], newline=False).decode("ascii"),
                esc(row[2]),
                row[3],
                "null" if row[4] is None else esc(row[4]),
            ).encode()

    else:

        def encode(row: Sequence[Any]) -> bytes:
            return fmt(esc(row[0]), row[1], row[2]).encode()

    return encode


_SPOOL_IN_MEMORY: Final = 16 * 1024 * 1024
_BATCH: Final = 1024


class SnapshotDigest:
    """The snapshot digest of a state streamed kind by kind, in any order of kinds.

    ``export`` lists the kinds in key order (members, rooms, schema_version,
    sealed_keys, users) but a migration writes users and rooms first. Each kind is
    fed contiguously between :meth:`begin` and :meth:`end`, its records in
    primary-key order as canonical bytes (:meth:`add`). A kind that arrives before
    its turn is spooled (in memory up to 16 MB, beyond that in an anonymous
    temporary file) and hashed when its turn comes, so nothing is encoded twice and
    memory stays bounded. :meth:`hexdigest` equals :func:`snapshot_digest` of the
    same state; :meth:`kind_digest` is the SHA-256 of one kind's JSON array alone
    (the migration keeps those to recognise an unchanged kind on a re-run).
    """

    ORDER: Final = tuple(sorted((*KINDS, "schema_version")))

    def __init__(self, schema_version: int) -> None:
        self._schema_version = int(schema_version)
        self._hash = hashlib.sha256()
        self._next = 0  # index into ORDER of the next piece the main hash needs
        self._open: str | None = None
        self._first = True
        self._kind_hash: Any = None
        self._spool: IO[bytes] | None = None
        self._spools: dict[str, IO[bytes]] = {}
        self._kind_digests: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._parts: list[bytes] = []
        self._catch_up()

    def _prefix(self) -> bytes:
        key = self.ORDER[self._next]
        return (("{" if self._next == 0 else ",") + json.dumps(key) + ":").encode()

    def _catch_up(self) -> None:
        """Feed the main hash every finished piece whose turn has come."""
        while self._next < len(self.ORDER):
            key = self.ORDER[self._next]
            if key == "schema_version":
                self._hash.update(self._prefix() + str(self._schema_version).encode())
            elif key in self._spools:
                self._hash.update(self._prefix())
                spool = self._spools.pop(key)
                spool.seek(0)
                while block := spool.read(1 << 20):
                    self._hash.update(block)
                spool.close()
            else:
                return
            self._next += 1

    def _piece(self, data: bytes) -> None:
        if self._spool is not None:
            self._spool.write(data)
        else:
            self._hash.update(data)
        self._kind_hash.update(data)

    def begin(self, kind: str) -> None:
        if self._open is not None:
            raise ValueError(f"kind {self._open} is still open")
        if kind not in KINDS or kind in self._kind_digests:
            raise ValueError(f"kind {kind!r} is unknown or already hashed")
        self._open = kind
        self._first = True
        self._kind_hash = hashlib.sha256()
        self._counts[kind] = 0
        if self._next < len(self.ORDER) and self.ORDER[self._next] == kind:
            self._spool = None
            self._hash.update(self._prefix())
        else:
            self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        self._piece(b"[")

    def add(self, encoded: bytes) -> None:
        """One record of the open kind, as :func:`encode_record` bytes."""
        parts = self._parts
        parts.append(encoded)
        if len(parts) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        parts, self._parts = self._parts, []
        if not parts:
            return
        data = b",".join(parts)
        if self._first:
            self._first = False
            self._piece(data)
        else:
            self._piece(b"," + data)
        self._counts[self._open] += len(parts)  # type: ignore[index]

    def end(self) -> str:
        """Close the open kind; return its own digest."""
        kind = self._open
        if kind is None:
            raise ValueError("no kind is open")
        self._flush()
        self._piece(b"]")
        self._kind_digests[kind] = "sha256:" + self._kind_hash.hexdigest()
        if self._spool is not None:
            self._spools[kind] = self._spool
            self._spool = None
        else:
            self._next += 1
        self._open = None
        self._catch_up()
        return self._kind_digests[kind]

    def kind_digest(self, kind: str) -> str:
        return self._kind_digests[kind]

    def count(self, kind: str) -> int:
        """Records fed for ``kind`` (complete once the kind has ended)."""
        return self._counts[kind] + (len(self._parts) if kind == self._open else 0)

    def hexdigest(self) -> str:
        """``sha256:<hex>`` of the whole export; every kind must have been fed."""
        missing = [k for k in KINDS if k not in self._kind_digests]
        if missing or self._next != len(self.ORDER):
            raise ValueError(f"kinds not hashed yet: {missing}")
        final = self._hash.copy()
        final.update(b"}\n")
        return "sha256:" + final.hexdigest()
