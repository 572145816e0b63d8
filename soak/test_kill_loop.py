"""The kill loop: ``tox -e soak`` (bounded by ``SOAK_SECONDS``, default 120).

Kills ``membershipd migrate-to-kv`` with SIGKILL at random moments (in about a third of the
rounds, while its backup is half written), over and over, into the same namespace, each
time while the previous killed runs have left whatever they left, and checks after every
kill what ``tests/reliability/test_crash_and_server_loss.py`` checks once per phase: the
source is byte-for-byte unchanged, nothing named like a backup is a half file, and a
``--no-backup`` re-run converges to parity and removes the half backups the killed runs
left. Not in the default ``tox`` run (it is long by design); the moments are drawn from
``SOAK_SEED`` so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from fixtures.plugin import Cli
from membership.embedded import EmbeddedServer
from tests.reliability.test_crash_and_server_loss import (
    file_hash,
    finished_backups,
    partial_backups,
    poll,
    start_migration,
)


def backing_up(proc: subprocess.Popen[str], directory: Path) -> Callable[[], bool]:
    """True once ``proc`` has its own backup half written (or has ended)."""
    mine = f".{proc.pid}.partial"
    return lambda: (
        proc.poll() is not None or any(p.name.endswith(mine) for p in partial_backups(directory))
    )


def test_kill_loop_converges_every_time(
    big_db: Path, server: EmbeddedServer, cli: Cli, tmp_path: Path
) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "120"))
    rng = random.Random(int(os.environ.get("SOAK_SEED", "0")))
    before = file_hash(big_db)
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        proc = start_migration(big_db, server.url, tmp_path)
        at_backup = rng.random() < 0.3
        try:
            if at_backup:  # while its backup is half written: what the next run must remove
                poll(backing_up(proc, big_db.parent), 120, "the backup")
            else:
                proc.wait(timeout=rng.uniform(0.05, 3.0))  # a random moment, or its natural end
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert file_hash(big_db) == before, f"round {rounds}: the source changed"
        for backup in finished_backups(big_db.parent):
            check = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok", backup
            check.close()
            backup.unlink()  # keep the disk bounded over many rounds
        if rounds % 3 == 0:  # every third round: a full re-run and an independent verify
            rerun = cli("migrate-to-kv", "--db", str(big_db), "--nats-url", server.url,
                        "--bucket-prefix", "crash", "--no-backup", "--json", timeout=300)  # fmt: skip
            assert rerun.returncode == 0, f"round {rounds}: {rerun.stderr}"
            assert json.loads(rerun.stdout)["verified"] is True
            left = partial_backups(big_db.parent)
            assert not left, f"round {rounds}: a --no-backup re-run left {left}"
            verify = cli("verify", "--db", str(big_db), "--nats-url", server.url,
                         "--bucket-prefix", "crash")  # fmt: skip
            assert verify.returncode == 0, f"round {rounds}: {verify.stdout[:2000]}"
    print(f"soak: {rounds} rounds in {seconds:g} s, every one converged")
