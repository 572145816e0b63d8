"""Every error `membership` raises on purpose, under one root.

The hierarchy mirrors the CLI's exit codes, so the command line maps an error to
its exit status by class alone (``exc.exit_code``)::

    MembershipError
    ├── RefusedError                 exit 2: the input was refused, nothing was written
    │   ├── InvalidInputError        a malformed id, key, hex string, URL, bucket prefix ...
    │   ├── InvariantError           the request breaks a rule of the domain
    │   │   ├── NotFoundError        a user, room or membership it needs does not exist
    │   │   ├── AlreadyExistsError   a user, room, member, sealed key or nkey that exists
    │   │   └── RevokedUserError     a revoked user gets no membership, no key
    │   ├── PermissionDeniedError    a user of `serve` asked for what is not its own
    │   ├── SchemaError              not a membership database / unknown schema version
    │   ├── InsecureURLError         a remote NATS URL without --ca
    │   ├── BackupExistsError        the backup path is taken
    │   └── BucketConfigError        a bucket exists with other settings
    └── FailedError                  exit 1: the operation ran and failed
        ├── NatsUnavailableError     unreachable server, TLS failure, lost connection
        ├── StoreError               the store failed underneath (I/O, locked, full ...)
        │   └── ConflictError        concurrent updates of one record kept winning the race
        ├── DataError                stored data that cannot be read back as records
        ├── ParityError              the two stores differ (carries the diff)
        └── TargetNotEmptyError      KV holds records the source lacks (carries them)

Messages are one line, name the thing and the fix, and never carry a secret: callers
build them from ids and paths only, never from key material or credentials.
Lower-layer exceptions (``sqlite3``, ``nats``) are translated at the store edge and
chained with ``raise ... from exc`` so a debugger still sees the cause.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AlreadyExistsError",
    "BackupExistsError",
    "BucketConfigError",
    "ConflictError",
    "DataError",
    "FailedError",
    "InsecureURLError",
    "InvalidInputError",
    "InvariantError",
    "MembershipError",
    "NatsUnavailableError",
    "NotFoundError",
    "ParityError",
    "PermissionDeniedError",
    "RefusedError",
    "RevokedUserError",
    "SchemaError",
    "StoreError",
    "TargetNotEmptyError",
]


class MembershipError(Exception):
    """Root of every error raised on purpose by `membership`."""

    exit_code = 1


class RefusedError(MembershipError):
    """The input was refused before anything was written (exit 2)."""

    exit_code = 2


class InvalidInputError(RefusedError, ValueError):
    """A value outside its domain: an id, a key length, hex, a URL, a bucket prefix."""


class InvariantError(RefusedError):
    """The request would break a rule of the control plane."""


class NotFoundError(InvariantError):
    """A user, room or membership the operation needs does not exist."""


class AlreadyExistsError(InvariantError):
    """A user, room, member or sealed key that exists cannot be added again."""


class RevokedUserError(InvariantError):
    """A revoked user gets no new membership and no new sealed key."""


class PermissionDeniedError(RefusedError):
    """A user of ``membershipd serve`` asked for something that is not its own."""


class SchemaError(RefusedError):
    """A file or namespace that is not a membership store of a known schema version."""


class InsecureURLError(RefusedError):
    """A remote NATS URL without --ca: the allowlist must not cross a network in cleartext."""


class BackupExistsError(RefusedError):
    """The backup path already exists; a backup is never overwritten."""


class BucketConfigError(RefusedError):
    """A bucket exists with settings other than the ones asked for."""


class FailedError(MembershipError):
    """The operation ran and failed (exit 1)."""

    exit_code = 1


class NatsUnavailableError(FailedError):
    """The NATS server could not be reached, the TLS handshake failed, or the link broke."""


class StoreError(FailedError):
    """The underlying store failed: I/O error, database locked, disk full, server error."""


class ConflictError(StoreError):
    """Concurrent updates of the same record kept winning the compare-and-swap race."""


class DataError(FailedError):
    """Stored data that cannot be read back as valid records."""


class ParityError(FailedError):
    """The SQLite and KV snapshots differ. ``diff`` holds the readable difference."""

    def __init__(self, message: str, diff: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.diff = tuple(diff)


class TargetNotEmptyError(FailedError):
    """KV holds records that the source lacks; the run refused before writing anything."""

    def __init__(self, message: str, extra: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.extra = tuple(extra)
