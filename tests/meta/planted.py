"""Known bugs, planted without editing product code.

Migration bugs are planted on the wire: a wrapper around nats-py's ``Client.publish``,
through which every KV write of every code path passes (``kv.put``, ``js.publish``,
pipelined publishes with a reply inbox), rewrites the messages bound for one namespace
the way the buggy code would have written them. Each write is still acknowledged by the
server, so the migration runs to its end as if nothing were wrong; only what lands in
the buckets is wrong. That keeps the planted bugs independent of how the migration is
structured inside, which is being reworked.

Store bugs (for the differential state machine) are planted on a store's method.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from nats.aio.client import Client

from harness.parity import reference_key
from membership.canonical import dumps
from membership.keycodec import decode_id, encode_id
from membership.kv import BUCKET_SUFFIXES, KVStore
from membership.memory import MemoryStore
from membership.model import Snapshot

Message = tuple[str, bytes, dict[str, str] | None]
Rewrite = Callable[[str, str, bytes, dict[str, str] | None], Message | None]
"""(bucket suffix, key, payload, headers) -> the message to send instead, or None."""

TOMBSTONE = {"KV-Operation": "DEL"}


@contextmanager
def on_the_wire(monkeypatch: pytest.MonkeyPatch, prefix: str, rewrite: Rewrite) -> Iterator[None]:
    """Apply ``rewrite`` to every publish into the buckets of ``prefix`` while active."""
    original = Client.publish
    head = f"$KV.{prefix}_"

    async def publish(
        self: Client,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        if subject.startswith(head):
            suffix, _, key = subject[len(head) :].partition(".")
            changed = rewrite(suffix, key, payload, headers)
            if changed is not None:
                subject, payload, headers = changed
        await original(self, subject, payload, reply=reply, headers=headers)

    with monkeypatch.context() as m:
        m.setattr(Client, "publish", publish)
        yield


def _is_put(payload: bytes, headers: dict[str, str] | None) -> bool:
    return bool(payload) and not (headers and "KV-Operation" in headers)


def epochs_reset_to_one(prefix: str) -> Rewrite:
    """An import that writes every room at epoch 1."""

    def rewrite(suffix: str, key: str, payload: bytes, headers: Any) -> Message | None:
        if suffix != BUCKET_SUFFIXES["rooms"] or not _is_put(payload, headers):
            return None
        room = json.loads(payload)
        room["epoch"] = 1
        return f"$KV.{prefix}_{suffix}.{key}", dumps(room).encode(), headers

    return rewrite


def revoked_users_dropped(prefix: str) -> Rewrite:
    """An import that leaves revoked users out (it deletes instead of writing them)."""

    def rewrite(suffix: str, key: str, payload: bytes, headers: Any) -> Message | None:
        if suffix != BUCKET_SUFFIXES["users"] or not _is_put(payload, headers):
            return None
        if json.loads(payload)["status"] != "revoked":
            return None
        return f"$KV.{prefix}_{suffix}.{key}", b"", dict(TOMBSTONE)

    return rewrite


def case_folding_keys(prefix: str) -> Rewrite:
    """A key encoding ``enc(id.lower())``: ``Case`` and ``case`` share one key."""

    def fold(token: str) -> str:
        try:
            return encode_id(decode_id(token).lower())
        except Exception:
            return token  # an epoch, or not an id: as it is

    def rewrite(suffix: str, key: str, payload: bytes, headers: Any) -> Message | None:
        if suffix == "meta":
            return None
        folded = ".".join(fold(token) for token in key.split("."))
        return f"$KV.{prefix}_{suffix}.{folded}", payload, headers

    return rewrite


def last_record_skipped(prefix: str, state: Snapshot) -> Rewrite:
    """A migration that loses the last record it writes (sealed keys go last)."""
    kind = next(
        k for k in reversed(("users", "rooms", "members", "sealed_keys")) if getattr(state, k)
    )
    last = getattr(state, kind)[-1]
    suffix, key = BUCKET_SUFFIXES[kind], reference_key(last)

    def rewrite(s: str, k: str, payload: bytes, headers: Any) -> Message | None:
        if (s, k) != (suffix, key) or not _is_put(payload, headers):
            return None
        return f"$KV.{prefix}_{s}.{k}", b"", dict(TOMBSTONE)

    return rewrite


def values_not_canonical(prefix: str) -> Rewrite:
    """Values as valid but non-canonical JSON (spaces): the same records, other bytes."""

    def rewrite(suffix: str, key: str, payload: bytes, headers: Any) -> Message | None:
        if suffix == "meta" or not _is_put(payload, headers):
            return None
        spaced = json.dumps(json.loads(payload), sort_keys=True, ensure_ascii=False, indent=1)
        return f"$KV.{prefix}_{suffix}.{key}", spaced.encode(), headers

    return rewrite


@contextmanager
def kv_rekey_bumps_twice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A KVStore whose rekey moves the epoch by two."""
    original = KVStore.rekey

    async def rekey(self: KVStore, room_id: str) -> Any:
        await original(self, room_id)
        return await original(self, room_id)

    with monkeypatch.context() as m:
        m.setattr(KVStore, "rekey", rekey)
        yield


@contextmanager
def sqlite_revoke_keeps_memberships(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A SQLiteStore whose revoke_user marks the user revoked and stops there."""
    from membership.model import Revocation
    from membership.sqlite import SQLiteStore

    async def revoke_user(self: SQLiteStore, user_id: str) -> Any:
        user = await self.get_user(user_id)
        original = await MemoryStore(Snapshot(users=(user,) if user else ())).revoke_user(user_id)
        self.connection.execute("UPDATE users SET status = 'revoked' WHERE id = ?", (user_id,))
        return Revocation(original.user, (), original.was_active)

    with monkeypatch.context() as m:
        m.setattr(SQLiteStore, "revoke_user", revoke_user)
        yield


@contextmanager
def service_hides_not_found(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``membershipd serve`` answering a missing record as an internal error (500)."""
    from membership import protocol

    real = protocol.error_reply

    def error_reply(exc: BaseException) -> tuple[str, str, bytes]:
        if isinstance(exc, protocol.NotFoundError):
            return real(RuntimeError("lookup failed"))
        return real(exc)

    monkeypatch.setattr(protocol, "error_reply", error_reply)
    import membership.service

    monkeypatch.setattr(membership.service, "error_reply", error_reply)
    yield


@contextmanager
def schema_rewritten_every_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A migration that, after its work, puts the schema record again (same bytes)."""
    from membership import migrate
    from membership.connect import connect_nats

    original = migrate.migrate_sqlite_to_kv

    async def migrate_sqlite_to_kv(db: Any, target: Any, **options: Any) -> Any:
        report = await original(db, target, **options)
        nc = await connect_nats(target)
        try:
            prefix = options.get("prefix", "membership")
            await nc.jetstream().publish(f"$KV.{prefix}_meta.schema", b'{"schema_version":2}')
        finally:
            await nc.close()
        return report

    with monkeypatch.context() as m:
        m.setattr(migrate, "migrate_sqlite_to_kv", migrate_sqlite_to_kv)
        yield
