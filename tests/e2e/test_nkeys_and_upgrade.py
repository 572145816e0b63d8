"""Schema v2 on the command line: NATS identities (nkeys) and `membershipd upgrade`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from pathlib import Path

from harness.strategies import write_sqlite
from membership.memory import MemoryStore
from membership.nkey import generate_user_keypair, read_seed_file
from membership.sqlite import SQLiteStore
from tests.e2e.test_cli import A, B, file_digest, ok, one_line_error
from tests.property.support import run


def test_nkey_generate_writes_a_private_seed_and_prints_only_the_public_key(
    cli, tmp_path: Path
) -> None:
    seed_file = tmp_path / "alice.seed"
    out = ok(cli("nkey", "generate", "--seed-file", str(seed_file))).stdout.strip()
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    pair = read_seed_file(seed_file)
    assert out == pair.public and out.startswith("U") and len(out) == 56
    assert pair.seed.decode() not in out  # the seed never reaches stdout
    again = cli("nkey", "generate", "--seed-file", str(seed_file))
    assert "never overwritten" in one_line_error(again, 2)
    assert read_seed_file(seed_file).public == pair.public  # the old seed is still there


def test_user_add_with_nkey_set_change_and_clear(cli, tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    first, second = generate_user_keypair(), generate_user_keypair()
    ok(cli("user", "add", "--db", str(db), "alice", "--public-key", A, "--nkey", first.public))
    listed = json.loads(ok(cli("user", "list", "--db", str(db), "--json")).stdout)
    assert [u["nkey"] for u in listed] == [first.public]
    assert ok(cli("user", "list", "--db", str(db))).stdout.rstrip().endswith(first.public)

    ok(cli("user", "add", "--db", str(db), "bob", "--public-key", B))
    taken = cli("user", "set-nkey", "--db", str(db), "bob", first.public)
    assert "already the NATS identity of user 'alice'" in one_line_error(taken, 2)
    ok(cli("user", "set-nkey", "--db", str(db), "bob", second.public))
    ok(cli("user", "set-nkey", "--db", str(db), "alice", "--clear"))
    listed = json.loads(ok(cli("user", "list", "--db", str(db), "--json")).stdout)
    assert {u["id"]: u["nkey"] for u in listed} == {"alice": None, "bob": second.public}

    ok(cli("user", "revoke", "--db", str(db), "alice"))
    revoked = cli("user", "set-nkey", "--db", str(db), "alice", first.public)
    assert "revoked" in one_line_error(revoked, 2)
    ok(cli("user", "set-nkey", "--db", str(db), "bob", "--clear"))  # clearing works always


def test_a_bad_nkey_or_a_seed_is_refused_in_one_line_that_never_shows_the_seed(
    cli, tmp_path: Path
) -> None:
    db = tmp_path / "control.db"
    ok(cli("user", "add", "--db", str(db), "alice", "--public-key", A))
    before = file_digest(db)
    pair = generate_user_keypair()
    seed = pair.seed.decode()
    typo = pair.public[:-1] + ("A" if pair.public[-1] != "A" else "B")
    cases = {
        "checksum": typo,
        "not an nkey": "hello",
        "seed": seed,
    }
    for what, value in cases.items():
        p = cli("user", "set-nkey", "--db", str(db), "alice", value)
        line = one_line_error(p, 2)
        assert seed not in p.stderr + p.stdout, what
        assert "nkey" in line, (what, line)
    p = cli("user", "add", "--db", str(db), "bob", "--public-key", B, "--nkey", seed)
    assert "seed" in one_line_error(p, 2) and seed not in p.stderr
    assert file_digest(db) == before  # nothing was written
    both = cli("user", "set-nkey", "--db", str(db), "alice", pair.public, "--clear")
    assert both.returncode == 2 and "exactly one of NKEY or --clear" in both.stderr


def _v1_file(path: Path) -> Path:
    async def state():
        store = MemoryStore()
        await store.add_user("alice", bytes(32))
        await store.add_user("d.o.t ü", b"\x01" * 32)
        await store.create_room("ops.team", "alice")
        await store.put_sealed_key("ops.team", "alice", b"\x05" * 40)
        return await store.export_snapshot()

    return write_sqlite(run(state()), path, schema_version=1)


def test_upgrade_db_backs_up_then_upgrades_and_a_second_run_is_a_no_op(cli, tmp_path: Path) -> None:
    db = _v1_file(tmp_path / "old.db")
    before_export = ok(cli("export", "--db", str(db))).stdout
    digest = file_digest(db)
    refused = cli("user", "add", "--db", str(db), "bob", "--public-key", B)
    assert "membershipd upgrade --db" in one_line_error(refused, 2)
    assert file_digest(db) == digest
    shown = ok(cli("inspect", "--db", str(db))).stdout
    assert "schema version  1 (reads as 2" in shown

    report = json.loads(ok(cli("upgrade", "--db", str(db), "--json")).stdout)
    assert (report["from_version"], report["to_version"]) == (1, 2)
    backup = Path(report["backup"])
    assert hashlib.sha256(backup.read_bytes()).hexdigest() != ""  # exists, readable
    conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    assert ok(cli("export", "--db", str(db))).stdout == before_export
    assert ok(cli("export", "--db", str(backup))).stdout == before_export
    ok(cli("user", "add", "--db", str(db), "bob", "--public-key", B))  # writable now

    again = ok(cli("upgrade", "--db", str(db)))
    assert "already at schema version 2" in again.stdout
    assert SQLiteStore.open(db).schema_version == 2


def test_upgrade_refuses_an_existing_backup_path_and_changes_nothing(cli, tmp_path: Path) -> None:
    db = _v1_file(tmp_path / "old.db")
    taken = tmp_path / "taken.backup"
    taken.write_bytes(b"precious")
    digest = file_digest(db)
    p = cli("upgrade", "--db", str(db), "--backup-path", str(taken))
    assert "never overwritten" in one_line_error(p, 2)
    assert file_digest(db) == digest and taken.read_bytes() == b"precious"


def test_migrate_a_v1_file_then_upgrade_it_and_both_verify(cli, tmp_path: Path, namespace) -> None:
    db = _v1_file(tmp_path / "old.db")
    digest = file_digest(db)
    kv = ["--nats-url", namespace.url, "--bucket-prefix", namespace.prefix]
    first = json.loads(
        ok(cli("migrate-to-kv", "--db", str(db), *kv, "--no-backup", "--json")).stdout
    )
    assert first["verified"] is True
    assert file_digest(db) == digest  # the v1 source is read as it is
    ok(cli("upgrade", "--db", str(db), "--no-backup"))
    assert "equal" in ok(cli("verify", "--db", str(db), *kv)).stdout
    again = json.loads(
        ok(cli("migrate-to-kv", "--db", str(db), *kv, "--no-backup", "--json")).stdout
    )
    assert sum(c["written"] for c in again["records"].values()) == 0
    assert json.loads(ok(cli("upgrade", *kv, "--json")).stdout)["rewritten"] == 0
