"""The migration against its baselines, all measured in one run: ``python -m harness.bench``.

``python -m harness.bench --records 1000000 [--replicas R] [--json FILE]`` builds a
control plane with ``--records`` sealed keys (plus the users, rooms and members that go
with them: :func:`shape_for`) in a fresh SQLite file, starts one embedded JetStream
server (a 3-node loopback cluster for ``--replicas 3``), and measures, in this order:

``ceiling``
    pipelined ``js.publish_async`` of the very same keys and values into scratch
    buckets (no SQLite, no encoding: both prepared beforehand), acks gathered in a
    window -- the client+server limit the issue names.
``raw_publish``
    the same messages through :class:`membership.kv.Publisher`, the pipelined plain
    publishes with numbered reply subjects that the migration itself uses; it beats
    ``publish_async`` on this client, so it is the stricter yardstick and is reported
    beside the ceiling (``ratio_to_raw_publish``).
``naive``
    a sequential ``await kv.put()`` loop over a sample, as a user would write it.
``migrate_first`` / ``migrate_again``
    ``membershipd migrate-to-kv --json --quiet`` as a subprocess, twice, each with a
    backup: wall time, records/s, writes, and the peak RSS of that process (from
    ``wait4``). The second run must write nothing and leave every stream sequence as
    it was.
``bulk_read``
    every migrated bucket read raw through :class:`membership.kv.BulkReader` (the
    consumer read that ``verify`` uses), nothing else done with the messages.
``verify``
    ``membershipd verify --json`` as a subprocess: every bucket read through the same
    consumer while a child process streams the source; equal per-kind counts and
    keyed set-hashes prove parity (a difference would run the key-by-key comparison).
    Its peak RSS is the larger of the two processes'.

``bulk_read`` and ``verify`` are measured ``--rounds`` times (default 3), in turn, and
their medians reported (each round's seconds are in the JSON): on a shared 2-core
machine a single run of either says as much about the neighbours as about verify.
Then parity is checked (every ``verify`` exits 0, digests agree, zero writes,
unchanged sequences). Figures go to stdout as a table and, with ``--json FILE``, as JSON.
Timings are wall-clock on a shared machine: note the load average printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.generate import Shape, generate
from membership.canonical import KINDS, encode_row
from membership.connect import NatsTarget, connect_nats
from membership.embedded import EmbeddedServer, find_nats_server
from membership.kv import BUCKET_SUFFIXES, BulkReader, KVStore, Publisher, RowKeys
from membership.sqlite import SQLiteStore

__all__ = ["main", "run_bench", "shape_for"]

MEMBERS_PER_ROOM = 20
EPOCHS = 10
NAIVE_SAMPLE = 5000
ROUNDS = 3
ASYNC_WINDOW = 2048  # below nats-py's own limit of 4000 pending publish_async
TARGETS = {
    "ratio_to_ceiling": ">= 0.7 at 200k records, R1",
    "speedup_over_naive": ">= 5",
    "again_over_first": "<= 0.5 at 1M records, with writes = 0",
    "verify_over_bulk_read": ">= 0.7",
    "peak_rss_mb": "< 300 at 1M sealed keys (migrate-to-kv)",
}


def shape_for(records: int, seed: int = 0) -> Shape:
    """The state the bench migrates: ``records`` sealed keys, 20 members per room,
    10 epochs, one user per 50 keys (so about 1.125 records per sealed key)."""
    rooms = max(1, round(records / (MEMBERS_PER_ROOM * EPOCHS)))
    users = max(MEMBERS_PER_ROOM + EPOCHS - 1, records // 50)
    return Shape(users, rooms, MEMBERS_PER_ROOM, EPOCHS, seed)


def membershipd() -> list[str]:
    script = Path(sys.executable).with_name("membershipd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "membership"]


def timed_subprocess(args: list[str], workdir: Path, name: str) -> dict[str, Any]:
    """Run a command; its wall time, exit code, stdout, and its own peak RSS (wait4)."""
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": seconds,
        "exit": proc.returncode,
        "stdout": out.read_text(),
        "stderr": err.read_text(),
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
    }


def load_messages(db: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Every (key, value) the migration would write, per kind, prepared in memory."""
    keys = RowKeys()
    store = SQLiteStore.open(db)
    try:
        with store.consistent_read():
            return {
                kind: [
                    (keys.key(kind, row), encode_row(kind, row)) for row in store.iter_rows(kind)
                ]
                for kind in KINDS
            }
    finally:
        asyncio.run(store.close())


async def _scratch(nc: Any, prefix: str, replicas: int) -> KVStore:
    kv = KVStore(nc, prefix, lambda: 0)
    await _drop(nc, prefix)
    await kv.create_buckets(replicas)
    return kv


async def _drop(nc: Any, prefix: str) -> None:
    js = nc.jetstream()
    for suffix in BUCKET_SUFFIXES.values():
        with contextlib.suppress(Exception):
            await js.delete_key_value(f"{prefix}_{suffix}")


def _all(messages: dict[str, list[tuple[str, bytes]]], kv: KVStore) -> Iterator[tuple[str, bytes]]:
    for kind in KINDS:
        subject = kv.subject(kind, "")
        for key, value in messages[kind]:
            yield subject + key, value


async def measure_ceiling(
    target: NatsTarget, messages: dict[str, list[tuple[str, bytes]]], replicas: int
) -> dict[str, Any]:
    """Pipelined ``js.publish_async`` of every message, acks gathered in a window."""
    nc = await connect_nats(target)
    try:
        kv = await _scratch(nc, "benchceiling", replicas)
        js = nc.jetstream(timeout=10.0)
        pending: deque[asyncio.Future[Any]] = deque()
        count = 0
        started = time.perf_counter()
        for subject, value in _all(messages, kv):
            pending.append(await js.publish_async(subject, value))
            count += 1
            if len(pending) >= ASYNC_WINDOW:
                await pending.popleft()
        while pending:
            await pending.popleft()
        seconds = time.perf_counter() - started
        await _drop(nc, "benchceiling")
    finally:
        await nc.close()
    return {
        "method": f"js.publish_async, window {ASYNC_WINDOW}, every ack awaited",
        "records": count,
        "seconds": seconds,
        "records_per_s": count / seconds,
    }


async def measure_raw_publish(
    target: NatsTarget, messages: dict[str, list[tuple[str, bytes]]], replicas: int
) -> dict[str, Any]:
    """The migration's own publisher on the same messages, without SQLite or encoding."""
    nc = await connect_nats(target)
    try:
        kv = await _scratch(nc, "benchraw", replicas)
        count = 0
        started = time.perf_counter()
        async with Publisher(kv) as publisher:
            for subject, value in _all(messages, kv):
                await publisher.publish(subject, value)
                count += 1
        seconds = time.perf_counter() - started
        await _drop(nc, "benchraw")
    finally:
        await nc.close()
    return {
        "method": "membership.kv.Publisher (plain publishes, numbered replies, window)",
        "records": count,
        "seconds": seconds,
        "records_per_s": count / seconds,
    }


async def measure_naive(
    target: NatsTarget, messages: dict[str, list[tuple[str, bytes]]], replicas: int, sample: int
) -> dict[str, Any]:
    """A sequential ``await kv.put()`` loop over the first ``sample`` messages."""
    nc = await connect_nats(target)
    try:
        store = await _scratch(nc, "benchnaive", replicas)
        js = nc.jetstream(timeout=10.0)
        buckets = {kind: await js.key_value(store.buckets[kind]) for kind in KINDS}
        todo = [(kind, key, value) for kind in KINDS for key, value in messages[kind]][:sample]
        started = time.perf_counter()
        for kind, key, value in todo:
            await buckets[kind].put(key, value)
        seconds = time.perf_counter() - started
        await _drop(nc, "benchnaive")
    finally:
        await nc.close()
    return {
        "method": "sequential await kv.put() (nats-py KeyValue)",
        "records": len(todo),
        "seconds": seconds,
        "records_per_s": len(todo) / seconds,
    }


async def measure_bulk_read(target: NatsTarget, prefix: str) -> dict[str, Any]:
    """Every bucket of ``prefix`` read through the consumer ``verify`` uses; nothing else."""
    nc = await connect_nats(target)
    try:
        kv = KVStore(nc, prefix, lambda: 0)
        count = 0
        started = time.perf_counter()
        for kind in KINDS:
            async with BulkReader(kv, kind) as reader:
                async for batch in reader:
                    count += len(batch)
        seconds = time.perf_counter() - started
    finally:
        await nc.close()
    return {
        "method": "membership.kv.BulkReader (pull consumer, last per subject)",
        "records": count,
        "seconds": seconds,
        "records_per_s": count / seconds,
    }


async def stream_states(target: NatsTarget, prefix: str) -> dict[str, Any]:
    nc = await connect_nats(target)
    try:
        kv = KVStore(nc, prefix, lambda: 0)
        out = {}
        for kind in (*KINDS, "meta"):
            state = await kv.stream_state(kind)
            out[kind] = state.as_dict() if state is not None else None
        return out
    finally:
        await nc.close()


def _migration(result: dict[str, Any], total: int) -> dict[str, Any]:
    report = json.loads(result["stdout"]) if result["exit"] == 0 else {}
    records = report.get("records", {})
    return {
        "seconds": round(result["seconds"], 3),
        "records_per_s": round(total / result["seconds"], 1),
        "writes": sum(c.get("written", 0) + c.get("pruned", 0) for c in records.values()),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "exit": result["exit"],
        "verified": report.get("verified"),
        "digest": report.get("digest"),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _rate(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}


class _Servers:
    """One embedded server, or a 3-node loopback cluster for replicas > 1."""

    def __init__(self, workdir: Path, replicas: int) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self._server: EmbeddedServer | None = None
        self._cluster: Any = None

    def __enter__(self) -> NatsTarget:
        if self.replicas == 1:
            self._server = EmbeddedServer(store_dir=self.workdir / "nats").start()
            return NatsTarget(self._server.url)
        from fixtures.cluster import start_cluster  # test tooling: pytest must be installed

        self._cluster = start_cluster(self.workdir / "cluster", route_tls=False)
        return NatsTarget(self._cluster.url)

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
        if self._cluster is not None:
            self._cluster.close()


def run_bench(
    records: int,
    *,
    replicas: int = 1,
    workdir: Path,
    seed: int = 0,
    naive_sample: int = NAIVE_SAMPLE,
    rounds: int = ROUNDS,
    say: Any = print,
) -> dict[str, Any]:
    """Run every measurement once; return the figures (see the module docstring)."""
    load_before = os.getloadavg()
    shape = shape_for(records, seed)
    db = workdir / "control.db"
    started = time.perf_counter()
    counts = generate(db, shape)
    generated = time.perf_counter() - started
    total = sum(counts.values())
    say(f"generated {total:,} records in {generated:.1f} s ({db})")
    prefix = "bench"
    # The first migration and its ceiling are medians of ``rounds`` runs too, up to 200k
    # records (each round a fresh namespace); beyond, one run of each (minutes apiece).
    first_rounds = rounds if total <= 250_000 else 1
    with _Servers(workdir, replicas) as target:
        url = target.url
        # The baselines hold every message in memory: they run in a child process, so
        # that this one stays small -- a child's peak RSS counts its parent's at fork.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "harness.bench",
                "--baselines-of",
                str(db),
                "--url",
                url,
                "--replicas",
                str(replicas),
                "--naive-sample",
                str(naive_sample),
                "--rounds",
                str(first_rounds),
                "--json",
                str(workdir / "baselines.json"),
            ],
            check=True,
        )
        baselines = json.loads((workdir / "baselines.json").read_text())
        ceiling, raw, naive = baselines["ceiling"], baselines["raw_publish"], baselines["naive"]
        say(f"ceiling (js.publish_async): {ceiling['records_per_s']:,.0f} records/s")
        say(f"raw publish (Publisher): {raw['records_per_s']:,.0f} records/s")
        say(f"naive kv.put loop: {naive['records_per_s']:,.0f} records/s")
        stores = ["--db", str(db), "--nats-url", url, "--bucket-prefix", prefix]
        migrate = [
            *membershipd(),
            "migrate-to-kv",
            *stores,
            "--replicas",
            str(replicas),
            "--json",
            "--quiet",
        ]
        first_run = timed_subprocess(
            [*migrate, "--backup-path", str(workdir / "backup-1.db")], workdir, "migrate_first"
        )
        first = _migration(first_run, total)
        say(f"migrate-to-kv, first run: {first['seconds']:.1f} s, exit {first['exit']}")
        first_seconds = [first["seconds"]]
        for round_ in range(2, first_rounds + 1):  # the same first run, into a fresh namespace
            other = [a if a != prefix else f"{prefix}{round_}" for a in migrate]
            extra = _migration(
                timed_subprocess(
                    [*other, "--backup-path", str(workdir / f"backup-1-{round_}.db")],
                    workdir,
                    f"migrate_first-{round_}",
                ),
                total,
            )
            first_seconds.append(extra["seconds"])
            say(f"migrate-to-kv, first run again: {extra['seconds']:.1f} s")
        first["rounds"] = [round(x, 3) for x in first_seconds]
        first["seconds"] = round(_median(first_seconds), 3)
        first["records_per_s"] = round(total / first["seconds"], 1)
        seqs_before = asyncio.run(stream_states(target, prefix))
        again_run = timed_subprocess(
            [*migrate, "--backup-path", str(workdir / "backup-2.db")], workdir, "migrate_again"
        )
        again = _migration(again_run, total)
        seqs_after = asyncio.run(stream_states(target, prefix))
        say(f"migrate-to-kv, second run: {again['seconds']:.1f} s, exit {again['exit']}")
        # bulk read and verify, in turn, ``rounds`` times: on a shared machine one run of
        # each says more about the neighbours than about verify; the medians are reported
        bulks: list[dict[str, Any]] = []
        verify_runs: list[dict[str, Any]] = []
        verify_cmd = [*membershipd(), "verify", *stores, "--json"]
        for round_ in range(1, rounds + 1):
            bulks.append(asyncio.run(measure_bulk_read(target, prefix)))
            say(f"bulk read: {bulks[-1]['records_per_s']:,.0f} records/s")
            verify_runs.append(timed_subprocess(verify_cmd, workdir, f"verify-{round_}"))
            say(f"verify: {verify_runs[-1]['seconds']:.1f} s, exit {verify_runs[-1]['exit']}")
    bulk = {
        **bulks[0],
        "seconds": _median([b["seconds"] for b in bulks]),
        "rounds": [round(b["seconds"], 3) for b in bulks],
    }
    bulk["records_per_s"] = bulk["records"] / bulk["seconds"]
    verify_run = verify_runs[-1]
    verify_seconds = _median([v["seconds"] for v in verify_runs])
    verify_report = json.loads(verify_run["stdout"]) if verify_run["stdout"].strip() else {}
    verify = {
        "seconds": round(verify_seconds, 3),
        "records_per_s": round(total / verify_seconds, 1),
        "writes": 0,
        "peak_rss_mb": round(max(v["peak_rss_mb"] for v in verify_runs), 1),
        "exit": max(verify_runs, key=lambda v: abs(v["exit"]))["exit"],
        "equal": verify_report.get("equal"),
        "rounds": [round(v["seconds"], 3) for v in verify_runs],
    }
    parity = {
        "verify_equal": verify["exit"] == 0 and verify_report.get("equal") is True,
        "first_verified": first["verified"] is True,
        "again_verified": again["verified"] is True,
        "digests_agree": len(
            {
                first["digest"],
                again["digest"],
                verify_report.get("digest", {}).get("sqlite"),
                verify_report.get("digest", {}).get("kv"),
            }
        )
        == 1,
        "again_wrote_nothing": again["writes"] == 0 and again["exit"] == 0,
        "again_left_sequences": seqs_before == seqs_after,
    }
    figures: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "nats_server": _nats_server_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "replicas": replicas,
        "shape": asdict(shape),
        "records": {**counts, "total": total},
        "generate": {"seconds": round(generated, 3)},
        "ceiling": _rate(ceiling),
        "raw_publish": _rate(raw),
        "naive": _rate(naive),
        "bulk_read": _rate(bulk),
        "migrate_first": first,
        "migrate_again": again,
        "verify": verify,
        "ratio_to_ceiling": round(first["records_per_s"] / ceiling["records_per_s"], 3),
        "ratio_to_raw_publish": round(first["records_per_s"] / raw["records_per_s"], 3),
        "speedup_over_naive": round(first["records_per_s"] / naive["records_per_s"], 2),
        "again_over_first": round(again["seconds"] / first["seconds"], 3),
        "verify_over_bulk_read": round(verify["records_per_s"] / bulk["records_per_s"], 3),
        "parity": all(parity.values()),
        "parity_checks": parity,
    }
    figures["targets"] = _targets(figures)
    return figures


def _targets(f: dict[str, Any]) -> dict[str, Any]:
    peak = max(f["migrate_first"]["peak_rss_mb"], f["migrate_again"]["peak_rss_mb"])
    met = {
        "ratio_to_ceiling": f["ratio_to_ceiling"] >= 0.7,
        "speedup_over_naive": f["speedup_over_naive"] >= 5,
        "again_over_first": f["again_over_first"] <= 0.5 and f["migrate_again"]["writes"] == 0,
        "verify_over_bulk_read": f["verify_over_bulk_read"] >= 0.7,
        "peak_rss_mb": peak < 300,
    }
    values = {
        "ratio_to_ceiling": f["ratio_to_ceiling"],
        "speedup_over_naive": f["speedup_over_naive"],
        "again_over_first": f["again_over_first"],
        "verify_over_bulk_read": f["verify_over_bulk_read"],
        "peak_rss_mb": peak,
    }
    return {k: {"value": values[k], "target": TARGETS[k], "met": met[k]} for k in TARGETS}


def _nats_server_version() -> str:
    try:
        return subprocess.run(
            [str(find_nats_server()), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # informational only
        return "unknown"


def table(f: dict[str, Any]) -> list[str]:
    """The figures as a Markdown table (the README's Performance section uses it)."""
    rows = [
        ("ceiling: js.publish_async, pipelined", f["ceiling"]),
        ("raw publish: the migration's Publisher", f["raw_publish"]),
        ("naive: sequential kv.put", f["naive"]),
        ("migrate-to-kv, first run", f["migrate_first"]),
        ("migrate-to-kv, second run", f["migrate_again"]),
        ("raw bulk read (consumer)", f["bulk_read"]),
        ("verify", f["verify"]),
    ]
    out = [
        f"{f['records']['total']:,} records ({f['records']['sealed_keys']:,} sealed keys), "
        f"R{f['replicas']}, {f['date']}, load average {f['machine']['load_average_before'][0]}"
        f" -> {f['machine']['load_average_after'][0]}",
        "",
        "| measurement | seconds | records/s | writes | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        writes = m.get("writes", "")
        rss = m.get("peak_rss_mb", "")
        out.append(
            f"| {name} | {m['seconds']:.1f} | {m['records_per_s']:,.0f} | "
            f"{'' if writes == '' else f'{writes:,}'} | {rss} |"
        )
    out += ["", "| figure | value | target | met |", "|---|---:|---|---|"]
    for name, t in f["targets"].items():
        out.append(f"| {name} | {t['value']} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    out.append(f"| ratio_to_raw_publish | {f['ratio_to_raw_publish']} | (reported) | |")
    out.append(f"| parity | {f['parity']} | true | {'yes' if f['parity'] else 'no'} |")
    return out


def run_baselines(
    db: Path, url: str, replicas: int, naive_sample: int, rounds: int = 1
) -> dict[str, Any]:
    """ceiling, raw_publish and naive on the messages of ``db`` (run in a child process).

    The ceiling is measured ``rounds`` times and its median reported, like the first
    migration it is compared with."""
    messages = load_messages(db)
    target = NatsTarget(url)
    ceilings = [asyncio.run(measure_ceiling(target, messages, replicas)) for _ in range(rounds)]
    ceiling = {
        **ceilings[0],
        "seconds": _median([c["seconds"] for c in ceilings]),
        "rounds": [round(c["seconds"], 3) for c in ceilings],
    }
    ceiling["records_per_s"] = ceiling["records"] / ceiling["seconds"]
    return {
        "ceiling": ceiling,
        "raw_publish": asyncio.run(measure_raw_publish(target, messages, replicas)),
        "naive": asyncio.run(measure_naive(target, messages, replicas, naive_sample)),
    }


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["serve"]:  # `python -m harness.bench serve ...`: the service's figures
        from harness.bench_serve import main as serve_main

        return serve_main(args_in[1:])
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench",
        description="Measure the migration against its baselines in one run.",
    )
    parser.add_argument("--records", type=int, help="sealed-key records (required)")
    parser.add_argument("--baselines-of", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--replicas", type=int, default=1, choices=(1, 3))
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive-sample", type=int, default=NAIVE_SAMPLE)
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="bulk read and verify are measured this many times, in turn; medians reported",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the files in DIR")
    args = parser.parse_args(argv)
    if args.baselines_of is not None:  # the child process of run_bench
        figures = run_baselines(
            args.baselines_of, args.url, args.replicas, args.naive_sample, max(1, args.rounds)
        )
        args.json.write_text(json.dumps(figures))
        return 0
    if args.records is None or args.records < 1:
        parser.error("--records N (>= 1) is required")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=args.keep))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="membershipd-bench-"))
    try:
        figures = run_bench(
            args.records,
            replicas=args.replicas,
            workdir=workdir,
            seed=args.seed,
            naive_sample=args.naive_sample,
            rounds=max(1, args.rounds),
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(table(figures)))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0 if figures["parity"] else 1


if __name__ == "__main__":
    sys.exit(main())
