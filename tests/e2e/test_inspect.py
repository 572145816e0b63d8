"""``membershipd inspect`` as a subprocess: what an operator or auditor sees of a store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from membership.canonical import dumps
from membership.demo import build_representative_state
from membership.embedded import free_port
from membership.sqlite import SQLiteStore
from tests.helpers import ok, one_line_error

KINDS = ("users", "rooms", "members", "sealed_keys")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def representative_db(tmp_path: Path) -> Path:
    path = tmp_path / "control.db"

    async def build() -> None:
        store = SQLiteStore.open(path, create=True)
        try:
            await build_representative_state(store)
        finally:
            await store.close()

    asyncio.run(build())
    return path


def expected_from_export(export_text: str) -> dict[str, object]:
    """What inspect must say, computed independently from `export` output."""
    data = json.loads(export_text)
    records = {}
    for kind in KINDS:
        sizes = [len(dumps(item).encode()) for item in data[kind]]
        records[kind] = {"count": len(sizes), "bytes": sum(sizes), "largest": max(sizes, default=0)}
    epochs = Counter(room["epoch"] for room in data["rooms"])
    return {
        "schema_version": data["schema_version"],
        "digest": "sha256:" + hashlib.sha256(export_text.encode()).hexdigest(),
        "export_bytes": len(export_text.encode()),
        "records": records,
        "room_epochs": [{"epoch": e, "rooms": n} for e, n in sorted(epochs.items())],
    }


def kv_args(namespace) -> list[str]:
    return ["--nats-url", namespace.url, "--bucket-prefix", namespace.prefix]


def migrate(cli, db: Path, namespace) -> dict[str, object]:
    return json.loads(
        ok(
            cli("migrate-to-kv", "--db", str(db), *kv_args(namespace), "--no-backup", "--json")
        ).stdout
    )


def test_sqlite_and_kv_inspections_agree_after_migration(cli, tmp_path: Path, namespace) -> None:
    db = representative_db(tmp_path)
    export = ok(cli("export", "--db", str(db))).stdout
    expected = expected_from_export(export)
    before = file_digest(db)

    from_db = json.loads(ok(cli("inspect", "--db", str(db), "--json")).stdout)
    assert file_digest(db) == before  # inspect only reads
    backup = tmp_path / "backup.db"
    report = json.loads(
        ok(
            cli(
                "migrate-to-kv",
                "--db",
                str(db),
                *kv_args(namespace),
                "--backup-path",
                str(backup),
                "--json",
            )
        ).stdout
    )
    from_kv = json.loads(ok(cli("inspect", *kv_args(namespace), "--json")).stdout)
    from_backup = json.loads(ok(cli("inspect", "--db", str(backup), "--json")).stdout)

    for result in (from_db, from_kv, from_backup):
        assert {k: result[k] for k in expected} == expected
        assert result["findings"] == []
    assert from_db["digest"] == from_kv["digest"] == from_backup["digest"] == report["digest"]
    assert from_db["store"] == {
        "kind": "sqlite",
        "path": str(db),
        "file_bytes": db.stat().st_size,
    }
    store = from_kv["store"]
    assert store["kind"] == "kv" and store["prefix"] == namespace.prefix
    buckets = store["buckets"]
    p = namespace.prefix
    assert {name: b["messages"] for name, b in buckets.items()} == {
        f"{p}_users": 5,
        f"{p}_rooms": 2,
        f"{p}_members": 4,
        f"{p}_keys": 7,
        f"{p}_meta": 2,  # the schema record and the migration's last_verified_run
    }
    assert all(
        b["replicas"] == 1 and b["history"] == 1 and b["bytes"] > 0 for b in buckets.values()
    )


def test_text_table_shows_counts_sizes_epochs_and_digest(cli, tmp_path: Path) -> None:
    db = representative_db(tmp_path)
    result = json.loads(ok(cli("inspect", "--db", str(db), "--json")).stdout)
    lines = ok(cli("inspect", "--db", str(db))).stdout.splitlines()
    assert lines[0].startswith(f"store           SQLite {db} (")
    assert f"schema version  {result['schema_version']}" in lines
    assert f"digest          {result['digest']}" in lines
    for kind in KINDS:
        r = result["records"][kind]
        assert [kind, str(r["count"]), str(r["bytes"]), str(r["largest"])] in [
            line.split() for line in lines
        ]
    total = sum(r["count"] for r in result["records"].values())
    assert any(line.split()[:2] == ["total", str(total)] for line in lines)
    assert ["epoch", "2", "2"] in [line.split() for line in lines]  # both rooms at epoch 2
    assert lines[-1] == "findings        none"


def test_legacy_findings_are_listed_for_both_stores(cli, tmp_path: Path, namespace) -> None:
    db = representative_db(tmp_path)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO members VALUES ('ghost room', 'alice', 'member', 1)")
        conn.execute("INSERT INTO sealed_keys VALUES ('general', 9, 'alice', x'01')")
        conn.execute("INSERT INTO sealed_keys VALUES ('general', 2, 'carol', x'02')")
    conn.close()
    findings = [
        "members['ghost room', 'alice']: room 'ghost room' does not exist (orphan member)",
        "sealed_keys['general', 2, 'carol']: a key at the current epoch for a user who is "
        "not a member",
        "sealed_keys['general', 9, 'alice']: epoch 9 is above the room's epoch 2",
    ]
    before = file_digest(db)
    from_db = ok(cli("inspect", "--db", str(db), "--json"))
    assert json.loads(from_db.stdout)["findings"] == findings
    text = ok(cli("inspect", "--db", str(db))).stdout.splitlines()
    assert "findings        3 invariant violation(s)" in text
    assert text[-3:] == [f"  {line}" for line in findings]
    assert file_digest(db) == before

    migrate(cli, db, namespace)  # the migration carries them faithfully
    from_kv = json.loads(ok(cli("inspect", *kv_args(namespace), "--json")).stdout)
    assert from_kv["findings"] == findings
    assert from_kv["digest"] == json.loads(from_db.stdout)["digest"]


def test_many_epochs_are_grouped_in_the_table_but_exact_in_json(cli, tmp_path: Path) -> None:
    db = tmp_path / "epochs.db"

    async def build() -> None:
        store = SQLiteStore.open(db, create=True)
        try:
            await store.add_user("owner", b"\x01" * 32)
            for epoch in range(1, 15):  # room r<e> at epoch e, for 14 distinct epochs
                await store.create_room(f"r{epoch}", "owner")
                for _ in range(epoch - 1):
                    await store.rekey(f"r{epoch}")
        finally:
            await store.close()

    asyncio.run(build())
    result = json.loads(ok(cli("inspect", "--db", str(db), "--json")).stdout)
    assert result["room_epochs"] == [{"epoch": e, "rooms": 1} for e in range(1, 15)]
    rows = [line.split() for line in ok(cli("inspect", "--db", str(db))).stdout.splitlines()]
    assert [r for r in rows if r[:1] == ["epoch"]] == [
        ["epoch", "1", "1"],
        ["epoch", "2-3", "2"],
        ["epoch", "4-7", "4"],
        ["epoch", "8-15", "7"],
    ]


def test_empty_database(cli, sqlite_db: Path) -> None:
    export = ok(cli("export", "--db", str(sqlite_db))).stdout
    result = json.loads(ok(cli("inspect", "--db", str(sqlite_db), "--json")).stdout)
    assert {k: result[k] for k in ("digest", "records", "room_epochs")} == {
        k: expected_from_export(export)[k] for k in ("digest", "records", "room_epochs")
    }
    assert all(r == {"count": 0, "bytes": 0, "largest": 0} for r in result["records"].values())
    assert "room epochs     no rooms" in ok(cli("inspect", "--db", str(sqlite_db))).stdout


def test_password_in_the_url_never_appears(cli, tmp_path: Path, namespace) -> None:
    db = representative_db(tmp_path)
    migrate(cli, db, namespace)
    url = namespace.url.replace("nats://", "nats://auditor:hunter2-s3cret@")
    args = ["--nats-url", url, "--bucket-prefix", namespace.prefix]
    for p in (ok(cli("inspect", *args)), ok(cli("inspect", *args, "--json"))):
        assert "hunter2-s3cret" not in p.stdout + p.stderr
        assert "auditor:***@" in p.stdout


# -- refused and failed: one line, the documented exit code, nothing touched ----------------


def test_missing_database_is_named_and_not_created(cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    assert "nope.db" in one_line_error(cli("inspect", "--db", str(missing)), 2, stdout_empty=True)
    assert not missing.exists()


def test_not_a_database_is_refused_untouched(cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(bytes(range(256)) * 40)
    before = file_digest(junk)
    assert "not a membership database" in one_line_error(
        cli("inspect", "--db", str(junk)), 2, stdout_empty=True
    )
    assert file_digest(junk) == before


@pytest.mark.parametrize(
    "args", [[], ["--db", "x.db", "--nats-url", "nats://127.0.0.1:4222"]], ids=["none", "both"]
)
def test_exactly_one_store_is_required(cli, args: list[str]) -> None:
    p = cli("inspect", *args)
    assert p.returncode == 2 and "exactly one of --db PATH or --nats-url URL" in p.stderr


def test_remote_url_without_ca_is_refused_before_connecting(cli) -> None:
    p = cli("inspect", "--nats-url", "nats://nats.example.invalid:4222", timeout=30)
    assert "--ca" in one_line_error(p, 2, stdout_empty=True)


def test_unreachable_server_is_exit_1_in_seconds(cli) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    assert url in one_line_error(
        cli("inspect", "--nats-url", url, timeout=30), 1, stdout_empty=True
    )


def test_namespace_without_data_is_exit_1_and_stays_empty(cli, namespace) -> None:
    line = one_line_error(cli("inspect", *kv_args(namespace)), 1, stdout_empty=True)
    assert f"no membership data under bucket prefix {namespace.prefix!r}" in line
    assert namespace.stream_seqs() == {}  # inspect created no bucket
