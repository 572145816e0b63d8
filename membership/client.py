"""Clients of ``membershipd serve``: an admin's store over NATS, and a user's view.

:class:`ServiceStore` implements the :class:`~membership.store.Store` protocol by
sending each call to the service (``P.admin.<operation>``): results and errors come
back exactly as the store behind the service produced them, so the differential
tests hold it to the same agreement as the stores themselves.

:class:`UserClient` is what a unibus client uses: its own user record, its rooms,
and its own sealed keys, sent as itself (``P.user.<enc(its id)>.<operation>``).
:func:`connect_user` connects with the user's nkey seed and the one reply inbox the
server lets it read.
"""

from __future__ import annotations

from typing import Any, Final

import nats.errors
from nats.aio.client import Client

from .authz import DEFAULT_SUBJECT_PREFIX, user_inbox_prefix, user_subject
from .canonical import dumps, record_from_dict
from .connect import NatsTarget, close_nats, connect_nats
from .errors import NatsUnavailableError
from .model import Member, Revocation, Room, SealedKeyRecord, Snapshot, User
from .nkey import UserKeyPair
from .protocol import ADMIN_OPERATIONS, b64, decode_reply, error_from_reply

__all__ = ["ServiceStore", "UserClient", "connect_user"]

REQUEST_TIMEOUT: Final = 10.0


async def _request(nc: Client, subject: str, params: dict[str, Any], seconds: float) -> Any:
    payload = dumps(params).encode()
    timeout = seconds
    try:
        msg = await nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise NatsUnavailableError(f"no membershipd is serving {subject}") from None
    except nats.errors.TimeoutError:
        raise NatsUnavailableError(
            f"no reply on {subject} within {timeout:g} s (is this identity allowed to ask?)"
        ) from None
    except nats.errors.Error as exc:
        raise NatsUnavailableError(f"request on {subject} failed: {exc}") from None
    error = error_from_reply(msg.headers, msg.data)
    if error is not None:
        raise error
    return decode_reply(msg.data)


class ServiceStore:
    """The Store API of a running ``membershipd serve``, over NATS (an admin's view)."""

    def __init__(
        self,
        nc: Client,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        *,
        timeout: float = REQUEST_TIMEOUT,
        close_connection: bool = False,
    ) -> None:
        self._nc = nc
        self.prefix = subject_prefix
        self._timeout = timeout
        self._close = close_connection

    async def _call(self, method: str, **params: Any) -> Any:
        op = ADMIN_OPERATIONS[method]
        subject = f"{self.prefix}.admin.{op.name}"
        wire = {k: (b64(v) if isinstance(v, bytes) else v) for k, v in params.items()}
        return op.decode(await _request(self._nc, subject, wire, self._timeout))

    async def add_user(
        self,
        user_id: str,
        public_key: bytes,
        *,
        created_at: int | None = None,
        nkey: str | None = None,
    ) -> User:
        user: User = await self._call(
            "add_user", id=user_id, public_key=public_key, created_at=created_at, nkey=nkey
        )
        return user

    async def set_user_nkey(self, user_id: str, nkey: str | None) -> User:
        user: User = await self._call("set_user_nkey", id=user_id, nkey=nkey)
        return user

    async def revoke_user(self, user_id: str) -> Revocation:
        result: Revocation = await self._call("revoke_user", id=user_id)
        return result

    async def get_user(self, user_id: str) -> User | None:
        user: User | None = await self._call("get_user", id=user_id)
        return user

    async def list_users(self) -> list[User]:
        users: list[User] = await self._call("list_users")
        return users

    async def create_room(self, room_id: str, owner: str, *, created_at: int | None = None) -> Room:
        room: Room = await self._call("create_room", id=room_id, owner=owner, created_at=created_at)
        return room

    async def get_room(self, room_id: str) -> Room | None:
        room: Room | None = await self._call("get_room", id=room_id)
        return room

    async def list_rooms(self) -> list[Room]:
        rooms: list[Room] = await self._call("list_rooms")
        return rooms

    async def add_member(self, room_id: str, user_id: str) -> Member:
        member: Member = await self._call("add_member", room_id=room_id, user_id=user_id)
        return member

    async def remove_member(self, room_id: str, user_id: str) -> Room:
        room: Room = await self._call("remove_member", room_id=room_id, user_id=user_id)
        return room

    async def get_member(self, room_id: str, user_id: str) -> Member | None:
        member: Member | None = await self._call("get_member", room_id=room_id, user_id=user_id)
        return member

    async def list_members(self, room_id: str | None = None) -> list[Member]:
        members: list[Member] = await self._call("list_members", room_id=room_id)
        return members

    async def rekey(self, room_id: str) -> Room:
        room: Room = await self._call("rekey", id=room_id)
        return room

    async def put_sealed_key(
        self, room_id: str, user_id: str, sealed_key: bytes
    ) -> SealedKeyRecord:
        record: SealedKeyRecord = await self._call(
            "put_sealed_key", room_id=room_id, user_id=user_id, sealed_key=sealed_key
        )
        return record

    async def get_sealed_key(
        self, room_id: str, user_id: str, epoch: int | None = None
    ) -> SealedKeyRecord | None:
        record: SealedKeyRecord | None = await self._call(
            "get_sealed_key", room_id=room_id, user_id=user_id, epoch=epoch
        )
        return record

    async def list_sealed_keys(self, room_id: str | None = None) -> list[SealedKeyRecord]:
        records: list[SealedKeyRecord] = await self._call("list_sealed_keys", room_id=room_id)
        return records

    async def export_snapshot(self) -> Snapshot:
        snapshot: Snapshot = await self._call("export_snapshot")
        return snapshot

    async def close(self) -> None:
        if self._close:
            await close_nats(self._nc)


class UserClient:
    """One user's requests, sent as that user (the server lets it send no others)."""

    def __init__(
        self,
        nc: Client,
        user_id: str,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        *,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._nc = nc
        self.user_id = user_id
        self._root = user_subject(subject_prefix, user_id)
        self._timeout = timeout

    async def _ask(self, name: str, **params: Any) -> Any:
        return await _request(self._nc, f"{self._root}.{name}", params, self._timeout)

    async def whoami(self) -> User:
        return record_from_dict("users", await self._ask("whoami"))  # type: ignore[return-value]

    async def rooms(self) -> list[tuple[Room, Member]]:
        return [
            (record_from_dict("rooms", item["room"]), record_from_dict("members", item["member"]))  # type: ignore[misc]
            for item in await self._ask("rooms")
        ]

    async def room(self, room_id: str) -> tuple[Room, list[Member]]:
        found = await self._ask("room", id=room_id)
        room = record_from_dict("rooms", found["room"])
        members = [record_from_dict("members", m) for m in found["members"]]
        return room, members  # type: ignore[return-value]

    async def sealed_key(self, room_id: str, epoch: int | None = None) -> SealedKeyRecord:
        found = await self._ask("key", room_id=room_id, epoch=epoch)
        return record_from_dict("sealed_keys", found)  # type: ignore[return-value]


async def connect_user(target: NatsTarget, pair: UserKeyPair, *, name: str = "unibus") -> Client:
    """Connect as a user: its nkey, and the reply inbox only it may read."""
    return await connect_nats(
        target, name=name, nkey_seed=pair.seed, inbox_prefix=user_inbox_prefix(pair.public)
    )
