"""The fixtures plugin keeps its own promises: visible cleanup failures, serial golden updates.

The ``--snapshot-update`` refusals run pytest as a subprocess in a directory of its own
(its own rootdir and ini, one trivial test, no golden files), so that no run here can
touch ``tests/golden/__snapshots__``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import fixtures.cluster
from fixtures.cluster import start_cluster
from fixtures.plugin import NamespaceCleanupWarning, NatsServer, delete_namespace, unique_prefix
from membership.connect import NatsTarget, connect_nats
from membership.embedded import free_port
from membership.kv import KVStore

REPO = Path(__file__).resolve().parents[2]

# -- delete_namespace --------------------------------------------------------------------------


async def test_removing_a_namespace_is_silent_whether_or_not_it_exists(
    nats_server: NatsServer,
) -> None:
    prefix = unique_prefix("clean")
    nc = await connect_nats(nats_server.target)
    try:
        await KVStore.open(nc, prefix, create=True)
    finally:
        await nc.close()
    assert nats_server.stream_seqs(prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await delete_namespace(nats_server.target, prefix)
        await delete_namespace(nats_server.target, prefix)  # absent now: the normal case
    assert nats_server.stream_seqs(prefix) == {}


async def test_a_server_that_cannot_be_reached_is_a_warning_naming_the_namespace() -> None:
    prefix = unique_prefix("gone")
    with pytest.warns(NamespaceCleanupWarning, match=f"{prefix}.*not removed.*refused"):
        await delete_namespace(NatsTarget(f"nats://127.0.0.1:{free_port()}"), prefix)


async def test_a_bucket_that_cannot_be_deleted_is_a_warning_with_the_reason(
    nats_server: NatsServer,
) -> None:
    # A prefix that makes no valid bucket name: every deletion fails, none silently.
    with pytest.warns(NamespaceCleanupWarning) as record:
        await delete_namespace(nats_server.target, "not.a.prefix")
    message = str(record[0].message)
    assert "not.a.prefix_users (nats: JetStream.InvalidBucketNameError)" in message, message
    assert message.count("InvalidBucketNameError") == 5, message


# -- the cluster fixture -----------------------------------------------------------------------


def test_a_cluster_port_another_process_holds_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that dies of "address already in use" restarts the cluster on fresh ports."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = [port]  # n1's client port loses the race
        monkeypatch.setattr(
            fixtures.cluster, "free_port", lambda: picks.pop(0) if picks else free_port()
        )
        cluster = start_cluster(tmp_path / "c", route_tls=False)
        try:
            assert port not in {n.client_port for n in cluster.nodes}
            assert cluster.running() == cluster.nodes
            assert all(
                n.get_json("/jsz")["meta_cluster"]["cluster_size"] == 3 for n in cluster.nodes
            )
        finally:
            cluster.close()


# -- --snapshot-update runs serially -----------------------------------------------------------


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = -p fixtures.plugin -p no:cacheprovider\n", encoding="utf-8"
    )
    (tmp_path / "test_tiny.py").write_text("def test_tiny():\n    pass\n", encoding="utf-8")
    return tmp_path


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "HYPOTHESIS_")) and k != "PYTHONPATH"
    }
    env["PYTHONPATH"] = str(REPO)
    start = time.monotonic()
    # A refusal left to the workers hung for ever: the timeout turns that into a failure.
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "--rootdir", str(project), "-c",
         str(project / "pytest.ini"), *args, str(project)],
        capture_output=True, text=True, timeout=90, cwd=project, env=env,
    )  # fmt: skip
    assert time.monotonic() - start < 60, f"pytest {' '.join(args)} took too long"
    return p


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["-n", "2"], "(--dist load -n 2)"),
        (["--dist", "load", "--tx", "2*popen"], "(--dist load --tx 2*popen)"),
        (["--dist", "each", "--tx", "popen"], "(--dist each --tx popen)"),
        (["--tx", "popen"], "--tx popen"),
    ],
    ids=["-n", "--dist-load-tx", "--dist-each", "--tx-alone"],
)
def test_snapshot_update_is_refused_under_every_xdist_distribution(
    tiny_project: Path, args: list[str], shown: str
) -> None:
    p = run_pytest(tiny_project, "--snapshot-update", *args)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, p.stdout + p.stderr
    assert "must run serially" in p.stderr and shown in p.stderr, p.stderr
    assert "tox -e golden" in p.stderr


def test_snapshot_update_with_collect_only_is_refused(tiny_project: Path) -> None:
    p = run_pytest(tiny_project, "--snapshot-update", "--collect-only", "-n", "0")
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, p.stdout + p.stderr
    assert "would delete every golden file" in p.stderr, p.stderr


def test_snapshot_update_runs_serially_with_n_0(tiny_project: Path) -> None:
    p = run_pytest(tiny_project, "--snapshot-update", "-n", "0")
    assert p.returncode == pytest.ExitCode.OK, p.stdout + p.stderr
    assert "1 passed" in p.stdout
