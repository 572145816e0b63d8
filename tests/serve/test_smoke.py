"""The seed's smoke, for real: a live control plane moves from SQLite to KV.

seed users with the CLI -> serve on SQLite -> users and an admin ask -> stop ->
serve on KV (its own JetStream) -> migrate-to-kv into it, as an admin -> the same
requests give the same answers -> migrate-to-kv again writes nothing -> a restart of
serve on the same store keeps serving them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from membership.canonical import record_to_dict, snapshot_bytes
from membership.errors import NatsUnavailableError, PermissionDeniedError
from membership.nkey import UserKeyPair, generate_user_keypair
from tests.property.support import run
from tests.serve.support import as_admin, as_user, eventually

USERS = {"alice": generate_user_keypair(), "bob.b ü": generate_user_keypair()}


def write_seed(path: Path, pair: UserKeyPair) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pair.seed + b"\n")
    return path


async def answers(url: str, admin: UserKeyPair) -> dict[str, Any]:
    """What each user and the admin get for the same questions."""
    out: dict[str, Any] = {}
    for name, pair in USERS.items():
        async with as_user(url, name, pair) as user:
            mine = {
                "whoami": record_to_dict(await user.client.whoami()),
                "rooms": [(r.id, r.epoch, m.role) for r, m in await user.client.rooms()],
                "key": record_to_dict(await user.client.sealed_key("ops.team")),
                "old key": record_to_dict(await user.client.sealed_key("ops.team", epoch=1)),
            }
            try:
                await user.client.room("private")
                mine["private"] = "allowed"
            except PermissionDeniedError as exc:
                mine["private"] = str(exc)
            out[name] = mine
    async with as_admin(url, admin) as store:
        out["export"] = snapshot_bytes(await store.export_snapshot()).decode()
    return out


def test_a_live_control_plane_moves_from_sqlite_to_kv_and_answers_the_same(
    cli, serve, tmp_path: Path, admin, listen
) -> None:
    db = tmp_path / "control.db"
    steps = [
        ["user", "add", "--db", str(db), "alice", "--public-key", "aa" * 32,
         "--nkey", USERS["alice"].public],
        ["user", "add", "--db", str(db), "bob.b ü", "--public-key", "bb" * 32],
        ["user", "set-nkey", "--db", str(db), "bob.b ü", USERS["bob.b ü"].public],
        ["room", "create", "--db", str(db), "ops.team", "--owner", "alice"],
        ["room", "create", "--db", str(db), "private", "--owner", "alice"],
        ["room", "add-member", "--db", str(db), "ops.team", "bob.b ü"],
        ["keys", "put", "--db", str(db), "ops.team", "alice", "--sealed-key", "a1" * 32],
        ["keys", "put", "--db", str(db), "ops.team", "bob.b ü", "--sealed-key", "b1" * 32],
        ["room", "rekey", "--db", str(db), "ops.team"],
        ["keys", "put", "--db", str(db), "ops.team", "alice", "--sealed-key", "a2" * 32],
        ["keys", "put", "--db", str(db), "ops.team", "bob.b ü", "--sealed-key", "b2" * 32],
    ]  # fmt: skip
    for args in steps:
        done = cli(*args)
        assert done.returncode == 0, done.stderr

    on_sqlite = serve("--db", str(db), "--client-listen", listen, "--admin-nkey", admin.public)
    before = run(answers(on_sqlite.url, admin))
    assert before["alice"]["key"]["epoch"] == 2 and before["bob.b ü"]["old key"]["epoch"] == 1
    assert "not a member of room 'private'" in before["bob.b ü"]["private"]
    code, err = on_sqlite.stop()
    assert code == 0, err

    store_dir = tmp_path / "kv-node"
    kv_listen = f"127.0.0.1:{int(listen.rsplit(':', 1)[1])}"  # the same address as before
    on_kv = serve("--kv", "--store-dir", str(store_dir), "--client-listen", kv_listen,
                  "--admin-nkey", admin.public)  # fmt: skip

    async def nobody_yet() -> None:  # the namespace is empty: the users are not let in yet
        try:
            async with as_user(on_kv.url, "alice", USERS["alice"]):
                raise AssertionError("alice got in before the migration")
        except NatsUnavailableError:
            pass

    run(nobody_yet())
    seed = write_seed(tmp_path / "admin.seed", admin)
    kv = ["--nats-url", on_kv.url, "--seed-file", str(seed)]
    first = cli("migrate-to-kv", "--db", str(db), *kv, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["verified"] is True

    async def alice_gets_in() -> bool:
        try:
            async with as_user(on_kv.url, "alice", USERS["alice"]):
                return True
        except NatsUnavailableError:
            return False

    run(eventually(alice_gets_in, "serve on KV letting the migrated users in"))
    after = run(answers(on_kv.url, admin))
    assert after == before  # the same answers, byte for byte

    again = cli("migrate-to-kv", "--db", str(db), *kv, "--json")
    assert again.returncode == 0, again.stderr
    assert sum(c["written"] for c in json.loads(again.stdout)["records"].values()) == 0
    verified = cli("verify", "--db", str(db), *kv)
    assert verified.returncode == 0 and "equal" in verified.stdout
    code, err = on_kv.stop()
    assert code == 0, err

    restarted = serve("--kv", "--store-dir", str(store_dir), "--client-listen", kv_listen,
                      "--admin-nkey", admin.public)  # fmt: skip
    assert run(answers(restarted.url, admin)) == before
