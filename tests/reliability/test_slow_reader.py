"""A reader the server cuts off never reports a partial read as the truth.

nats-server closes a client whose outbound buffer passes ``max_pending`` (a *slow
consumer*); nats-py then reconnects on its own, and whatever the server had queued for
the reader is gone while the consumer counts it as delivered. A bulk read that spans such
a reconnect once ended "successfully" with thousands of records missing, so ``verify``
reported records "only in SQLite" that KV held all along. Here the server is restarted
with a tiny ``max_pending`` under a bucket of 4 KiB values: every ``verify`` must either
tell the truth (equal) or fail at once with one clear line naming the lost connection,
never print a false difference and never stall until a timeout.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fixtures.plugin import Cli
from membership.embedded import EmbeddedServer
from tests.helpers import bulk_fill


def test_a_reader_cut_off_by_the_server_fails_loudly_never_falsely(
    sqlite_db: Path, cli: Cli, tmp_path: Path
) -> None:
    bulk_fill(sqlite_db, users=1500, rooms=10, epochs=2)
    conn = sqlite3.connect(sqlite_db)
    conn.execute("UPDATE sealed_keys SET sealed_key = randomblob(4096)")
    conn.commit()
    conn.close()
    store = tmp_path / "nats"
    with EmbeddedServer(store_dir=store) as server:
        first = cli(
            "migrate-to-kv",
            "--db",
            str(sqlite_db),
            "--nats-url",
            server.url,
            "--no-backup",
            timeout=120,
        )
        assert first.returncode == 0, first.stderr

    conf = tmp_path / "slow.conf"
    conf.write_text("max_payload: 65536\nmax_pending: 262144\n")  # far less than a pull
    outcomes = set()
    with EmbeddedServer(store_dir=store, extra_args=["-c", str(conf)]) as server:
        for _ in range(3):
            result = cli("verify", "--db", str(sqlite_db), "--nats-url", server.url, timeout=120)
            if result.returncode == 0:
                assert "are equal" in result.stdout
                outcomes.add("equal")
            else:
                assert result.returncode == 1
                assert "difference" not in result.stdout, result.stdout[:500]
                line = result.stderr.strip()
                assert "\n" not in line and "rerun" in line, line
                assert "connection to the server was lost" in line, line  # not a 15 s stall
                outcomes.add("failed loudly")
    assert outcomes
