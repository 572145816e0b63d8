"""The CLI as a subprocess, the way a user runs it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from membership.embedded import free_port
from tests.helpers import ok, one_line_error

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def db(cli, tmp_path: Path) -> Path:
    path = tmp_path / "control.db"
    ok(cli("user", "add", "--db", str(path), "alice", "--public-key", A))
    ok(cli("user", "add", "--db", str(path), "bob", "--public-key", B))
    ok(cli("room", "create", "--db", str(path), "ops.team", "--owner", "alice"))
    ok(cli("room", "add-member", "--db", str(path), "ops.team", "bob"))
    ok(cli("keys", "put", "--db", str(path), "ops.team", "bob", "--sealed-key", "0102"))
    ok(cli("room", "rekey", "--db", str(path), "ops.team"))
    return path


def test_binary_smoke_migrate_rerun_verify(cli, db: Path, namespace) -> None:
    url, prefix = namespace.url, namespace.prefix
    first = json.loads(
        ok(
            cli(
                "migrate-to-kv",
                "--db",
                str(db),
                "--nats-url",
                url,
                "--bucket-prefix",
                prefix,
                "--json",
            )
        ).stdout
    )
    assert first["verified"] is True and Path(first["backup"]).exists()
    assert {k: v["written"] for k, v in first["records"].items()} == {
        "users": 2,
        "rooms": 1,
        "members": 2,
        "sealed_keys": 1,
    }
    seqs = namespace.stream_seqs()
    second = json.loads(
        ok(
            cli(
                "migrate-to-kv",
                "--db",
                str(db),
                "--nats-url",
                url,
                "--bucket-prefix",
                prefix,
                "--json",
                "--no-backup",
            )
        ).stdout
    )
    assert sum(v["written"] for v in second["records"].values()) == 0
    assert second["backup"] is None and second["digest"] == first["digest"]
    assert namespace.stream_seqs() == seqs
    verify = ok(cli("verify", "--db", str(db), "--nats-url", url, "--bucket-prefix", prefix))
    assert "equal" in verify.stdout
    from_sqlite = ok(cli("export", "--db", str(db))).stdout
    from_kv = ok(cli("export", "--nats-url", url, "--bucket-prefix", prefix)).stdout
    assert from_sqlite == from_kv
    assert "sha256:" + hashlib.sha256(from_kv.encode()).hexdigest() == first["digest"]


def test_text_report_names_counts_and_digest(cli, db: Path, namespace) -> None:
    out = ok(
        cli(
            "migrate-to-kv",
            "--db",
            str(db),
            "--nats-url",
            namespace.url,
            "--bucket-prefix",
            namespace.prefix,
            "--no-backup",
        )
    ).stdout
    assert "verified: yes" in out and "digest: sha256:" in out
    assert any(line.split()[:2] == ["sealed_keys", "1"] for line in out.splitlines())


def test_verify_prints_a_readable_diff(cli, db: Path, namespace) -> None:
    url, prefix = namespace.url, namespace.prefix
    ok(
        cli(
            "migrate-to-kv",
            "--db",
            str(db),
            "--nats-url",
            url,
            "--bucket-prefix",
            prefix,
            "--no-backup",
        )
    )
    ok(cli("room", "rekey", "--db", str(db), "ops.team"))
    diff = cli("verify", "--db", str(db), "--nats-url", url, "--bucket-prefix", prefix)
    assert diff.returncode == 1
    assert "rooms['ops.team'].epoch: SQLite 3, KV 2" in diff.stdout
    as_json = cli("verify", "--db", str(db), "--nats-url", url, "--bucket-prefix", prefix, "--json")
    assert json.loads(as_json.stdout)["differences"] == ["rooms['ops.team'].epoch: SQLite 3, KV 2"]


def test_store_commands_read_back_as_json(cli, db: Path) -> None:
    users = json.loads(ok(cli("user", "list", "--db", str(db), "--json")).stdout)
    assert [u["id"] for u in users] == ["alice", "bob"]
    show = json.loads(ok(cli("room", "show", "--db", str(db), "ops.team", "--json")).stdout)
    assert show["room"]["epoch"] == 2 and [m["user_id"] for m in show["members"]] == [
        "alice",
        "bob",
    ]
    rooms = json.loads(ok(cli("room", "list", "--db", str(db), "--json")).stdout)
    assert rooms == [show["room"]]
    key = ok(cli("keys", "get", "--db", str(db), "ops.team", "bob", "--epoch", "1")).stdout
    assert key.strip() == "0102"
    missing = cli("keys", "get", "--db", str(db), "ops.team", "bob")  # epoch 2: none yet
    assert "epoch 2" in one_line_error(missing, 1)


def test_ids_starting_with_a_dash_go_after_double_dash(cli, db: Path) -> None:
    ok(cli("user", "add", "--db", str(db), "--public-key", C, "--", "-dash"))
    users = json.loads(ok(cli("user", "list", "--db", str(db), "--json")).stdout)
    assert "-dash" in [u["id"] for u in users]


def test_python_dash_m_is_membershipd() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "membership", "--help"], capture_output=True, text=True
    )
    assert p.returncode == 0 and "migrate-to-kv" in p.stdout


def _leaf_commands() -> list[list[str]]:
    """Every command of the installed CLI, found by walking its click tree (so a new
    command cannot be forgotten here)."""
    import click

    from membership.cli import cli as root

    out: list[list[str]] = []
    ctx = click.Context(root)

    def walk(group: click.Group, path: list[str]) -> None:
        for name in group.list_commands(ctx):  # the lazily imported commands too
            command = group.get_command(ctx, name)
            assert command is not None, name
            if isinstance(command, click.Group):
                walk(command, [*path, name])
            else:
                out.append([*path, name])

    walk(root, [])
    return out


COMMANDS = _leaf_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(cli, command: list[str]) -> None:
    out = ok(cli(*command, "--help")).stdout
    assert "Example:" in out and "membershipd " + " ".join(command) in out


# -- bad input: one clear line, the documented exit code, every store unchanged -------------


def test_missing_database_is_named_and_not_created(cli, tmp_path: Path) -> None:
    for args in (["export"], ["user", "list"], ["room", "rekey", "r"]):
        p = cli(*args, "--db", str(tmp_path / "nope.db"))
        assert "nope.db" in one_line_error(p, 2)
    assert not (tmp_path / "nope.db").exists()


def test_not_a_database_file_is_refused_untouched(cli, tmp_path: Path, namespace) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(bytes(range(256)) * 40)
    before = file_digest(junk)
    for args in (
        ["export", "--db", str(junk)],
        ["user", "add", "--db", str(junk), "x", "--public-key", A],
        [
            "migrate-to-kv",
            "--db",
            str(junk),
            "--nats-url",
            namespace.url,
            "--bucket-prefix",
            namespace.prefix,
        ],
    ):
        assert "not a membership database" in one_line_error(cli(*args), 2)
    assert file_digest(junk) == before
    assert namespace.stream_seqs() == {}


def test_unknown_schema_version_is_refused_untouched(cli, db: Path, namespace) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 42")
    conn.close()
    before = file_digest(db)
    p = cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        namespace.url,
        "--bucket-prefix",
        namespace.prefix,
    )
    assert "schema version 42" in one_line_error(p, 2)
    assert "schema version 42" in one_line_error(
        cli("room", "rekey", "--db", str(db), "ops.team"), 2
    )
    assert file_digest(db) == before
    assert namespace.stream_seqs() == {}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4222", "nats://127.0.0.1:notaport", "nats//127.0.0.1", "nats://"]
)
def test_malformed_url_is_refused(cli, db: Path, url: str) -> None:
    before = file_digest(db)
    p = cli("migrate-to-kv", "--db", str(db), "--nats-url", url)
    assert "--nats-url" in one_line_error(p, 2)
    assert file_digest(db) == before
    assert not [f for f in db.parent.iterdir() if "backup" in f.name]


def test_unreachable_server_is_exit_1_in_seconds_without_backup(cli, db: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    before = file_digest(db)
    p = cli("migrate-to-kv", "--db", str(db), "--nats-url", url, timeout=30)
    assert url in one_line_error(p, 1)
    assert file_digest(db) == before
    assert not [f for f in db.parent.iterdir() if "backup" in f.name]


def test_remote_url_without_ca_is_refused_by_every_kv_command(cli, db: Path) -> None:
    url = "nats://nats.example.invalid:4222"
    for args in (
        ["migrate-to-kv", "--db", str(db)],
        ["verify", "--db", str(db)],
        ["export"],
        ["user", "list"],
        ["user", "add", "x", "--public-key", A],
        ["room", "rekey", "r"],
    ):
        assert "--ca" in one_line_error(cli(*args, "--nats-url", url, timeout=30), 2)


def test_existing_backup_path_is_refused(cli, db: Path, namespace) -> None:
    taken = db.parent / "taken.bak"
    taken.write_bytes(b"keep me")
    p = cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        namespace.url,
        "--bucket-prefix",
        namespace.prefix,
        "--backup-path",
        str(taken),
    )
    assert "taken.bak" in one_line_error(p, 2)
    assert taken.read_bytes() == b"keep me" and namespace.stream_seqs() == {}


def test_invalid_bucket_prefix_is_refused(cli, db: Path, namespace) -> None:
    p = cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        namespace.url,
        "--bucket-prefix",
        "bad.prefix",
    )
    assert "--bucket-prefix" in one_line_error(p, 2)


def test_bad_hex_is_a_usage_error(cli, db: Path) -> None:
    p = cli("keys", "put", "--db", str(db), "ops.team", "bob", "--sealed-key", "xyz")
    assert p.returncode == 2 and "hex" in p.stderr


def test_demo_runs_and_reports_json(cli, tmp_path: Path) -> None:
    out = json.loads(ok(cli("demo", "--json", "--keep", str(tmp_path / "run"))).stdout)
    assert out["ok"] is True
    assert out["first_run"]["verified"] is True
    assert sum(v["written"] for v in out["second_run"]["records"].values()) == 0
    assert (tmp_path / "run" / "control.db").exists()
