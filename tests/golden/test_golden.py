"""Golden snapshots: what membershipd writes and prints, kept as reviewed JSON files.

Each test checks the behaviour it stands for (parity, zero writes, canonical bytes,
a readable diff ...) and then compares the result with its own file under
``__snapshots__/test_golden/``. A plain run (``tox``, ``pytest -n auto``) fails on
any difference; ``tox -e golden`` rewrites the files serially, and the change is
reviewed like code. README "For auditors: golden snapshots" says what each file means.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from fixtures.plugin import Cli, Namespace, NatsServer, unique_prefix
from harness.golden import normalise, read_kv_layout, read_raw_kv, text_lines
from membership.canonical import dumps, encode_record
from membership.cli import cli as membershipd
from membership.connect import connect_nats
from membership.demo import build_representative_state, demo_key
from membership.keycodec import sealed_key_key
from membership.model import SealedKeyRecord
from membership.sqlite import SQLiteStore
from tests.helpers import ok

KINDS = ("users", "rooms", "members", "sealed_keys")
BUCKET_OF = {"users": "users", "rooms": "rooms", "members": "members", "sealed_keys": "keys"}
UTC_STAMP = r"\d{8}T\d{6}\.\d{6}Z"
HELP_ENV = {"COLUMNS": "80"}  # help wraps at the terminal width: fix it


def sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def make_cli(cwd: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIBUS_")}
    env.update(PYTHONUNBUFFERED="1", **HELP_ENV)
    return Cli(env, cwd)


def representative_db(path: Path) -> Path:
    """The representative control plane (fixed clock) in a real SQLite file."""

    async def build() -> None:
        store = SQLiteStore.open(path, create=True)
        try:
            await build_representative_state(store)
        finally:
            await store.close()

    asyncio.run(build())
    return path


@dataclass
class Migrated:
    """The representative state, migrated twice by the CLI into one namespace."""

    workdir: Path
    db: Path
    prefix: str
    export: str
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    seqs_after_first: dict[str, int]
    seqs_after_second: dict[str, int]
    raw_layout: dict[str, dict[str, bytes]]


@pytest.fixture(scope="module")
def migrated(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Migrated]:
    workdir = tmp_path_factory.mktemp("golden")
    db = representative_db(workdir / "control.db")
    ns = Namespace(nats_server, unique_prefix("g"))
    run = make_cli(workdir)
    kv = ["--nats-url", ns.url, "--bucket-prefix", ns.prefix]
    try:
        export = ok(run("export", "--db", str(db))).stdout
        first = run("migrate-to-kv", "--db", str(db), *kv, "--json")
        seqs_after_first = ns.stream_seqs()
        second = run("migrate-to-kv", "--db", str(db), *kv, "--json", "--no-backup")
        seqs_after_second = ns.stream_seqs()
        raw = asyncio.run(read_raw_kv(ns.target, ns.prefix))
        yield Migrated(
            workdir, db, ns.prefix, export, first, second, seqs_after_first, seqs_after_second, raw
        )
    finally:
        asyncio.run(ns.delete())


def test_representative_snapshot(migrated: Migrated, golden) -> None:
    """`membershipd export` of the representative state: every record, canonical."""
    data = json.loads(migrated.export)
    assert migrated.export == dumps(data) + "\n"  # export is canonical JSON, one newline
    assert {kind: len(data[kind]) for kind in KINDS} == {
        "users": 5,
        "rooms": 2,
        "members": 4,
        "sealed_keys": 7,
    }
    assert golden == data


def test_kv_layout(migrated: Migrated, golden) -> None:
    """The buckets after migration, as nats-py's KV API reads them: bucket -> key -> value."""
    raw = migrated.raw_layout
    for values in raw.values():
        for key, value in values.items():
            assert value == dumps(json.loads(value)).encode(), f"{key}: value is not canonical"
    layout = read_kv_layout(raw, migrated.prefix)
    # Bookkeeping, not the control plane (README, KV layout): stream states and times vary.
    last_run = layout["<prefix>_meta"].pop("last_verified_run")
    assert last_run["digest"] == sha256(migrated.export)
    exported = json.loads(migrated.export)
    for kind in KINDS:  # the values are exactly the exported records
        values = list(layout[f"<prefix>_{BUCKET_OF[kind]}"].values())
        assert sorted(map(dumps, values)) == sorted(map(dumps, exported[kind]))
    assert layout["<prefix>_meta"] == {"schema": {"schema_version": exported["schema_version"]}}
    assert golden == layout


def test_migrate_report(migrated: Migrated, golden) -> None:
    """`migrate-to-kv --json`, first run: every record written, verified, backed up."""
    report = json.loads(ok(migrated.first).stdout)
    assert report["verified"] is True
    assert report["digest"] == sha256(migrated.export)
    backup = Path(report["backup"])
    assert backup.parent == migrated.workdir and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert re.fullmatch(rf"control\.db\.backup-{UTC_STAMP}", backup.name)
    assert golden == normalise(
        report, {re.escape(str(migrated.workdir)): "<workdir>", UTC_STAMP: "<UTC time>"}
    )


def test_migrate_rerun_report(migrated: Migrated, golden) -> None:
    """`migrate-to-kv --json --no-backup`, second run: zero writes, sequences unchanged."""
    report = json.loads(ok(migrated.second).stdout)
    assert sum(c["written"] + c["pruned"] for c in report["records"].values()) == 0
    assert migrated.seqs_after_second == migrated.seqs_after_first != {}
    assert report["digest"] == json.loads(migrated.first.stdout)["digest"]
    assert golden == report


def test_inspect_report(migrated: Migrated, golden) -> None:
    """`membershipd inspect --db` of the representative state, as JSON and as the table."""
    run = make_cli(migrated.workdir)
    result = json.loads(ok(run("inspect", "--db", str(migrated.db), "--json")).stdout)
    table = text_lines(ok(run("inspect", "--db", str(migrated.db))).stdout)
    assert result["digest"] == sha256(migrated.export)
    assert isinstance(result["store"]["file_bytes"], int) and result["store"]["file_bytes"] > 0
    result["store"]["file_bytes"] = "<bytes on disk>"  # depends on SQLite's page layout
    assert golden == normalise(
        {"json": result, "table": table},
        {re.escape(str(migrated.workdir)): "<workdir>", r"\(\d+ bytes on disk\)": "(<n> bytes)"},
    )


def test_verify_divergence(cli, tmp_path: Path, namespace, golden) -> None:
    """`verify` on a known divergence: one readable line per difference, findings apart."""
    db = representative_db(tmp_path / "control.db")
    kv = ["--nats-url", namespace.url, "--bucket-prefix", namespace.prefix]
    ok(cli("migrate-to-kv", "--db", str(db), *kv, "--no-backup"))
    # SQLite moves on: bob is revoked (status; leaves general, whose epoch goes to 3) ...
    ok(cli("user", "revoke", "--db", str(db), "bob"))
    # ... and a legacy row appears that no API call could write (an orphan member).
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO members VALUES ('ghost room', 'alice', 'member', 1)")
    conn.close()
    # KV moves on too: a rekey through the API, and a sealed key replaced behind its back.
    ok(cli("room", "rekey", *kv, "ops.team ü"))
    tampered = SealedKeyRecord("general", 1, "alice", demo_key("tampered", 48))

    async def tamper() -> None:
        nc = await connect_nats(namespace.target)
        try:
            key = sealed_key_key("general", 1, "alice")
            subject = f"$KV.{namespace.prefix}_keys.{key}"  # the layout of the README
            await nc.jetstream().publish(subject, encode_record(tampered))
        finally:
            await nc.close()

    asyncio.run(tamper())

    as_json = cli("verify", "--db", str(db), *kv, "--json")
    as_text = cli("verify", "--db", str(db), *kv)
    assert as_json.returncode == as_text.returncode == 1
    result = json.loads(as_json.stdout)
    assert result["equal"] is False and len(result["differences"]) == 6
    assert "rooms['general'].epoch: SQLite 3, KV 2" in result["differences"]
    assert result["findings"] == [
        "members['ghost room', 'alice']: room 'ghost room' does not exist (orphan member)"
    ]
    lines = text_lines(as_text.stdout)
    assert all(f"  {line}" in lines for line in result["differences"] + result["findings"])
    assert golden == {
        "exit_code": as_text.returncode,
        "json": result,
        "stdout": text_lines(as_text.stdout),
        "stderr": text_lines(as_text.stderr),
    }


def test_membershipd_help(golden) -> None:
    """`membershipd --help` as the installed console script prints it."""
    run = make_cli(Path.cwd())
    assert golden == text_lines(ok(run("--help")).stdout)


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command, as --help lists them: the lazily imported ones (cluster, serve) too,
    whatever another test happened to import first."""
    ctx = click.Context(group, info_name="membershipd")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name)


def test_command_help(golden) -> None:
    """Every command's `--help` (in process, at 80 columns): options and examples."""
    runner = CliRunner(env=HELP_ENV)
    helps: dict[str, Any] = {}
    for command in leaf_commands(membershipd):
        result = runner.invoke(membershipd, [*command, "--help"], prog_name="membershipd")
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output
        helps["membershipd " + " ".join(command)] = text_lines(result.output)
    assert golden == helps
