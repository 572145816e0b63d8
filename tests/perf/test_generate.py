"""`python -m harness.generate`: a large, valid control plane, the same for the same seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.generate import Shape, generate
from membership.audit import invariant_findings
from membership.canonical import snapshot_digest
from membership.sqlite import SQLiteStore
from tests.property.support import run

ROOT = Path(__file__).resolve().parents[2]
SHAPE = Shape(users=300, rooms=120, members_per_room=6, epochs=4, seed=7)


def snapshot(db: Path):
    store = SQLiteStore.open(db)
    try:
        return run(store.export_snapshot())
    finally:
        run(store.close())


def test_the_same_seed_gives_the_same_state_and_another_seed_another(tmp_path: Path) -> None:
    generate(tmp_path / "a.db", SHAPE)
    generate(tmp_path / "b.db", SHAPE)
    generate(tmp_path / "c.db", Shape(**{**SHAPE.__dict__, "seed": 8}))
    a, b, c = (snapshot(tmp_path / f"{n}.db") for n in "abc")
    assert snapshot_digest(a) == snapshot_digest(b) != snapshot_digest(c)
    assert (
        a.counts()
        == c.counts()
        == SHAPE.counts
        == {
            "users": 300,
            "rooms": 120,
            "members": 720,
            "sealed_keys": 2880,
        }
    )


def test_the_state_is_valid_and_looks_like_a_real_one(tmp_path: Path) -> None:
    generate(tmp_path / "g.db", SHAPE)
    state = snapshot(tmp_path / "g.db")
    assert invariant_findings(state) == []  # the API could have produced it
    assert all(r.epoch == SHAPE.epochs for r in state.rooms)
    joined = {m.joined_epoch for m in state.members}
    assert joined == set(range(1, SHAPE.epochs + 1))  # members came and went
    assert {m.role for m in state.members} == {"owner", "member"}
    assert sum(m.role == "owner" for m in state.members) == SHAPE.rooms
    assert {u.status for u in state.users} == {"active", "revoked"}
    assert any(not u.id.isascii() and "." in u.id for u in state.users)  # encoded keys
    assert {len(k.sealed_key) for k in state.sealed_keys} == {80}


def test_the_command_line_writes_a_new_file_only(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    args = [
        sys.executable,
        "-m",
        "harness.generate",
        "--db",
        str(db),
        "--users",
        "50",
        "--rooms",
        "10",
        "--members-per-room",
        "5",
        "--epochs",
        "3",
        "--json",
    ]
    made = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["records"] == {
        "users": 50,
        "rooms": 10,
        "members": 50,
        "sealed_keys": 150,
    }
    before = db.read_bytes()
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr
    assert db.read_bytes() == before
    small = subprocess.run(
        [*args[:-1], "--users", "3"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert small.returncode == 2 and "--users must be at least" in small.stderr
