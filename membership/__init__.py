"""unibus membership: the control plane on SQLite and NATS JetStream KV.

The public surface is ``__all__`` (a test pins it). The command line, ``membershipd``,
is a thin layer over these names.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .audit import invariant_findings
from .backup import backup_sqlite
from .canonical import (
    decode_record,
    decode_snapshot,
    dumps,
    encode_record,
    snapshot_bytes,
    snapshot_digest,
)
from .connect import NatsTarget, check_nats_url, connect_nats, is_loopback_url
from .diff import diff_snapshots
from .embedded import EmbeddedServer, find_nats_server
from .errors import (
    AlreadyExistsError,
    BackupExistsError,
    BucketConfigError,
    DataError,
    FailedError,
    InsecureURLError,
    InvalidInputError,
    InvariantError,
    MembershipError,
    NatsUnavailableError,
    NotFoundError,
    ParityError,
    RefusedError,
    RevokedUserError,
    SchemaError,
    StoreError,
    TargetNotEmptyError,
)
from .keycodec import decode_id, encode_id
from .kv import KVStore
from .memory import MemoryStore
from .migrate import MigrationReport, VerifyResult, migrate_sqlite_to_kv, verify_parity
from .model import SCHEMA_VERSION, Member, Revocation, Room, SealedKeyRecord, Snapshot, User
from .sqlite import SQLiteStore
from .store import Store

__all__ = [
    "SCHEMA_VERSION",
    "AlreadyExistsError",
    "BackupExistsError",
    "BucketConfigError",
    "DataError",
    "EmbeddedServer",
    "FailedError",
    "InsecureURLError",
    "InvalidInputError",
    "InvariantError",
    "KVStore",
    "Member",
    "MembershipError",
    "MemoryStore",
    "MigrationReport",
    "NatsTarget",
    "NatsUnavailableError",
    "NotFoundError",
    "ParityError",
    "RefusedError",
    "Revocation",
    "RevokedUserError",
    "Room",
    "SQLiteStore",
    "SchemaError",
    "SealedKeyRecord",
    "Snapshot",
    "Store",
    "StoreError",
    "TargetNotEmptyError",
    "User",
    "VerifyResult",
    "__version__",
    "backup_sqlite",
    "check_nats_url",
    "connect_nats",
    "decode_id",
    "decode_record",
    "decode_snapshot",
    "diff_snapshots",
    "dumps",
    "encode_id",
    "encode_record",
    "find_nats_server",
    "invariant_findings",
    "is_loopback_url",
    "migrate_sqlite_to_kv",
    "snapshot_bytes",
    "snapshot_digest",
    "verify_parity",
]
