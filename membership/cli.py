"""``membershipd``: a thin command line over the library.

Each command parses its options, calls the library, prints, and maps errors to exit
codes: 0 success; 1 the operation ran and failed; 2 usage or refused input. Results
go to stdout (with ``--json``, exactly one JSON document); notices and the one-line
error go to stderr.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from . import __version__
from .canonical import KINDS, dumps, record_to_dict, snapshot_bytes
from .connect import NatsTarget, close_nats, connect_nats
from .errors import (
    FailedError,
    InvalidInputError,
    MembershipError,
    ParityError,
    TargetNotEmptyError,
)
from .kv import DEFAULT_PREFIX, KVStore, validate_prefix
from .model import validate_id, validate_optional_nkey, validate_public_key
from .sqlite import SQLiteStore
from .store import Store

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# -- errors and output ------------------------------------------------------------------


class CommandError(click.ClickException):
    """A library error on its way out: one line on stderr, the contract's exit code."""

    def __init__(self, error: MembershipError) -> None:
        super().__init__(" ".join(str(error).split()) or error.__class__.__name__)
        self.exit_code = error.exit_code  # type: ignore[misc]  # per instance, by error class

    def show(self, file: Any = None) -> None:
        click.echo(f"membershipd: error: {self.format_message()}", err=True)


def fail(error: MembershipError) -> NoReturn:
    raise CommandError(error)


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a library error becomes a clean exit."""
    try:
        return asyncio.run(coro)
    except MembershipError as exc:
        raise CommandError(exc) from None
    except KeyboardInterrupt:
        click.echo("membershipd: interrupted", err=True)
        sys.exit(130)


def emit_json(obj: Any) -> None:
    click.echo(dumps(obj))


def say(message: str) -> None:
    """A notice on stderr (never mixed into stdout results)."""
    click.echo(message, err=True)


def progress_printer(json_mode: bool) -> Callable[[str], None]:
    """Progress lines on stderr when it is a terminal; silent in pipes and CI."""
    if sys.stderr.isatty():
        return lambda msg: click.echo(f"  … {msg}", err=True)
    return lambda msg: None


def show_id(value: str) -> str:
    """An id as it is, unless it holds characters a terminal would hide or act on."""
    return value if value.isprintable() else repr(value)


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


# -- options ------------------------------------------------------------------------------


@dataclass
class StoreOptions:
    db: Path | None
    nats_url: str | None
    ca: str | None
    cert: str | None
    key: str | None
    bucket_prefix: str
    seed_file: str | None = None

    def target(self) -> NatsTarget:
        assert self.nats_url is not None
        return NatsTarget(self.nats_url, self.ca, self.cert, self.key, self.seed_file)


def nats_options(func: F) -> F:
    """``--ca/--cert/--key/--bucket-prefix``: how to reach the KV namespace."""
    for option in reversed(
        [
            click.option(
                "--ca",
                type=click.Path(dir_okay=False),
                metavar="CERT",
                help="CA certificate to verify the server (TLS); required for a "
                "non-loopback --nats-url.",
            ),
            click.option(
                "--cert",
                type=click.Path(dir_okay=False),
                metavar="CERT",
                help="Client certificate for mutual TLS (with --key).",
            ),
            click.option(
                "--key",
                type=click.Path(dir_okay=False),
                metavar="KEY",
                help="Client private key for mutual TLS (with --cert).",
            ),
            click.option(
                "--bucket-prefix",
                default=DEFAULT_PREFIX,
                show_default=True,
                metavar="PREFIX",
                help="Prefix of the KV bucket names.",
            ),
            click.option(
                "--seed-file",
                type=click.Path(dir_okay=False),
                metavar="FILE",
                help="An nkey seed (mode 0600) to authenticate with, for a server whose "
                "authorization asks for one (as `membershipd serve` sets up: an admin's).",
            ),
        ]
    ):
        func = option(func)
    return func


def store_options(func: F) -> F:
    """``--db PATH | --nats-url URL`` plus the NATS options: which store to act on."""

    @click.option(
        "--db", type=click.Path(path_type=Path), metavar="PATH", help="SQLite membership database."
    )
    @click.option(
        "--nats-url",
        metavar="URL",
        help="NATS server (nats:// or tls://; comma-separated seed list allowed).",
    )
    @nats_options
    @functools.wraps(func)
    def wrapper(
        db: Path | None,
        nats_url: str | None,
        ca: str | None,
        cert: str | None,
        key: str | None,
        bucket_prefix: str,
        seed_file: str | None,
        **kwargs: Any,
    ) -> Any:
        if (db is None) == (nats_url is None):
            raise click.UsageError("give exactly one of --db PATH or --nats-url URL")
        opts = StoreOptions(db, nats_url, ca, cert, key, bucket_prefix, seed_file)
        return func(opts, **kwargs)

    return wrapper  # type: ignore[return-value]


@asynccontextmanager
async def open_store(opts: StoreOptions, *, create: bool = False) -> AsyncIterator[Store]:
    """The store the options name; the KV connection is closed on the way out."""
    if opts.db is not None:
        sqlite_store = SQLiteStore.open(opts.db, create=create)
        try:
            yield sqlite_store
        finally:
            await sqlite_store.close()
        return
    target = opts.target()
    target.check()  # refuse a remote URL without --ca before connecting
    validate_prefix(opts.bucket_prefix)
    nc = await connect_nats(target)
    try:
        yield await KVStore.open(nc, opts.bucket_prefix, create=create)
    finally:
        await close_nats(nc)


def hex_bytes(what: str) -> Callable[[click.Context, click.Parameter, str], bytes]:
    def convert(ctx: click.Context, param: click.Parameter, value: str) -> bytes:
        if value == "-":
            value = sys.stdin.read()
        try:
            return bytes.fromhex(value.strip())
        except ValueError:
            raise click.BadParameter(
                f"{what} must be hex (e.g. 0a1b...), or - to read stdin"
            ) from None

    return convert


json_option = click.option("--json", "as_json", is_flag=True, help="Print canonical JSON.")


# -- the command group -------------------------------------------------------------------


class _Commands(click.Group):
    """The command group, with :data:`LAZY_COMMANDS` imported only when needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            module, attribute = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="membershipd")
def cli() -> None:
    """membershipd: the unibus control plane on SQLite and NATS JetStream KV.

    It holds the allowlist (users, active or revoked), the rooms with their key
    epoch, the members, and every member's sealed room key across epochs; and it
    moves that state, once and verifiably, from a SQLite file into replicated
    JetStream KV buckets.

    \b
    Quick start:
      membershipd demo                       # the whole job on an embedded server
      membershipd init --db control.db
      membershipd user add --db control.db alice --public-key <64 hex>
      membershipd migrate-to-kv --db control.db --nats-url nats://127.0.0.1:4222
      membershipd verify --db control.db --nats-url nats://127.0.0.1:4222

    Exit codes: 0 success, 1 the operation ran and failed, 2 usage or refused input.
    An id that starts with '-' goes after '--'.
    """


@cli.command()
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    metavar="PATH",
    required=True,
    help="SQLite file to create (or check).",
)
def init(db: Path) -> None:
    """Create an empty membership database (schema v2, WAL).

    An existing membership database is left as it is; any other existing file is
    refused and left untouched.

    \b
    Example:
      membershipd init --db control.db
    """
    existed = db.exists() and db.stat().st_size > 0

    async def go() -> int:
        store = SQLiteStore.open(db, create=True)
        await store.close()
        return store.schema_version

    version = run(go())
    if existed:
        click.echo(f"{db} is already a membership database (schema version {version})")
    else:
        click.echo(f"initialised membership database {db} (schema version {version})")


# -- users ---------------------------------------------------------------------------------


@cli.group()
def user() -> None:
    """Add, revoke and list users (the allowlist)."""


@user.command("add")
@store_options
@click.argument("user_id", metavar="ID")
@click.option(
    "--public-key",
    required=True,
    metavar="HEX",
    callback=hex_bytes("--public-key"),
    help="The user's X25519 public key: 32 bytes as 64 hex digits (- reads stdin).",
)
@click.option(
    "--nkey",
    metavar="NKEY",
    help="The user's NATS identity: its public nkey (U..., 56 characters). Without one the "
    "user cannot connect to `membershipd serve`; set it later with `user set-nkey`.",
)
def user_add(opts: StoreOptions, user_id: str, public_key: bytes, nkey: str | None) -> None:
    """Add an active user. Creates the --db file if it does not exist.

    \b
    Example:
      membershipd user add --db control.db alice --public-key 1111...11
      membershipd user add --db control.db bob --public-key 2222...22 --nkey UD3X...
    """

    async def go() -> None:
        validate_id(user_id, "user id")  # refuse bad input before a --db file is created
        validate_public_key(public_key)
        validate_optional_nkey(nkey)
        async with open_store(opts, create=True) as store:
            added = await store.add_user(user_id, public_key, nkey=nkey)
        click.echo(
            f"added user {show_id(added.id)} (active"
            + (", with an nkey)" if added.nkey else ", no nkey yet)")
        )

    run(go())


@user.command("set-nkey")
@store_options
@click.argument("user_id", metavar="ID")
@click.argument("nkey", metavar="NKEY", required=False)
@click.option("--clear", is_flag=True, help="Remove the user's nkey: it can no longer connect.")
def user_set_nkey(opts: StoreOptions, user_id: str, nkey: str | None, clear: bool) -> None:
    """Set or change a user's NATS identity (its public nkey), or --clear it.

    The nkey is the *public* half (U...); the seed (SU...) stays with the user. A
    running `membershipd serve` reloads the server's authorization at once, so the
    old key stops working and its connections end.

    \b
    Example:
      membershipd nkey generate --seed-file alice.seed     # on the user's machine
      membershipd user set-nkey --db control.db alice UD3X...
      membershipd user set-nkey --db control.db alice --clear
    """
    if clear == (nkey is not None):
        raise click.UsageError("give exactly one of NKEY or --clear")

    async def go() -> None:
        async with open_store(opts) as store:
            changed = await store.set_user_nkey(user_id, nkey)
        click.echo(
            f"user {show_id(changed.id)}: "
            + (f"nkey set to {changed.nkey}" if changed.nkey else "nkey cleared")
        )

    run(go())


@user.command("revoke")
@store_options
@click.argument("user_id", metavar="ID")
def user_revoke(opts: StoreOptions, user_id: str) -> None:
    """Revoke a user and remove it from every room, bumping each room's epoch.

    The user keeps its record (status revoked) and the sealed keys of past epochs;
    it gets no membership and no key from now on.

    \b
    Example:
      membershipd user revoke --db control.db carol
    """

    async def go() -> None:
        async with open_store(opts) as store:
            result = await store.revoke_user(user_id)
        state = "revoked" if result.was_active else "was already revoked"
        rooms = ", ".join(f"{show_id(r.id)} -> epoch {r.epoch}" for r in result.rooms)
        click.echo(
            f"user {show_id(result.user.id)} {state}"
            + (f"; removed from {len(result.rooms)} room(s): {rooms}" if rooms else "")
        )

    run(go())


@user.command("list")
@store_options
@json_option
def user_list(opts: StoreOptions, as_json: bool) -> None:
    """List users: id, status, created, public key (hex), nkey (- for none).

    \b
    Example:
      membershipd user list --db control.db --json
    """

    async def go() -> None:
        async with open_store(opts) as store:
            users = await store.list_users()
        if as_json:
            emit_json([record_to_dict(u) for u in users])
            return
        for u in users:
            click.echo(
                f"{show_id(u.id)}\t{u.status}\t{_ts(u.created_at)}\t{u.public_key.hex()}"
                f"\t{u.nkey or '-'}"
            )

    run(go())


# -- rooms ---------------------------------------------------------------------------------


@cli.group()
def room() -> None:
    """Create rooms, manage members, rekey; list and show them."""


@room.command("create")
@store_options
@click.argument("room_id", metavar="ROOM")
@click.option("--owner", required=True, metavar="USER", help="An active user; the first member.")
def room_create(opts: StoreOptions, room_id: str, owner: str) -> None:
    """Create a room at epoch 1 with its owner as the first member.

    \b
    Example:
      membershipd room create --db control.db general --owner alice
    """

    async def go() -> None:
        async with open_store(opts) as store:
            created = await store.create_room(room_id, owner)
        click.echo(
            f"created room {show_id(created.id)} (epoch {created.epoch}, owner {show_id(owner)})"
        )

    run(go())


@room.command("add-member")
@store_options
@click.argument("room_id", metavar="ROOM")
@click.argument("user_id", metavar="USER")
def room_add_member(opts: StoreOptions, room_id: str, user_id: str) -> None:
    """Add an active user to a room at its current epoch.

    Seal the room key for the new member with `keys put`.

    \b
    Example:
      membershipd room add-member --db control.db general bob
    """

    async def go() -> None:
        async with open_store(opts) as store:
            member = await store.add_member(room_id, user_id)
        click.echo(
            f"added {show_id(user_id)} to room {show_id(room_id)} at epoch {member.joined_epoch}"
        )

    run(go())


@room.command("remove-member")
@store_options
@click.argument("room_id", metavar="ROOM")
@click.argument("user_id", metavar="USER")
def room_remove_member(opts: StoreOptions, room_id: str, user_id: str) -> None:
    """Remove a member and bump the room's epoch (it can read nothing new).

    \b
    Example:
      membershipd room remove-member --db control.db general bob
    """

    async def go() -> None:
        async with open_store(opts) as store:
            updated = await store.remove_member(room_id, user_id)
        click.echo(
            f"removed {show_id(user_id)} from room {show_id(room_id)}; epoch is now {updated.epoch}"
        )

    run(go())


@room.command("rekey")
@store_options
@click.argument("room_id", metavar="ROOM")
def room_rekey(opts: StoreOptions, room_id: str) -> None:
    """Bump a room's epoch; then seal the new room key for each member.

    \b
    Example:
      membershipd room rekey --db control.db general
    """

    async def go() -> None:
        async with open_store(opts) as store:
            updated = await store.rekey(room_id)
        click.echo(f"room {show_id(room_id)} is now at epoch {updated.epoch}")

    run(go())


@room.command("list")
@store_options
@json_option
def room_list(opts: StoreOptions, as_json: bool) -> None:
    """List rooms with their epoch and member count.

    \b
    Example:
      membershipd room list --nats-url nats://127.0.0.1:4222 --json
    """

    async def go() -> None:
        async with open_store(opts) as store:
            rooms = await store.list_rooms()
            members = await store.list_members()
        if as_json:
            emit_json([record_to_dict(r) for r in rooms])
            return
        count: dict[str, int] = {}
        for m in members:
            count[m.room_id] = count.get(m.room_id, 0) + 1
        for r in rooms:
            click.echo(
                f"{show_id(r.id)}\tepoch {r.epoch}\t{count.get(r.id, 0)} member(s)\t{_ts(r.created_at)}"
            )

    run(go())


@room.command("show")
@store_options
@click.argument("room_id", metavar="ROOM")
@json_option
def room_show(opts: StoreOptions, room_id: str, as_json: bool) -> None:
    """Show a room, its members, and which sealed keys exist per epoch.

    With --json: {"room": ROOM, "members": [MEMBER...], "sealed_keys": [{room_id,
    epoch, user_id}...]} (the key bytes are left out; `keys get` prints them).

    \b
    Example:
      membershipd room show --db control.db general
    """

    async def go() -> None:
        async with open_store(opts) as store:
            found = await store.get_room(room_id)
            if found is None:
                fail(FailedError(f"room {room_id!r} does not exist"))
            members = await store.list_members(room_id)
            keys = await store.list_sealed_keys(room_id)
        if as_json:
            emit_json(
                {
                    "room": record_to_dict(found),
                    "members": [record_to_dict(m) for m in members],
                    "sealed_keys": [
                        {"room_id": k.room_id, "epoch": k.epoch, "user_id": k.user_id} for k in keys
                    ],
                }
            )
            return
        click.echo(
            f"room {show_id(found.id)}: epoch {found.epoch}, created {_ts(found.created_at)}"
        )
        for m in members:
            click.echo(f"  {m.role:6} {show_id(m.user_id)} (joined at epoch {m.joined_epoch})")
        by_epoch: dict[int, list[str]] = {}
        for k in keys:
            by_epoch.setdefault(k.epoch, []).append(show_id(k.user_id))
        for epoch in sorted(by_epoch):
            click.echo(f"  sealed keys at epoch {epoch}: {', '.join(by_epoch[epoch])}")

    run(go())


# -- keys ----------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Put and get members' sealed room keys."""


@keys.command("put")
@store_options
@click.argument("room_id", metavar="ROOM")
@click.argument("user_id", metavar="USER")
@click.option(
    "--sealed-key",
    required=True,
    metavar="HEX",
    callback=hex_bytes("--sealed-key"),
    help="The room key sealed to the member's public key, 1..4096 bytes as hex "
    "(- reads it from stdin).",
)
def keys_put(opts: StoreOptions, room_id: str, user_id: str, sealed_key: bytes) -> None:
    """Store a member's sealed room key at the room's current epoch.

    \b
    Example:
      membershipd keys put --db control.db general bob --sealed-key abab...ab
    """

    async def go() -> None:
        async with open_store(opts) as store:
            record = await store.put_sealed_key(room_id, user_id, sealed_key)
        click.echo(
            f"stored sealed key for {show_id(user_id)} in room {show_id(room_id)} "
            f"at epoch {record.epoch} ({len(sealed_key)} bytes)"
        )

    run(go())


@keys.command("get")
@store_options
@click.argument("room_id", metavar="ROOM")
@click.argument("user_id", metavar="USER")
@click.option("--epoch", type=click.IntRange(min=1), help="Epoch (default: the room's current).")
@json_option
def keys_get(
    opts: StoreOptions, room_id: str, user_id: str, epoch: int | None, as_json: bool
) -> None:
    """Print a member's sealed room key as hex (or the record as JSON).

    \b
    Example:
      membershipd keys get --db control.db general bob --epoch 1
    """

    async def go() -> None:
        async with open_store(opts) as store:
            record = await store.get_sealed_key(room_id, user_id, epoch)
            if record is None:
                found = await store.get_room(room_id)
                if found is None:
                    fail(FailedError(f"room {room_id!r} does not exist"))
                at = epoch if epoch is not None else found.epoch
                fail(
                    FailedError(
                        f"no sealed key for user {user_id!r} in room {room_id!r} at epoch {at}"
                    )
                )
        if as_json:
            emit_json(record_to_dict(record))
        else:
            click.echo(record.sealed_key.hex())

    run(go())


# -- export, migrate, verify ---------------------------------------------------------------


@cli.command()
@store_options
def export(opts: StoreOptions) -> None:
    """Print the whole control plane as canonical JSON.

    {"members": [...], "rooms": [...], "schema_version": N, "sealed_keys": [...],
    "users": [...]}, every list sorted by primary key, one newline at the end.
    Exports of equal states are byte-identical whichever store they come from, and
    `sha256sum` of the output is the snapshot digest.

    \b
    Example:
      membershipd export --db control.db > before.json
      membershipd export --nats-url nats://127.0.0.1:4222 | cmp - before.json
    """

    async def go() -> bytes:
        async with open_store(opts) as store:
            return snapshot_bytes(await store.export_snapshot())

    data = run(go())
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@cli.command("migrate-to-kv")
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    metavar="PATH",
    required=True,
    help="The SQLite source (never modified).",
)
@click.option("--nats-url", metavar="URL", required=True, help="The NATS server with JetStream.")
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Bucket replicas: 1, or 3 on a cluster for real high availability.",
)
@click.option("--no-backup", is_flag=True, help="Skip the VACUUM INTO backup of the source.")
@click.option(
    "--backup-path",
    type=click.Path(path_type=Path),
    metavar="P",
    help="Where to write the backup (must not exist). "
    "Default: beside the database, <db>.backup-<UTC time>.",
)
@click.option("--prune", is_flag=True, help="Delete KV records the source lacks (else refuse).")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress on stderr (default: a bar per phase on a terminal; otherwise one "
    "line per phase -- backup, read, write, verify -- once the run has succeeded).",
)
@nats_options
@json_option
def migrate_to_kv(
    db: Path,
    nats_url: str,
    replicas: int,
    no_backup: bool,
    backup_path: Path | None,
    prune: bool,
    quiet: bool,
    ca: str | None,
    cert: str | None,
    key: str | None,
    bucket_prefix: str,
    seed_file: str | None,
    as_json: bool,
) -> None:
    """Copy the SQLite control plane into JetStream KV, verified, idempotently.

    Pins one moment of the source (its write lock is held while a read snapshot is
    taken and backed up: VACUUM INTO, 0600, integrity checked) and streams it;
    writes only what differs (a second run writes nothing); refuses records that
    exist only in KV unless --prune; reads KV back and proves it equals the source.
    Progress per phase goes to stderr. Exit 0 verified, 1 failed or different, 2
    refused.

    \b
    Example:
      membershipd migrate-to-kv --db control.db --nats-url nats://127.0.0.1:4222
      membershipd migrate-to-kv --db control.db --nats-url tls://nats.internal:4222 \\
          --ca ca.pem --replicas 3 --json
    """
    from .migrate import migrate_sqlite_to_kv
    from .progress import for_stderr

    progress = for_stderr(quiet)
    target = NatsTarget(nats_url, ca, cert, key, seed_file)
    try:
        report = asyncio.run(
            migrate_sqlite_to_kv(
                db,
                target,
                replicas=replicas,
                backup=not no_backup,
                backup_path=backup_path,
                prune=prune,
                prefix=bucket_prefix,
                progress=progress,
            )
        )
    except TargetNotEmptyError as exc:
        if as_json:
            emit_json({"error": str(exc), "extra": list(exc.extra)})
        else:
            for line in exc.extra:
                click.echo(line)
        raise CommandError(exc) from None
    except MembershipError as exc:
        raise CommandError(exc) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(
            f"migrated {db} -> {target.display()} (bucket prefix {bucket_prefix}, "
            f"replicas {report.replicas})"
        )
        click.echo(f"backup: {report.backup or 'none (--no-backup)'}")
        click.echo(f"{'':12} {'source':>8} {'written':>8} {'unchanged':>10} {'pruned':>7}")
        for kind in KINDS:
            c = report.records[kind]
            click.echo(f"{kind:12} {c.source:>8} {c.written:>8} {c.unchanged:>10} {c.pruned:>7}")
        click.echo(f"verified: {'yes' if report.verified else 'NO'}")
        click.echo(f"digest: {report.digest}")
        for line in report.differences:
            click.echo(f"  {line}")
    if not report.verified:
        raise CommandError(
            ParityError(
                f"KV does not equal the source after writing ({len(report.differences)} "
                "difference(s)); rerun, then `membershipd verify`"
            )
        )
    progress.flush()  # the phase lines of a finished run (a failed one shows its error only)


@cli.command()
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    metavar="PATH",
    required=True,
    help="The SQLite source.",
)
@click.option("--nats-url", metavar="URL", required=True, help="The NATS server with JetStream.")
@nats_options
@json_option
def verify(
    db: Path,
    nats_url: str,
    ca: str | None,
    cert: str | None,
    key: str | None,
    bucket_prefix: str,
    seed_file: str | None,
    as_json: bool,
) -> None:
    """Check parity between the SQLite file and the KV buckets.

    Exit 0 when equal; exit 1 with one line per difference on stdout (which record,
    which field, both values). Invariant violations carried over from a legacy
    source are listed separately as findings; they do not break parity.

    \b
    Example:
      membershipd verify --db control.db --nats-url nats://127.0.0.1:4222
    """
    from .migrate import verify_parity

    target = NatsTarget(nats_url, ca, cert, key, seed_file)
    result = run(verify_parity(db, target, prefix=bucket_prefix))
    if as_json:
        emit_json(result.as_dict())
    else:
        total = sum(result.counts.values())
        if result.equal:
            click.echo(f"parity: SQLite and KV are equal ({total} records, {result.kv_digest})")
        else:
            click.echo(f"parity: {len(result.differences)} difference(s) between SQLite and KV")
            for line in result.differences:
                click.echo(f"  {line}")
        if result.findings:
            click.echo(f"findings: {len(result.findings)} invariant violation(s) in the source")
            for line in result.findings:
                click.echo(f"  {line}")
    if not result.equal:
        raise CommandError(
            ParityError(
                f"SQLite and KV differ in {len(result.differences)} place(s); "
                "`membershipd migrate-to-kv` brings KV to parity"
            )
        )


@cli.command()
@store_options
@json_option
def inspect(opts: StoreOptions, as_json: bool) -> None:
    """Summarise a store: counts, sizes, digest, room epochs, invariant findings.

    For a SQLite file (a backup too) or a KV namespace: the schema version; the
    snapshot digest (the one `migrate-to-kv` reports and `export | sha256sum`
    gives); per record kind the count, the bytes as canonical JSON (what the KV
    values hold) and the largest record; how many rooms are at each epoch; the
    invariant violations a legacy source may carry (orphans, keys above the
    room's epoch ...); and the file's size or each bucket's replicas, history,
    messages and bytes. Only reads. Equal snapshots give equal figures on both
    stores, so two inspections are easy to compare.

    \b
    Example:
      membershipd inspect --db control.db
      membershipd inspect --nats-url nats://127.0.0.1:4222 --json
    """
    from .inspect import format_inspection, inspect_kv, inspect_sqlite

    if opts.db is not None:
        result = run(inspect_sqlite(opts.db))
    else:
        result = run(inspect_kv(opts.target(), opts.bucket_prefix))
    if as_json:
        emit_json(result.as_dict())
    else:
        for line in format_inspection(result):
            click.echo(line)


@cli.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Keep the database, backup and server store in DIR (default: removed).",
)
@json_option
def demo(keep: Path | None, as_json: bool) -> None:
    """Run the main job end to end on the embedded JetStream server.

    Builds a representative control plane in a fresh SQLite file (ids with dots,
    spaces, wildcards and non-ASCII; a room at epoch 2; a revoked user), starts the
    embedded nats-server, migrates with a backup, migrates again (zero writes),
    verifies parity, prints what it did and stops the server.

    \b
    Example:
      membershipd demo
      membershipd demo --keep ./demo-run --json
    """
    from .demo import run_demo

    result = run(run_demo(keep, say=None if as_json else click.echo))
    if as_json:
        emit_json(result.as_dict())
    else:
        click.echo("demo: ok: parity holds and the second migration wrote nothing")


@cli.command()
@store_options
@click.option("--no-backup", is_flag=True, help="Skip the backup of the SQLite file.")
@click.option(
    "--backup-path",
    type=click.Path(path_type=Path),
    metavar="P",
    help="Where to write the backup of --db (must not exist). "
    "Default: beside the database, <db>.backup-<UTC time>.",
)
@json_option
def upgrade(opts: StoreOptions, no_backup: bool, backup_path: Path | None, as_json: bool) -> None:
    """Upgrade a SQLite file or a KV namespace to the current schema version.

    Schema version 2 added each user's NATS identity (nkey). An older store can be
    read (export, inspect, verify, migrate-to-kv) but not written until upgraded.
    A SQLite file is backed up first (VACUUM INTO, checked, 0600) and changed in
    one transaction; a KV namespace has its records rewritten, then its schema
    record. Upgrading a current store changes nothing. `migrate-to-kv` reads an
    older SQLite file as it is and writes a current namespace.

    \b
    Example:
      membershipd upgrade --db control.db
      membershipd upgrade --nats-url nats://127.0.0.1:4222 --json
    """
    from .upgrade import upgrade_kv, upgrade_sqlite

    if opts.db is not None:
        try:
            report = upgrade_sqlite(opts.db, backup=not no_backup, backup_path=backup_path)
        except MembershipError as exc:
            raise CommandError(exc) from None
    else:
        if no_backup or backup_path is not None:
            raise click.UsageError("--no-backup and --backup-path apply to --db only")
        report = run(upgrade_kv(opts.target(), opts.bucket_prefix))
    if as_json:
        emit_json(report.as_dict())
    elif report.from_version == report.to_version:
        click.echo(f"{report.store} is already at schema version {report.to_version}")
    else:
        click.echo(
            f"upgraded {report.store} from schema version {report.from_version} "
            f"to {report.to_version}"
            + (f"; backup {report.backup}" if report.backup else "")
            + (f"; {report.rewritten} record(s) rewritten" if opts.db is None else "")
        )


@cli.group()
def nkey() -> None:
    """Make NATS nkey identities for users (the seed stays with the user)."""


@nkey.command("generate")
@click.option(
    "--seed-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="FILE",
    help="Where to write the new seed (created 0600; an existing file is refused).",
)
def nkey_generate(seed_file: Path) -> None:
    """Make a user nkey pair: the seed into FILE (0600), the public key on stdout.

    The public key (U...) goes into the allowlist (`user add --nkey`, `user
    set-nkey`); the seed (SU...) is the user's secret and never leaves its machine.

    \b
    Example:
      membershipd nkey generate --seed-file ~/.config/unibus/alice.seed
    """
    from .nkey import generate_user_keypair

    pair = generate_user_keypair()
    try:
        fd = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(InvalidInputError(f"--seed-file {seed_file} exists; a seed is never overwritten"))
    except OSError as exc:
        fail(InvalidInputError(f"--seed-file {seed_file}: cannot create it ({exc.strerror})"))
    with os.fdopen(fd, "wb") as handle:
        handle.write(pair.seed + b"\n")
    click.echo(pair.public)


# -- commands that live in their own modules ------------------------------------------------
# Imported when used (or listed by --help), so that `verify` does not pay for `serve`.

LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("membership.cli_cluster", "cluster"),
    "serve": ("membership.cli_serve", "serve_command"),
}


def main() -> None:
    """The ``membershipd`` console script."""
    cli.main(prog_name="membershipd")


if __name__ == "__main__":
    main()
