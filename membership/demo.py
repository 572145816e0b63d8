"""The representative control plane, and the demo that migrates it.

:func:`build_representative_state` drives any :class:`~membership.store.Store`
through the API to a small state that still shows everything the migration must
carry: ids with dots, spaces, wildcards and non-ASCII; a room rekeyed past epoch 1
by a member's removal; sealed keys of past and current epochs; a revoked user who
was removed from its room (so that room's epoch moved too). The golden snapshots
and the demo use it, with a fixed clock so its output is reproducible.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .connect import NatsTarget
from .embedded import EmbeddedServer
from .errors import BackupExistsError, FailedError
from .migrate import MigrationReport, VerifyResult, migrate_sqlite_to_kv, verify_parity
from .nkey import UserKeyPair, user_keypair_from_raw
from .sqlite import SQLiteStore
from .store import Store

__all__ = ["DemoResult", "build_representative_state", "demo_key", "demo_nkey", "run_demo"]

DEMO_EPOCH_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z: a fixed clock for reproducible output


def demo_key(label: str, size: int) -> bytes:
    """Deterministic stand-in key material (the demo seals nothing real)."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


USERS = ("alice", "bob", "carol", "d.o.t user", "ünï*>=/code")


def demo_nkey(user: str) -> UserKeyPair:
    """A user's deterministic stand-in NATS identity (its seed is no secret here)."""
    return user_keypair_from_raw(demo_key(f"nkey/{user}", 32))


async def build_representative_state(store: Store, *, created_at: int = DEMO_EPOCH_MS) -> None:
    """Two rooms, one rekeyed to epoch 2, members, sealed keys across epochs, a revoked user;
    NATS identities for all users but one (bob's set after he was added)."""
    for i, user in enumerate(USERS):
        nkey = demo_nkey(user).public if user in ("alice", "carol", "d.o.t user") else None
        await store.add_user(user, demo_key(f"pk/{user}", 32), created_at=created_at + i, nkey=nkey)
    await store.set_user_nkey("bob", demo_nkey("bob").public)
    await store.create_room("general", "alice", created_at=created_at + 10)
    await store.create_room("ops.team ü", "d.o.t user", created_at=created_at + 11)
    await store.add_member("general", "bob")
    await store.add_member("general", "carol")
    await store.add_member("ops.team ü", "bob")
    await store.add_member("ops.team ü", "ünï*>=/code")
    for room, user in (
        ("general", "alice"),
        ("general", "bob"),
        ("ops.team ü", "bob"),
        ("ops.team ü", "d.o.t user"),
    ):
        await store.put_sealed_key(room, user, demo_key(f"sealed/{room}/{user}/1", 48))
    await store.remove_member("ops.team ü", "bob")  # ops.team ü -> epoch 2
    await store.put_sealed_key("ops.team ü", "d.o.t user", demo_key("sealed/ops/dot/2", 40))
    await store.put_sealed_key("ops.team ü", "ünï*>=/code", demo_key("sealed/ops/code/2", 40))
    await store.revoke_user("carol")  # leaves general -> epoch 2
    await store.put_sealed_key("general", "alice", demo_key("sealed/general/alice/2", 48))


@dataclass
class DemoResult:
    workdir: Path | None
    server_url: str
    first: MigrationReport
    second: MigrationReport
    verify: VerifyResult

    @property
    def ok(self) -> bool:
        return self.first.verified and self.second.writes == 0 and self.verify.equal

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "workdir": str(self.workdir) if self.workdir is not None else None,
            "server": self.server_url,
            "first_run": self.first.as_dict(),
            "second_run": self.second.as_dict(),
            "verify": self.verify.as_dict(),
        }


async def run_demo(keep: Path | None = None, say: Any = None) -> DemoResult:
    """Build, migrate with a backup, migrate again (zero writes), verify; stop the server."""
    say = say or (lambda _msg: None)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        if (keep / "control.db").exists():
            raise BackupExistsError(
                f"{keep / 'control.db'} exists; give --keep an empty or new directory"
            )
        workdir = keep
        tmp = None
    else:
        tmp = tempfile.mkdtemp(prefix="membershipd-demo-")
        workdir = Path(tmp)
    try:
        db = workdir / "control.db"
        store = SQLiteStore.open(db, create=True)
        try:
            await build_representative_state(store)
            counts = (await store.export_snapshot()).counts()
        finally:
            await store.close()
        say(
            f"built a control plane in {db}: {counts['users']} users (1 revoked), "
            f"{counts['rooms']} rooms, {counts['members']} members, "
            f"{counts['sealed_keys']} sealed keys"
        )
        server = EmbeddedServer(store_dir=workdir / "nats" if keep is not None else None)
        with server:
            say(f"started the embedded nats-server with JetStream on {server.url}")
            target = NatsTarget(server.url)
            first = await migrate_sqlite_to_kv(db, target, backup=True)
            say(
                f"migrate-to-kv: wrote {first.writes} records, backup {first.backup}, "
                f"verified={str(first.verified).lower()}"
            )
            second = await migrate_sqlite_to_kv(db, target, backup=False)
            say(
                f"migrate-to-kv again: wrote {second.writes} records, "
                f"{sum(c.unchanged for c in second.records.values())} unchanged"
            )
            result = await verify_parity(db, target)
            say(f"verify: {'equal' if result.equal else 'DIFFERENT'}, digest {result.kv_digest}")
            url = server.url
        say("stopped nats-server" + (f"; kept everything in {workdir}" if keep else ""))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    demo = DemoResult(keep, url, first, second, result)
    if not demo.ok:
        raise FailedError(
            "demo failed: "
            + ("first migration not verified; " if not first.verified else "")
            + (f"second run wrote {second.writes} records; " if second.writes else "")
            + ("verify found differences" if not result.equal else "")
        )
    return demo
