"""The one interface every store implements, and what each operation promises.

Three implementations stand behind it: :class:`~membership.memory.MemoryStore`
(the reference model), :class:`~membership.sqlite.SQLiteStore` and
:class:`~membership.kv.KVStore`. The same sequence of operations gives the same
results, the same error classes and the same snapshot on all three; the
differential tests hold them to it.

Ids are validated on entry (:func:`~membership.model.validate_id`), invariants by
:mod:`membership.rules`. Reads return ``None`` for what does not exist; writes raise
an :class:`~membership.errors.InvariantError` and write nothing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .model import Member, Revocation, Room, SealedKeyRecord, Snapshot, User

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    async def add_user(
        self,
        user_id: str,
        public_key: bytes,
        *,
        created_at: int | None = None,
        nkey: str | None = None,
    ) -> User:
        """Add an active user, with its NATS identity ``nkey`` if given.
        ``AlreadyExistsError`` if the id is taken, or the nkey is another user's."""
        ...

    async def set_user_nkey(self, user_id: str, nkey: str | None) -> User:
        """Set, change or (with None) clear a user's NATS identity. Setting one needs an
        active user and an nkey no other user has; clearing works on a revoked user too."""
        ...

    async def revoke_user(self, user_id: str) -> Revocation:
        """Mark the user revoked and remove it from every room it belongs to, bumping
        each of those rooms' epoch. Revoking a revoked user finishes any removal left
        undone and is otherwise a no-op."""
        ...

    async def get_user(self, user_id: str) -> User | None: ...

    async def list_users(self) -> list[User]: ...

    async def create_room(self, room_id: str, owner: str, *, created_at: int | None = None) -> Room:
        """Create a room at epoch 1 with ``owner`` as its first member (role owner)."""
        ...

    async def get_room(self, room_id: str) -> Room | None: ...

    async def list_rooms(self) -> list[Room]: ...

    async def add_member(self, room_id: str, user_id: str) -> Member:
        """Add an active user to a room at the room's current epoch."""
        ...

    async def remove_member(self, room_id: str, user_id: str) -> Room:
        """Remove a member and bump the room's epoch by one; return the room."""
        ...

    async def get_member(self, room_id: str, user_id: str) -> Member | None:
        """One membership, or None (also when the room does not exist)."""
        ...

    async def list_members(self, room_id: str | None = None) -> list[Member]:
        """Members of one room, or of every room, sorted by (room_id, user_id)."""
        ...

    async def rekey(self, room_id: str) -> Room:
        """Bump the room's epoch by one; return the room."""
        ...

    async def put_sealed_key(
        self, room_id: str, user_id: str, sealed_key: bytes
    ) -> SealedKeyRecord:
        """Store a member's sealed room key at the room's current epoch."""
        ...

    async def get_sealed_key(
        self, room_id: str, user_id: str, epoch: int | None = None
    ) -> SealedKeyRecord | None:
        """The sealed key at ``epoch`` (default: the room's current epoch)."""
        ...

    async def list_sealed_keys(self, room_id: str | None = None) -> list[SealedKeyRecord]:
        """Sealed keys of one room, or all, sorted by (room_id, epoch, user_id)."""
        ...

    async def export_snapshot(self) -> Snapshot:
        """The whole state at one moment."""
        ...

    async def close(self) -> None: ...
