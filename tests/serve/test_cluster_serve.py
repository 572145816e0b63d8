"""`membershipd serve` as three cluster nodes on loopback, sharing one R3 namespace.

Each instance runs its own node (the `cluster` flags), writes that node's
authorization from the shared allowlist, and keeps it current: a revocation handled
by any instance ends the user's connection on every node.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from membership.embedded import free_port
from membership.errors import NatsUnavailableError
from membership.nkey import generate_user_keypair
from tests.property.support import run
from tests.serve.support import as_admin, as_user, eventually

pytestmark = pytest.mark.cluster


def test_three_instances_share_the_allowlist_and_a_revocation_reaches_every_node(
    serve, admin, tmp_path: Path
) -> None:
    secret = tmp_path / "route.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"a route s3cret: @/%\n")
    os.close(fd)
    route_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)
    nodes = serve.all(
        *(
            ["--kv", "--replicas", "3", "--admin-nkey", admin.public,
             "--server-name", f"n{i + 1}", "--store-dir", str(tmp_path / f"n{i + 1}"),
             "--cluster-pass-file", str(secret), "--cluster-listen", f"127.0.0.1:{port}",
             "--routes", routes, "--client-listen", f"127.0.0.1:{free_port()}"]
            for i, port in enumerate(route_ports)
        )
    )  # fmt: skip
    alice, bob = generate_user_keypair(), generate_user_keypair()

    async def go() -> None:
        async with as_admin(nodes[0].url, admin) as store:
            await store.add_user("alice", b"\x01" * 32, nkey=alice.public)
            await store.add_user("bob", b"\x02" * 32, nkey=bob.public)
            await store.create_room("general", "bob")
            await store.add_member("general", "alice")
            await store.put_sealed_key("general", "alice", b"for alice")
            await store.put_sealed_key("general", "bob", b"for bob")

        async def let_in(url: str, name: str, pair) -> bool:
            try:
                async with as_user(url, name, pair):
                    return True
            except NatsUnavailableError:
                return False

        for node in nodes:  # every node learns the new users, whichever instance added them
            await eventually(lambda n=node: let_in(n.url, "alice", alice), f"alice on {node.url}")
        async with as_user(nodes[2].url, "alice", alice) as on_third:
            assert (await on_third.client.sealed_key("general")).sealed_key == b"for alice"
            async with as_admin(nodes[0].url, admin) as store:
                await store.revoke_user("alice")
            await eventually(
                lambda: not on_third.nc.is_connected, "alice's connection to the third node to end"
            )
        for node in nodes:
            await eventually(
                lambda n=node: _not(let_in(n.url, "alice", alice)), f"alice kept out of {node.url}"
            )
        code, err = nodes[1].stop()  # one node and its instance go away: R3 goes on
        assert code == 0, err
        async with as_user(nodes[0].url, "bob", bob) as survivor:
            record = await survivor.client.sealed_key("general", epoch=1)  # before the bump
            assert (record.epoch, record.sealed_key) == (1, b"for bob")
        async with as_admin(nodes[2].url, admin) as store:
            room = await store.rekey("general")
            assert room.epoch == 3  # the revocation bumped it once, this once more

    run(go())


async def _not(value) -> bool:
    return not await value
