"""A real 3-node cluster on loopback: R3 is real HA, R1 is a single point of failure (point 7).

One cluster serves the module; it is configured by ``membershipd cluster config``
with bare routes, a pass file and route TLS (fixtures/cluster.py). A test that stops
a node restarts it and waits for a whole cluster before it ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from fixtures.cluster import Cluster, node_stopped, poll_until
from fixtures.plugin import unique_prefix
from membership.connect import NatsTarget, connect_nats
from membership.kv import KVStore
from membership.sqlite import SQLiteStore
from tests.helpers import ok, one_line_error

pytestmark = pytest.mark.cluster

BUCKETS = 5  # users, rooms, members, keys, meta
ROOM = "room.0 *>"


async def _build(path: Path) -> None:
    store = SQLiteStore.open(path, create=True)
    try:
        users = [f"user {i}.ü" for i in range(12)]
        for i, user in enumerate(users):
            await store.add_user(user, bytes([i]) * 32)
        for r in range(4):
            room = f"room.{r} *>"
            await store.create_room(room, users[r])
            for user in users[r + 1 : r + 6]:
                await store.add_member(room, user)
                await store.put_sealed_key(room, user, f"{room}/{user}".encode())
            await store.rekey(room)
        await store.revoke_user(users[11])
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "control.db"
    asyncio.run(_build(path))
    return path


def migrate(cli, db: Path, url: str, prefix: str, replicas: int) -> dict:
    p = ok(
        cli(
            "migrate-to-kv",
            "--db",
            str(db),
            "--nats-url",
            url,
            "--bucket-prefix",
            prefix,
            "--replicas",
            str(replicas),
            "--no-backup",
            "--json",
        )
    )
    return json.loads(p.stdout)


async def rekey_across_nodes(cluster: Cluster, prefix: str, db: Path, rounds: int) -> list[int]:
    """Rekey through node i, read the epoch back at once through node i+1 (and its
    bucket listing, a consumer read); the source gets the same rekeys."""
    stores, conns = [], []
    for node in cluster.nodes:
        nc = await connect_nats(NatsTarget(node.url))
        conns.append(nc)
        stores.append(await KVStore.open(nc, prefix))
    source = SQLiteStore.open(db)
    seen = []
    try:
        for i in range(rounds):
            writer, reader = stores[i % 3], stores[(i + 1) % 3]
            written = await writer.rekey(ROOM)
            read = await reader.get_room(ROOM)
            listed = {r.id: r.epoch for r in await reader.list_rooms()}
            assert read is not None and read.epoch == written.epoch == listed[ROOM]
            seen.append(read.epoch)
            await source.rekey(ROOM)
    finally:
        await source.close()
        for nc in conns:
            await nc.close()
    return seen


def test_r3_read_after_write_and_losing_a_node_keeps_verify_and_export_working(
    cli, db: Path, nats_cluster: Cluster
) -> None:
    cluster, prefix = nats_cluster, unique_prefix("r3")
    n1, _, n3 = cluster.nodes
    report = migrate(cli, db, n1.url, prefix, 3)
    assert report["verified"] is True and report["replicas"] == 3
    # Every bucket on all three nodes (a follower reports its replica a moment late: polled).
    poll_until(
        lambda: (
            [s["hosts"] for s in cluster.streams(prefix).values()] == [{"n1", "n2", "n3"}] * BUCKETS
        ),
        30,
        "every bucket hosted on n1, n2 and n3",
    )

    # Read-after-write right after migrating: another node serves exactly the source...
    source = ok(cli("export", "--db", str(db))).stdout
    kv = ["--bucket-prefix", prefix]
    assert ok(cli("export", "--nats-url", n3.url, *kv)).stdout == source
    # ...and a write through one node is what the very next read through another sees.
    assert asyncio.run(rekey_across_nodes(cluster, prefix, db, rounds=6)) == list(range(3, 9))

    # Crash the node that leads the users bucket (the allowlist): quorum carries on.
    leader = cluster.leader_of(f"KV_{prefix}_users", prefix)
    with node_stopped(cluster, leader, signal.SIGKILL) as lost:
        cluster.wait_ready()
        cluster.wait_streams_led(prefix, BUCKETS)
        seeds = ",".join([lost.url] + [n.url for n in cluster.running()])  # dead node first
        verified = ok(cli("verify", "--db", str(db), "--nats-url", seeds, *kv))
        assert "equal" in verified.stdout
        assert (
            ok(cli("export", "--nats-url", seeds, *kv)).stdout
            == ok(cli("export", "--db", str(db))).stdout
        )
        again = migrate(cli, db, seeds, prefix, 3)  # R3 with two of three: still writable
        assert again["verified"] is True
        assert sum(c["written"] for c in again["records"].values()) == 0


def test_r1_bucket_on_a_lost_node_is_a_clear_error_naming_that_node(
    cli, db: Path, nats_cluster: Cluster
) -> None:
    cluster, prefix = nats_cluster, unique_prefix("r1")
    report = migrate(cli, db, cluster.url, prefix, 1)
    assert report["verified"] is True and report["replicas"] == 1
    users = cluster.streams(prefix)[f"KV_{prefix}_users"]
    [holder] = users["hosts"]
    kv = ["--bucket-prefix", prefix]
    with node_stopped(cluster, holder):
        cluster.wait_ready()
        survivors = ",".join(n.url for n in cluster.running())
        for args in (["verify", "--db", str(db)], ["export"], ["user", "list"]):
            line = one_line_error(cli(*args, "--nats-url", survivors, *kv), 1)
            assert "offline" in line and f"only replica is on server {holder}" in line, line
            assert "--replicas 3" in line
    # Back: the R1 data was unavailable, not lost.
    cluster.wait_streams_led(prefix, BUCKETS)
    assert "equal" in ok(cli("verify", "--db", str(db), "--nats-url", cluster.url, *kv)).stdout


def _keys_written(cluster: Cluster, prefix: str) -> int:
    """Messages in the namespace's sealed-key stream, as its leader reports them."""
    for node in cluster.running():
        data = node.get_json("/jsz?streams=true")
        for account in data.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if (
                    stream["name"] == f"KV_{prefix}_keys"
                    and (stream.get("cluster") or {}).get("leader") == node.name
                ):
                    return int(stream["state"]["last_seq"])
    return 0


def test_a_node_killed_mid_migration_into_r3_loses_nothing(
    cli, sqlite_db: Path, nats_cluster: Cluster
) -> None:
    """Issue 6, point 3: the run completes, or fails cleanly and a re-run completes; parity
    holds on the survivors."""
    from fixtures.plugin import membershipd_command
    from tests.helpers import bulk_fill

    cluster, prefix = nats_cluster, unique_prefix("mid")
    bulk_fill(sqlite_db, users=3000, rooms=30, epochs=4)  # 3000 * 6 + 30 records
    kv = ["--bucket-prefix", prefix]
    proc = subprocess.Popen(
        [*membershipd_command(), "migrate-to-kv", "--db", str(sqlite_db), "--nats-url",
         cluster.url, "--replicas", "3", "--no-backup", "--json", *kv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        from fixtures.cluster import poll_until

        poll_until(lambda: _keys_written(cluster, prefix) > 0 or proc.poll() is not None,
                   60, "the first sealed keys in the R3 bucket")  # fmt: skip
        assert proc.poll() is None, "the migration ended before a node could be killed"
        leader = cluster.leader_of(f"KV_{prefix}_keys", prefix)
        with node_stopped(cluster, leader, signal.SIGKILL):
            out, err = proc.communicate(timeout=120)  # bounded: it ends on its own
            if proc.returncode != 0:  # failed cleanly: one line, exit 1
                assert proc.returncode == 1, err
                assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            survivors = ",".join(n.url for n in cluster.running())
            cluster.wait_streams_led(prefix, BUCKETS)
            again = migrate(cli, sqlite_db, survivors, prefix, 3)  # converges on two nodes
            assert again["verified"] is True
            if proc.returncode == 0:
                assert json.loads(out)["verified"] is True
                assert sum(c["written"] for c in again["records"].values()) == 0
            verified = ok(cli("verify", "--db", str(sqlite_db), "--nats-url", survivors, *kv))
            assert "equal" in verified.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
