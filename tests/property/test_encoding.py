"""Key encoding and canonical JSON over the whole id domain, the server included.

tests/unit/test_keycodec.py and test_model_and_canonical.py pin the documented examples,
single-record round trips and refusals of malformed tokens. These properties add: ids
from the harness's whole domain (128-byte ids, case twins, ``_kv``, control characters),
agreement with the README's encoding written independently, injectivity over whole sets
of ids, acceptance of every key by a real JetStream server, and the canonical round trip
of whole snapshots, every record kind, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import random

import nats.js.kv
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.plugin import NatsServer, fresh_namespace
from harness.golden import stream_keys
from harness.parity import reference_encode, reference_key
from harness.strategies import any_states, fit_id, ids
from membership.canonical import decode_snapshot, encode_record, snapshot_bytes, snapshot_digest
from membership.connect import connect_nats
from membership.keycodec import decode_id, encode_id
from membership.kv import key_of
from membership.model import MAX_ID_BYTES, Snapshot
from tests.property.support import KINDS, run, scaled


def valid_nats_kv_key(key: str) -> bool:
    """nats-py's own check, plus the rules it leaves to the server (ADR-8)."""
    return (
        nats.js.kv._is_key_valid(key)
        and not key.startswith(".")
        and not key.endswith(".")
        and not key.startswith("_kv")
    )


@given(value=ids())
def test_the_encoding_is_the_documented_one_and_a_valid_key(value: str) -> None:
    token = encode_id(value)
    assert token == reference_encode(value)
    assert decode_id(token) == value
    assert valid_nats_kv_key(token) and "." not in token
    assert len(token) <= 3 * MAX_ID_BYTES


@given(values=st.lists(ids(), unique=True, max_size=40))
def test_distinct_ids_get_distinct_keys_case_twins_included(values: list[str]) -> None:
    twins = {fit_id(v.swapcase()) for v in values} | {v.lower() for v in values}
    everything = sorted(set(values) | {t for t in twins if t})
    tokens = [encode_id(v) for v in everything]
    assert len(set(tokens)) == len(everything)


@given(state=any_states())
def test_every_record_key_is_the_documented_composite(state: Snapshot) -> None:
    keys = {kind: [key_of(r) for r in getattr(state, kind)] for kind in KINDS}
    for kind in KINDS:
        assert keys[kind] == [reference_key(r) for r in getattr(state, kind)]
        assert len(set(keys[kind])) == len(keys[kind])  # one key per primary key
        assert all(valid_nats_kv_key(k) for k in keys[kind])


@scaled(0.5)
@given(values=st.lists(ids(), unique=True, min_size=1, max_size=30))
def test_a_real_server_accepts_every_key_and_lists_it_back(
    nats_server: NatsServer, values: list[str]
) -> None:
    """``kv.put`` (the client's check) and the server (its own) accept every key."""

    async def body() -> None:
        async with fresh_namespace(nats_server) as ns:
            nc = await connect_nats(ns.target)
            try:
                bucket = f"{ns.prefix}_users"
                js = nc.jetstream()
                kv = await js.create_key_value(bucket=bucket)
                for value in values:
                    await kv.put(encode_id(value), value.encode())
                listed = await stream_keys(js, bucket)  # the server's own listing
                assert sorted(listed) == sorted(encode_id(v) for v in values)
                for key in listed:
                    assert (await kv.get(key)).value == decode_id(key).encode()
            finally:
                await nc.close()

    run(body())


@given(state=any_states(), seed=st.integers(0, 2**32))
def test_canonical_export_round_trips_byte_for_byte(state: Snapshot, seed: int) -> None:
    data = snapshot_bytes(state)
    assert decode_snapshot(data) == state
    assert snapshot_bytes(decode_snapshot(data)) == data
    # One encoder everywhere: every KV value appears verbatim inside the export.
    text = data.decode("utf-8")
    for kind in KINDS:
        for record in getattr(state, kind):
            assert encode_record(record).decode("utf-8") in text
    # Canonical: sorted keys, no spaces, non-ASCII as itself, lists in primary-key order.
    parsed = json.loads(data)
    assert data == (
        json.dumps(parsed, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
    ).encode("utf-8")
    for kind in KINDS:
        pks = [tuple(item[f] for f in _PK[kind]) for item in parsed[kind]]
        assert pks == sorted(pks)
    # The digest is of exactly these bytes, whatever order the records came in.
    assert snapshot_digest(state) == "sha256:" + hashlib.sha256(data).hexdigest()
    shuffled = {k: list(getattr(state, k)) for k in KINDS}
    for records in shuffled.values():
        random.Random(seed).shuffle(records)
    assert snapshot_digest(Snapshot(**{k: tuple(v) for k, v in shuffled.items()})) == (
        snapshot_digest(state)
    )


_PK = {
    "users": ("id",),
    "rooms": ("id",),
    "members": ("room_id", "user_id"),
    "sealed_keys": ("room_id", "epoch", "user_id"),
}


@pytest.mark.parametrize("value", ["ü", "🔑", "中文", "line\u2028sep"])
def test_non_ascii_is_written_as_itself(value: str) -> None:
    from membership.model import User

    raw = encode_record(User(value, b"\x00" * 32, "active", 0))
    assert value.encode("utf-8") in raw and b"\\u" not in raw
