"""The JetStream Key-Value store: five buckets under one prefix.

Layout (a contract, documented in the README)::

    <prefix>_users    enc(user_id)                        -> User
    <prefix>_rooms    enc(room_id)                        -> Room
    <prefix>_members  enc(room_id).enc(user_id)           -> Member
    <prefix>_keys     enc(room_id).<epoch>.enc(user_id)   -> SealedKeyRecord
    <prefix>_meta     schema                              -> {"schema_version": N}

Values are canonical JSON (:mod:`membership.canonical`), keys come from
:mod:`membership.keycodec`.

Reads never trust a possibly lagging replica: a point read is a *non-direct*
``STREAM.MSG.GET`` (answered by the stream leader), and a bulk read goes through an
ephemeral consumer with ``LAST_PER_SUBJECT`` delivery, which also is far faster than
one get per key. Writes that depend on what they read are compare-and-swap
(``Nats-Expected-Last-Subject-Sequence``); a conflict re-reads and re-checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from . import rules
from .canonical import KINDS, decode_record, dumps, encode_record
from .errors import (
    BucketConfigError,
    DataError,
    InvalidInputError,
    MembershipError,
    NatsUnavailableError,
    SchemaError,
    StoreError,
    TargetNotEmptyError,
)
from .keycodec import encode_id, member_key, sealed_key_key
from .model import (
    SCHEMA_VERSION,
    Member,
    Record,
    Revocation,
    Room,
    SealedKeyRecord,
    Snapshot,
    User,
    now_ms,
    validate_epoch,
    validate_id,
    validate_public_key,
    validate_sealed_key,
)

__all__ = [
    "BUCKET_SUFFIXES",
    "DEFAULT_PREFIX",
    "ImportCounts",
    "KVStore",
    "bucket_names",
    "key_of",
    "validate_prefix",
]

DEFAULT_PREFIX: Final = "membership"
BUCKET_SUFFIXES: Final = {
    "users": "users",
    "rooms": "rooms",
    "members": "members",
    "sealed_keys": "keys",
    "meta": "meta",
}
HISTORY: Final = 1
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KV_OP: Final = "KV-Operation"
_EXPECTED_LAST: Final = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST: Final = (10071, 10164)
_CAS_RETRIES: Final = 20
ACK_TIMEOUT: Final = 10.0
WRITE_WINDOW: Final = 2048
FETCH_BATCH: Final = 4096

T = TypeVar("T")


def validate_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or _PREFIX_RE.fullmatch(prefix) is None:
        raise InvalidInputError(
            f"--bucket-prefix {prefix!r} is not valid: use 1 to 64 of A-Z a-z 0-9 _ -"
        )
    return prefix


def bucket_names(prefix: str) -> dict[str, str]:
    """Bucket name per record kind (and ``meta``) for a prefix."""
    validate_prefix(prefix)
    return {kind: f"{prefix}_{suffix}" for kind, suffix in BUCKET_SUFFIXES.items()}


def key_of(record: Record) -> str:
    """The KV key a record lives under."""
    if isinstance(record, (User, Room)):
        return encode_id(record.id)
    if isinstance(record, Member):
        return member_key(record.room_id, record.user_id)
    return sealed_key_key(record.room_id, record.epoch, record.user_id)


class _Conflict(Exception):
    """A compare-and-swap lost a race; the operation re-reads and retries."""


@dataclass
class ImportCounts:
    source: int = 0
    written: int = 0
    unchanged: int = 0
    pruned: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "source": self.source,
            "written": self.written,
            "unchanged": self.unchanged,
            "pruned": self.pruned,
        }


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int


@asynccontextmanager
async def nats_errors(where: str) -> AsyncIterator[None]:
    """Translate nats-py exceptions into membership errors naming ``where``."""
    try:
        yield
    except (MembershipError, _Conflict):
        raise
    except nats.js.errors.ServiceUnavailableError as exc:
        raise StoreError(f"{where}: JetStream is not available on the server") from exc
    except nats.errors.NoRespondersError as exc:
        raise StoreError(
            f"{where}: no JetStream responded (is the server started with JetStream, -js?)"
        ) from exc
    except nats.errors.MaxPayloadError as exc:
        raise DataError(f"{where}: a value is larger than the server's max_payload") from exc
    except nats.js.errors.APIError as exc:
        raise StoreError(
            f"{where}: JetStream refused the request ({exc.err_code}: {exc.description})"
        ) from exc
    except (
        nats.errors.TimeoutError,
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.StaleConnectionError,
        nats.errors.OutboundBufferLimitError,
        TimeoutError,
        ConnectionError,
    ) as exc:
        raise NatsUnavailableError(
            f"{where}: lost the NATS server ({exc.__class__.__name__}); rerun when it is back"
        ) from exc


def _is_tombstone(headers: Any) -> bool:
    return bool(headers) and headers.get(_KV_OP) in ("DEL", "PURGE")


class KVStore:
    """A membership store in JetStream KV buckets. Open with :meth:`open`."""

    def __init__(self, nc: Client, prefix: str, clock: Callable[[], int]) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=ACK_TIMEOUT)
        self.prefix = prefix
        self.buckets = bucket_names(prefix)
        self._clock = clock
        self.schema_version = SCHEMA_VERSION

    # -- opening ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        nc: Client,
        prefix: str = DEFAULT_PREFIX,
        *,
        create: bool = False,
        replicas: int | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> KVStore:
        """Open the namespace ``prefix``.

        With ``create``, missing buckets are made (``replicas``, default 1) and the
        schema record written; without it a missing namespace is a
        :class:`StoreError`. With ``replicas``, existing buckets must have that many
        replicas (:class:`BucketConfigError` otherwise).
        """
        store = cls(nc, validate_prefix(prefix), clock)
        found = await store.bucket_replicas()
        missing = [b for b, r in found.items() if r is None]
        if replicas is not None:
            store.check_bucket_config(replicas, await store.bucket_configs())
        if missing and not create:
            raise StoreError(
                f"no membership data under bucket prefix {prefix!r} on this server "
                f"(missing buckets: {', '.join(missing)}); `migrate-to-kv` creates them"
            )
        if missing:
            await store.create_buckets(replicas or 1)
        version = await store.read_schema_version()
        if version is None:
            if not create:
                raise SchemaError(f"bucket {store.buckets['meta']} has no schema record")
            await store.write_schema_version(SCHEMA_VERSION)
            version = SCHEMA_VERSION
        store.schema_version = version
        return store

    async def close(self) -> None:
        """The connection belongs to the caller; nothing to release here."""
        return None

    def stream(self, kind: str) -> str:
        return f"KV_{self.buckets[kind]}"

    def subject(self, kind: str, key: str) -> str:
        return f"$KV.{self.buckets[kind]}.{key}"

    async def bucket_configs(self) -> dict[str, api.StreamConfig | None]:
        """The stream config of each bucket, ``None`` where the bucket is missing."""
        out: dict[str, api.StreamConfig | None] = {}
        for kind, bucket in self.buckets.items():
            async with nats_errors(f"reading bucket {bucket}"):
                try:
                    info = await self._js.stream_info(self.stream(kind))
                    out[bucket] = info.config
                except nats.js.errors.NotFoundError:
                    out[bucket] = None
        return out

    async def bucket_replicas(self) -> dict[str, int | None]:
        return {
            b: (c.num_replicas or 1) if c is not None else None
            for b, c in (await self.bucket_configs()).items()
        }

    def check_bucket_config(self, replicas: int, configs: dict[str, Any]) -> None:
        for bucket, config in configs.items():
            if config is None:
                continue
            have = (config.num_replicas or 1, config.max_msgs_per_subject)
            if have != (replicas, HISTORY):
                raise BucketConfigError(
                    f"bucket {bucket} exists with replicas {have[0]}, history {have[1]}; "
                    f"this run asks for replicas {replicas}, history {HISTORY}. Use "
                    f"--replicas {have[0]}, or change the bucket with `nats kv edit`/"
                    "`nats stream edit` first"
                )

    async def create_buckets(self, replicas: int) -> None:
        if not 1 <= replicas <= 5:
            raise InvalidInputError(f"--replicas must be 1 to 5, not {replicas}")
        configs = await self.bucket_configs()
        self.check_bucket_config(replicas, configs)
        for bucket in self.buckets.values():
            if configs[bucket] is not None:
                continue
            async with nats_errors(f"creating bucket {bucket}"):
                try:
                    await self._js.create_key_value(
                        bucket=bucket, history=HISTORY, replicas=replicas
                    )
                except nats.js.errors.APIError as exc:
                    if exc.err_code == 10074:  # replicas > 1 not supported in non-clustered mode
                        raise BucketConfigError(
                            f"cannot create bucket {bucket} with {replicas} replicas: "
                            "the server is not clustered (use --replicas 1, or a cluster)"
                        ) from exc
                    if exc.err_code == 10058:  # created meanwhile with other settings
                        self.check_bucket_config(replicas, await self.bucket_configs())
                        continue
                    raise

    async def read_schema_version(self) -> int | None:
        async with nats_errors(f"reading {self.buckets['meta']}"):
            entry = await self._get_raw("meta", "schema")
        if entry is None:
            return None
        try:
            data = json.loads(entry.value)
            version = data["schema_version"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise DataError(
                f"bucket {self.buckets['meta']} has a malformed schema record"
            ) from None
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"KV namespace {self.prefix!r} has schema version {version}, newer than this "
                f"membershipd understands ({SCHEMA_VERSION}); upgrade unibus-membership"
            )
        return int(version)

    async def write_schema_version(self, version: int) -> bool:
        """Write the schema record unless it already says ``version``; True if written."""
        value = dumps({"schema_version": version}).encode()
        async with nats_errors(f"writing {self.buckets['meta']}"):
            entry = await self._get_raw("meta", "schema")
            if entry is not None and entry.value == value:
                return False
            await self._js.publish(self.subject("meta", "schema"), value)
        return True

    # -- primitive reads and writes -------------------------------------------------

    async def _get_raw(self, kind: str, key: str) -> Entry | None:
        """The live value under ``key`` read from the stream leader, or None."""
        try:
            msg = await self._js.get_last_msg(self.stream(kind), self.subject(kind, key))
        except nats.js.errors.NotFoundError:
            return None
        if _is_tombstone(msg.headers):
            return Entry(key, b"", -int(msg.seq or 0))  # negative: deleted at that revision
        return Entry(key, msg.data or b"", int(msg.seq or 0))

    async def _get(self, kind: str, key: str) -> tuple[Any, int]:
        """(record or None, revision to CAS against: 0 if the key never existed)."""
        async with nats_errors(f"reading {self.buckets[kind]}"):
            entry = await self._get_raw(kind, key)
        if entry is None:
            return None, 0
        if entry.revision < 0:
            return None, -entry.revision
        return self._decode(kind, entry), entry.revision

    def _decode(self, kind: str, entry: Entry) -> Any:
        record = decode_record(kind, entry.value)
        if key_of(record) != entry.key:
            raise DataError(
                f"bucket {self.buckets[kind]}: the value under key {entry.key!r} is a record "
                f"for key {key_of(record)!r}"
            )
        return record

    async def _cas(self, kind: str, key: str, value: bytes | None, last: int) -> int:
        """Write (or delete, when ``value`` is None) only if the key is at ``last``."""
        headers = {_EXPECTED_LAST: str(last)}
        if value is None:
            headers[_KV_OP] = "DEL"
        async with nats_errors(f"writing {self.buckets[kind]}"):
            try:
                ack = await self._js.publish(self.subject(kind, key), value or b"", headers=headers)
            except nats.js.errors.APIError as exc:
                if exc.err_code in _WRONG_LAST:
                    raise _Conflict from exc
                raise
        return int(ack.seq)

    async def _retry(self, op: Callable[[], Awaitable[T]]) -> T:
        for _ in range(_CAS_RETRIES):
            try:
                return await op()
            except _Conflict:
                await asyncio.sleep(0)
        raise StoreError(
            f"KV namespace {self.prefix!r}: {_CAS_RETRIES} concurrent updates in a row "
            "won the race; retry the command"
        )

    async def scan(self, kind: str, filter_key: str = ">") -> list[Entry]:
        """Every live key of a bucket (tombstones skipped), read through a consumer."""
        subject = self.subject(kind, filter_key)
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=30.0,
        )
        entries: list[Entry] = []
        prefix_len = len(self.subject(kind, ""))
        async with nats_errors(f"reading {self.buckets[kind]}"):
            try:
                psub = await self._js.pull_subscribe(
                    subject, stream=self.stream(kind), config=config
                )
            except nats.js.errors.NotFoundError:
                raise StoreError(f"bucket {self.buckets[kind]} does not exist") from None
            name: str | None = None
            try:
                info = await psub.consumer_info()
                name = info.name
                pending = info.num_pending or 0
                while pending > 0:
                    msgs = await psub.fetch(min(pending, FETCH_BATCH), timeout=ACK_TIMEOUT)
                    for msg in msgs:
                        if not _is_tombstone(msg.headers):
                            entries.append(
                                Entry(
                                    msg.subject[prefix_len:], msg.data, msg.metadata.sequence.stream
                                )
                            )
                        pending = msg.metadata.num_pending
            finally:
                await psub.unsubscribe()
                if name is not None:
                    # best effort: the consumer's inactive_threshold reaps it otherwise
                    with contextlib.suppress(Exception):
                        await self._js.delete_consumer(self.stream(kind), name)
        return entries

    async def _records(self, kind: str, filter_key: str = ">") -> list[Any]:
        records = [self._decode(kind, e) for e in await self.scan(kind, filter_key)]
        records.sort(key=lambda r: r.pk)
        return records

    # -- users --------------------------------------------------------------------

    async def add_user(
        self, user_id: str, public_key: bytes, *, created_at: int | None = None
    ) -> User:
        validate_id(user_id, "user id")
        validate_public_key(public_key)
        key = encode_id(user_id)

        async def op() -> User:
            existing, rev = await self._get("users", key)
            rules.check_new_user(existing, user_id)
            user = User(
                user_id, public_key, "active", self._clock() if created_at is None else created_at
            )
            await self._cas("users", key, encode_record(user), rev)
            return user

        return await self._retry(op)

    async def revoke_user(self, user_id: str) -> Revocation:
        validate_id(user_id, "user id")
        key = encode_id(user_id)

        async def mark() -> tuple[User, bool]:
            user, rev = await self._get("users", key)
            user = rules.require_user(user, user_id)
            if user.status == "revoked":
                return user, False
            revoked = replace(user, status="revoked")
            await self._cas("users", key, encode_record(revoked), rev)
            return revoked, True

        # Revoked first: from here on the user can get no new membership or key.
        user, was_active = await self._retry(mark)
        rooms = []
        for entry in sorted(await self.scan("members", f"*.{key}"), key=lambda e: e.key):
            member: Member = self._decode("members", entry)
            try:
                await self._cas("members", entry.key, None, entry.revision)
            except _Conflict:
                continue  # removed (or changed) meanwhile by someone else
            room = await self._bump_epoch(member.room_id)
            if room is not None:
                rooms.append(room)
        return Revocation(user, tuple(rooms), was_active)

    async def get_user(self, user_id: str) -> User | None:
        user, _ = await self._get("users", encode_id(validate_id(user_id, "user id")))
        return user  # type: ignore[no-any-return]

    async def list_users(self) -> list[User]:
        return await self._records("users")

    # -- rooms and members ----------------------------------------------------------

    async def _bump_epoch(self, room_id: str) -> Room | None:
        key = encode_id(room_id)

        async def op() -> Room | None:
            room: Room | None
            room, rev = await self._get("rooms", key)
            if room is None:
                return None
            bumped = replace(room, epoch=room.epoch + 1)
            await self._cas("rooms", key, encode_record(bumped), rev)
            return bumped

        return await self._retry(op)

    async def create_room(self, room_id: str, owner: str, *, created_at: int | None = None) -> Room:
        validate_id(room_id, "room id")
        validate_id(owner, "user id")
        key = encode_id(room_id)

        async def op() -> Room:
            existing, rev = await self._get("rooms", key)
            user, _ = await self._get("users", encode_id(owner))
            rules.check_create_room(existing, user, room_id, owner)
            room = Room(room_id, 1, self._clock() if created_at is None else created_at)
            await self._cas("rooms", key, encode_record(room), rev)
            return room

        room = await self._retry(op)
        owner_record = Member(room_id, owner, "owner", 1)
        async with nats_errors(f"writing {self.buckets['members']}"):
            await self._js.publish(
                self.subject("members", key_of(owner_record)), encode_record(owner_record)
            )
        return room

    async def get_room(self, room_id: str) -> Room | None:
        room, _ = await self._get("rooms", encode_id(validate_id(room_id, "room id")))
        return room  # type: ignore[no-any-return]

    async def list_rooms(self) -> list[Room]:
        return await self._records("rooms")

    async def add_member(self, room_id: str, user_id: str) -> Member:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        key = member_key(room_id, user_id)

        async def op() -> Member:
            room, _ = await self._get("rooms", encode_id(room_id))
            user, _ = await self._get("users", encode_id(user_id))
            existing, rev = await self._get("members", key)
            room = rules.check_add_member(room, user, existing, room_id, user_id)
            member = Member(room_id, user_id, "member", room.epoch)
            await self._cas("members", key, encode_record(member), rev)
            return member

        return await self._retry(op)

    async def remove_member(self, room_id: str, user_id: str) -> Room:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        key = member_key(room_id, user_id)

        async def op() -> None:
            room, _ = await self._get("rooms", encode_id(room_id))
            member, rev = await self._get("members", key)
            rules.check_remove_member(room, member, room_id, user_id)
            await self._cas("members", key, None, rev)

        # Membership first, then the epoch: the removed user can get no key at the new one.
        await self._retry(op)
        room = await self._bump_epoch(room_id)
        if room is None:
            raise StoreError(f"room {room_id!r} disappeared while removing {user_id!r}")
        return room

    async def list_members(self, room_id: str | None = None) -> list[Member]:
        if room_id is None:
            return await self._records("members")
        return await self._records("members", f"{encode_id(validate_id(room_id, 'room id'))}.*")

    async def rekey(self, room_id: str) -> Room:
        validate_id(room_id, "room id")
        room = await self._bump_epoch(room_id)
        return rules.require_room(room, room_id)

    # -- sealed keys ----------------------------------------------------------------

    async def put_sealed_key(
        self, room_id: str, user_id: str, sealed_key: bytes
    ) -> SealedKeyRecord:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        validate_sealed_key(sealed_key)

        async def op() -> SealedKeyRecord:
            room, _ = await self._get("rooms", encode_id(room_id))
            user, _ = await self._get("users", encode_id(user_id))
            member, _ = await self._get("members", member_key(room_id, user_id))
            epoch = room.epoch if room is not None else 1
            key = sealed_key_key(room_id, epoch, user_id)
            existing, rev = await self._get("sealed_keys", key)
            rules.check_put_sealed_key(room, user, member, existing is not None, room_id, user_id)
            record = SealedKeyRecord(room_id, epoch, user_id, sealed_key)
            await self._cas("sealed_keys", key, encode_record(record), rev)
            return record

        return await self._retry(op)

    async def get_sealed_key(
        self, room_id: str, user_id: str, epoch: int | None = None
    ) -> SealedKeyRecord | None:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        if epoch is None:
            room = await self.get_room(room_id)
            if room is None:
                return None
            epoch = room.epoch
        record, _ = await self._get(
            "sealed_keys", sealed_key_key(room_id, validate_epoch(epoch), user_id)
        )
        return record  # type: ignore[no-any-return]

    async def list_sealed_keys(self, room_id: str | None = None) -> list[SealedKeyRecord]:
        if room_id is None:
            return await self._records("sealed_keys")
        token = encode_id(validate_id(room_id, "room id"))
        return await self._records("sealed_keys", f"{token}.*.*")

    # -- snapshots ------------------------------------------------------------------

    async def export_snapshot(self) -> Snapshot:
        version = await self.read_schema_version()
        return Snapshot(
            users=tuple(await self._records("users")),
            rooms=tuple(await self._records("rooms")),
            members=tuple(await self._records("members")),
            sealed_keys=tuple(await self._records("sealed_keys")),
            schema_version=version or 0,
        )

    async def import_snapshot(
        self, snapshot: Snapshot, *, prune: bool = False
    ) -> dict[str, ImportCounts]:
        """Make the buckets hold exactly ``snapshot``, writing only what differs.

        Reads every bucket in bulk first. Keys the snapshot lacks refuse the import
        with :class:`TargetNotEmptyError` *before anything is written*, unless
        ``prune`` deletes them. Writes are raw puts (the records keep their epochs and
        statuses as they are), pipelined; values already equal are skipped, so a
        second import of the same snapshot writes nothing at all.
        """
        wanted = {
            kind: {key_of(r): encode_record(r) for r in getattr(snapshot, kind)} for kind in KINDS
        }
        present = {kind: {e.key: e.value for e in await self.scan(kind)} for kind in KINDS}
        counts = {kind: ImportCounts(source=len(wanted[kind])) for kind in KINDS}
        extra = {kind: sorted(set(present[kind]) - set(wanted[kind])) for kind in KINDS}
        if any(extra.values()) and not prune:
            described = [
                f"{kind} {self._describe(kind, key, present[kind][key])}"
                for kind in KINDS
                for key in extra[kind]
            ]
            raise TargetNotEmptyError(
                f"KV namespace {self.prefix!r} holds {len(described)} record(s) that the "
                "source lacks; nothing was written. Rerun with --prune to delete them",
                described,
            )
        writes: list[tuple[str, bytes, dict[str, str] | None]] = []
        for kind in KINDS:  # users and rooms before what refers to them
            for key, value in wanted[kind].items():
                if present[kind].get(key) == value:
                    counts[kind].unchanged += 1
                else:
                    writes.append((self.subject(kind, key), value, None))
                    counts[kind].written += 1
        for kind in reversed(KINDS):  # what refers to others goes first
            for key in extra[kind]:
                writes.append((self.subject(kind, key), b"", {_KV_OP: "DEL"}))
                counts[kind].pruned += 1
        await self.publish_all(writes)
        await self.write_schema_version(snapshot.schema_version)
        return counts

    def _describe(self, kind: str, key: str, value: bytes) -> str:
        try:
            record = self._decode(kind, Entry(key, value, 0))
        except MembershipError:
            return f"key {key!r} (undecodable value)"
        return " ".join(repr(part) for part in record.pk)

    async def publish_all(self, items: Iterable[tuple[str, bytes, dict[str, str] | None]]) -> int:
        """Publish with a bounded window of unacknowledged messages; every ack checked."""
        pending: deque[asyncio.Future[Any]] = deque()
        count = 0
        async with nats_errors(f"writing KV namespace {self.prefix!r}"):
            try:
                for subject, payload, headers in items:
                    pending.append(
                        await self._js.publish_async(
                            subject, payload, headers=headers, wait_stall=ACK_TIMEOUT
                        )
                    )
                    count += 1
                    while len(pending) >= WRITE_WINDOW:
                        await asyncio.wait_for(pending.popleft(), ACK_TIMEOUT)
                while pending:
                    await asyncio.wait_for(pending.popleft(), ACK_TIMEOUT)
            except nats.js.errors.TooManyStalledMsgsError as exc:
                raise NatsUnavailableError(
                    f"KV namespace {self.prefix!r}: the server stopped acknowledging writes"
                ) from exc
            finally:
                for fut in pending:
                    fut.cancel()
        return count
