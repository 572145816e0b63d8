"""A bucket that exists with other replicas is refused, naming both values (issue 6, point 5).

DESIGN.md, Migration step 4: "A bucket that exists with other settings is refused (exit 2)
naming both values [...] never a silent mismatch." Replicas need a real cluster: the
module's 3-node loopback cluster (fixtures/cluster.py). The run is refused before anything
is written: every stream's last sequence (as its leader reports it) and its replicas are
as they were, and the SQLite directory is byte-for-byte unchanged -- no backup left
behind either. The same namespace then still migrates with the replicas it has.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fixtures.cluster import Cluster, poll_until
from fixtures.plugin import Cli, unique_prefix
from tests.cluster.test_cluster_ha import BUCKETS, _build, migrate, one_line_error
from tests.reliability.test_hostile_input import digests

pytestmark = pytest.mark.cluster


def leader_seqs(cluster: Cluster, prefix: str) -> dict[str, int]:
    """``last_seq`` of each stream of the namespace, as that stream's leader reports it."""
    seqs: dict[str, int] = {}
    for node in cluster.running():
        data = node.get_json("/jsz?streams=true")
        for account in data.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                led_here = (stream.get("cluster") or {}).get("leader") == node.name
                if stream["name"].startswith(f"KV_{prefix}_") and led_here:
                    seqs[stream["name"]] = int(stream["state"]["last_seq"])
    return seqs


def replicas_of(cluster: Cluster, prefix: str) -> dict[str, int]:
    """How many nodes hold each stream of the namespace."""
    return {name: len(info["hosts"]) for name, info in cluster.streams(prefix).items()}


@pytest.mark.parametrize(("have", "asked"), [(1, 3), (3, 1)], ids=["R1 then R3", "R3 then R1"])
def test_a_bucket_with_other_replicas_is_refused_naming_both(
    have: int, asked: int, cli: Cli, nats_cluster: Cluster, tmp_path: Path
) -> None:
    cluster, prefix = nats_cluster, unique_prefix(f"r{have}r{asked}")
    work = tmp_path / "work"
    work.mkdir()
    db = work / "control.db"
    asyncio.run(_build(db))
    first = migrate(cli, db, cluster.url, prefix, have)
    assert first["verified"] is True and first["replicas"] == have
    cluster.wait_streams_led(prefix, BUCKETS)

    # a follower reports its replica a moment late: polled, then taken as the reference
    def on_have_nodes() -> dict[str, int] | None:
        replicas = replicas_of(cluster, prefix)
        return replicas if set(replicas.values()) == {have} else None

    replicas = poll_until(on_have_nodes, 30, f"every bucket on {have} node(s)")
    files, seqs = digests(work), leader_seqs(cluster, prefix)
    assert len(seqs) == BUCKETS and len(replicas) == BUCKETS

    refused = cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        cluster.url,
        "--bucket-prefix",
        prefix,
        "--replicas",
        str(asked),
        "--json",
    )  # with a backup: a refused run must not leave one behind
    line = one_line_error(refused, 2)
    assert refused.stdout == ""
    assert f"bucket {prefix}_" in line, line
    assert f"exists with replicas {have}," in line and f"asks for replicas {asked}," in line, line
    assert f"--replicas {have}" in line, line  # the fix

    assert digests(work) == files
    assert leader_seqs(cluster, prefix) == seqs
    assert replicas_of(cluster, prefix) == replicas  # not silently changed either

    # With the replicas the buckets have, the same namespace migrates: nothing to write.
    again = migrate(cli, db, cluster.url, prefix, have)
    assert again["verified"] is True and again["replicas"] == have
    assert sum(c["written"] + c["pruned"] for c in again["records"].values()) == 0
    assert leader_seqs(cluster, prefix) == seqs
    assert json.loads(cli("export", "--db", str(db)).stdout) == json.loads(
        cli("export", "--nats-url", cluster.url, "--bucket-prefix", prefix).stdout
    )
