"""Ids to KV key tokens: reversible, injective, and always a valid NATS KV key."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from membership.errors import DataError
from membership.keycodec import (
    decode_id,
    encode_id,
    member_key,
    parse_member_key,
    parse_sealed_key_key,
    sealed_key_key,
)

# NATS KV keys (ADR-8, nats.py VALID_KEY_RE), plus: no leading/trailing dot, no "_kv" start
KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")

ids = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda s: len(s.encode()) <= 128
)


def valid_kv_key(key: str) -> bool:
    return (
        KV_KEY.fullmatch(key) is not None
        and not key.startswith(".")
        and not key.endswith(".")
        and not key.startswith("_kv")
    )


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("alice", "alice"),
        ("a.b", "a=2Eb"),
        ("a b", "a=20b"),
        ("*", "=2A"),
        (">", "=3E"),
        ("=", "=3D"),
        ("/", "=2F"),
        ("ü", "=C3=BC"),
        ("_kv", "=5Fkv"),
        ("a_b-c", "a_b-c"),
    ],
)
def test_documented_examples(value: str, token: str) -> None:
    assert encode_id(value) == token
    assert decode_id(token) == value


@given(ids)
def test_round_trip_and_valid_key(value: str) -> None:
    token = encode_id(value)
    assert decode_id(token) == value
    assert valid_kv_key(token)
    assert "." not in token


@given(ids, ids)
def test_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_id(a) != encode_id(b)


@given(ids, st.integers(1, 2**63 - 1), ids)
def test_composite_keys_round_trip(room: str, epoch: int, user: str) -> None:
    assert parse_member_key(member_key(room, user)) == (room, user)
    key = sealed_key_key(room, epoch, user)
    assert valid_kv_key(key)
    assert parse_sealed_key_key(key) == (room, epoch, user)


@pytest.mark.parametrize(
    "token", ["", "a.b", "=2e", "=41", "_x", "=C3", "=ZZ", "a=", "==", "x" * 129, "=FF"]
)
def test_non_canonical_or_invalid_tokens_are_refused(token: str) -> None:
    with pytest.raises(DataError):
        decode_id(token)


@given(st.text(max_size=30))
def test_decoding_arbitrary_text_never_crashes(token: str) -> None:
    try:
        value = decode_id(token)
    except DataError:
        return
    assert encode_id(value) == token
