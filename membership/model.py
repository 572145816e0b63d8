"""The records of the control plane and the domains of their fields.

Records are frozen dataclasses whose fields are exactly the contract of DESIGN.md.
Constructing one does *not* check the cross-record invariants (a member's room
exists, ...): those belong to the store API, and a migration must be able to carry
"legacy dirty" data faithfully. It does check each field's own domain, because a
record outside it cannot be stored anywhere (an id of 200 bytes has no SQLite row
and no KV key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from .errors import InvalidInputError
from .nkey import validate_nkey

__all__ = [
    "MAX_ID_BYTES",
    "MAX_INT",
    "MAX_SEALED_KEY_BYTES",
    "OLDEST_SCHEMA_VERSION",
    "PUBLIC_KEY_BYTES",
    "SCHEMA_VERSION",
    "Member",
    "Record",
    "Revocation",
    "Role",
    "Room",
    "SealedKeyRecord",
    "Snapshot",
    "Status",
    "User",
    "now_ms",
    "validate_epoch",
    "validate_id",
    "validate_optional_nkey",
    "validate_public_key",
    "validate_sealed_key",
]

SCHEMA_VERSION = 2
"""The schema version this code writes, in SQLite ``PRAGMA user_version`` and KV ``meta``.

Version 2 added the user's NATS public key (``User.nkey``). A store of version 1
reads as version 2 with no nkeys; it takes writes again after ``membershipd upgrade``.
"""
OLDEST_SCHEMA_VERSION = 1
"""The oldest schema version this code reads (and upgrades)."""

MAX_ID_BYTES = 128
PUBLIC_KEY_BYTES = 32
MAX_SEALED_KEY_BYTES = 4096
MAX_INT = 2**63 - 1
"""Epochs and timestamps are SQLite INTEGERs: signed 64 bit."""

Status: TypeAlias = Literal["active", "revoked"]
Role: TypeAlias = Literal["owner", "member"]
STATUSES: tuple[Status, ...] = ("active", "revoked")
ROLES: tuple[Role, ...] = ("owner", "member")


def now_ms() -> int:
    """The current time in unix milliseconds, the unit of every ``created_at``."""
    return time.time_ns() // 1_000_000


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a legal id: a str of 1..128 UTF-8 bytes.

    Any character is legal, dots, spaces, ``*``, ``>``, ``/``, ``=`` and non-ASCII
    included; only lone surrogates are not, since they have no UTF-8 form and SQLite
    TEXT cannot hold them.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"{what} {value.encode('utf-8', 'backslashreplace').decode()!r} is not valid "
            "Unicode (lone surrogate)"
        ) from None
    if not 1 <= size <= MAX_ID_BYTES:
        shown = value if size <= 40 else value[:20] + "…"
        raise InvalidInputError(
            f"{what} {shown!r} is {size} UTF-8 bytes; an id has 1 to {MAX_ID_BYTES}"
        )
    return value


def validate_epoch(value: object, what: str = "epoch") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_INT:
        raise InvalidInputError(f"{what} must be an integer from 1 to {MAX_INT}, not {value!r}")
    return value


def _validate_timestamp(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise InvalidInputError(f"created_at must be unix milliseconds >= 0, not {value!r}")
    return value


def validate_public_key(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != PUBLIC_KEY_BYTES:
        size = len(value) if isinstance(value, bytes) else type(value).__name__
        raise InvalidInputError(f"public key must be {PUBLIC_KEY_BYTES} bytes (X25519), got {size}")
    return value


def validate_sealed_key(value: object) -> bytes:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_SEALED_KEY_BYTES:
        size = len(value) if isinstance(value, bytes) else type(value).__name__
        raise InvalidInputError(f"sealed key must be 1 to {MAX_SEALED_KEY_BYTES} bytes, got {size}")
    return value


def validate_optional_nkey(value: object) -> str | None:
    """A user's public nkey (``U…``, checksum intact), or None for a user without one."""
    return None if value is None else validate_nkey(value)


def _validate_choice(value: object, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise InvalidInputError(f"{what} must be one of {', '.join(choices)}, not {value!r}")


@dataclass(frozen=True, slots=True)
class User:
    """A user of the allowlist. ``nkey`` (schema v2) is the public nkey the user
    authenticates to NATS with, or None: a user without one cannot connect."""

    id: str
    public_key: bytes = field(repr=False)
    status: Status
    created_at: int
    nkey: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.id, "user id")
        validate_public_key(self.public_key)
        _validate_choice(self.status, STATUSES, "status")
        _validate_timestamp(self.created_at)
        validate_optional_nkey(self.nkey)

    @property
    def pk(self) -> tuple[str]:
        return (self.id,)


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    epoch: int
    created_at: int

    def __post_init__(self) -> None:
        validate_id(self.id, "room id")
        validate_epoch(self.epoch)
        _validate_timestamp(self.created_at)

    @property
    def pk(self) -> tuple[str]:
        return (self.id,)


@dataclass(frozen=True, slots=True)
class Member:
    room_id: str
    user_id: str
    role: Role
    joined_epoch: int

    def __post_init__(self) -> None:
        validate_id(self.room_id, "room id")
        validate_id(self.user_id, "user id")
        _validate_choice(self.role, ROLES, "role")
        validate_epoch(self.joined_epoch, "joined_epoch")

    @property
    def pk(self) -> tuple[str, str]:
        return (self.room_id, self.user_id)


@dataclass(frozen=True, slots=True)
class SealedKeyRecord:
    room_id: str
    epoch: int
    user_id: str
    sealed_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        validate_id(self.room_id, "room id")
        validate_epoch(self.epoch)
        validate_id(self.user_id, "user id")
        validate_sealed_key(self.sealed_key)

    @property
    def pk(self) -> tuple[str, int, str]:
        return (self.room_id, self.epoch, self.user_id)


Record: TypeAlias = User | Room | Member | SealedKeyRecord


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole control plane at one moment, every list sorted by primary key.

    The constructor sorts, so two snapshots of the same state compare equal whatever
    order their store produced the records in.
    """

    users: tuple[User, ...] = ()
    rooms: tuple[Room, ...] = ()
    members: tuple[Member, ...] = ()
    sealed_keys: tuple[SealedKeyRecord, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in ("users", "rooms", "members", "sealed_keys"):
            records = tuple(sorted(getattr(self, name), key=lambda r: r.pk))
            object.__setattr__(self, name, records)

    def counts(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "rooms": len(self.rooms),
            "members": len(self.members),
            "sealed_keys": len(self.sealed_keys),
        }


@dataclass(frozen=True, slots=True)
class Revocation:
    """What ``revoke_user`` did: the user as it is now, and every room it was removed
    from with that room's new epoch."""

    user: User
    rooms: tuple[Room, ...]
    was_active: bool
