"""No secret anywhere: argv, environment, logs, --json, error messages (issue 4, point 6).

The module's cluster is started the way an operator would: three ``membershipd
cluster run`` processes (two with ``--cluster-pass-file``, one with
``$UNIBUS_CLUSTER_PASS``), route TLS from ``membershipd cluster certs``, client TLS.
Every process the test started -- membershipd and its nats-server child -- is then
searched for the secret in every form it could take.
"""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme

from fixtures.cluster import Cluster, start_cluster
from fixtures.plugin import unique_prefix
from membership.cluster import conf_string
from membership.embedded import find_nats_server, free_port
from membership.sqlite import SQLiteStore

pytestmark = pytest.mark.cluster

TOKEN = uuid.uuid4().hex  # survives every encoding: finding it finds any form of the secret
SECRET = f'hyg-{TOKEN}-p@ss:/%"\\ ü'


def forms(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), conf_string(secret)[1:-1], TOKEN]


def assert_clean(where: str, text: str) -> None:
    for form in forms(SECRET):
        assert form not in text, f"the route secret appears in {where}"


@pytest.fixture(scope="module")
def run_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("hygiene"),
        via="run",
        secret=SECRET,
        client_tls=trustme.CA(),
        env_secret_nodes=("n3",),
    )
    try:
        yield cluster
    finally:
        cluster.close()


def proc_text(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def test_no_process_shows_the_secret_in_argv_or_environment(run_cluster: Cluster) -> None:
    # Positive control: the search below would find the secret where it legitimately is.
    config = run_cluster.nodes[0].config.read_text(encoding="utf-8")
    assert conf_string(SECRET)[1:-1] in config and quote(SECRET, safe="") in config
    binary = str(find_nats_server())
    for node in run_cluster.nodes:
        assert node.proc is not None
        membershipd_argv = proc_text(node.proc.pid, "cmdline")
        assert "cluster run" in membershipd_argv
        assert_clean(f"membershipd argv of {node.name}", membershipd_argv)
        server = node.server_pid()
        argv = Path(f"/proc/{server}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [a.decode() for a in argv] == [binary, "-c", str(node.config)]
        environ = proc_text(server, "environ")
        assert "UNIBUS_CLUSTER_PASS" not in environ
        assert_clean(f"nats-server environment of {node.name}", environ)
        assert stat.S_IMODE(node.config.stat().st_mode) == 0o600


def test_logs_json_outputs_and_errors_hold_no_secret(
    cli, run_cluster: Cluster, tmp_path: Path
) -> None:
    db = tmp_path / "control.db"

    async def build() -> None:
        store = SQLiteStore.open(db, create=True)
        await store.add_user("alice", b"\x01" * 32)
        await store.create_room("ops", "alice")
        await store.close()

    asyncio.run(build())
    prefix = unique_prefix("hyg")
    tls = run_cluster.tls_args()
    outputs: dict[str, str] = {}

    def record(name: str, *args: str, code: int = 0) -> None:
        p = cli(*args)
        assert p.returncode == code, f"{name}: exit {p.returncode}: {p.stderr}"
        assert "Traceback" not in p.stderr
        outputs[name] = p.stdout + p.stderr

    record(
        "migrate --json",
        *("migrate-to-kv", "--db", str(db), "--nats-url", run_cluster.url, *tls),
        *("--bucket-prefix", prefix, "--replicas", "3", "--json"),
    )
    assert json.loads(outputs["migrate --json"].splitlines()[0])["verified"] is True
    record(
        "verify --json",
        *("verify", "--db", str(db), "--nats-url", run_cluster.url, *tls),
        *("--bucket-prefix", prefix, "--json"),
    )
    node = run_cluster.nodes[0]
    config_args = [
        *("cluster", "config", "--out", str(tmp_path / "x.conf"), "--server-name", "x"),
        *("--store-dir", str(tmp_path / "x"), "--cluster-pass-file", str(run_cluster.pass_file)),
        *("--routes", ",".join(n.route_url for n in run_cluster.nodes)),
    ]
    record("cluster config --json", *config_args, "--json")
    record("cluster config", *config_args)
    # errors that see the secret, or a URL holding it, must not repeat it
    with_secret = f"nats://route:{quote(SECRET, safe='')}"
    record("remote URL error", "export", "--nats-url", f"{with_secret}@10.0.0.1:4222", code=2)
    record("route error", *config_args, "--routes", f"{with_secret}@h:6250/p", code=2)
    record(
        "unreachable URL error",
        *("export", "--nats-url", f"{with_secret}@127.0.0.1:{node.cluster_port}", "--ca"),
        *(str(run_cluster.client_ca), "--bucket-prefix", prefix),
        code=1,
    )
    record(
        "port taken error",
        *("cluster", "run", "--server-name", "y", "--store-dir", str(tmp_path / "y")),
        *("--cluster-pass-file", str(run_cluster.pass_file)),
        *("--client-listen", f"127.0.0.1:{node.client_port}"),
        *("--cluster-listen", f"127.0.0.1:{free_port()}"),
        code=1,
    )
    assert "exited with status" in outputs["port taken error"].splitlines()[-1]
    for name, text in outputs.items():
        assert_clean(name, text)
    # Every log the cluster wrote so far, startup and routes and the run above included.
    for cluster_node in run_cluster.nodes:
        assert "Route connection created" in cluster_node.log_path.read_text()
        assert_clean(f"the log of {cluster_node.name}", cluster_node.log_path.read_text())


def test_sigterm_to_membershipd_stops_its_nats_server_cleanly(run_cluster: Cluster) -> None:
    # Last in this module: it takes a node down (systemd's `stop` does exactly this).
    node = run_cluster.nodes[-1]
    assert node.proc is not None
    server = node.server_pid()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0
    assert not Path(f"/proc/{server}").exists()  # exited and reaped, not orphaned
    assert "Server Exiting" in node.log_path.read_text()
