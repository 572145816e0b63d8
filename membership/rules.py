"""The invariants of the control plane, checked once for every store.

Each store fetches the records an operation touches in its own consistent way (a
dict, a ``BEGIN IMMEDIATE`` transaction, KV reads with revisions), then calls the
check here, then writes. So the rules, their order and their messages are the same
on every store by construction, and the differential tests compare what really
differs: how each store reads and writes.

Order of checks, everywhere: the room, then the user, then the user's status, then
membership, then duplicates.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import AlreadyExistsError, InvariantError, NotFoundError, RevokedUserError
from .model import MAX_INT, Member, Room, User

__all__ = [
    "bumped",
    "check_add_member",
    "check_create_room",
    "check_new_user",
    "check_nkey_free",
    "check_put_sealed_key",
    "check_remove_member",
    "check_set_nkey",
    "require_room",
    "require_user",
]


def require_user(user: User | None, user_id: str) -> User:
    if user is None:
        raise NotFoundError(f"user {user_id!r} does not exist; add it with `membershipd user add`")
    return user


def require_room(room: Room | None, room_id: str) -> Room:
    if room is None:
        raise NotFoundError(
            f"room {room_id!r} does not exist; create it with `membershipd room create`"
        )
    return room


def _require_active(user: User) -> None:
    if user.status != "active":
        raise RevokedUserError(
            f"user {user.id!r} is revoked; a revoked user gets no membership and no sealed key"
        )


def check_new_user(existing: User | None, user_id: str) -> None:
    if existing is not None:
        raise AlreadyExistsError(f"user {user_id!r} already exists")


def check_set_nkey(user: User | None, user_id: str, nkey: str | None) -> User:
    """A user's NATS identity can be set or changed while it is active, and cleared always."""
    found = require_user(user, user_id)
    if nkey is not None:
        _require_active(found)
    return found


def check_nkey_free(holders: list[str], nkey: str | None, user_id: str) -> None:
    """``holders``: the ids of the users whose nkey is ``nkey`` now. One identity, one user:
    two users sharing an nkey could act as each other."""
    others = [holder for holder in holders if holder != user_id]
    if nkey is not None and others:
        raise AlreadyExistsError(
            f"nkey {nkey} is already the NATS identity of user {others[0]!r}; "
            "every user needs a key pair of its own"
        )


def check_create_room(
    existing: Room | None, owner: User | None, room_id: str, owner_id: str
) -> User:
    if existing is not None:
        raise AlreadyExistsError(f"room {room_id!r} already exists")
    found = require_user(owner, owner_id)
    _require_active(found)
    return found


def check_add_member(
    room: Room | None, user: User | None, member: Member | None, room_id: str, user_id: str
) -> Room:
    found_room = require_room(room, room_id)
    _require_active(require_user(user, user_id))
    if member is not None:
        raise AlreadyExistsError(f"user {user_id!r} is already a member of room {room_id!r}")
    return found_room


def check_remove_member(
    room: Room | None, member: Member | None, room_id: str, user_id: str
) -> Room:
    found_room = require_room(room, room_id)
    if member is None:
        raise NotFoundError(f"user {user_id!r} is not a member of room {room_id!r}")
    return found_room


def check_put_sealed_key(
    room: Room | None,
    user: User | None,
    member: Member | None,
    key_exists: bool,
    room_id: str,
    user_id: str,
) -> Room:
    found_room = require_room(room, room_id)
    _require_active(require_user(user, user_id))
    if member is None:
        raise NotFoundError(
            f"user {user_id!r} is not a member of room {room_id!r}; "
            "a sealed key is only put for a current member"
        )
    if key_exists:
        raise AlreadyExistsError(
            f"a sealed key for user {user_id!r} in room {room_id!r} at epoch "
            f"{found_room.epoch} already exists; `membershipd room rekey` starts a new epoch"
        )
    return found_room


def bumped(room: Room) -> Room:
    """The room at its next epoch; refused (before anything is written) at the last one."""
    if room.epoch >= MAX_INT:
        raise InvariantError(
            f"room {room.id!r} is at the highest epoch there is ({room.epoch}); "
            "it cannot move to a new epoch"
        )
    return replace(room, epoch=room.epoch + 1)
