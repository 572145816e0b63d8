"""URL rules: loopback or TLS, malformed refused, unreachable fails fast."""

from __future__ import annotations

import asyncio
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


def test_passwords_never_reach_messages() -> None:
    with pytest.raises(InsecureURLError) as info:
        check_nats_url("nats://user:hunter2@10.0.0.1:4222", None)
    assert "hunter2" not in str(info.value)


def test_unreachable_server_fails_fast_with_one_line() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(NatsUnavailableError) as info:
        asyncio.run(connect_nats(NatsTarget(f"nats://127.0.0.1:{port}")))
    assert time.monotonic() - start < 10
    assert f"127.0.0.1:{port}" in str(info.value) and "\n" not in str(info.value)
