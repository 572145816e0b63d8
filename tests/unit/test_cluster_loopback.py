"""``is_loopback_url`` against the ``ipaddress`` module as an oracle (issue 4, point 3)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from membership.connect import host_is_loopback, is_loopback_url, loopback_connect_urls


def oracle(host: str) -> bool:
    """What the contract calls loopback, decided by the standard library alone."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped is not None and mapped.is_loopback


def url_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


ipv4 = st.ip_addresses(v=4) | st.ip_addresses(network="127.0.0.0/8")
ipv6 = (
    st.ip_addresses(v=6)
    | st.just(ipaddress.IPv6Address("::1"))
    | st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
    | st.ip_addresses(network="127.0.0.0/8").map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
)
schemes = st.sampled_from(["nats", "tls"])
ports = st.none() | st.integers(1, 65535)


def with_port(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


@given(address=ipv4 | ipv6, scheme=schemes, port=ports)
@example(address=ipaddress.IPv6Address("::ffff:127.0.0.1"), scheme="nats", port=4222)
@example(address=ipaddress.IPv6Address("::ffff:7f00:2"), scheme="tls", port=None)
@example(address=ipaddress.IPv4Address("127.255.255.255"), scheme="nats", port=1)
def test_ip_hosts_agree_with_the_ipaddress_oracle(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, scheme: str, port: int | None
) -> None:
    url = f"{scheme}://{with_port(url_host(address), port)}"
    assert is_loopback_url(url) == oracle(str(address))


@given(address=ipv4 | ipv6, user=st.text(alphabet="abc127.0:", min_size=1, max_size=12))
def test_userinfo_never_changes_the_answer(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, user: str
) -> None:
    # The host is what follows the last '@': "nats://127.0.0.1@evil" is evil's.
    assert is_loopback_url(f"nats://{user}@{url_host(address)}:4222") == oracle(str(address))
    assert not is_loopback_url(f"nats://{url_host(address)}@evil.example:4222")


@given(host=st.text(min_size=0, max_size=40), scheme=schemes, port=ports)
@example(host="localhost.example.com", scheme="nats", port=4222)
@example(host="127.0.0.1.nip.io", scheme="nats", port=4222)
@example(host="127.1", scheme="nats", port=4222)
@example(host="0x7f000001", scheme="nats", port=None)
@example(host="", scheme="nats", port=4222)
@example(host="[::1]x", scheme="tls", port=None)
def test_arbitrary_hosts_are_loopback_only_when_the_oracle_says_so(
    host: str, scheme: str, port: int | None
) -> None:
    url = f"{scheme}://{with_port(host, port)}"
    if is_loopback_url(url):
        # Whatever the URL parser made of it, the host it dials is loopback.
        assert oracle(urlsplit(url).hostname or "")


@pytest.mark.parametrize(
    "url",
    [
        "nats://localhost.example.com:4222",
        "nats://127.0.0.1.nip.io:4222",
        "nats://127.0.0.1@evil.example:4222",
        "nats://127.0.0.1:4222@evil.example",
        "nats://",
        "nats://:4222",
        "",
        "not a url",
        "nats://[::1%25lo]:4222",
        "nats://[::2]:4222",
        "nats://0.0.0.0:4222",
    ],
)
def test_look_alikes_and_malformed_urls_are_not_loopback(url: str) -> None:
    assert not is_loopback_url(url)


@pytest.mark.parametrize("value", [None, 127, b"nats://127.0.0.1", ["nats://127.0.0.1"]])
def test_non_strings_are_not_loopback(value: object) -> None:
    assert not is_loopback_url(value)


@given(address=ipv4 | ipv6)
def test_host_is_loopback_takes_bracketed_and_bare_v6(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert host_is_loopback(str(address)) == oracle(str(address))
    assert host_is_loopback(url_host(address)) == oracle(str(address))


def test_a_cleartext_session_keeps_only_loopback_servers_the_cluster_gossips() -> None:
    gossip = ["127.0.0.1:4223", "10.0.0.7:4222", "[::1]:4224", "nats.example.com:4222"]
    assert loopback_connect_urls(gossip) == ["127.0.0.1:4223", "[::1]:4224"]
