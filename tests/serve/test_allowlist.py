"""The allowlist keeps the door: real client connections against `membershipd serve`.

Each test runs `membershipd serve --db` as a subprocess (the embedded nats-server, its
authorization written from the allowlist) and connects with real nkeys.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nats.errors
import pytest

from membership.authz import user_inbox_prefix
from membership.errors import NatsUnavailableError, NotFoundError, PermissionDeniedError
from membership.nkey import generate_user_keypair
from tests.property.support import run
from tests.serve.support import as_admin, as_user, eventually

#: A user nkey seed (58 characters of base32, "SU" first), in text or bytes. Not just "SU":
#: a random service id or path holds those two letters now and then.
SEED = re.compile(r"SU[A-Z2-7]{56}")
SEED_BYTES = re.compile(rb"SU[A-Z2-7]{56}")

ALICE, BOB, CAROL = (generate_user_keypair() for _ in range(3))


@pytest.fixture
def control(cli, tmp_path: Path) -> Path:
    """alice owns `general` (bob a member, both with sealed keys); carol is in no room."""
    db = tmp_path / "control.db"
    for name, pair, pk in (("alice", ALICE, "aa"), ("bob", BOB, "bb"), ("carol", CAROL, "cc")):
        add = cli(
            "user", "add", "--db", str(db), name, "--public-key", pk * 32, "--nkey", pair.public
        )
        assert add.returncode == 0, add.stderr
    for args in (
        ["room", "create", "--db", str(db), "general", "--owner", "alice"],
        ["room", "add-member", "--db", str(db), "general", "bob"],
        ["keys", "put", "--db", str(db), "general", "alice", "--sealed-key", "a1" * 40],
        ["keys", "put", "--db", str(db), "general", "bob", "--sealed-key", "b1" * 40],
    ):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
    return db


def test_a_member_fetches_its_own_key_and_nothing_else(serve, control: Path, admin, listen) -> None:
    served = serve("--db", str(control), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        async with as_user(served.url, "bob", BOB) as bob:
            me = await bob.client.whoami()
            assert (me.id, me.status, me.nkey) == ("bob", "active", BOB.public)
            key = await bob.client.sealed_key("general")
            assert (key.user_id, key.epoch, key.sealed_key) == ("bob", 1, bytes.fromhex("b1" * 40))
            rooms = await bob.client.rooms()
            assert [(r.id, m.role) for r, m in rooms] == [("general", "member")]
            room, members = await bob.client.room("general")
            assert (room.epoch, [m.user_id for m in members]) == (1, ["alice", "bob"])
            async with as_admin(served.url, admin) as store:
                await store.rekey("general")
            with pytest.raises(NotFoundError, match="at epoch 2 yet"):  # rekeyed: no key yet
                await bob.client.sealed_key("general")
            with pytest.raises(PermissionDeniedError, match="epoch 3"):  # beyond the room's
                await bob.client.sealed_key("general", epoch=3)
            assert (await bob.client.sealed_key("general", epoch=1)).epoch == 1  # history
        async with as_user(served.url, "carol", CAROL) as carol:  # not a member
            with pytest.raises(PermissionDeniedError, match="not a member of room 'general'"):
                await carol.client.sealed_key("general")
            with pytest.raises(PermissionDeniedError, match="not a member of room 'nowhere'"):
                await carol.client.room("nowhere")  # the same answer: no room's existence leaks
            assert await carol.client.rooms() == []

    run(go())


def test_no_user_can_act_as_another_or_read_its_replies(
    serve, control: Path, admin, listen
) -> None:
    served = serve("--db", str(control), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        async with as_user(served.url, "carol", CAROL) as carol:
            with pytest.raises(NatsUnavailableError, match="no reply"):
                await carol.as_someone_else("alice").sealed_key("general")
            await eventually(
                lambda: any("permissions violation for publish" in e for e in carol.errors),
                "the server refusing carol's publish as alice",
            )
            # the admin subjects are closed to users too
            with pytest.raises(nats.errors.TimeoutError):
                await carol.nc.request("unibus.membership.admin.export", b"{}", timeout=1)
            # and so is another user's reply inbox
            await carol.nc.subscribe(f"{user_inbox_prefix(ALICE.public)}.>")
            await carol.nc.flush()
            await eventually(
                lambda: any("permissions violation for subscription" in e for e in carol.errors),
                "the server refusing carol's subscription to alice's inbox",
            )
        async with as_admin(served.url, admin) as store:
            assert (await store.get_user("carol")).status == "active"  # nothing changed

    run(go())


def test_unknown_and_unkeyed_identities_cannot_connect(
    serve, control: Path, admin, listen, cli
) -> None:
    stranger = generate_user_keypair()
    ok = cli("user", "add", "--db", str(control), "dave", "--public-key", "dd" * 32)  # no nkey
    assert ok.returncode == 0
    served = serve("--db", str(control), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        with pytest.raises(NatsUnavailableError, match="refused the credentials"):
            async with as_user(served.url, "nobody", stranger):
                pass
        from membership.connect import NatsTarget, connect_nats

        with pytest.raises(NatsUnavailableError, match="refused the credentials"):
            await connect_nats(NatsTarget(served.url))  # no identity at all

    run(go())


def test_revoking_a_user_ends_its_live_connection_before_the_reply(
    serve, control: Path, admin, listen
) -> None:
    served = serve("--db", str(control), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        async with as_user(served.url, "bob", BOB) as bob:
            assert (await bob.client.sealed_key("general")).user_id == "bob"
            async with as_admin(served.url, admin) as store:
                revoked = await store.revoke_user("bob")
                assert [(r.id, r.epoch) for r in revoked.rooms] == [("general", 2)]
                await eventually(lambda: not bob.nc.is_connected, "bob's connection to end", 5)
                await eventually(
                    lambda: any("authorization violation" in e.lower() for e in bob.errors),
                    "the server refusing bob's reconnection",
                )
                # and bob cannot come back
                with pytest.raises(NatsUnavailableError, match="refused the credentials"):
                    async with as_user(served.url, "bob", BOB):
                        pass
                # the others are unaffected
                async with as_user(served.url, "alice", ALICE) as alice:
                    assert (await alice.client.whoami()).id == "alice"

    run(go())


def test_a_revocation_on_the_file_reaches_the_server_too(
    serve, control: Path, admin, listen, cli
) -> None:
    """Another process revokes with the CLI on the SQLite file: serve notices and reloads."""
    served = serve("--db", str(control), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        async with as_user(served.url, "bob", BOB) as bob:
            assert (await bob.client.whoami()).id == "bob"
            done = cli("user", "revoke", "--db", str(control), "bob")
            assert done.returncode == 0, done.stderr
            await eventually(lambda: not bob.nc.is_connected, "bob's connection to end", 10)

    run(go())


def test_a_new_nkey_replaces_the_old_one_at_once(serve, control: Path, admin, listen) -> None:
    served = serve("--db", str(control), "--client-listen", listen, "--admin-nkey", admin.public)
    rotated = generate_user_keypair()

    async def go() -> None:
        async with as_user(served.url, "alice", ALICE) as old:
            async with as_admin(served.url, admin) as store:
                changed = await store.set_user_nkey("alice", rotated.public)
                assert changed.nkey == rotated.public
            await eventually(lambda: not old.nc.is_connected, "the old key's connection to end", 5)
        async with as_user(served.url, "alice", rotated) as new:
            assert (await new.client.whoami()).nkey == rotated.public
        async with as_admin(served.url, admin) as store:  # a new user is let in at once too
            newcomer = generate_user_keypair()
            await store.add_user("erin", b"\x05" * 32, nkey=newcomer.public)
            async with as_user(served.url, "erin", newcomer) as erin:
                assert (await erin.client.rooms()) == []

    run(go())


def test_an_nkey_two_users_share_lets_neither_in(serve, tmp_path: Path, admin, listen) -> None:
    """Legacy data written around the API: one identity for two users is refused."""
    from harness.strategies import write_sqlite
    from membership.model import Snapshot, User

    shared = generate_user_keypair()
    state = Snapshot(
        users=(
            User("x", b"\x01" * 32, "active", 1, shared.public),
            User("y", b"\x02" * 32, "active", 2, shared.public),
            User("z", b"\x03" * 32, "active", 3, CAROL.public),
        )
    )
    db = write_sqlite(state, tmp_path / "legacy.db")
    served = serve("--db", str(db), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        with pytest.raises(NatsUnavailableError, match="refused the credentials"):
            async with as_user(served.url, "x", shared):
                pass
        async with as_user(served.url, "z", CAROL) as z:
            assert (await z.client.whoami()).id == "z"

    run(go())
    code, err = served.stop()
    assert code == 0 and "share" in err  # the operator is told why


def test_serve_refuses_bad_input_in_one_line(cli, tmp_path: Path, control: Path) -> None:
    from harness.strategies import write_sqlite
    from membership.model import Snapshot

    old = write_sqlite(Snapshot(), tmp_path / "old.db", schema_version=1)
    cases = [
        (["--db", str(old)], "membershipd upgrade --db"),
        (["--db", str(control), "--admin-nkey", "UNOTANKEY"], "--admin-nkey"),
        (["--db", str(control), "--admin-nkey", ALICE.seed.decode()], "seed"),
        (["--db", str(control), "--subject-prefix", "a..b"], "--subject-prefix"),
        (["--db", str(tmp_path / "missing.db")], "does not exist"),
        ([], "give --db PATH"),
        (["--db", str(control), "--kv"], "contradict"),
        (["--db", str(control), "--routes", "nats://127.0.0.1:6250"], "--server-name"),
        (["--nats-url", "nats://10.1.2.3:4222"], "--ca"),
    ]
    for args, expected in cases:
        done = cli("serve", *args, timeout=30)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (args, done.stderr)
        assert len(lines) == 1 and expected in lines[0], (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert ALICE.seed.decode() not in done.stderr + done.stdout


def test_no_secret_in_any_argv_and_the_config_is_private(
    serve, control: Path, admin, listen, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    served = serve(
        "--db", str(control), "--client-listen", listen, "--admin-nkey", admin.public,
        "--store-dir", str(store_dir),
    )  # fmt: skip
    config = store_dir / "membershipd-serve.conf"
    assert config.stat().st_mode & 0o777 == 0o600
    text = config.read_text()
    assert ALICE.public in text and BOB.public in text and admin.public in text
    # the service's own seed is in memory only: in no file of the store dir, no argv
    pids = subprocess.run(
        ["pgrep", "-f", str(config)], capture_output=True, text=True
    ).stdout.split()
    assert pids, "the nats-server that serve runs"
    assert SEED.fullmatch(ALICE.seed.decode())  # the pattern finds a seed where there is one
    for pid in [*pids, str(served.proc.pid)]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert not SEED_BYTES.search(argv), argv
    for path in store_dir.rglob("*"):
        if path.is_file() and path.suffix in (".conf", ".log"):
            assert not SEED_BYTES.search(path.read_bytes()), path
    code, err = served.stop()
    assert code == 0, err
    assert not SEED.search(json.dumps(served.info) + err)
