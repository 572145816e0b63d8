"""Invariant findings: where a snapshot breaks the rules the API enforces.

The API never produces these, but a legacy SQLite file may hold them, and the
migration copies them faithfully (faithfulness beats tidiness). ``verify`` lists
them separately from parity, so an operator sees both "the stores agree" and "this
is what they agree on".
"""

from __future__ import annotations

from collections.abc import Callable

from .diff import format_pk
from .model import Snapshot

__all__ = ["FindingsCollector", "invariant_findings"]


def invariant_findings(snapshot: Snapshot) -> list[str]:
    """One line per violation, in kind and primary-key order."""
    collector = FindingsCollector()
    for u in snapshot.users:
        collector.user(u.id, u.status, u.nkey)
    for r in snapshot.rooms:
        collector.room(r.id, r.epoch)
    for m in snapshot.members:
        collector.member(m.room_id, m.user_id, m.joined_epoch)
    for k in snapshot.sealed_keys:
        collector.sealed_key(k.room_id, k.epoch, k.user_id)
    return collector.findings()


class FindingsCollector:
    """:func:`invariant_findings` over a stream: feed users and rooms, then members,
    then sealed keys, each in primary-key order; only users, rooms and member keys
    are kept in memory, never the sealed keys."""

    def __init__(self) -> None:
        self._users: dict[str, str] = {}
        self._nkeys: dict[str, list[str]] = {}
        self._rooms: dict[str, int] = {}
        self._members: set[tuple[str, str]] = set()
        self._member_lines: list[str] = []
        self._key_lines: list[str] = []

    def user(self, user_id: str, status: str, nkey: str | None = None) -> None:
        self._users[user_id] = status
        if nkey is not None:
            self._nkeys.setdefault(nkey, []).append(user_id)

    def room(self, room_id: str, epoch: int) -> None:
        self._rooms[room_id] = epoch

    def member(self, room_id: str, user_id: str, joined_epoch: int) -> None:
        self._members.add((room_id, user_id))
        out = self._member_lines
        name = format_pk("members", (room_id, user_id))
        epoch = self._rooms.get(room_id)
        if epoch is None:
            out.append(f"{name}: room {room_id!r} does not exist (orphan member)")
        elif joined_epoch > epoch:
            out.append(f"{name}: joined at epoch {joined_epoch}, above the room's {epoch}")
        status = self._users.get(user_id)
        if status is None:
            out.append(f"{name}: user {user_id!r} does not exist (orphan member)")
        elif status == "revoked":
            out.append(f"{name}: user {user_id!r} is revoked but still a member")

    def sealed_key(self, room_id: str, epoch: int, user_id: str) -> None:
        out = self._key_lines
        room_epoch = self._rooms.get(room_id)
        if room_epoch is not None and epoch < room_epoch and user_id in self._users:
            return  # the common case: history of a past epoch
        name = format_pk("sealed_keys", (room_id, epoch, user_id))
        if room_epoch is None:
            out.append(f"{name}: room {room_id!r} does not exist")
        elif epoch > room_epoch:
            out.append(f"{name}: epoch {epoch} is above the room's epoch {room_epoch}")
        elif epoch == room_epoch and (room_id, user_id) not in self._members:
            out.append(f"{name}: a key at the current epoch for a user who is not a member")
        if user_id not in self._users:
            out.append(f"{name}: user {user_id!r} does not exist")

    def sealed_key_check(self) -> Callable[[str, int, str], None]:
        """:meth:`sealed_key` with its common case inlined: a million keys go through it."""
        rooms, users, full = self._rooms, self._users, self.sealed_key

        def check(room_id: str, epoch: int, user_id: str) -> None:
            room_epoch = rooms.get(room_id)
            if room_epoch is None or epoch >= room_epoch or user_id not in users:
                full(room_id, epoch, user_id)

        return check

    def findings(self) -> list[str]:
        shared = [
            f"users {', '.join(repr(u) for u in holders)}: share the nkey {nkey} "
            "(one identity for several users: none of them is let in)"
            for nkey, holders in sorted(self._nkeys.items(), key=lambda item: item[1])
            if len(holders) > 1
        ]
        return [*shared, *self._member_lines, *self._key_lines]
