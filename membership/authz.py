"""The NATS server's authorization, generated from the allowlist.

``membershipd serve`` runs the nats-server its clients connect to (the embedded one
or a cluster node) and writes that server's ``authorization`` block from the
allowlist, so that the allowlist is what lets a user in:

* every **active** user with an nkey connects with that nkey and may only
  - publish requests *as itself*: ``<prefix>.user.<enc(user id)>.>`` (the service
    takes the requester's identity from that subject token, which no one else may
    publish on), and ``$SRV.PING``/``$SRV.INFO`` of the service;
  - subscribe to its own reply inbox, ``_INBOX.<its nkey>.>`` (so no user reads
    another's replies; its client sets that inbox prefix);
* **admins** (``--admin-nkey``) and the service's own identity (a key pair made at
  start, held in memory only) have no restrictions: they run the control plane and
  its tools (``migrate-to-kv``, ``verify``, the store commands with ``--seed-file``);
* nobody else: a revoked user, a user without an nkey, an nkey two users share
  (one identity for two users could act as either: neither is let in), or a user
  whose nkey is an admin's or the service's, has no entry, so cannot connect.

A change of the allowlist rewrites the configuration (0600, atomically) and reloads
the server (``SIGHUP``); nats-server then closes the connections of every identity
that lost its entry, and applies the new permissions to the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .cluster import conf_string
from .keycodec import encode_id
from .model import User

__all__ = [
    "DEFAULT_SUBJECT_PREFIX",
    "Allowlist",
    "allowlist",
    "render_authorization",
    "user_inbox_prefix",
    "user_subject",
]

DEFAULT_SUBJECT_PREFIX: Final = "unibus.membership"
SERVICE_NAME: Final = "membershipd"


def user_subject(prefix: str, user_id: str) -> str:
    """The subject root a user sends its requests under (its identity is the token)."""
    return f"{prefix}.user.{encode_id(user_id)}"


def user_inbox_prefix(nkey: str) -> str:
    """The only inbox a user may read its replies from."""
    return f"_INBOX.{nkey}"


@dataclass(frozen=True)
class Allowlist:
    """Who may connect: ``users`` maps a user id to its nkey; ``left_out`` says who not, why."""

    users: dict[str, str]
    admins: tuple[str, ...]
    service: str
    left_out: tuple[str, ...]


def allowlist(users: Iterable[User], admins: Sequence[str], service: str) -> Allowlist:
    """The identities the server lets in, from the users of the allowlist."""
    records = list(users)
    counts = Counter(u.nkey for u in records if u.nkey is not None)
    privileged = {*admins, service}
    allowed: dict[str, str] = {}
    left_out: list[str] = []
    for user in sorted(records, key=lambda u: u.id):
        if user.nkey is None or user.status != "active":
            continue
        if counts[user.nkey] > 1:
            left_out.append(f"user {user.id!r}: its nkey is shared with another user")
        elif user.nkey in privileged:
            left_out.append(f"user {user.id!r}: its nkey is an admin's or the service's")
        else:
            allowed[user.id] = user.nkey
    return Allowlist(allowed, tuple(dict.fromkeys(admins)), service, tuple(left_out))


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(conf_string(v) for v in values) + "]"


def render_authorization(allowed: Allowlist, subject_prefix: str) -> str:
    """The ``authorization { users = [...] }`` block of nats-server's configuration.

    It holds public keys only (no secret), but lists who may connect: the file it
    goes into is written 0600 like the rest of the node's configuration.
    """
    lines = ["authorization {", "  users = ["]
    lines.append(f"    {{ nkey: {conf_string(allowed.service)} }}  # membershipd itself")
    for admin in allowed.admins:
        lines.append(f"    {{ nkey: {conf_string(admin)} }}  # an admin")
    for user_id in sorted(allowed.users):
        nkey = allowed.users[user_id]
        publish = [
            f"{user_subject(subject_prefix, user_id)}.>",
            f"$SRV.PING.{SERVICE_NAME}",
            f"$SRV.INFO.{SERVICE_NAME}",
        ]
        subscribe = [f"{user_inbox_prefix(nkey)}.>"]
        lines.append(
            f"    {{ nkey: {conf_string(nkey)}, permissions: {{ "
            f"publish: {{ allow: {_list(publish)} }}, "
            f"subscribe: {{ allow: {_list(subscribe)} }} }} }}"
        )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
