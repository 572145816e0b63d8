"""The service itself: discovery, errors as the CLI words them, draining, KV sharing."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from harness.generate import Shape, generate
from membership.errors import (
    AlreadyExistsError,
    FailedError,
    InvalidInputError,
    NotFoundError,
    RevokedUserError,
)
from membership.protocol import ADMIN_OPERATIONS, USER_OPERATIONS
from tests.property.support import run
from tests.serve.support import as_admin


def seeded(cli, db: Path) -> Path:
    for args in (
        ["user", "add", "--db", str(db), "alice", "--public-key", "aa" * 32],
        ["user", "add", "--db", str(db), "bob", "--public-key", "bb" * 32],
        ["room", "create", "--db", str(db), "general", "--owner", "alice"],
        ["user", "revoke", "--db", str(db), "bob"],
    ):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
    return db


def test_the_service_is_discoverable_with_an_endpoint_per_operation(
    serve, cli, tmp_path: Path, admin, listen
) -> None:
    served = serve("--db", str(seeded(cli, tmp_path / "c.db")), "--client-listen", listen,
                   "--admin-nkey", admin.public)  # fmt: skip

    async def go() -> None:
        async with as_admin(served.url, admin) as store:
            nc = store._nc
            ping = json.loads((await nc.request("$SRV.PING.membershipd", b"", timeout=5)).data)
            assert ping["name"] == "membershipd" and ping["id"] == served.info["service_id"]
            info = json.loads((await nc.request("$SRV.INFO.membershipd", b"", timeout=5)).data)
            subjects = {e["name"]: e["subject"] for e in info["endpoints"]}
            expected = {
                "admin-" + op.name.replace(".", "-"): f"unibus.membership.admin.{op.name}"
                for op in ADMIN_OPERATIONS.values()
            } | {f"user-{n}": f"unibus.membership.user.*.{n}" for n in USER_OPERATIONS}
            assert subjects == expected
            assert {e["queue_group"] for e in info["endpoints"]} == {"q"}
            await store.list_users()
            stats = json.loads((await nc.request("$SRV.STATS.membershipd", b"", timeout=5)).data)
            used = {e["name"]: e["num_requests"] for e in stats["endpoints"]}
            assert used["admin-user-list"] == 1

    run(go())
    # every store operation of the Store protocol (and export) has its endpoint
    from membership.store import Store

    api = {name for name in dir(Store) if not name.startswith("_") and name != "close"}
    assert api == set(ADMIN_OPERATIONS)


@pytest.mark.parametrize(
    ("cli_args", "call", "error", "code"),
    [
        (["room", "add-member", "{db}", "nowhere", "alice"], ("add_member", "nowhere", "alice"), NotFoundError, "404"),
        (["room", "create", "{db}", "general", "--owner", "alice"], ("create_room", "general", "alice"), AlreadyExistsError, "409"),
        (["room", "add-member", "{db}", "general", "bob"], ("add_member", "general", "bob"), RevokedUserError, "400"),
        (["room", "rekey", "{db}", "--", ""], ("rekey", ""), InvalidInputError, "400"),
    ],
    ids=["not-found", "conflict", "revoked", "invalid"],
)  # fmt: skip
def test_errors_come_back_with_their_code_and_the_cli_s_own_words(
    serve, cli, tmp_path: Path, admin, listen, cli_args, call, error, code
) -> None:
    db = seeded(cli, tmp_path / "c.db")
    args = [a if a != "{db}" else "--db" for a in cli_args]
    args.insert(args.index("--db") + 1, str(db))
    by_cli = cli(*args)
    assert by_cli.returncode == 2
    words = by_cli.stderr.strip().removeprefix("membershipd: error: ")
    served = serve("--db", str(db), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        async with as_admin(served.url, admin) as store:
            with pytest.raises(error) as caught:
                await getattr(store, call[0])(*call[1:])
            assert str(caught.value) == words
            op = ADMIN_OPERATIONS[call[0]]
            params = dict(zip(_param_names(call[0]), call[1:], strict=True))
            reply = await store._nc.request(
                f"unibus.membership.admin.{op.name}", json.dumps(params).encode(), timeout=5
            )
            assert reply.headers["Nats-Service-Error-Code"] == code
            assert reply.headers["Nats-Service-Error"] == words
            body = json.loads(reply.data)["error"]
            assert body == {"code": int(code), "kind": error.__name__, "message": words}

    run(go())


def _param_names(method: str) -> tuple[str, ...]:
    return {
        "add_member": ("room_id", "user_id"),
        "create_room": ("id", "owner"),
        "rekey": ("id",),
    }[method]


def endpoint_stats(stats: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in stats["endpoints"] if e["name"] == name)


def test_stats_count_each_endpoint_s_errors_and_time_its_requests(
    serve, tmp_path: Path, admin, listen
) -> None:
    """``$SRV.STATS`` tells what the service did, although each request runs as a task."""
    db = tmp_path / "big.db"
    generate(db, Shape(users=200, rooms=50, members_per_room=2, epochs=20))  # 2,000 sealed keys
    served = serve("--db", str(db), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        async with as_admin(served.url, admin) as store:
            with pytest.raises(NotFoundError) as caught:
                await store.add_member("nowhere", "u0")
            started = time.perf_counter_ns()  # a raw request: no decoding in the wait
            raw = await store._nc.request("unibus.membership.admin.export", b"{}", timeout=10)
            latency = time.perf_counter_ns() - started
            assert len(json.loads(raw.data)["result"]["sealed_keys"]) == 2000
            reply = await store._nc.request("$SRV.STATS.membershipd", b"", timeout=5)
            stats = json.loads(reply.data)
        failed = endpoint_stats(stats, "admin-room-add-member")
        assert (failed["num_requests"], failed["num_errors"]) == (1, 1)
        assert failed["last_error"] == f"404:{caught.value}"
        exported = endpoint_stats(stats, "admin-export")
        assert (exported["num_requests"], exported["num_errors"]) == (1, 0)
        # The time the service spent on it lies within the requester's wait, and is a
        # good part of it: reading and encoding 2,000 keys takes tens of milliseconds,
        # a loopback round trip a fraction of one (micro alone counted microseconds).
        assert latency / 10 < exported["processing_time"] <= latency
        assert exported["average_processing_time"] == exported["processing_time"]

    run(go())


def test_a_reply_larger_than_the_server_takes_is_an_error_not_a_silence(
    serve, tmp_path: Path, admin, listen
) -> None:
    """An export of 20,000 sealed keys (3.8 MB) over a server's 1 MB max_payload."""
    db = tmp_path / "big.db"
    generate(db, Shape(users=400, rooms=200, members_per_room=2, epochs=50))
    served = serve("--db", str(db), "--client-listen", listen, "--admin-nkey", admin.public)

    async def go() -> None:
        async with as_admin(served.url, admin, wait=30) as store:
            with pytest.raises(FailedError) as caught:  # not "no reply within 30 s"
                await store.export_snapshot()
            message = str(caught.value)
            assert "larger than the server's max_payload (1,048,576 bytes)" in message
            assert "`membershipd export` on the store itself" in message
            assert len(await store.list_users()) == 400  # the service still answers

    run(go())


def test_malformed_requests_are_refused_input(serve, cli, tmp_path: Path, admin, listen) -> None:
    served = serve("--db", str(seeded(cli, tmp_path / "c.db")), "--client-listen", listen,
                   "--admin-nkey", admin.public)  # fmt: skip

    async def go() -> None:
        async with as_admin(served.url, admin) as store:
            for payload, words in (
                (b"not json", "not UTF-8 JSON"),
                (b"[1, 2]", "JSON object"),
                (b"{}", "lacks the parameter 'id'"),
                (b'{"id": 5}', "must be a string"),
            ):
                reply = await store._nc.request(
                    "unibus.membership.admin.room.rekey", payload, timeout=5
                )
                assert reply.headers["Nats-Service-Error-Code"] == "400"
                assert words in reply.headers["Nats-Service-Error"]
            reply = await store._nc.request(
                "unibus.membership.admin.keys.put",
                b'{"room_id":"general","user_id":"alice","sealed_key":"@@"}',
                timeout=5,
            )
            assert "base64" in reply.headers["Nats-Service-Error"]
            assert await store.get_room("general") is not None  # still serving

    run(go())


def test_sigterm_answers_every_request_it_received(
    serve, cli, tmp_path: Path, admin, listen
) -> None:
    """Requests keep coming while serve stops: each one it took in got its answer."""
    served = serve("--db", str(seeded(cli, tmp_path / "c.db")), "--client-listen", listen,
                   "--admin-nkey", admin.public)  # fmt: skip
    answered: list[int] = []
    lost: list[str] = []

    async def go() -> None:
        async with as_admin(served.url, admin, wait=2) as store:
            window = asyncio.Semaphore(64)  # always 64 requests in flight
            signalled = asyncio.Event()

            async def one() -> None:
                try:
                    user = await store.get_user("alice")
                    assert user is not None
                    answered.append(1)
                    if len(answered) == 300:
                        served.proc.send_signal(signal.SIGTERM)
                        signalled.set()
                except Exception as exc:  # after the drain: no responder, or the server gone
                    lost.append(type(exc).__name__)
                finally:
                    window.release()

            tasks = []
            while len(lost) < 64 and not store._nc.is_closed:
                await window.acquire()
                tasks.append(asyncio.ensure_future(one()))
            await asyncio.gather(*tasks)
            assert signalled.is_set()

    run(go())
    code, err = served.stop()
    assert code == 0, err
    handled = int(re.search(r"stopped after (\d+) request", err).group(1))  # type: ignore[union-attr]
    assert handled == len(answered), (handled, len(answered), set(lost))
    assert len(answered) > 300 and lost  # some were still coming in as it stopped
    assert "Traceback" not in err


def test_two_instances_on_one_kv_namespace_never_lose_or_duplicate_an_epoch(
    serve, nats_server, namespace
) -> None:
    """Concurrent rekeys and removals for one room, spread over two instances."""
    common = ["--nats-url", nats_server.url, "--bucket-prefix", namespace.prefix,
              "--subject-prefix", f"t.{namespace.prefix}"]  # fmt: skip
    first, second = serve(*common), serve(*common)
    members = [f"m{i}" for i in range(12)]
    rekeys = 36

    async def go() -> None:
        from membership.client import ServiceStore
        from membership.connect import NatsTarget, connect_nats

        nc = await connect_nats(NatsTarget(nats_server.url))
        try:
            store = ServiceStore(nc, f"t.{namespace.prefix}", timeout=30)
            await store.add_user("owner", b"\x01" * 32)
            await store.create_room("busy", "owner")
            for i, m in enumerate(members):
                await store.add_user(m, bytes([i + 2]) * 32)
                await store.add_member("busy", m)
            calls = [store.rekey("busy") for _ in range(rekeys)]
            calls += [store.remove_member("busy", m) for m in members]
            rooms = await asyncio.gather(*calls)
            epochs = [r.epoch for r in rooms]
            assert sorted(epochs) == list(range(2, 2 + len(calls)))  # each once, none lost
            room = await store.get_room("busy")
            assert room is not None and room.epoch == 1 + len(calls)
            assert [m.user_id for m in await store.list_members("busy")] == ["owner"]
            stats = []
            for served in (first, second):
                reply = await nc.request(
                    f"$SRV.STATS.membershipd.{served.info['service_id']}", b"", timeout=5
                )
                used = {e["name"]: e["num_requests"] for e in json.loads(reply.data)["endpoints"]}
                stats.append(used["admin-room-rekey"] + used["admin-room-remove-member"])
            assert sum(stats) == len(calls) and min(stats) > 0, stats  # both took a share
        finally:
            await nc.close()

    run(go())
    for served in (first, second):
        code, err = served.stop()
        assert code == 0, err


def test_losing_an_external_server_for_good_stops_serve_with_one_line(
    serve, namespace, tmp_path: Path
) -> None:
    """On a server it does not run, serve cannot restart it: once reconnecting fails it
    exits 1 naming the server, rather than serving nobody."""
    from membership.embedded import EmbeddedServer

    with EmbeddedServer(store_dir=tmp_path / "ext") as server:
        served = serve("--nats-url", server.url, "--subject-prefix", "ext.test")
        url = server.url
    code, err = served.stop(signal.SIGCONT, timeout=60)  # no signal that stops it: it stops itself
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert code == 1, err
    assert len(lines) == 1 and url in lines[0] and "Traceback" not in err, err
