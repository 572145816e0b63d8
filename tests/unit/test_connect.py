"""URL rules: loopback or TLS, malformed refused, unreachable fails fast."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from membership.connect import NatsTarget, check_nats_url, connect_nats, is_loopback_url
from membership.embedded import free_port
from membership.errors import InsecureURLError, InvalidInputError, NatsUnavailableError


@pytest.mark.parametrize(
    "url",
    [
        "nats://localhost:4222",
        "nats://LOCALHOST:4222",
        "nats://127.0.0.1:4222",
        "nats://127.255.0.9",
        "tls://[::1]:4222",
        "nats://[::ffff:127.0.0.1]:4222",
    ],
)
def test_loopback(url: str) -> None:
    assert is_loopback_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "nats://localhost.example.com:4222",
        "nats://127.0.0.1.nip.io:4222",
        "nats://127.0.0.1@evil.example:4222",
        "nats://10.0.0.1:4222",
        "nats://[::2]:4222",
        "nats://:4222",
        "nats://",
        "",
        "127.0.0.1:4222x",
        "nats://127.0.0.1:99999",
        "nats://[::1%lo]:4222",
    ],
)
def test_not_loopback(url: str) -> None:
    assert not is_loopback_url(url)


def test_remote_without_ca_is_refused_naming_ca() -> None:
    with pytest.raises(InsecureURLError, match="--ca"):
        check_nats_url("nats://nats.example.com:4222", None)
    assert check_nats_url("tls://nats.example.com:4222", "ca.pem") == [
        "tls://nats.example.com:4222"
    ]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:4222", "nats://127.0.0.1:abc", "nats://127.0.0.1:4222/x", ",", "nats://"],
)
def test_malformed_urls_are_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInputError):
        check_nats_url(url, None)


def test_a_seed_list_is_checked_url_by_url() -> None:
    with pytest.raises(InsecureURLError):
        check_nats_url("nats://127.0.0.1:1,nats://10.1.1.1:2", None)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("nats://user:hunter2@10.0.0.1:4222", "nats://user:***@10.0.0.1:4222"),  # remote
        ("nats://user:hunter2@10.0.0.1:99999", "nats://user:***@10.0.0.1:99999"),  # bad port
        ("nats://user:hunter2@127.0.0.1:4222/x", "nats://user:***@127.0.0.1:4222/x"),  # path
        ("nats://hunter2@10.0.0.1:4222", "nats://***@10.0.0.1:4222"),  # a NATS token
        ("nats://u:hun#ter2@10.0.0.1:4222", "nats://u:***@10.0.0.1:4222"),  # '#' inside
        ("nats://u:hun/ter2@10.0.0.1:4222", "nats://u:***@10.0.0.1:4222"),  # '/' inside
        ("http://u:hunter2@127.0.0.1:4222", "http://u:***@127.0.0.1:4222"),  # wrong scheme
        ("nats://u:hunter2@127.0.0.1:1,", "nats://u:***@127.0.0.1:1,"),  # empty entry
        (
            "nats://hunter2@h1:1,nats://u:pw@h2:1,",
            "nats://***@h1:1,nats://u:***@h2:1,",
        ),  # each entry
    ],
)
def test_passwords_never_reach_messages(value: str, shown: str) -> None:
    with pytest.raises((InsecureURLError, InvalidInputError)) as info:
        check_nats_url(value, None)
    assert "hunter2" not in str(info.value) and "ter2" not in str(info.value)
    assert shown in str(info.value)


def test_localhost_with_a_trailing_dot_needs_ca() -> None:
    # An absolute name may be answered by DNS rather than /etc/hosts: not loopback.
    with pytest.raises(InsecureURLError, match="--ca"):
        check_nats_url("nats://localhost.:4222", None)
    assert check_nats_url("nats://localhost.:4222", "ca.pem") == ["nats://localhost.:4222"]


@pytest.mark.parametrize(
    "url",
    ["nats://[::1]x:4222", "nats://[::1]]:4222", "nats://127.0.\n0.1:4222", "nats://lo\tcalhost"],
)
def test_urls_that_urlsplit_tolerates_are_malformed_here(url: str) -> None:
    # urlsplit drops tabs and newlines and ignores junk after "]"; nothing is guessed here.
    for ca in (None, "ca.pem"):
        with pytest.raises(InvalidInputError, match="not a NATS URL"):
            check_nats_url(url, ca)


def test_unreachable_server_fails_fast_with_one_line() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(NatsUnavailableError) as info:
        asyncio.run(connect_nats(NatsTarget(f"nats://127.0.0.1:{port}")))
    assert time.monotonic() - start < 10
    assert f"127.0.0.1:{port}" in str(info.value) and "\n" not in str(info.value)


async def test_closing_after_the_server_is_gone_raises_nothing_and_ends_in_seconds() -> None:
    """nats-py's close raises ConnectionResetError once the server is gone; in a command's
    ``finally`` that would replace the one-line error with a traceback."""
    import time

    from membership.connect import NatsTarget, close_nats, connect_nats
    from membership.embedded import EmbeddedServer

    with EmbeddedServer() as server:
        nc = await connect_nats(NatsTarget(server.url))
        server.stop()
        for _ in range(200):  # something buffered that can no longer be flushed
            with contextlib.suppress(Exception):
                await nc.publish("x", b"y" * 1024)
        started = time.monotonic()
        await close_nats(nc)
        assert time.monotonic() - started < 15
        assert nc.is_closed or not nc.is_connected
