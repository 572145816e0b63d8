"""The in-memory reference store: the plainest possible reading of the rules.

Every other store is compared with this one. It keeps four dicts keyed by primary
key and nothing else; an operation checks the rules, then writes, so a refused
operation writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from . import rules
from .model import (
    SCHEMA_VERSION,
    Member,
    Revocation,
    Room,
    SealedKeyRecord,
    Snapshot,
    User,
    now_ms,
    validate_epoch,
    validate_id,
    validate_optional_nkey,
    validate_public_key,
    validate_sealed_key,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self, snapshot: Snapshot | None = None, *, clock: Callable[[], int] = now_ms):
        self._clock = clock
        snap = snapshot or Snapshot()
        self.schema_version = SCHEMA_VERSION
        self._users = {u.id: u for u in snap.users}
        self._rooms = {r.id: r for r in snap.rooms}
        self._members = {m.pk: m for m in snap.members}
        self._keys = {k.pk: k for k in snap.sealed_keys}

    def _users_with_nkey(self, nkey: str | None) -> list[str]:
        return sorted(u.id for u in self._users.values() if nkey is not None and u.nkey == nkey)

    async def add_user(
        self,
        user_id: str,
        public_key: bytes,
        *,
        created_at: int | None = None,
        nkey: str | None = None,
    ) -> User:
        validate_id(user_id, "user id")
        validate_public_key(public_key)
        validate_optional_nkey(nkey)
        rules.check_new_user(self._users.get(user_id), user_id)
        rules.check_nkey_free(self._users_with_nkey(nkey), nkey, user_id)
        user = User(
            user_id,
            public_key,
            "active",
            self._clock() if created_at is None else created_at,
            nkey,
        )
        self._users[user_id] = user
        return user

    async def set_user_nkey(self, user_id: str, nkey: str | None) -> User:
        validate_id(user_id, "user id")
        validate_optional_nkey(nkey)
        user = rules.check_set_nkey(self._users.get(user_id), user_id, nkey)
        rules.check_nkey_free(self._users_with_nkey(nkey), nkey, user_id)
        user = replace(user, nkey=nkey)
        self._users[user_id] = user
        return user

    async def revoke_user(self, user_id: str) -> Revocation:
        validate_id(user_id, "user id")
        user = rules.require_user(self._users.get(user_id), user_id)
        was_active = user.status == "active"
        memberships = sorted(k for k in self._members if k[1] == user_id)
        # Every check before any write: a refused bump must leave everything as it was.
        # A legacy orphan membership has no room to bump.
        rooms = [
            rules.bumped(self._rooms[room_id])
            for room_id, _ in memberships
            if room_id in self._rooms
        ]
        user = replace(user, status="revoked")
        self._users[user_id] = user
        for key in memberships:
            del self._members[key]
        for room in rooms:
            self._rooms[room.id] = room
        return Revocation(user, tuple(rooms), was_active)

    async def get_user(self, user_id: str) -> User | None:
        return self._users.get(validate_id(user_id, "user id"))

    async def list_users(self) -> list[User]:
        return [self._users[k] for k in sorted(self._users)]

    async def create_room(self, room_id: str, owner: str, *, created_at: int | None = None) -> Room:
        validate_id(room_id, "room id")
        validate_id(owner, "user id")
        rules.check_create_room(self._rooms.get(room_id), self._users.get(owner), room_id, owner)
        room = Room(room_id, 1, self._clock() if created_at is None else created_at)
        self._rooms[room_id] = room
        self._members[(room_id, owner)] = Member(room_id, owner, "owner", 1)
        return room

    async def get_room(self, room_id: str) -> Room | None:
        return self._rooms.get(validate_id(room_id, "room id"))

    async def list_rooms(self) -> list[Room]:
        return [self._rooms[k] for k in sorted(self._rooms)]

    async def add_member(self, room_id: str, user_id: str) -> Member:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        room = rules.check_add_member(
            self._rooms.get(room_id),
            self._users.get(user_id),
            self._members.get((room_id, user_id)),
            room_id,
            user_id,
        )
        member = Member(room_id, user_id, "member", room.epoch)
        self._members[(room_id, user_id)] = member
        return member

    async def remove_member(self, room_id: str, user_id: str) -> Room:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        room = rules.check_remove_member(
            self._rooms.get(room_id), self._members.get((room_id, user_id)), room_id, user_id
        )
        room = rules.bumped(room)
        del self._members[(room_id, user_id)]
        self._rooms[room_id] = room
        return room

    async def get_member(self, room_id: str, user_id: str) -> Member | None:
        return self._members.get((validate_id(room_id, "room id"), validate_id(user_id, "user id")))

    async def list_members(self, room_id: str | None = None) -> list[Member]:
        if room_id is not None:
            validate_id(room_id, "room id")
        return [
            self._members[k] for k in sorted(self._members) if room_id is None or k[0] == room_id
        ]

    async def rekey(self, room_id: str) -> Room:
        validate_id(room_id, "room id")
        room = rules.bumped(rules.require_room(self._rooms.get(room_id), room_id))
        self._rooms[room_id] = room
        return room

    async def put_sealed_key(
        self, room_id: str, user_id: str, sealed_key: bytes
    ) -> SealedKeyRecord:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        validate_sealed_key(sealed_key)
        room = self._rooms.get(room_id)
        epoch = room.epoch if room is not None else 0
        rules.check_put_sealed_key(
            room,
            self._users.get(user_id),
            self._members.get((room_id, user_id)),
            (room_id, epoch, user_id) in self._keys,
            room_id,
            user_id,
        )
        record = SealedKeyRecord(room_id, epoch, user_id, sealed_key)
        self._keys[record.pk] = record
        return record

    async def get_sealed_key(
        self, room_id: str, user_id: str, epoch: int | None = None
    ) -> SealedKeyRecord | None:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        if epoch is None:
            room = self._rooms.get(room_id)
            if room is None:
                return None
            epoch = room.epoch
        return self._keys.get((room_id, validate_epoch(epoch), user_id))

    async def list_sealed_keys(self, room_id: str | None = None) -> list[SealedKeyRecord]:
        if room_id is not None:
            validate_id(room_id, "room id")
        return [self._keys[k] for k in sorted(self._keys) if room_id is None or k[0] == room_id]

    async def export_snapshot(self) -> Snapshot:
        return Snapshot(
            users=tuple(self._users.values()),
            rooms=tuple(self._rooms.values()),
            members=tuple(self._members.values()),
            sealed_keys=tuple(self._keys.values()),
            schema_version=self.schema_version,
        )

    async def close(self) -> None:
        return None
