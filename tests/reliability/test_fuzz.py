"""Fuzzing the parsers that read outside data: only the documented errors may come out.

Key tokens come from KV keys, records and snapshots from KV values and export files,
URLs from the command line, and database files from disk. For arbitrary input each parser
either returns a value that round-trips or raises its documented error type — never a
KeyError, TypeError, UnicodeError, sqlite3 error or anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import string

from hypothesis import given
from hypothesis import strategies as st

from membership.canonical import KINDS, decode_record, decode_snapshot, encode_record
from membership.connect import check_nats_url, is_loopback_url
from membership.errors import DataError, InsecureURLError, InvalidInputError, MembershipError
from membership.keycodec import decode_id, encode_id, parse_member_key, parse_sealed_key_key
from membership.sqlite import SQLiteStore

token_text = st.text(
    alphabet=string.ascii_letters + string.digits + "=-_.ABCDEF0123456789*>", max_size=40
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "id",
        "public_key",
        "status",
        "created_at",
        "epoch",
        "room_id",
        "user_id",
        "role",
        "joined_epoch",
        "sealed_key",
        "extra",
    ]
)
record_like = st.dictionaries(field_names, json_values, max_size=6)


@given(token_text | st.text(max_size=30))
def test_key_tokens(token: str) -> None:
    try:
        value = decode_id(token)
    except DataError:
        return
    assert encode_id(value) == token


@given(st.text(max_size=60) | st.builds(".".join, st.lists(token_text, max_size=4)))
def test_composite_keys(key: str) -> None:
    for parse in (parse_member_key, parse_sealed_key_key):
        with contextlib.suppress(DataError):
            parse(key)


@given(st.sampled_from(KINDS), st.binary(max_size=200))
def test_record_bytes(kind: str, raw: bytes) -> None:
    try:
        record = decode_record(kind, raw)
    except DataError:
        return
    assert decode_record(kind, encode_record(record)) == record


@given(st.sampled_from(KINDS), record_like)
def test_record_shaped_json(kind: str, data: dict) -> None:
    try:
        record = decode_record(kind, json.dumps(data).encode())
    except DataError:
        return
    assert decode_record(kind, encode_record(record)) == record


@given(
    st.fixed_dictionaries(
        {k: st.lists(record_like, max_size=2) for k in KINDS},
        optional={"schema_version": json_values, "junk": json_values},
    )
    | json_values
)
def test_snapshots(data: object) -> None:
    with contextlib.suppress(DataError):
        decode_snapshot(json.dumps(data))


urlish = st.builds(
    "".join,
    st.lists(
        st.sampled_from(
            [
                "nats://",
                "tls://",
                "http://",
                "[",
                "]",
                "::1",
                "127.0.0.1",
                ":",
                "@",
                "localhost",
                ".",
                "4222",
                "%",
                "/",
                "?",
                "#",
                ",",
                " ",
                "user:pw@",
                "ü",
            ]
        )
        | st.text(max_size=5),
        max_size=8,
    ),
)


@given(urlish | st.text(max_size=40), st.none() | st.just("ca.pem"))
def test_urls(url: str, ca: str | None) -> None:
    assert isinstance(is_loopback_url(url), bool)
    try:
        urls = check_nats_url(url, ca)
    except (InvalidInputError, InsecureURLError):
        return
    assert urls and all(u.strip() for u in urls)
    if ca is None:
        assert all(is_loopback_url(u) for u in urls)


@given(st.binary(min_size=0, max_size=4096), st.integers(0, 3))
def test_database_files(tmp_path_factory, body: bytes, variant: int) -> None:
    """Arbitrary bytes behind a real SQLite header: refused with a membership error only."""
    header = b"SQLite format 3\x00" if variant else b""
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    path.write_bytes(header + body)

    async def open_and_read() -> None:
        store = SQLiteStore.open(path)
        try:
            await store.export_snapshot()
        finally:
            await store.close()

    with contextlib.suppress(MembershipError):
        asyncio.run(open_and_read())
