"""Ids to NATS KV key tokens and back: reversible, injective, always a valid key.

NATS KV keys allow ``[-/_=.a-zA-Z0-9]``, use ``.`` as the token separator, and
reserve keys that start with ``_kv``. Ids may hold any Unicode. The encoding:

* the bytes ``A-Z a-z 0-9 -`` and ``_`` are kept as they are, except that a ``_``
  at the start of a token is escaped (so no key can start with ``_kv``);
* every other UTF-8 byte is written ``=XX``, upper-case hex.

An encoded token never contains ``.`` or ``/``, so composite keys split
unambiguously on ``.``::

    users    enc(user_id)
    rooms    enc(room_id)
    members  enc(room_id).enc(user_id)
    keys     enc(room_id).<epoch>.enc(user_id)

Decoding accepts only the canonical form (``decode(t)`` re-encodes to ``t``), which
makes ``encode`` a bijection between ids and valid tokens. Values carry the real
ids, so readers never need to decode keys; the migration does, to name records.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import DataError
from .model import validate_epoch, validate_id

__all__ = [
    "decode_id",
    "encode_id",
    "member_key",
    "parse_member_key",
    "parse_sealed_key_key",
    "sealed_key_key",
]

_KEEP: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX: Final = "0123456789ABCDEF"
_TABLE: Final = [chr(b) if b in _KEEP else f"={_HEX[b >> 4]}{_HEX[b & 15]}" for b in range(256)]
_TOKEN_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")
_EPOCH_RE: Final = re.compile(r"[1-9][0-9]{0,18}")


def encode_id(value: str) -> str:
    """Encode an id (1..128 UTF-8 bytes) as one KV key token."""
    data = validate_id(value).encode("utf-8")
    token = "".join([_TABLE[b] for b in data])
    if token.startswith("_"):
        token = "=5F" + token[1:]
    return token


def decode_id(token: str) -> str:
    """Invert :func:`encode_id`; :class:`DataError` for anything it cannot have produced."""
    if not isinstance(token, str) or _TOKEN_RE.fullmatch(token) is None:
        raise DataError(f"KV key token {token!r} is not an encoded id")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    try:
        value = out.decode("utf-8")
        if encode_id(value) != token:
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"KV key token {token!r} is not the canonical encoding of an id") from None
    return value


def member_key(room_id: str, user_id: str) -> str:
    return f"{encode_id(room_id)}.{encode_id(user_id)}"


def sealed_key_key(room_id: str, epoch: int, user_id: str) -> str:
    return f"{encode_id(room_id)}.{validate_epoch(epoch)}.{encode_id(user_id)}"


def parse_member_key(key: str) -> tuple[str, str]:
    parts = key.split(".")
    if len(parts) != 2:
        raise DataError(f"members key {key!r} is not <room>.<user>")
    return decode_id(parts[0]), decode_id(parts[1])


def parse_sealed_key_key(key: str) -> tuple[str, int, str]:
    parts = key.split(".")
    if len(parts) != 3 or _EPOCH_RE.fullmatch(parts[1]) is None:
        raise DataError(f"keys key {key!r} is not <room>.<epoch>.<user>")
    epoch = int(parts[1])
    if epoch > 2**63 - 1:
        raise DataError(f"keys key {key!r} has an epoch out of range")
    return decode_id(parts[0]), epoch, decode_id(parts[2])
