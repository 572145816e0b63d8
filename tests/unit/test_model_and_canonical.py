"""The record domains and the canonical JSON every comparison relies on."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from membership.canonical import (
    KINDS,
    decode_record,
    decode_snapshot,
    dumps,
    encode_record,
    snapshot_bytes,
    snapshot_digest,
    snapshot_to_dict,
)
from membership.errors import DataError, InvalidInputError
from membership.model import Member, Room, SealedKeyRecord, Snapshot, User, validate_id

ALICE = User("alice", b"\x11" * 32, "active", 1)


@pytest.mark.parametrize("bad", ["", "x" * 129, "é" * 65, "\ud800", 7, None], ids=repr)
def test_ids_outside_the_domain_are_refused(bad) -> None:
    with pytest.raises(InvalidInputError):
        validate_id(bad)


@pytest.mark.parametrize("good", ["x", "x" * 128, "é" * 64, "a.b c*>/=", "🔑", "\x00"])
def test_ids_inside_the_domain_are_kept(good: str) -> None:
    assert validate_id(good) == good


@pytest.mark.parametrize(
    "make",
    [
        lambda: User("a", b"\x00" * 31, "active", 0),
        lambda: User("a", b"\x00" * 32, "gone", 0),
        lambda: User("a", b"\x00" * 32, "active", -1),
        lambda: Room("r", 0, 0),
        lambda: Room("r", True, 0),
        lambda: Member("r", "u", "admin", 1),
        lambda: SealedKeyRecord("r", 1, "u", b""),
        lambda: SealedKeyRecord("r", 1, "u", b"\x00" * 4097),
    ],
)
def test_records_refuse_fields_outside_their_domain(make) -> None:
    with pytest.raises(InvalidInputError):
        make()


def test_canonical_json_is_sorted_compact_utf8_base64() -> None:
    user = User("ünï", b"\xff" * 32, "revoked", 1764547200000)
    text = encode_record(user).decode("utf-8")
    assert text == (
        '{"created_at":1764547200000,"id":"ünï","nkey":null,'
        '"public_key":"//////////////////////////////////////////8=","status":"revoked"}'
    )


def test_snapshot_sorts_by_primary_key_in_code_point_order() -> None:
    users = [User(i, b"\x00" * 32, "active", 0) for i in ("b", "a", "Z", "é", "ab")]
    keys = [SealedKeyRecord("r", e, "u", b"k") for e in (10, 2, 1)]
    snap = Snapshot(users=tuple(users), sealed_keys=tuple(keys))
    assert [u.id for u in snap.users] == ["Z", "a", "ab", "b", "é"]
    assert [k.epoch for k in snap.sealed_keys] == [1, 2, 10]  # numerically, not as text


def test_export_bytes_are_the_canonical_dump_plus_one_newline() -> None:
    snap = Snapshot(
        users=(ALICE,),
        rooms=(Room("r", 3, 5),),
        members=(Member("r", "alice", "owner", 1),),
        sealed_keys=(SealedKeyRecord("r", 3, "alice", b"\x01\x02"),),
    )
    data = snapshot_bytes(snap)
    assert data == (dumps(snapshot_to_dict(snap)) + "\n").encode("utf-8")
    assert data.count(b"\n") == 1 and data.endswith(b"}\n")
    assert list(json.loads(data)) == ["members", "rooms", "schema_version", "sealed_keys", "users"]
    assert snapshot_digest(snap) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert decode_snapshot(data) == snap


def test_digest_tells_different_snapshots_apart() -> None:
    a = Snapshot(rooms=(Room("r", 1, 0),))
    b = Snapshot(rooms=(Room("r", 2, 0),))
    assert snapshot_digest(a) != snapshot_digest(b)
    assert snapshot_digest(a) == snapshot_digest(Snapshot(rooms=(Room("r", 1, 0),)))


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"id":"a","epoch":1}',
        b'{"id":"a","epoch":"1","created_at":0}',
        b'{"id":"a","epoch":1,"created_at":0,"extra":1}',
        b'{"id":"","epoch":1,"created_at":0}',
        b'{"id":"a","epoch":true,"created_at":0}',
    ],
)
def test_decoding_garbage_is_a_data_error(raw: bytes) -> None:
    with pytest.raises(DataError):
        decode_record("rooms", raw)


def test_non_canonical_base64_is_refused() -> None:
    good = encode_record(ALICE).decode()
    unpadded = good.replace(
        '"ERERERERERERERERERERERERERERERERERERERERERE="',
        '"ERERERERERERERERERERERERERERERERERERERERERE"',
    )
    assert unpadded != good
    with pytest.raises(DataError):
        decode_record("users", unpadded.encode())


ids = st.text(min_size=1, max_size=40).filter(
    lambda s: 1 <= len(s.encode("utf-8", "surrogatepass")) <= 128
)
safe_ids = ids.filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))


@given(
    user_id=safe_ids,
    pk=st.binary(min_size=32, max_size=32),
    status=st.sampled_from(["active", "revoked"]),
    created=st.integers(0, 2**63 - 1),
)
def test_record_json_round_trip(user_id: str, pk: bytes, status: str, created: int) -> None:
    user = User(user_id, pk, status, created)  # type: ignore[arg-type]
    raw = encode_record(user)
    assert decode_record("users", raw) == user
    assert encode_record(decode_record("users", raw)) == raw


def test_kinds_are_the_four_record_kinds() -> None:
    assert KINDS == ("users", "rooms", "members", "sealed_keys")
