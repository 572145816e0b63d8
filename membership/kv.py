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
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from . import rules
from .canonical import KINDS, decode_record, dumps, encode_record
from .cluster import STREAM_OFFLINE, describe_offline_stream
from .errors import (
    BucketConfigError,
    ConflictError,
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
    OLDEST_SCHEMA_VERSION,
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
    validate_optional_nkey,
    validate_public_key,
    validate_sealed_key,
)

__all__ = [
    "BUCKET_SUFFIXES",
    "DEFAULT_PREFIX",
    "LAST_RUN_KEY",
    "BulkReader",
    "ImportCounts",
    "KVStore",
    "Publisher",
    "RowKeys",
    "StreamState",
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
_CAS_RETRIES: Final = 60
ACK_TIMEOUT: Final = 10.0
WRITE_WINDOW: Final = 4096
"""Unacknowledged publishes in flight at most (a bounded window: memory stays flat)."""
FETCH_BATCH: Final = 4096
"""Messages per pull request of a bulk read."""
PULL_DEPTH: Final = 4
"""Pull requests kept outstanding: the server has work queued while the reader computes."""
_NO_RESPONDER_RETRIES: Final = 66
"""Tries of a publish or pull request that no stream or consumer answered (status 503):
a bucket just created on a cluster has no leader for a moment, and a stream whose
leader was lost has none until the survivors elect one (nats-server's election timeout
is 4 to 9 s). About 15 s in all, so a run rides out the election."""
PULL_MAX_BYTES: Final = 4 * 1024 * 1024
"""Bytes per pull request at most (raised to fit one message of the server's max_payload).
With PULL_DEPTH requests outstanding the server never has more than about 16 MiB queued
for the reader, far below the 64 MiB after which it cuts a slow client off."""
PULL_EXPIRES_NS: Final = 2_000_000_000
"""A pull request the server cannot fill ends after 2 s; the reader then asks the
consumer what is left (messages deleted during the read never arrive)."""
_WAIT_SLICE: Final = 0.25
_RESEND_EVERY: Final = 2.0
"""Seconds without any acknowledgement after which unacknowledged writes are sent again."""
WRITE_SILENCE: Final = ACK_TIMEOUT
"""Seconds without any answer to a write after which a run gives up (exit 1; a re-run
converges). Losing a stream's leader mid-run in a cluster does not end here: the writes
the dead leader took go unanswered, are sent again every :data:`_RESEND_EVERY` seconds,
and are answered 503 until the survivors elect a leader, which then stores them."""
API_ATTEMPTS: Final = 3
"""Tries of a JetStream API request (stream and consumer info, consumer creation, a
point read) that got no answer in ACK_TIMEOUT while the connection stayed up."""
LAST_RUN_KEY: Final = "last_verified_run"
"""The key in ``<prefix>_meta`` of the record of the last verified migration."""
_TOKEN_CACHE: Final = 100_000
_PLAIN_TOKEN: Final = re.compile(r"[A-Za-z0-9-][A-Za-z0-9_-]{0,127}")

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


@dataclass(frozen=True)
class StreamState:
    """What a bucket's content hangs on: any put, delete, purge or re-creation changes it.

    A put or delete appends (``last_seq`` grows), a purge or a message removal
    changes ``first_seq`` or ``messages``, a deleted and re-created bucket has a new
    ``created`` time. Equal states at two moments mean the bucket held the same
    messages at both.
    """

    created: str
    first_seq: int
    last_seq: int
    messages: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "messages": self.messages,
        }

    @classmethod
    def from_dict(cls, data: Any) -> StreamState:
        try:
            state = cls(
                str(data["created"]),
                int(data["first_seq"]),
                int(data["last_seq"]),
                int(data["messages"]),
            )
        except (KeyError, TypeError, ValueError):
            raise DataError("a stream state in the last-run record is malformed") from None
        return state


class RowKeys:
    """The KV key of a source row (:meth:`SQLiteStore.iter_rows` order of fields).

    Same keys as :func:`key_of`, without building records: ids repeat across rows (a
    room's id is in every one of its sealed keys), so their tokens are cached, and
    ids that need no escaping are their own token.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}

    def token(self, value: str) -> str:
        token = self._tokens.get(value)
        if token is None:
            token = value if _PLAIN_TOKEN.fullmatch(value) else encode_id(value)
            if len(self._tokens) >= _TOKEN_CACHE:
                self._tokens.clear()
            self._tokens[value] = token
        return token

    def key_function(self, kind: str) -> Callable[[tuple[Any, ...]], str]:
        """:meth:`key` for one kind, without the dispatch: the migration's hot loop."""
        token = self.token
        if kind == "sealed_keys":
            return lambda row: f"{token(row[0])}.{row[1]:d}.{token(row[2])}"
        if kind == "members":
            return lambda row: f"{token(row[0])}.{token(row[1])}"
        return lambda row: token(row[0])

    def key(self, kind: str, row: tuple[Any, ...]) -> str:
        if kind == "sealed_keys":
            return f"{self.token(row[0])}.{row[1]:d}.{self.token(row[2])}"
        if kind == "members":
            return f"{self.token(row[0])}.{self.token(row[1])}"
        return self.token(row[0])


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
        if exc.err_code == STREAM_OFFLINE:
            raise NatsUnavailableError(
                f"{where}: the bucket is offline (the servers holding its replicas are "
                "unreachable; an R1 bucket is a single point of failure)"
            ) from exc
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


class _PatientJetStream(JetStreamContext):
    """A JetStream context whose API requests are asked again when they go unanswered
    while the connection is up.

    Right after a node of a cluster is lost, the servers that remain elect new stream
    leaders and catch up; for a while an API request (a stream's info, a consumer's
    creation) may go unanswered although the cluster is otherwise healthy, and a re-run
    a moment later succeeds. Every request that goes through here can be made twice
    without harm: reads, and creations that return what exists when it matches (an
    ephemeral consumer made twice leaves an idle one that the server removes after its
    inactive threshold). Publishes do not come here. A connection that is down fails at
    once, as before: only a live server that is slow to answer gets more tries.
    """

    async def _api_request(  # nats-py's signature, overridden
        self,
        req_subject: str,
        req: bytes = b"",
        timeout: float = 5,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        attempt = 1
        while True:
            try:
                result: dict[str, Any] = await super()._api_request(req_subject, req, timeout)
                return result
            except nats.errors.TimeoutError:
                if attempt >= API_ATTEMPTS or not self._nc.is_connected:
                    raise
                attempt += 1


def jetstream(nc: Client) -> JetStreamContext:
    """The JetStream context every command uses (see :class:`_PatientJetStream`)."""
    return _PatientJetStream(nc, timeout=ACK_TIMEOUT)


def _is_tombstone(headers: Any) -> bool:
    return bool(headers) and headers.get(_KV_OP) in ("DEL", "PURGE")


class KVStore:
    """A membership store in JetStream KV buckets. Open with :meth:`open`."""

    def __init__(self, nc: Client, prefix: str, clock: Callable[[], int]) -> None:
        self._nc = nc
        self._js = jetstream(nc)
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
                except nats.js.errors.APIError as exc:
                    if exc.err_code == STREAM_OFFLINE:  # name the servers that hold it
                        where = f"reading bucket {bucket}"
                        raise await describe_offline_stream(
                            self._nc, self.stream(kind), where
                        ) from exc
                    raise
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
        if version < OLDEST_SCHEMA_VERSION:
            raise SchemaError(f"KV namespace {self.prefix!r} has unknown schema version {version}")
        return int(version)

    def require_current_schema(self) -> None:
        """Refuse to write to a namespace of an older schema version (reading is fine)."""
        if self.schema_version < SCHEMA_VERSION:
            raise SchemaError(
                f"KV namespace {self.prefix!r} has schema version {self.schema_version}; this "
                f"membershipd writes version {SCHEMA_VERSION}: run `membershipd upgrade "
                "--nats-url URL` first"
            )

    async def upgrade(self) -> tuple[list[int], int]:
        """Take the namespace to :data:`SCHEMA_VERSION`: rewrite every record whose
        stored form is older, then the schema record, last. Returns (versions passed
        through, records rewritten).

        Each rewrite is a compare-and-swap against the revision read, so a record
        changed meanwhile is read again; a run cut short leaves the schema record as it
        was and a re-run finishes the job (a record already in the new form is skipped).
        """
        version = await self.read_schema_version()
        if version is None:
            raise SchemaError(f"bucket {self.buckets['meta']} has no schema record")
        self.schema_version = version
        if version >= SCHEMA_VERSION:
            return [], 0
        rewritten = 0
        for entry in await self.scan("users"):
            key = entry.key

            async def rewrite(key: str = key) -> bool:
                got = await self._get_raw("users", key)
                if got is None or got.revision < 0:
                    return False
                current = encode_record(self._decode("users", got))
                if current == got.value:
                    return False
                await self._cas("users", key, current, got.revision)
                return True

            async with nats_errors(f"upgrading {self.buckets['users']}"):
                rewritten += await self._retry(rewrite)
        await self.write_schema_version(SCHEMA_VERSION)
        self.schema_version = SCHEMA_VERSION
        return list(range(version + 1, SCHEMA_VERSION + 1)), rewritten

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
        record = decode_record(kind, entry.value, self.schema_version)
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
        """Run a read-check-CAS ``op`` until its compare-and-swap wins.

        A lost race re-reads and re-checks (the rules hold against what is there now).
        Between tries a random pause that grows with each loss spreads the contenders
        out, so even dozens of writers at one room's epoch all get through.
        """
        for tries in range(_CAS_RETRIES):
            try:
                return await op()
            except _Conflict:
                await asyncio.sleep(random.uniform(0, min(0.001 * 2 ** min(tries, 7), 0.1)))
        raise ConflictError(
            f"KV namespace {self.prefix!r}: {_CAS_RETRIES} concurrent updates in a row "
            "won the race; retry the command"
        )

    async def scan(self, kind: str, filter_key: str = ">") -> list[Entry]:
        """Every live key of a bucket (tombstones skipped), read through a consumer."""
        entries: list[Entry] = []
        async with BulkReader(self, kind, filter_key) as reader:
            async for batch in reader:
                entries.extend(
                    Entry(key, value, reply_sequence(reply)[0]) for key, value, reply in batch
                )
        return entries

    async def stream_state(self, kind: str) -> StreamState | None:
        """The state of one bucket's stream (None if the bucket does not exist)."""
        async with nats_errors(f"reading bucket {self.buckets[kind]}"):
            try:
                info = await self._js.stream_info(self.stream(kind))
            except nats.js.errors.NotFoundError:
                return None
        created = info.created.isoformat() if info.created is not None else ""
        state = info.state
        return StreamState(created, int(state.first_seq), int(state.last_seq), int(state.messages))

    async def read_last_run(self) -> dict[str, Any] | None:
        """The record of the last verified migration in ``<prefix>_meta``, if any."""
        async with nats_errors(f"reading {self.buckets['meta']}"):
            try:
                entry = await self._get_raw("meta", LAST_RUN_KEY)
            except nats.js.errors.NotFoundError:
                return None
        if entry is None or entry.revision < 0:
            return None
        try:
            data = json.loads(entry.value)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None  # unreadable: the migration compares everything instead
        return data if isinstance(data, dict) else None

    async def write_last_run(self, record: dict[str, Any]) -> None:
        async with nats_errors(f"writing {self.buckets['meta']}"):
            await self._js.publish(self.subject("meta", LAST_RUN_KEY), dumps(record).encode())

    async def _records(self, kind: str, filter_key: str = ">") -> list[Any]:
        records = [self._decode(kind, e) for e in await self.scan(kind, filter_key)]
        records.sort(key=lambda r: r.pk)
        return records

    # -- users --------------------------------------------------------------------

    async def _users_with_nkey(self, nkey: str | None) -> list[str]:
        """Users whose identity is ``nkey``: a scan of the users bucket (an admin
        operation; the allowlist's authorization leaves out any nkey two users share,
        so a race between two such writes cannot let one act as the other)."""
        if nkey is None:
            return []
        return sorted(u.id for u in await self._records("users") if u.nkey == nkey)

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
        self.require_current_schema()
        key = encode_id(user_id)

        async def op() -> User:
            existing, rev = await self._get("users", key)
            rules.check_new_user(existing, user_id)
            rules.check_nkey_free(await self._users_with_nkey(nkey), nkey, user_id)
            user = User(
                user_id,
                public_key,
                "active",
                self._clock() if created_at is None else created_at,
                nkey,
            )
            await self._cas("users", key, encode_record(user), rev)
            return user

        return await self._retry(op)

    async def set_user_nkey(self, user_id: str, nkey: str | None) -> User:
        validate_id(user_id, "user id")
        validate_optional_nkey(nkey)
        self.require_current_schema()
        key = encode_id(user_id)

        async def op() -> User:
            user, rev = await self._get("users", key)
            user = rules.check_set_nkey(user, user_id, nkey)
            rules.check_nkey_free(await self._users_with_nkey(nkey), nkey, user_id)
            changed = replace(user, nkey=nkey)
            await self._cas("users", key, encode_record(changed), rev)
            return changed

        return await self._retry(op)

    async def revoke_user(self, user_id: str) -> Revocation:
        validate_id(user_id, "user id")
        self.require_current_schema()
        key = encode_id(user_id)

        async def mark() -> tuple[User, bool]:
            user, rev = await self._get("users", key)
            user = rules.require_user(user, user_id)
            # Every check before any write: a room at the highest epoch refuses the whole
            # revocation (a legacy orphan membership has no room to bump).
            for entry in await self.scan("members", f"*.{key}"):
                room, _ = await self._get("rooms", entry.key.split(".", 1)[0])
                if room is not None:
                    rules.bumped(room)
            if user.status == "revoked":
                return user, False
            revoked = replace(user, status="revoked")
            await self._cas("users", key, encode_record(revoked), rev)
            return revoked, True

        # Revoked first: from here on the user can get no new membership or key.
        user, was_active = await self._retry(mark)
        rooms = []
        found = [(self._decode("members", e), e) for e in await self.scan("members", f"*.{key}")]
        found.sort(key=lambda pair: pair[0].pk)  # room id order, like the other stores
        for member, entry in found:
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
            bumped = rules.bumped(room)
            await self._cas("rooms", key, encode_record(bumped), rev)
            return bumped

        return await self._retry(op)

    async def create_room(self, room_id: str, owner: str, *, created_at: int | None = None) -> Room:
        validate_id(room_id, "room id")
        validate_id(owner, "user id")
        self.require_current_schema()
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
        self.require_current_schema()
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
        self.require_current_schema()
        key = member_key(room_id, user_id)

        async def op() -> None:
            room, _ = await self._get("rooms", encode_id(room_id))
            member, rev = await self._get("members", key)
            rules.bumped(rules.check_remove_member(room, member, room_id, user_id))
            await self._cas("members", key, None, rev)

        # Membership first, then the epoch: the removed user can get no key at the new one.
        await self._retry(op)
        room = await self._bump_epoch(room_id)
        if room is None:
            raise StoreError(f"room {room_id!r} disappeared while removing {user_id!r}")
        return room

    async def get_member(self, room_id: str, user_id: str) -> Member | None:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        member, _ = await self._get("members", member_key(room_id, user_id))
        return member  # type: ignore[no-any-return]

    async def list_members(self, room_id: str | None = None) -> list[Member]:
        if room_id is None:
            return await self._records("members")
        return await self._records("members", f"{encode_id(validate_id(room_id, 'room id'))}.*")

    async def rekey(self, room_id: str) -> Room:
        validate_id(room_id, "room id")
        self.require_current_schema()
        room = await self._bump_epoch(room_id)
        return rules.require_room(room, room_id)

    # -- sealed keys ----------------------------------------------------------------

    async def put_sealed_key(
        self, room_id: str, user_id: str, sealed_key: bytes
    ) -> SealedKeyRecord:
        validate_id(room_id, "room id")
        validate_id(user_id, "user id")
        validate_sealed_key(sealed_key)
        self.require_current_schema()

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
            # Records read in the current form whatever the stored version (upgrade
            # rewrites them); a namespace without a schema record shows 0.
            schema_version=SCHEMA_VERSION if version is not None else 0,
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
        self.require_current_schema()
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
        await self.write_schema_version(SCHEMA_VERSION)
        return counts

    def _describe(self, kind: str, key: str, value: bytes) -> str:
        try:
            record = self._decode(kind, Entry(key, value, 0))
        except MembershipError:
            return f"key {key!r} (undecodable value)"
        return " ".join(repr(part) for part in record.pk)

    async def publish_all(self, items: Iterable[tuple[str, bytes, dict[str, str] | None]]) -> int:
        """Publish with a bounded window of unacknowledged messages; every ack checked."""
        count = 0
        async with Publisher(self) as publisher:
            for subject, payload, headers in items:
                await publisher.publish(subject, payload, headers)
                count += 1
        return count


def _backoff(tries: int) -> float:
    return min(0.02 * tries, 0.25)


def reply_sequence(reply: str) -> tuple[int, int]:
    """(stream sequence, messages still pending) from a JetStream message's reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>...
    return int(tokens[7]), int(tokens[10])


def _status(msg: Any) -> str | None:
    headers = msg.headers
    if headers:
        status = headers.get("Status")
        if status:
            return str(status)
    return None


class BulkReader:
    """Read a whole bucket through an ephemeral pull consumer, in batches.

    ``async with BulkReader(store, kind) as reader: async for batch in reader:``
    gives lists of ``(key, value, reply subject)`` of every live key (tombstones are
    skipped), in stream order; :func:`reply_sequence` reads a message's stream
    sequence (its revision) from the reply subject. The consumer delivers the last message per
    subject from the stream leader, so the read is never stale (no direct get, which
    a lagging replica may answer) and its state is the bucket's as of the start:
    reading stops at the stream's last sequence of that moment.

    nats-py's ``fetch`` costs several asyncio tasks and timers per message; this
    keeps :data:`PULL_DEPTH` pull requests of :data:`FETCH_BATCH` outstanding on one
    inbox with a plain callback, which reads an order of magnitude faster. Memory is
    bounded by the requests in flight. Besides ``async for``, :meth:`take` and
    :meth:`wait` let a caller do other work while messages arrive.
    """

    def __init__(
        self, store: KVStore, kind: str, filter_key: str = ">", batch: int = FETCH_BATCH
    ) -> None:
        self._store = store
        self._nc = store._nc
        self._kind = kind
        self._stream = store.stream(kind)
        self._filter = store.subject(kind, filter_key)
        self._prefix_len = len(store.subject(kind, ""))
        self._batch = batch
        self._where = f"reading {store.buckets[kind]}"
        self._name: str | None = None
        self._sub: Any = None
        self._buf: list[tuple[str, bytes, str]] = []
        self._requests: deque[int] = deque()
        self._outstanding = 0
        self._horizon = 0
        self._expected = 0
        self._done = False
        self._check = False
        self._unanswered = 0
        self._error: MembershipError | None = None
        self._wake = asyncio.Event()
        self._max_bytes = max(PULL_MAX_BYTES, int(self._nc.max_payload) + 64 * 1024)
        self._reconnects = 0
        self.delivered = 0

    async def __aenter__(self) -> BulkReader:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self._filter,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=30.0,
        )
        js = self._store._js
        async with nats_errors(self._where):
            try:
                info = await js.stream_info(self._stream)
            except nats.js.errors.NotFoundError:
                raise StoreError(
                    f"bucket {self._store.buckets[self._kind]} does not exist"
                ) from None
            self._horizon = int(info.state.last_seq)
            self._reconnects = self._nc.stats["reconnects"]
            consumer = await js.add_consumer(self._stream, config)
            self._name = consumer.name
            self._expected = int(consumer.num_pending or 0)
            if not consumer.num_pending or self._horizon == 0:
                self._done = True
                return self
            inbox = self._nc.new_inbox()
            self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._name}"
            self._inbox = inbox
            self._sub = await self._nc.subscribe(
                inbox,
                cb=self._on_msg,
                pending_msgs_limit=(PULL_DEPTH + 2) * self._batch,
                pending_bytes_limit=256 * 1024 * 1024,
            )
            await self._top_up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._name is not None:
            # best effort: the consumer's inactive_threshold reaps it otherwise
            with contextlib.suppress(Exception):
                await self._store._js.delete_consumer(self._stream, self._name)

    async def _request(self) -> None:
        self._requests.append(self._batch)
        self._outstanding += self._batch
        payload = json.dumps(
            {"batch": self._batch, "max_bytes": self._max_bytes, "expires": PULL_EXPIRES_NS}
        )
        await self._nc.publish(self._next_subject, payload.encode(), reply=self._inbox)

    async def _on_msg(self, msg: Any) -> None:
        # Runs once per message: keep it lean, and never raise (nats-py would swallow it).
        if self._done:
            return
        try:
            status = _status(msg)
            if status is not None:
                if status == "409":
                    description = str((msg.headers or {}).get("Description", ""))
                    if "Batch Completed" in description:  # its count is used up: the
                        return  # request left the books with its last message
                    if "MaxBytes" in description:  # its bytes are used up: ask again
                        if self._requests:
                            self._outstanding -= self._requests.popleft()
                        await self._top_up()
                        return
                if status in ("404", "408", "503"):  # a request ran out, or found no consumer
                    if self._requests:  # (yet: a new one on a cluster): is anything left?
                        self._outstanding -= self._requests.popleft()
                    if status == "503":
                        self._unanswered += 1
                    self._check = True
                    self._wake.set()
                    return
                if status != "100":  # 409: consumer deleted, leadership change ...
                    description = (msg.headers or {}).get("Description", "")
                    self._error = StoreError(
                        f"{self._where}: the server ended the read ({status} {description}); "
                        "rerun the command"
                    )
                    self._wake.set()
                    return
            else:
                self.delivered += 1
                self._outstanding -= 1
                if self._requests:
                    self._requests[0] -= 1
                    if self._requests[0] <= 0:
                        self._requests.popleft()
                headers = msg.headers
                reply = msg.reply
                if not (headers and headers.get(_KV_OP) in ("DEL", "PURGE")):
                    self._buf.append((msg.subject[self._prefix_len :], msg.data, reply))
                if self.delivered >= self._expected:  # the end is near: where are we?
                    seq, pending = reply_sequence(reply)
                    if pending == 0 or seq >= self._horizon:
                        self._done = True
                        self._wake.set()
                        return
                if len(self._buf) >= self._batch:
                    self._wake.set()
            await self._top_up()
        except Exception as exc:  # a malformed reply subject, a lost connection ...
            self._error = StoreError(f"{self._where}: {exc.__class__.__name__} while reading")
            self._wake.set()

    def __aiter__(self) -> AsyncIterator[list[tuple[str, bytes, str]]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[tuple[str, bytes, str]]]:
        while True:
            await self.wait()
            batch = await self.take()
            if not batch:
                return
            yield batch

    def _check_connection(self) -> None:
        """Messages in flight when the connection dropped are lost without a trace (the
        consumer counts them as delivered): a read that spans a reconnect is void."""
        if self._error is None and self._nc.stats["reconnects"] != self._reconnects:
            self._error = NatsUnavailableError(
                f"{self._where}: the connection to the server was lost during the read "
                "(a server cuts off a client that falls behind: look for 'Slow Consumer' in "
                "its log); rerun the command"
            )

    async def take(self) -> list[tuple[str, bytes, str]]:
        """Whatever has arrived since the last call (maybe nothing); never waits for it."""
        self._check_connection()
        if self._error is not None:
            raise self._error
        batch, self._buf = self._buf, []
        if not self._done:
            async with nats_errors(self._where):
                await self._top_up()
        return batch

    async def _top_up(self) -> None:
        """Keep the server busy, but never more than PULL_DEPTH batches ahead of the
        caller: what has arrived and not been taken counts too, so memory is bounded."""
        while self._outstanding + len(self._buf) <= (PULL_DEPTH - 1) * self._batch:
            await self._request()

    @property
    def finished(self) -> bool:
        """Everything has been read and taken."""
        return self._done and not self._buf

    async def wait(self) -> None:
        """Wait until entries have arrived or the read is over; raise if it failed."""
        idle = 0.0
        while not self._buf and not self._done:
            self._check_connection()
            if self._error is not None:
                raise self._error
            if self._check:
                self._check = False
                if await self._nothing_left():
                    self._done = True
                continue
            self._wake.clear()
            try:  # in slices, so that a reconnect (see _check_connection) ends it early
                await asyncio.wait_for(self._wake.wait(), _WAIT_SLICE)
                idle = 0.0
            except TimeoutError:
                idle += _WAIT_SLICE
                if self._buf or self._done or self._error is not None or self._check:
                    continue
                if idle < ACK_TIMEOUT * 1.5:
                    continue
                raise NatsUnavailableError(
                    f"{self._where}: the server sent nothing for {ACK_TIMEOUT * 1.5:g} s; "
                    "rerun when it is back"
                ) from None
        self._check_connection()
        if self._error is not None:
            raise self._error

    async def _nothing_left(self) -> bool:
        """After a pull request ran out: ask the consumer; request more if it has more."""
        if self._unanswered:
            if self._unanswered > _NO_RESPONDER_RETRIES:
                raise NatsUnavailableError(
                    f"{self._where}: the consumer never answered; rerun when the cluster is settled"
                )
            await asyncio.sleep(_backoff(self._unanswered))  # then ask again
        async with nats_errors(self._where):
            assert self._name is not None
            info = await self._store._js.consumer_info(self._stream, self._name)
            if not info.num_pending:
                return True
            await self._top_up()
        return False


class Publisher:
    """Pipelined JetStream publishes: a bounded window in flight, every ack checked.

    ``async with Publisher(store) as p: await p.publish(subject, payload)``; leaving
    the block waits for every acknowledgement. An ack that reports an error, or a
    server that stops acknowledging, raises (naming the subject), so nothing is
    silently dropped.

    nats-py's ``publish_async`` creates a future, a task and a token per message and
    yields to the event loop on each, which makes every message its own socket
    write; this sends plain publishes with a numbered reply subject on one inbox,
    so they leave in large writes and each ack costs one small callback.
    """

    def __init__(self, store: KVStore, window: int = WRITE_WINDOW) -> None:
        self._store = store
        self._nc = store._nc
        self._window = window
        self._low = window // 2
        self._where = f"writing KV namespace {store.prefix!r}"
        self._subjects: dict[int, tuple[str, bytes, dict[str, str] | None]] = {}
        self._retries: dict[int, int] = {}
        self._sent = 0
        self.acked = 0
        self._heard = 0
        self._error: MembershipError | None = None
        self._wake = asyncio.Event()
        self._sub: Any = None
        self._prefix = ""
        self._reconnects = 0
        self._resending: set[asyncio.Task[None]] = set()
        self.resent = 0

    async def __aenter__(self) -> Publisher:
        self._prefix = self._nc.new_inbox()
        self._reconnects = self._nc.stats["reconnects"]
        async with nats_errors(self._where):
            self._sub = await self._nc.subscribe(
                f"{self._prefix}.*",
                cb=self._on_ack,
                pending_msgs_limit=2 * self._window + 16,
                pending_bytes_limit=64 * 1024 * 1024,
            )
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            for task in list(self._resending):
                task.cancel()
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()

    @property
    def in_flight(self) -> int:
        return len(self._subjects)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        if self._error is not None:
            raise self._error
        if len(self._subjects) >= self._window:
            await self._wait_until(self._low)
        self._sent += 1
        self._subjects[self._sent] = (subject, payload, headers)
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{self._sent}", headers=headers
            )
        except Exception as exc:  # translated on this rare path only: it runs per message
            async with nats_errors(f"{self._where} ({subject})"):
                raise exc

    async def flush(self) -> None:
        """Wait for every outstanding acknowledgement."""
        async with nats_errors(self._where):
            await self._nc.flush(int(ACK_TIMEOUT))
        await self._wait_until(0)

    async def _resend_after_reconnect(self, force: bool = False) -> bool:
        """After a reconnect (or, with ``force``, a silence), send again every message not
        yet acknowledged.

        Whatever was on the wire when the connection dropped (or on a server that died)
        may be lost, or stored with its acknowledgement lost: a second put of the same
        value (or delete) leaves the bucket as the first would, and a late duplicate ack is
        ignored. So a short disconnect, or losing a node of a cluster (the one connected
        to, or a stream leader whose proposals died with it), costs a resend, not the run.
        """
        reconnects = self._nc.stats["reconnects"]
        if reconnects == self._reconnects and not force:
            return False
        self._reconnects = reconnects
        for number, (subject, payload, headers) in list(self._subjects.items()):
            async with nats_errors(f"{self._where} ({subject})"):
                await self._nc.publish(
                    subject, payload, reply=f"{self._prefix}.{number}", headers=headers
                )
            self.resent += 1
        return True

    async def _wait_until(self, in_flight: int) -> None:
        """Wait until at most ``in_flight`` writes are unacknowledged. Silence is
        :data:`WRITE_SILENCE` seconds without any answer: 503s waiting out a leader
        election are answers (each write's tries are bounded on their own)."""
        idle = 0.0
        heard = self._heard
        while len(self._subjects) > in_flight:
            if self._error is not None:
                raise self._error
            if await self._resend_after_reconnect():
                idle = 0.0
            self._wake.clear()
            try:  # in slices, so that a reconnect is noticed at once
                await asyncio.wait_for(self._wake.wait(), _WAIT_SLICE)
            except TimeoutError:
                if self._heard != heard:
                    heard, idle = self._heard, 0.0
                    continue
                idle += _WAIT_SLICE
                if idle % _RESEND_EVERY == 0:  # silence: a stream leader may have died
                    await self._resend_after_reconnect(force=True)
                if idle >= WRITE_SILENCE:
                    raise NatsUnavailableError(
                        f"{self._where}: the server stopped acknowledging writes "
                        f"({len(self._subjects)} unacknowledged); rerun when it is back"
                    ) from None
        if self._error is not None:
            raise self._error

    async def _resend_later(self, number: int, delay: float) -> None:
        await asyncio.sleep(delay)
        sent = self._subjects.get(number)
        if sent is None or self._nc.is_closed:
            return  # acknowledged meanwhile (a resend after a reconnect), or the run is over
        subject, payload, headers = sent
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{number}", headers=headers
            )
        except Exception as exc:
            self._error = self._error or NatsUnavailableError(
                f"{self._where}: lost the server while resending {subject} "
                f"({exc.__class__.__name__})"
            )
            self._wake.set()

    async def _on_ack(self, msg: Any) -> None:
        try:
            number = int(msg.subject[len(self._prefix) + 1 :])
        except ValueError:
            return
        sent = self._subjects.get(number)
        if sent is None:
            return  # not ours, or a duplicate
        self._heard += 1  # an answer, even a 503: the server is there
        subject = sent[0]
        data = msg.data
        status = _status(msg)
        if status == "503" and self._retries.get(number, 0) < _NO_RESPONDER_RETRIES:
            # No stream took it (a bucket just created on a cluster has no leader yet, a
            # restarted server is still recovering its streams): nothing was stored, so
            # sending it again cannot duplicate it. Later, and not here: this callback
            # takes every ack in turn, and thousands of 503s waiting in it would hold up
            # the acks behind them for minutes.
            tries = self._retries[number] = self._retries.get(number, 0) + 1
            task = asyncio.ensure_future(self._resend_later(number, _backoff(tries)))
            self._resending.add(task)
            task.add_done_callback(self._resending.discard)
            return
        del self._subjects[number]
        tries = self._retries.pop(number, 0) + 1
        if status is not None:
            if self._error is None:
                self._error = (
                    NatsUnavailableError(
                        f"{self._where}: no JetStream stream answered for {subject} "
                        f"(status 503, {tries} tries): the bucket is "
                        "gone, or its stream has no leader (a cluster node down?); rerun "
                        "when the cluster is settled"
                    )
                    if status == "503"
                    else StoreError(
                        f"{self._where}: the server answered {subject} with status {status}"
                    )
                )
        elif b'"error"' in data:
            if self._error is None:
                try:
                    error = json.loads(data)["error"]
                    text = f"{error.get('err_code')}: {error.get('description')}"
                except (ValueError, KeyError, TypeError, AttributeError):
                    text = "unreadable error"
                self._error = StoreError(f"{self._where}: JetStream refused {subject} ({text})")
        else:
            self.acked += 1
        if len(self._subjects) <= self._low or self._error is not None:
            self._wake.set()
