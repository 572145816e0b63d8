"""unibus membership: the control plane on SQLite and NATS JetStream KV.

The public surface is ``__all__`` (a test pins it). The command line, ``membershipd``,
is a thin layer over these names. Each name is imported from its module when first
used (PEP 562), so that a command pays only for the modules it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE: dict[str, str] = {
    "invariant_findings": "audit",
    "backup_sqlite": "backup",
    "decode_record": "canonical",
    "decode_snapshot": "canonical",
    "dumps": "canonical",
    "encode_record": "canonical",
    "snapshot_bytes": "canonical",
    "snapshot_digest": "canonical",
    "NatsTarget": "connect",
    "check_nats_url": "connect",
    "connect_nats": "connect",
    "is_loopback_url": "connect",
    "diff_snapshots": "diff",
    "EmbeddedServer": "embedded",
    "find_nats_server": "embedded",
    "AlreadyExistsError": "errors",
    "BackupExistsError": "errors",
    "BucketConfigError": "errors",
    "ConflictError": "errors",
    "DataError": "errors",
    "FailedError": "errors",
    "InsecureURLError": "errors",
    "InvalidInputError": "errors",
    "InvariantError": "errors",
    "MembershipError": "errors",
    "NatsUnavailableError": "errors",
    "NotFoundError": "errors",
    "ParityError": "errors",
    "PermissionDeniedError": "errors",
    "RefusedError": "errors",
    "RevokedUserError": "errors",
    "SchemaError": "errors",
    "StoreError": "errors",
    "TargetNotEmptyError": "errors",
    "decode_id": "keycodec",
    "encode_id": "keycodec",
    "KVStore": "kv",
    "MemoryStore": "memory",
    "MigrationReport": "migrate",
    "VerifyResult": "migrate",
    "migrate_sqlite_to_kv": "migrate",
    "verify_parity": "migrate",
    "Member": "model",
    "Revocation": "model",
    "Room": "model",
    "SCHEMA_VERSION": "model",
    "SealedKeyRecord": "model",
    "Snapshot": "model",
    "User": "model",
    "SQLiteStore": "sqlite",
    "Store": "store",
}
"""Public name -> the private module it lives in."""


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'membership' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the names as the type checker sees them
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
        ConflictError,
        DataError,
        FailedError,
        InsecureURLError,
        InvalidInputError,
        InvariantError,
        MembershipError,
        NatsUnavailableError,
        NotFoundError,
        ParityError,
        PermissionDeniedError,
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
    "ConflictError",
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
    "PermissionDeniedError",
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
