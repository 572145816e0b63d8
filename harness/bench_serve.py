"""Key fetches through ``membershipd serve`` against a raw request/reply echo, in one run.

``python -m harness.bench serve [--clients N] [--seconds S] [--store sqlite|kv] [--json FILE]``
builds a control plane (``--users`` users, each a member of ``--rooms`` rooms with a
sealed key at the current epoch), starts ``membershipd serve`` on it as a subprocess
(the embedded nats-server, authorization from the allowlist), and measures:

``echo``
    the ceiling: a plain NATS responder in its own process, subscribed where the
    users' requests may go (``P.user.*.echo``), answering each request with a reply
    of the size of a key fetch's. The same clients, the same connections (each as a
    user, with its nkey and inbox), the same payloads: NATS request/reply and
    nothing else.
``serve``
    ``N`` clients, each connected as a different user, each asking in a closed loop
    for its own sealed key of one of its rooms (``P.user.<id>.key``): requests/s and
    the latency percentiles p50/p90/p99 of the replies.

Both run for ``--seconds`` after a warm-up, one after the other against the same
server; ``ratio_to_echo`` = serve requests/s ÷ echo requests/s. Every reply of the
serve phase is checked (it is the asking user's own key of that room and epoch).
Timings are wall-clock on a shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fixtures.plugin import membershipd_command
from membership.authz import DEFAULT_SUBJECT_PREFIX, user_subject
from membership.canonical import dumps
from membership.client import UserClient, connect_user
from membership.connect import NatsTarget
from membership.demo import demo_key
from membership.embedded import free_port
from membership.nkey import UserKeyPair, generate_user_keypair, user_keypair_from_raw
from membership.sqlite import SQLiteStore

__all__ = ["main", "run_serve_bench"]


def _pair(i: int) -> UserKeyPair:
    return user_keypair_from_raw(demo_key(f"bench-user/{i}", 32))


async def build_state(db: Path, users: int, rooms: int) -> list[tuple[str, UserKeyPair, list[str]]]:
    """``users`` users with nkeys, each in ``rooms`` rooms with a sealed key there."""
    store = SQLiteStore.open(db, create=True)
    out = []
    try:
        await store.add_user("owner", demo_key("owner", 32))
        names = [f"room-{r}" for r in range(max(1, (users * rooms) // 20 + 1))]
        for name in names:
            await store.create_room(name, "owner")
        for i in range(users):
            uid = f"user-{i:04d}"
            pair = _pair(i)
            await store.add_user(uid, demo_key(f"pk/{uid}", 32), nkey=pair.public)
            mine = [names[(i + k * 7) % len(names)] for k in range(rooms)]
            mine = list(dict.fromkeys(mine))
            for room in mine:
                await store.add_member(room, uid)
                await store.put_sealed_key(room, uid, demo_key(f"sealed/{room}/{uid}", 48))
            out.append((uid, pair, mine))
    finally:
        await store.close()
    return out


def _start_serve(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [*membershipd_command(), "serve", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"serve did not start: {proc.communicate()[1]}")
    return proc, json.loads(line)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99)}


async def _closed_loop(
    clients: list[Any], ask: Any, seconds: float, warmup: float
) -> dict[str, Any]:
    """Each client asks in a loop; count what finished inside the measured window."""
    latencies: list[float] = []
    counted = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def loop(index: int, client: Any) -> None:
        nonlocal counted
        n = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            await ask(index, client, n)
            t1 = time.perf_counter()
            n += 1
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                counted += 1

    await asyncio.gather(*(loop(i, c) for i, c in enumerate(clients)))
    return {
        "requests": counted,
        "seconds": seconds,
        "requests_per_s": round(counted / seconds, 1),
        **_percentiles(latencies or [0.0]),
    }


ECHO_SCRIPT = """
import asyncio, sys
from membership.connect import NatsTarget, connect_nats
from membership.nkey import read_seed_file
async def main():
    url, seed_file, subject, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    nc = await connect_nats(NatsTarget(url), nkey_seed=read_seed_file(seed_file).seed)
    body = b"x" * size
    async def reply(msg):
        await msg.respond(body)
    await nc.subscribe(subject, queue="q", cb=reply)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.drain()
asyncio.run(main())
"""


async def run_serve_bench(
    *,
    clients: int,
    seconds: float,
    warmup: float,
    users: int,
    rooms: int,
    store: str,
    workdir: Path,
) -> dict[str, Any]:
    db = workdir / "control.db"
    people = await build_state(db, users, rooms)
    admin = generate_user_keypair()
    seed_file = workdir / "admin.seed"
    fd = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(admin.seed)
    listen = f"127.0.0.1:{free_port()}"
    kv_dir = str(workdir / "kv")
    args = ["--db", str(db)] if store == "sqlite" else ["--kv", "--store-dir", kv_dir]
    proc, info = _start_serve(
        [*args, "--client-listen", listen, "--admin-nkey", admin.public], workdir
    )
    try:
        url = info["url"]
        if store == "kv":
            migrated = await asyncio.to_thread(
                subprocess.run,
                [*membershipd_command(), "migrate-to-kv", "--db", str(db), "--nats-url", url,
                 "--seed-file", str(seed_file), "--quiet", "--no-backup"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if migrated.returncode != 0:
                raise RuntimeError(migrated.stderr)
        # each client is a different user, connected as itself
        chosen = [people[i % len(people)] for i in range(clients)]
        connections = []
        deadline = time.monotonic() + 30
        for _uid, pair, _rooms in chosen:
            while True:
                try:
                    connections.append(await connect_user(NatsTarget(url), pair))
                    break
                except Exception:  # KV: serve lets the migrated users in a moment later
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        users_of = [
            UserClient(nc, uid) for nc, (uid, _, _) in zip(connections, chosen, strict=True)
        ]
        sample = await users_of[0].sealed_key(chosen[0][2][0])
        reply_size = len(dumps({"result": {"epoch": 1, "room_id": sample.room_id,
                                           "sealed_key": "x" * 64, "user_id": sample.user_id}}))  # fmt: skip
        request = dumps({"epoch": None, "room_id": chosen[0][2][0]}).encode()

        # the ceiling: a plain responder where users may send
        echo = subprocess.Popen(  # noqa: ASYNC220  (a responder that lives for the phase)
            [sys.executable, "-c", ECHO_SCRIPT, url, str(seed_file),
             f"{DEFAULT_SUBJECT_PREFIX}.user.*.echo", str(reply_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert echo.stdout is not None and echo.stdin is not None
        if echo.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo responder did not start")
        subjects = [f"{user_subject(DEFAULT_SUBJECT_PREFIX, uid)}.echo" for uid, _, _ in chosen]

        async def ask_echo(i: int, nc: Any, n: int) -> None:
            await nc.request(subjects[i], request, timeout=10)

        load_before = os.getloadavg()[0]
        echo_figures = await _closed_loop(connections, ask_echo, seconds, warmup)
        echo.stdin.close()
        echo.wait(10)

        wrong: list[str] = []

        async def ask_key(i: int, client: UserClient, n: int) -> None:
            mine = chosen[i][2]
            room = mine[n % len(mine)]
            record = await client.sealed_key(room)
            if record.user_id != client.user_id or record.room_id != room:
                wrong.append(f"{client.user_id} asked for {room}, got {record!r}")

        serve_figures = await _closed_loop(users_of, ask_key, seconds, warmup)
        load_after = os.getloadavg()[0]
        for nc in connections:
            await nc.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(load_before, 2), round(load_after, 2)],
        },
        "store": store,
        "clients": clients,
        "users": users,
        "echo": echo_figures,
        "serve": serve_figures,
        "ratio_to_echo": round(serve_figures["requests_per_s"] / echo_figures["requests_per_s"], 3),
        "wrong_replies": len(wrong),
        "exit_status": proc.returncode,
    }


def table(f: dict[str, Any]) -> list[str]:
    rows = [
        f"key fetches through membershipd serve ({f['store']}), {f['clients']} clients, "
        f"{f['date']}, load average {f['machine']['load_average'][0]} -> "
        f"{f['machine']['load_average'][1]}",
        "",
        "| measurement | requests/s | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("echo", "raw NATS request/reply echo"),
        ("serve", "serve: user key fetch"),
    ):
        m = f[name]
        rows.append(
            f"| {label} | {m['requests_per_s']:,.0f} | {m['p50_ms']} | {m['p90_ms']} | {m['p99_ms']} |"
        )
    rows += ["", f"ratio_to_echo: {f['ratio_to_echo']}  (wrong replies: {f['wrong_replies']})"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench serve",
        description="Key fetches through membershipd serve against a raw NATS echo.",
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent users (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--users", type=int, default=200, help="users in the control plane")
    parser.add_argument("--rooms", type=int, default=3, help="rooms per user")
    parser.add_argument("--store", choices=("sqlite", "kv"), default="sqlite")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients >= 1 and --seconds > 0")
    with tempfile.TemporaryDirectory(prefix="membershipd-bench-serve-") as tmp:
        figures = asyncio.run(
            run_serve_bench(
                clients=args.clients,
                seconds=args.seconds,
                warmup=args.warmup,
                users=max(args.users, args.clients),
                rooms=args.rooms,
                store=args.store,
                workdir=Path(tmp),
            )
        )
    print("\n".join(table(figures)))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0 if figures["wrong_replies"] == 0 and figures["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
