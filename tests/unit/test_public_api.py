"""The public surface of the package is pinned: a change to it is a deliberate act."""

from __future__ import annotations

import subprocess
import sys

import pytest

import membership

PUBLIC = {
    "SCHEMA_VERSION", "AlreadyExistsError", "BackupExistsError", "BucketConfigError",
    "ConflictError", "DataError", "EmbeddedServer", "FailedError", "InsecureURLError",
    "InvalidInputError", "InvariantError", "KVStore", "Member", "MembershipError",
    "MemoryStore", "MigrationReport", "NatsTarget", "NatsUnavailableError", "NotFoundError",
    "ParityError", "PermissionDeniedError", "RefusedError", "Revocation", "RevokedUserError",
    "Room", "SQLiteStore", "SchemaError", "SealedKeyRecord", "Snapshot", "Store", "StoreError",
    "TargetNotEmptyError", "User", "VerifyResult", "__version__", "backup_sqlite",
    "check_nats_url", "connect_nats", "decode_id", "decode_record", "decode_snapshot",
    "diff_snapshots", "dumps", "encode_id", "encode_record", "find_nats_server",
    "invariant_findings", "is_loopback_url", "migrate_sqlite_to_kv", "snapshot_bytes",
    "snapshot_digest", "verify_parity",
}  # fmt: skip


def test_the_public_names_are_exactly_these_and_all_resolve() -> None:
    assert set(membership.__all__) == PUBLIC
    for name in membership.__all__:
        assert getattr(membership, name) is not None, name
    assert set(dir(membership)) >= PUBLIC


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = membership.no_such_name  # type: ignore[attr-defined]


def test_the_cli_does_not_import_the_service_until_it_is_asked_for() -> None:
    """`membershipd verify` pays for what it uses: serve and cluster load on demand."""
    code = (
        "import sys, membership.cli; "
        "print(sorted(m for m in sys.modules if m in "
        "('membership.serve', 'membership.service', 'membership.cli_serve', "
        "'membership.cli_cluster', 'nkeys')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
