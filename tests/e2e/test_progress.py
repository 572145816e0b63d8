"""Progress of `migrate-to-kv` on stderr: a bar per phase on a terminal, a line per phase
otherwise, nothing with --quiet, never in --json stdout, never before a one-line error."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

from fixtures.plugin import membershipd_command
from tests.helpers import bulk_fill

PHASES = ["backup", "read", "write", "verify"]


def migrate(cli, db: Path, namespace, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        namespace.url,
        "--bucket-prefix",
        namespace.prefix,
        *extra,
    )


def phases(stderr: str) -> list[str]:
    return [line.split(":")[1].strip() for line in stderr.strip().splitlines()]


def test_one_line_per_phase_on_a_pipe_and_json_stays_alone_on_stdout(
    cli, sqlite_db: Path, namespace
) -> None:
    records = bulk_fill(sqlite_db, users=30, rooms=3)
    first = migrate(cli, sqlite_db, namespace, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)  # exactly one JSON document
    assert report["verified"] is True
    assert phases(first.stderr) == PHASES
    lines = first.stderr.splitlines()
    assert all(line.startswith("membershipd: ") and line.endswith(" s)") for line in lines)
    assert f"{records} writes" in lines[2] and f"{records} records of 4 bucket(s)" in lines[3]
    again = migrate(cli, sqlite_db, namespace, "--no-backup")
    assert again.returncode == 0 and phases(again.stderr) == ["read", "write", "verify"]
    assert "0 writes" in again.stderr


def test_quiet_prints_nothing_but_the_result(cli, sqlite_db: Path, namespace) -> None:
    bulk_fill(sqlite_db, users=5, rooms=1)
    quiet = migrate(cli, sqlite_db, namespace, "--quiet", "--json", "--no-backup")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["verified"] is True


def test_a_run_that_fails_after_its_phases_began_prints_one_line(
    cli, sqlite_db: Path, namespace
) -> None:
    bulk_fill(sqlite_db, users=5, rooms=1)
    assert migrate(cli, sqlite_db, namespace, "--no-backup").returncode == 0
    other = sqlite_db.with_name("other.db")
    assert cli("init", "--db", str(other)).returncode == 0
    bulk_fill(other, users=3, rooms=1, label="x")
    refused = migrate(cli, other, namespace)  # KV holds records this source lacks
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "--prune" in refused.stderr
    assert not [p for p in other.parent.iterdir() if ".backup-" in p.name]


def test_a_terminal_gets_a_bar_per_phase(cli, sqlite_db: Path, namespace) -> None:
    bulk_fill(sqlite_db, users=200, rooms=10, epochs=3)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                *membershipd_command(),
                "migrate-to-kv",
                "--db",
                str(sqlite_db),
                "--nats-url",
                namespace.url,
                "--bucket-prefix",
                namespace.prefix,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=cli.env,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            shown += chunk
        stdout, _ = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0
    assert json.loads(stdout)["verified"] is True  # the bar never reaches stdout
    text = shown.decode()
    assert "\r" in text and "[" in text and "]" in text and "%" in text
    finished = [line.split("\r")[-1] for line in text.splitlines() if ": " in line]
    assert [line.split(":")[0] for line in finished] == PHASES
