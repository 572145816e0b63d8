"""The three stores against the same scenarios: same results, same errors, same snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest

from membership.canonical import snapshot_bytes
from membership.demo import build_representative_state, demo_key
from membership.errors import (
    AlreadyExistsError,
    InvalidInputError,
    NotFoundError,
    RevokedUserError,
)
from membership.memory import MemoryStore
from membership.model import Member, Revocation, Room, SealedKeyRecord, User
from tests.helpers import STORE_KINDS, counting_clock, open_any_store, outcome

PK = {name: demo_key(f"pk/{name}", 32) for name in ("alice", "bob", "carol", "dave")}


async def scenario(store) -> list:
    """Every operation, including refusals, with results recorded in order."""
    steps = [
        store.add_user("alice", PK["alice"]),
        store.add_user("bob", PK["bob"]),
        store.add_user("carol", PK["carol"]),
        store.add_user("alice", PK["alice"]),  # duplicate
        store.add_user("", PK["dave"]),  # empty id
        store.add_user("dave", b"short"),  # bad key length
        store.create_room("ops.* >", "alice"),
        store.create_room("ops.* >", "bob"),  # duplicate room
        store.create_room("lonely", "nobody"),  # missing owner
        store.add_member("ops.* >", "bob"),
        store.add_member("ops.* >", "bob"),  # duplicate member
        store.add_member("no-room", "bob"),
        store.add_member("ops.* >", "ghost"),
        store.put_sealed_key("ops.* >", "bob", b"\x01" * 40),
        store.put_sealed_key("ops.* >", "bob", b"\x02" * 40),  # exists at this epoch
        store.put_sealed_key("ops.* >", "carol", b"\x03" * 40),  # not a member
        store.put_sealed_key("ops.* >", "alice", b""),  # empty sealed key
        store.rekey("ops.* >"),
        store.put_sealed_key("ops.* >", "bob", b"\x04" * 40),
        store.add_member("ops.* >", "carol"),
        store.remove_member("ops.* >", "carol"),
        store.remove_member("ops.* >", "carol"),  # no longer a member
        store.revoke_user("bob"),
        store.revoke_user("bob"),  # already revoked: no-op
        store.revoke_user("nobody"),
        store.add_member("ops.* >", "bob"),  # revoked
        store.create_room("bob's", "bob"),  # revoked owner
        store.get_sealed_key("ops.* >", "bob", 1),
        store.get_sealed_key("ops.* >", "bob"),  # current epoch: none
        store.get_sealed_key("nowhere", "bob"),
        store.get_user("bob"),
        store.get_user("nobody"),
        store.get_room("ops.* >"),
        store.list_users(),
        store.list_rooms(),
        store.list_members(),
        store.list_members("ops.* >"),
        store.list_sealed_keys(),
        store.list_sealed_keys("ops.* >"),
    ]
    return [await outcome(step) for step in steps]


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_scenario_matches_the_reference_model(kind: str, tmp_path: Path, namespace) -> None:
    expected = await scenario(MemoryStore(clock=counting_clock()))
    async with open_any_store(kind, tmp_path, namespace) as store:
        got = await scenario(store)
        snapshot = await store.export_snapshot()
    reference = MemoryStore(clock=counting_clock())
    await scenario(reference)
    assert got == expected
    assert snapshot_bytes(snapshot) == snapshot_bytes(await reference.export_snapshot())


async def test_reference_model_results_are_the_documented_ones() -> None:
    """Pin the reference itself, so the stores are not merely equal to each other."""
    results = await scenario(MemoryStore(clock=counting_clock(1000)))
    kinds = [r[1][0] if r[0] == "error" else "ok" for r in results]
    assert kinds[:9] == [
        "ok",
        "ok",
        "ok",
        "AlreadyExistsError",
        "InvalidInputError",
        "InvalidInputError",
        "ok",
        "AlreadyExistsError",
        "NotFoundError",
    ]
    assert kinds[9:17] == [
        "ok",
        "AlreadyExistsError",
        "NotFoundError",
        "NotFoundError",
        "ok",
        "AlreadyExistsError",
        "NotFoundError",
        "InvalidInputError",
    ]
    assert results[17] == ("ok", Room("ops.* >", 2, 1003))  # rekey: epoch 1 -> 2
    assert results[18] == ("ok", SealedKeyRecord("ops.* >", 2, "bob", b"\x04" * 40))
    assert results[19] == ("ok", Member("ops.* >", "carol", "member", 2))
    assert results[20] == ("ok", Room("ops.* >", 3, 1003))  # remove bumps
    assert kinds[21] == "NotFoundError"
    # revoke: bob revoked and removed from its room, which moves to epoch 4
    assert results[22] == (
        "ok",
        Revocation(User("bob", PK["bob"], "revoked", 1001), (Room("ops.* >", 4, 1003),), True),
    )
    assert results[23] == ("ok", Revocation(User("bob", PK["bob"], "revoked", 1001), (), False))
    assert kinds[24:27] == ["NotFoundError", "RevokedUserError", "RevokedUserError"]
    assert results[27] == ("ok", SealedKeyRecord("ops.* >", 1, "bob", b"\x01" * 40))
    assert results[28] == ("ok", None) and results[29] == ("ok", None)
    assert results[31] == ("ok", None)
    # history stays: both of bob's keys survive his revocation
    assert [k.epoch for k in results[37][1] if k.user_id == "bob"] == [1, 2]
    assert [m.user_id for m in results[35][1]] == ["alice"]


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_representative_state_is_identical_on_every_store(
    kind: str, tmp_path: Path, namespace
) -> None:
    reference = MemoryStore()
    await build_representative_state(reference)
    async with open_any_store(kind, tmp_path, namespace) as store:
        await build_representative_state(store)
        snapshot = await store.export_snapshot()
    assert snapshot == await reference.export_snapshot()
    rooms = {r.id: r.epoch for r in snapshot.rooms}
    assert rooms == {"general": 2, "ops.team ü": 2}
    assert {u.id: u.status for u in snapshot.users}["carol"] == "revoked"


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_a_refused_operation_writes_nothing(kind: str, tmp_path: Path, namespace) -> None:
    async with open_any_store(kind, tmp_path, namespace) as store:
        await build_representative_state(store)
        before = await store.export_snapshot()
        for call, error in (
            (store.add_member("general", "carol"), RevokedUserError),
            (store.add_member("nope", "bob"), NotFoundError),
            (store.create_room("general", "alice"), AlreadyExistsError),
            (store.put_sealed_key("general", "carol", b"k"), RevokedUserError),
            (store.add_user("x" * 129, PK["dave"]), InvalidInputError),
            (store.rekey("nope"), NotFoundError),
        ):
            with pytest.raises(error):
                await call
        assert await store.export_snapshot() == before


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_ids_from_the_whole_domain_survive(kind: str, tmp_path: Path, namespace) -> None:
    ids = [
        "a.b",
        "sp ace",
        "*",
        ">",
        "a/b",
        "=3D",
        "Case",
        "case",
        "ünï",
        "🔑",
        "_kv",
        "-x",
        "é" * 64,
        "\x00nul",
        "tab\there",
    ]
    async with open_any_store(kind, tmp_path, namespace) as store:
        for i, user_id in enumerate(ids):
            await store.add_user(user_id, PK["alice"], created_at=i)
        assert [u.id for u in await store.list_users()] == sorted(ids)
        for user_id in ids:
            found = await store.get_user(user_id)
            assert found is not None and found.id == user_id
