"""Invariant findings: where a snapshot breaks the rules the API enforces.

The API never produces these, but a legacy SQLite file may hold them, and the
migration copies them faithfully (faithfulness beats tidiness). ``verify`` lists
them separately from parity, so an operator sees both "the stores agree" and "this
is what they agree on".
"""

from __future__ import annotations

from .diff import format_pk
from .model import Snapshot

__all__ = ["invariant_findings"]


def invariant_findings(snapshot: Snapshot) -> list[str]:
    """One line per violation, in kind and primary-key order."""
    users = {u.id: u for u in snapshot.users}
    rooms = {r.id: r for r in snapshot.rooms}
    members = {m.pk for m in snapshot.members}
    out: list[str] = []
    for m in snapshot.members:
        name = format_pk("members", m.pk)
        room = rooms.get(m.room_id)
        if room is None:
            out.append(f"{name}: room {m.room_id!r} does not exist (orphan member)")
        elif m.joined_epoch > room.epoch:
            out.append(f"{name}: joined at epoch {m.joined_epoch}, above the room's {room.epoch}")
        user = users.get(m.user_id)
        if user is None:
            out.append(f"{name}: user {m.user_id!r} does not exist (orphan member)")
        elif user.status == "revoked":
            out.append(f"{name}: user {m.user_id!r} is revoked but still a member")
    for k in snapshot.sealed_keys:
        name = format_pk("sealed_keys", k.pk)
        room = rooms.get(k.room_id)
        if room is None:
            out.append(f"{name}: room {k.room_id!r} does not exist")
        elif k.epoch > room.epoch:
            out.append(f"{name}: epoch {k.epoch} is above the room's epoch {room.epoch}")
        elif k.epoch == room.epoch and (k.room_id, k.user_id) not in members:
            out.append(f"{name}: a key at the current epoch for a user who is not a member")
        if k.user_id not in users:
            out.append(f"{name}: user {k.user_id!r} does not exist")
    return out
