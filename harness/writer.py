"""A concurrent writer for reliability tests: ``python -m harness.writer``.

Adds users ``<label>-<n>`` to a SQLite control plane through the API, as fast as it can,
until a stop file appears (or ``--max`` writes). Every attempt is logged to ``--log``, one
line each, flushed at once: ``ok <id>`` or ``err <id> <ErrorClass>: <message>``. A test
can then prove that no write was silently lost: every ``ok`` id is in the store, and every
write that did not land says so.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from membership.errors import MembershipError
from membership.sqlite import SQLiteStore


async def write_until_stopped(db: Path, log: Path, stop: Path, label: str, limit: int) -> int:
    store = SQLiteStore.open(db)
    written = 0
    try:
        with log.open("a", buffering=1) as out:
            for n in range(limit):
                if stop.exists():
                    break
                user_id = f"{label}-{n:06}"
                try:
                    await store.add_user(user_id, n.to_bytes(32, "big"))
                except MembershipError as exc:
                    out.write(f"err {user_id} {type(exc).__name__}: {exc}\n")
                else:
                    out.write(f"ok {user_id}\n")
                    written += 1
    finally:
        await store.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.writer", description=__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--stop", type=Path, required=True, help="stop when this file exists")
    parser.add_argument("--label", default="w")
    parser.add_argument("--max", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    asyncio.run(write_until_stopped(args.db, args.log, args.stop, args.label, args.max))
    return 0


if __name__ == "__main__":
    sys.exit(main())
