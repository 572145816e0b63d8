"""``membershipd serve``: the control plane as a NATS service (see :mod:`membership.serve`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from .authz import DEFAULT_SUBJECT_PREFIX
from .cli import CommandError, emit_json, nats_options, say
from .cli_cluster import build_node, node_options_for
from .cluster import DEFAULT_CLIENT_PORT, parse_listen
from .connect import NatsTarget
from .errors import InvalidInputError, MembershipError
from .serve import ServeOptions, serve

NODE_FLAGS = (
    "routes",
    "cluster_pass_file",
    "cluster_pass",
    "cluster_ca",
    "cluster_cert",
    "cluster_key",
    "client_cert",
    "client_key",
    "client_ca",
)


def _serve_options(func: Any) -> Any:
    return node_options_for(func, required=False)


@click.command("serve")
@click.option(
    "--db", type=click.Path(path_type=Path), metavar="PATH", help="State in this SQLite file."
)
@click.option(
    "--nats-url",
    metavar="URL",
    help="An external NATS server: state in its KV buckets (or in --db), served there. "
    "Its authorization is its operator's.",
)
@click.option("--kv", is_flag=True, help="State in KV buckets on the server serve runs.")
@nats_options
@click.option(
    "--admin-nkey",
    "admin_nkeys",
    multiple=True,
    metavar="NKEY",
    help="Public nkey of an admin (repeat): may do every operation and run the tools "
    "(migrate-to-kv, verify ... with --seed-file). The seed stays with the admin.",
)
@click.option(
    "--subject-prefix",
    default=DEFAULT_SUBJECT_PREFIX,
    show_default=True,
    metavar="PREFIX",
    help="Subjects of the service: PREFIX.admin.<op>, PREFIX.user.<user>.<op>.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 5),
    default=1,
    show_default=True,
    help="Replicas of buckets serve creates (KV state, namespace missing).",
)
@_serve_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout once ready.")
def serve_command(
    db: Path | None,
    nats_url: str | None,
    kv: bool,
    ca: str | None,
    cert: str | None,
    key: str | None,
    bucket_prefix: str,
    seed_file: str | None,
    admin_nkeys: tuple[str, ...],
    subject_prefix: str,
    replicas: int,
    as_json: bool,
    **node: Any,
) -> None:
    """Serve the control plane on NATS, its door kept by the allowlist.

    A NATS micro service `membershipd` ($SRV.PING/INFO/STATS) answers admins on
    PREFIX.admin.<operation> (every store operation and export) and each user on
    PREFIX.user.<its id>.<whoami|rooms|room|key> -- its own rooms and sealed keys
    only. With --db the state is a SQLite file; with --kv or --nats-url, KV
    buckets that any number of serve instances share.

    Without --nats-url serve runs the server itself -- the embedded nats-server, or
    a cluster node with the `cluster` flags (--server-name ...) -- and writes its
    authorization from the allowlist: an active user with an nkey connects with it
    and may only ask as itself; admins (--admin-nkey) may do everything. Changing
    or revoking a user reloads the server at once, which ends the connections of a
    user that lost its entry. SIGTERM/SIGINT: answer every request received, then stop.

    \b
    Example:
      membershipd serve --db control.db --client-listen 127.0.0.1:4222 \\
          --admin-nkey UD3X...
      membershipd serve --kv --server-name n1 --store-dir /var/lib/unibus/n1 \\
          --cluster-pass-file route.secret --routes nats://10.0.0.1:6250,...
      membershipd serve --nats-url nats://127.0.0.1:4222 --seed-file svc.seed
    """
    try:
        node_config = None
        if node.get("server_name"):
            if node.get("store_dir") is None:
                raise InvalidInputError("--server-name runs a cluster node: give --store-dir too")
            node_config = build_node(node)
        else:
            given = [f"--{n.replace('_', '-')}" for n in NODE_FLAGS if node.get(n)]
            if given:
                raise InvalidInputError(f"{given[0]} belongs to a cluster node: give --server-name")
        opts = ServeOptions(
            db=db,
            kv=kv,
            target=NatsTarget(nats_url, ca, cert, key, seed_file) if nats_url else None,
            bucket_prefix=bucket_prefix,
            subject_prefix=subject_prefix,
            admin_nkeys=admin_nkeys,
            replicas=replicas,
            client_listen=parse_listen(
                node["client_listen"], DEFAULT_CLIENT_PORT, "--client-listen"
            ),
            monitor_listen=(
                parse_listen(node["monitor_listen"], 8222, "--monitor-listen")
                if node.get("monitor_listen")
                else None
            ),
            store_dir=node.get("store_dir"),
            node=node_config,
        )
        if nats_url is None and (ca or cert or key or seed_file):
            raise InvalidInputError("--ca/--cert/--key/--seed-file are for --nats-url")

        def ready(info: dict[str, Any]) -> None:
            say(
                f"membershipd: serving {info['state']} on {info['url']} "
                f"(subjects {info['subject_prefix']}.*, authorization {info['authorization']})"
            )
            if as_json:
                emit_json(info)

        asyncio.run(serve(opts, ready=ready, notice=say))
    except MembershipError as exc:
        raise CommandError(exc) from None
