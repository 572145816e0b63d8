"""The wire protocol of ``membershipd serve``: subjects, requests, replies, errors.

Subjects, under a prefix ``P`` (``--subject-prefix``, default ``unibus.membership``)::

    P.admin.<operation>                 an admin's call of the Store API (table below)
    P.user.<enc(user id)>.<operation>   a user's own reads: whoami, rooms, room, key

Requests and replies are canonical JSON (:mod:`membership.canonical`): a request is
an object of named parameters (bytes as base64); a reply is ``{"result": ...}``
(records as ``export`` prints them) or, for an error, the micro service error
headers ``Nats-Service-Error`` (the one-line message the CLI would print) and
``Nats-Service-Error-Code`` with a body ``{"error": {"code", "kind", "message"}}``:

====  ==============  ==============================================================
code  meaning         errors
====  ==============  ==============================================================
400   refused input   a malformed request or id, a rule broken (revoked user, ...)
403   forbidden       a user asking for what is not its own
404   not found       a user, room or membership an operation needs
409   conflict        exists already; concurrent updates kept winning the race
500   internal        the store failed underneath
503   unavailable     the store's server cannot be reached
====  ==============  ==============================================================

``kind`` is the class name of the :mod:`membership.errors` error, so a client raises
exactly the error the store raised (the differential tests compare them).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import errors as errors_module
from .canonical import KINDS, dumps, record_from_dict, record_to_dict, snapshot_to_dict
from .errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    MembershipError,
    NatsUnavailableError,
    NotFoundError,
    PermissionDeniedError,
)
from .model import Member, Revocation, Room, SealedKeyRecord, Snapshot, User
from .store import Store

__all__ = [
    "ADMIN_OPERATIONS",
    "CODES",
    "USER_OPERATIONS",
    "AdminOperation",
    "Params",
    "decode_reply",
    "error_code",
    "error_from_reply",
    "error_reply",
    "result_reply",
]

CODES: Final = {
    400: "refused input",
    403: "forbidden",
    404: "not found",
    409: "conflict",
    500: "internal",
    503: "unavailable",
}


def error_code(exc: BaseException) -> int:
    """The service error code of an error (the table in the module docstring)."""
    if isinstance(exc, PermissionDeniedError):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, (AlreadyExistsError, ConflictError)):
        return 409
    if isinstance(exc, NatsUnavailableError):
        return 503
    if isinstance(exc, MembershipError) and exc.exit_code == 2:
        return 400
    return 500


def _error_classes() -> dict[str, type[MembershipError]]:
    out: dict[str, type[MembershipError]] = {}
    for name in errors_module.__all__:
        value = getattr(errors_module, name)
        if isinstance(value, type) and issubclass(value, MembershipError):
            out[name] = value
    return out


_ERRORS: Final = _error_classes()


def error_reply(exc: BaseException) -> tuple[str, str, bytes]:
    """(code, one-line message, body) of the reply to a failed request.

    Errors the library raises on purpose carry their own message; anything else is
    an internal error whose message names its class only (no data, no secret)."""
    code = error_code(exc)
    if isinstance(exc, MembershipError):
        kind, message = type(exc).__name__, str(exc) or type(exc).__name__
    else:
        kind, message = "FailedError", f"internal error in membershipd ({type(exc).__name__})"
    body = dumps({"error": {"code": code, "kind": kind, "message": message}}).encode()
    # A header is one line: the line the CLI would print. The body keeps the message exact.
    return str(code), " ".join(message.split()), body


def error_from_reply(headers: Mapping[str, str] | None, data: bytes) -> MembershipError | None:
    """The error a reply carries (the very class the store raised), or None."""
    if not headers or "Nats-Service-Error-Code" not in headers:
        return None
    code = headers.get("Nats-Service-Error-Code", "500")
    message = headers.get("Nats-Service-Error", "")
    kind = "FailedError"
    try:
        found = json.loads(data)["error"]
        kind, message = str(found["kind"]), str(found["message"])
    except (ValueError, KeyError, TypeError):
        pass
    cls = _ERRORS.get(kind) or (
        errors_module.RefusedError if code.startswith("4") else errors_module.FailedError
    )
    try:
        return cls(message)
    except TypeError:  # an error class with extra arguments
        return errors_module.FailedError(message)


# -- results -------------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """A result as plain JSON data: records as ``export`` prints them."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (User, Room, Member, SealedKeyRecord)):
        return record_to_dict(value)
    if isinstance(value, Revocation):
        return {
            "rooms": [record_to_dict(r) for r in value.rooms],
            "user": record_to_dict(value.user),
            "was_active": value.was_active,
        }
    if isinstance(value, Snapshot):
        return snapshot_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    raise TypeError(f"no wire form for {type(value).__name__}")


def result_reply(value: Any) -> bytes:
    return dumps({"result": to_plain(value)}).encode()


def decode_reply(data: bytes) -> Any:
    """The ``result`` of a successful reply (plain JSON data)."""
    try:
        return json.loads(data)["result"]
    except (ValueError, KeyError, TypeError):
        raise errors_module.DataError(
            "membershipd sent a reply that is not {'result': ...}"
        ) from None


def _record(kind: str) -> Callable[[Any], Any]:
    def make(data: Any) -> Any:
        return None if data is None else record_from_dict(kind, data)

    return make


def _records(kind: str) -> Callable[[Any], Any]:
    return lambda data: [record_from_dict(kind, item) for item in data]


def _revocation(data: Any) -> Revocation:
    return Revocation(
        user=record_from_dict("users", data["user"]),  # type: ignore[arg-type]
        rooms=tuple(record_from_dict("rooms", r) for r in data["rooms"]),  # type: ignore[misc]
        was_active=bool(data["was_active"]),
    )


def _snapshot(data: Any) -> Snapshot:
    lists = {kind: tuple(record_from_dict(kind, item) for item in data[kind]) for kind in KINDS}
    return Snapshot(
        users=lists["users"],  # type: ignore[arg-type]
        rooms=lists["rooms"],  # type: ignore[arg-type]
        members=lists["members"],  # type: ignore[arg-type]
        sealed_keys=lists["sealed_keys"],  # type: ignore[arg-type]
        schema_version=int(data["schema_version"]),
    )


# -- parameters ----------------------------------------------------------------------------


class Params:
    """A request's parameters, each read with the type it must have."""

    def __init__(self, data: bytes) -> None:
        try:
            value = json.loads(data) if data.strip() else {}
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise InvalidInputError("the request is not UTF-8 JSON") from None
        if not isinstance(value, dict):
            raise InvalidInputError("the request must be a JSON object of parameters")
        self._data: dict[str, Any] = value

    def _get(self, name: str, optional: bool) -> Any:
        if name not in self._data:
            if optional:
                return None
            raise InvalidInputError(f"the request lacks the parameter {name!r}")
        return self._data[name]

    def text(self, name: str) -> str:
        value = self._get(name, False)
        if not isinstance(value, str):
            raise InvalidInputError(f"request parameter {name!r} must be a string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._get(name, True)
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"request parameter {name!r} must be a string or null")
        return value

    def optional_int(self, name: str) -> int | None:
        value = self._get(name, True)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidInputError(f"request parameter {name!r} must be an integer or null")
        return value

    def blob(self, name: str) -> bytes:
        value = self.text(name)
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise InvalidInputError(f"request parameter {name!r} must be base64") from None


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# -- the admin operations: the Store API, one subject each -----------------------------------


@dataclass(frozen=True)
class AdminOperation:
    """One Store method on the wire: how the service calls it and how a client reads back."""

    name: str
    """The subject token after ``P.admin.`` (and, with ``.`` as ``-``, the endpoint name)."""
    method: str
    call: Callable[[Store, Params], Awaitable[Any]]
    decode: Callable[[Any], Any]
    writes_allowlist: bool = False
    """The operation may change who may connect (the server's authorization)."""


async def _add_user(s: Store, p: Params) -> User:
    return await s.add_user(
        p.text("id"),
        p.blob("public_key"),
        created_at=p.optional_int("created_at"),
        nkey=p.optional_text("nkey"),
    )


async def _export(s: Store, p: Params) -> Snapshot:
    return await s.export_snapshot()


ADMIN_OPERATIONS: Final[dict[str, AdminOperation]] = {
    op.method: op
    for op in (
        AdminOperation("user.add", "add_user", _add_user, _record("users"), True),
        AdminOperation(
            "user.set-nkey",
            "set_user_nkey",
            lambda s, p: s.set_user_nkey(p.text("id"), p.optional_text("nkey")),
            _record("users"),
            True,
        ),
        AdminOperation(
            "user.revoke",
            "revoke_user",
            lambda s, p: s.revoke_user(p.text("id")),
            _revocation,
            True,
        ),
        AdminOperation(
            "user.get", "get_user", lambda s, p: s.get_user(p.text("id")), _record("users")
        ),
        AdminOperation("user.list", "list_users", lambda s, p: s.list_users(), _records("users")),
        AdminOperation(
            "room.create",
            "create_room",
            lambda s, p: s.create_room(
                p.text("id"), p.text("owner"), created_at=p.optional_int("created_at")
            ),
            _record("rooms"),
        ),
        AdminOperation(
            "room.get", "get_room", lambda s, p: s.get_room(p.text("id")), _record("rooms")
        ),
        AdminOperation("room.list", "list_rooms", lambda s, p: s.list_rooms(), _records("rooms")),
        AdminOperation(
            "room.add-member",
            "add_member",
            lambda s, p: s.add_member(p.text("room_id"), p.text("user_id")),
            _record("members"),
        ),
        AdminOperation(
            "room.remove-member",
            "remove_member",
            lambda s, p: s.remove_member(p.text("room_id"), p.text("user_id")),
            _record("rooms"),
        ),
        AdminOperation(
            "room.member",
            "get_member",
            lambda s, p: s.get_member(p.text("room_id"), p.text("user_id")),
            _record("members"),
        ),
        AdminOperation(
            "room.members",
            "list_members",
            lambda s, p: s.list_members(p.optional_text("room_id")),
            _records("members"),
        ),
        AdminOperation("room.rekey", "rekey", lambda s, p: s.rekey(p.text("id")), _record("rooms")),
        AdminOperation(
            "keys.put",
            "put_sealed_key",
            lambda s, p: s.put_sealed_key(
                p.text("room_id"), p.text("user_id"), p.blob("sealed_key")
            ),
            _record("sealed_keys"),
        ),
        AdminOperation(
            "keys.get",
            "get_sealed_key",
            lambda s, p: s.get_sealed_key(
                p.text("room_id"), p.text("user_id"), p.optional_int("epoch")
            ),
            _record("sealed_keys"),
        ),
        AdminOperation(
            "keys.list",
            "list_sealed_keys",
            lambda s, p: s.list_sealed_keys(p.optional_text("room_id")),
            _records("sealed_keys"),
        ),
        AdminOperation("export", "export_snapshot", _export, _snapshot),
    )
}
"""Store method name -> its operation on the wire."""


# -- the user operations: a user's own reads ---------------------------------------------------


def _require_active(user: User | None, user_id: str) -> User:
    if user is None or user.status != "active":
        raise PermissionDeniedError(f"user {user_id!r} is not an active user of the allowlist")
    return user


async def _active_user(store: Store, user_id: str) -> User:
    return _require_active(await store.get_user(user_id), user_id)


async def _in_room(store: Store, user_id: str, room_id: str) -> tuple[Member, Room]:
    """The requester's membership and the room, read at once (on KV: three round trips in
    parallel). A room the requester is not in gets the same answer whether or not it
    exists: nothing leaks."""
    user, member, room = await asyncio.gather(
        store.get_user(user_id), store.get_member(room_id, user_id), store.get_room(room_id)
    )
    _require_active(user, user_id)
    if member is None or room is None:
        raise PermissionDeniedError(f"user {user_id!r} is not a member of room {room_id!r}")
    return member, room


async def user_whoami(store: Store, user_id: str, p: Params) -> User:
    return await _active_user(store, user_id)


async def user_rooms(store: Store, user_id: str, p: Params) -> list[dict[str, Any]]:
    await _active_user(store, user_id)
    mine = [m for m in await store.list_members() if m.user_id == user_id]
    out = []
    for member in mine:
        room = await store.get_room(member.room_id)
        if room is not None:  # a legacy orphan membership has no room to show
            out.append({"member": member, "room": room})
    return out


async def user_room(store: Store, user_id: str, p: Params) -> dict[str, Any]:
    room_id = p.text("id")
    _, room = await _in_room(store, user_id, room_id)
    return {"members": await store.list_members(room_id), "room": room}


async def user_key(store: Store, user_id: str, p: Params) -> SealedKeyRecord:
    """The requester's own sealed key of a room it belongs to, at an epoch since it joined."""
    room_id, epoch = p.text("room_id"), p.optional_int("epoch")
    member, room = await _in_room(store, user_id, room_id)
    at = room.epoch if epoch is None else epoch
    if not member.joined_epoch <= at <= room.epoch:
        raise PermissionDeniedError(
            f"user {user_id!r} has no key of room {room_id!r} at epoch {at}: it is a member "
            f"from epoch {member.joined_epoch}, and the room is at epoch {room.epoch}"
        )
    record = await store.get_sealed_key(room_id, user_id, at)
    if record is None:
        raise NotFoundError(
            f"no sealed key for user {user_id!r} in room {room_id!r} at epoch {at} yet"
        )
    return record


USER_OPERATIONS: Final[dict[str, Callable[[Store, str, Params], Awaitable[Any]]]] = {
    "whoami": user_whoami,
    "rooms": user_rooms,
    "room": user_room,
    "key": user_key,
}
"""The subject token after ``P.user.<enc(user id)>.`` -> what the user gets."""
