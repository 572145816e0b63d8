"""The route secret guards the cluster: a wrong one does not join, the right one does.

Two newcomers are added to the module's 3-node cluster (fixtures/cluster.py: route TLS,
bare routes, a pass file), configured alike by ``membershipd cluster config`` -- both
with route certificates from the cluster's own CA, routes to every node -- except for
the secret: ``good`` reads the cluster's pass file, ``bad`` a file holding another
secret. TLS cannot tell them apart, so whatever differs is the route authorization.

Joining is read from the monitoring endpoints (``/routez``, ``/varz``, ``/jsz``), polled
with a deadline. Monitoring keeps no record of a refused route, so the refusal itself
is read from the nodes' logs: each original node logs an authentication error for the
route user, and ``bad`` logs the ``Authorization Violation`` it was answered with.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.cluster import Cluster, ClusterNode, poll_until
from fixtures.plugin import membershipd_command
from membership.embedded import find_nats_server, free_port

pytestmark = pytest.mark.cluster

DEADLINE = 20.0
WRONG_SECRET = "not the route secret"


def _run(args: list[str]) -> None:
    p = subprocess.run(
        [*membershipd_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 0, f"membershipd {args[:2]}: {p.stderr}"


def _write_secret(path: Path, secret: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    return path


def _newcomer(cluster: Cluster, name: str, pass_file: Path) -> ClusterNode:
    """A node configured the way the cluster's own were, with ``pass_file``'s secret."""
    node = ClusterNode(
        name=name,
        base=cluster.base / name,
        client_port=free_port(),
        cluster_port=free_port(),
        monitor_port=free_port(),
        via="config",
        tls_client=False,
    )
    node.base.mkdir(mode=0o700)
    _run(["cluster", "config", "--out", str(node.config), "--server-name", name,
          "--store-dir", str(node.base / "store"),
          "--client-listen", f"127.0.0.1:{node.client_port}",
          "--cluster-listen", f"127.0.0.1:{node.cluster_port}",
          "--monitor-listen", f"127.0.0.1:{node.monitor_port}",
          "--routes", ",".join(n.route_url for n in cluster.nodes),
          "--cluster-pass-file", str(pass_file),
          "--cluster-ca", str(cluster.certs / "ca.pem"),
          "--cluster-cert", str(cluster.certs / f"{name}.pem"),
          "--cluster-key", str(cluster.certs / f"{name}-key.pem")])  # fmt: skip
    node.command = [str(find_nats_server()), "-c", str(node.config)]
    node.env = {k: v for k, v in os.environ.items() if not k.startswith("UNIBUS_")}
    return node


def _log(node: ClusterNode) -> str:
    return node.log_path.read_text(errors="replace") if node.log_path.exists() else ""


@dataclass
class Newcomers:
    cluster: Cluster
    good: ClusterNode
    bad: ClusterNode
    logs_before: dict[str, int]
    """Each original node's log length before the newcomers started."""

    def new_log(self, node: ClusterNode) -> str:
        return _log(node)[self.logs_before[node.name] :]


@pytest.fixture(scope="module")
def newcomers(nats_cluster: Cluster) -> Iterator[Newcomers]:
    cluster = nats_cluster
    _run(["cluster", "certs", "--out", str(cluster.certs),
          "--node", "good=127.0.0.1,localhost", "--node", "bad=127.0.0.1,localhost"])  # fmt: skip
    wrong = _write_secret(cluster.base / "wrong.secret", WRONG_SECRET)
    good = _newcomer(cluster, "good", cluster.pass_file)
    bad = _newcomer(cluster, "bad", wrong)
    logs_before = {n.name: len(_log(n)) for n in cluster.nodes}
    try:
        bad.start()
        good.start()
        yield Newcomers(cluster, good, bad, logs_before)
    finally:
        good.stop()
        bad.stop()


def route_names(node: ClusterNode) -> set[str]:
    """The server names ``node`` has a route to, from its own ``/routez``."""
    return {r.get("remote_name", "") for r in node.get_json("/routez").get("routes") or []}


def connect_urls(node: ClusterNode) -> list[str]:
    """The client URLs ``node`` gossips to clients (its own and every joined node's)."""
    return list(node.get_json("/varz").get("connect_urls") or [])


def test_a_node_with_the_right_route_secret_joins_every_node(newcomers: Newcomers) -> None:
    cluster, good = newcomers.cluster, newcomers.good
    poll_until(  # each side registers a route when it has the other's INFO: both polled
        lambda: (
            all("good" in route_names(n) for n in cluster.nodes)
            and {n.name for n in cluster.nodes} <= route_names(good)
        ),
        DEADLINE,
        "a route between every node and good, seen from both ends",
    )
    # Gossip: the cluster now offers good's client URL to clients, and good knows the leader.
    # (The route is up a moment before the nodes update the URLs they offer: polled.)
    poll_until(
        lambda: f"127.0.0.1:{good.client_port}" in connect_urls(cluster.nodes[0]),
        DEADLINE,
        "n1 offers good's client URL to its clients",
    )
    leader = poll_until(
        lambda: (good.get_json("/jsz").get("meta_cluster") or {}).get("leader"),
        DEADLINE,
        "good sees the JetStream meta leader",
    )
    assert leader in {n.name for n in cluster.nodes}


def test_a_node_with_the_wrong_route_secret_is_refused_by_every_node(
    newcomers: Newcomers,
) -> None:
    cluster, bad = newcomers.cluster, newcomers.bad
    # Every original node refuses a route for the route user (only bad has a wrong secret),
    # and bad is told so.
    poll_until(
        lambda: (
            all("authentication error" in newcomers.new_log(n) for n in cluster.nodes)
            and "Authorization Violation" in _log(bad)
        ),
        DEADLINE,
        "an authentication error for bad's route on every node",
    )
    for node in cluster.nodes:
        line = next(x for x in newcomers.new_log(node).splitlines() if "authentication error" in x)
        assert 'User "route"' in line and WRONG_SECRET not in line, line
    # The joining newcomer is there, so routes are being made: bad is not, on any side.
    poll_until(
        lambda: all("good" in route_names(n) for n in cluster.nodes),
        DEADLINE,
        "a route from every node to good",
    )
    for node in cluster.nodes:
        assert "bad" not in route_names(node), node.name
        assert f"127.0.0.1:{bad.client_port}" not in connect_urls(node)
    assert bad.get_json("/routez")["num_routes"] == 0
    assert bad.get_json("/varz")["routes"] == 0
    assert not (bad.get_json("/jsz").get("meta_cluster") or {}).get("leader")
