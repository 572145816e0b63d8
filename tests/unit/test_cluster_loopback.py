"""``is_loopback_url`` against an independent oracle built on ``ipaddress`` (issue 4, point 3).

The oracle does not parse URLs the way the code does: the structured property *builds*
each URL from its parts (scheme, userinfo, host, port, tail), so the host the URL names
is known by construction, and decides that host with ``ipaddress`` alone. The answer
must be equal both ways. Over arbitrary text, where no construction is known, the oracle
reads the URL with RFC 3986's own regular expression (appendix B), and the code may be
stricter than that oracle (refusing is the safe side: it only means ``--ca``) but never
more permissive.

Spelling decisions (DESIGN.md lists ``localhost``, ``127.0.0.0/8``, ``::1`` and
IPv4-mapped loopback): ``localhost`` in any case; *not* ``localhost.`` -- an absolute
name that the resolver may send to DNS instead of ``/etc/hosts``; IPv4 only as a strict
dotted quad (``127.1``, ``0177.0.0.1``, ``0x7f000001`` are read as loopback by some
resolvers and as names by others); IPv6 only in brackets and without a zone id.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from membership.connect import host_is_loopback, is_loopback_url, loopback_connect_urls

LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")


def oracle(host: str) -> bool:
    """Is ``host``, exactly as written in a URL's authority, this machine (per DESIGN.md)?"""
    if host.isascii() and host.lower() == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        try:
            v6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        if v6.scope_id is not None:
            return False  # a zone id is an odd form: not loopback
        return v6.is_loopback or (v6.ipv4_mapped is not None and v6.ipv4_mapped in LOOPBACK_V4)
    try:
        v4 = ipaddress.IPv4Address(host)  # strict dotted quad, no leading zeros
    except ValueError:
        return False
    return v4.is_loopback


def port_ok(port: str) -> bool:
    """``""`` (none), ``":"`` (empty, as RFC 3986 allows) or ``":"`` and 0..65535."""
    if not port:
        return True
    digits = port[1:]
    return port[0] == ":" and (
        not digits or (digits.isascii() and digits.isdigit() and int(digits) <= 65535)
    )


# -- the structured property: URLs built from parts, equal answers both ways ---------------

schemes = st.sampled_from(["nats", "tls", "ws", "NATS"])
userinfos = st.none() | st.sampled_from(
    ["user", "user:pw", "127.0.0.1", "localhost", "u:127.0.0.1", "a@b", "127.0.0.1@x", "%40"]
)
ports = st.sampled_from(["", ":", ":0", ":4222", ":65535", ":65536", ":99999", ":x", ":-1"]) | (
    st.integers(0, 70000).map(lambda p: f":{p}")
)
tails = st.sampled_from(
    ["", "/", "/path", "?q=1", "#frag", "#@127.0.0.1", "/@localhost", "?@[::1]"]
)


def v6_spellings(address: ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    return st.sampled_from([address.compressed, address.exploded, address.compressed.upper()])


ipv4_hosts = (st.ip_addresses(v=4) | st.ip_addresses(network="127.0.0.0/8")).map(str)
ipv6_hosts = (
    st.ip_addresses(v=6)
    | st.just(ipaddress.IPv6Address("::1"))
    | st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
    | st.ip_addresses(network="127.0.0.0/8").map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))
).flatmap(v6_spellings)
mapped_dotted = st.ip_addresses(network="127.0.0.0/8").map(lambda a: f"[::ffff:{a}]")
localhost_cases = st.lists(st.booleans(), min_size=9, max_size=9).map(
    lambda up: "".join(c.upper() if u else c for c, u in zip("localhost", up, strict=True))
)
labels = st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True)
names = st.lists(labels | st.just("localhost") | st.just("127"), min_size=1, max_size=4).map(
    ".".join
)
ODD_HOSTS = [
    "",
    "localhost.",
    "LOCALHOST.",
    "x.localhost",
    "localhost.example.com",
    "localhost-",
    "127.0.0.1.nip.io",
    "127.0.0.1.",
    "0177.0.0.1",
    "127.000.000.001",
    "127.1",
    "127.0.1",
    "0x7f000001",
    "0x7f.0.0.1",
    "2130706433",
    "0.0.0.0",
    "::1",
    "[::1%25lo]",
    "[::1%lo]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:0:0:1]",
    "[::1]x",
    "[::1]]",
    "[v1.x]",
    "[127.0.0.1]",
    "127.0.0.1%lo",
    "ｌｏｃａｌｈｏｓｔ",
    "１２７.０.０.１",
    "evil.example",
]
hosts = st.one_of(
    ipv4_hosts,
    ipv6_hosts.map(lambda h: f"[{h}]"),
    mapped_dotted,
    localhost_cases,
    names,
    st.sampled_from(ODD_HOSTS),
    # anything without URL delimiters, whitespace or controls (those are other properties)
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), max_size=12).filter(
        lambda h: not set(h) & set("/?#@[]:\\")
    ),
)


@given(scheme=schemes, userinfo=userinfos, host=hosts, port=ports, tail=tails)
@example(scheme="nats", userinfo="127.0.0.1", host="evil.example", port=":4222", tail="")
@example(scheme="nats", userinfo=None, host="evil", port="", tail="#@127.0.0.1")
@example(scheme="nats", userinfo=None, host="127.0.0.1", port="", tail="#@evil")
@example(scheme="nats", userinfo="a@b", host="127.0.0.1", port=":4222", tail="")
@example(scheme="tls", userinfo=None, host="[::ffff:127.0.0.1]", port=":4222", tail="")
@example(scheme="tls", userinfo=None, host="[::ffff:7f00:2]", port="", tail="")
@example(scheme="nats", userinfo=None, host="127.255.255.255", port=":1", tail="")
@example(scheme="nats", userinfo=None, host="localhost.", port=":4222", tail="")
@example(scheme="nats", userinfo=None, host="0177.0.0.1", port=":4222", tail="")
@example(scheme="nats", userinfo=None, host="127.1", port=":4222", tail="")
@example(scheme="nats", userinfo=None, host="localhost.example.com", port=":4222", tail="")
@example(scheme="nats", userinfo=None, host="127.0.0.1.nip.io", port=":4222", tail="")
@example(scheme="nats", userinfo="user", host="", port=":4222", tail="")
@example(scheme="nats", userinfo=None, host="[::1]x", port=":4222", tail="")
@example(scheme="ws", userinfo=None, host="[::1]", port=":", tail="/")
def test_built_urls_agree_with_the_oracle_both_ways(
    scheme: str, userinfo: str | None, host: str, port: str, tail: str
) -> None:
    url = f"{scheme}://{'' if userinfo is None else userinfo + '@'}{host}{port}{tail}"
    assert is_loopback_url(url) == (oracle(host) and port_ok(port)), url


# -- arbitrary text: never more permissive than RFC 3986 and the oracle ---------------------

RFC3986 = re.compile(r"^(([^:/?#]+):)?(//([^/?#]*))?([^?#]*)(\?([^#]*))?(#(.*))?$", re.DOTALL)
"""RFC 3986, appendix B: scheme is group 2, authority group 4."""
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def oracle_url(url: str) -> bool:
    text = url.strip()  # surrounding whitespace is not part of a --nats-url (contract)
    if any(c.isspace() or not c.isprintable() for c in text):
        return False
    match = RFC3986.match(text)
    if match is None or match[2] is None or match[4] is None or not SCHEME.fullmatch(match[2]):
        return False
    host_port = match[4].rpartition("@")[2]  # the host follows the last "@"
    if host_port.startswith("["):
        inside, close, port = host_port.partition("]")
        host = inside + close
    else:
        host, colon, digits = host_port.partition(":")
        port = colon + digits
    return oracle(host) and port_ok(port)


PIECES = ["nats://", "tls://", "ws://", "[", "]", "::1", "::ffff:", "127.0.0.1", "127", ":",
          "@", "localhost", ".", "4222", "%", "/", "?", "#", " ", "\t", "\n", "user:pw@", "ü",
          "0x7f", "nip.io"]  # fmt: skip
urlish = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=10).map("".join)


@given(url=urlish | st.text(max_size=40))
@example(url="nats://127.0.0.1@evil.example:4222")
@example(url="nats://evil#@127.0.0.1")
@example(url="nats://127.0.\n0.1:4222")
@example(url="nats://[::1]]:4222")
@example(url="nats://[@127.0.0.1")
@example(url=" nats://localhost:4222 ")
def test_arbitrary_text_is_loopback_only_if_the_oracle_agrees(url: str) -> None:
    if is_loopback_url(url):
        assert oracle_url(url), url


# -- the decisions, spelled out --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("nats://localhost:4222", True),
        ("nats://LocalHost:4222", True),
        ("nats://localhost.:4222", False),  # absolute name: may go to DNS
        ("nats://localhost.example.com:4222", False),
        ("nats://x.localhost:4222", False),
        ("nats://127.0.0.1.nip.io:4222", False),
        ("nats://127.0.0.1:4222", True),
        ("nats://127.254.0.9", True),
        ("nats://127.1:4222", False),
        ("nats://0177.0.0.1:4222", False),
        ("nats://0x7f000001:4222", False),
        ("nats://0.0.0.0:4222", False),
        ("tls://[::1]:4222", True),
        ("tls://[::ffff:127.0.0.1]:4222", True),
        ("tls://[::ffff:7f00:1]:4222", True),
        ("tls://[::ffff:10.0.0.1]:4222", False),
        ("tls://[::127.0.0.1]:4222", False),  # IPv4-compatible, not mapped
        ("nats://[::1%25lo]:4222", False),
        ("nats://[::1]x:4222", False),
        ("nats://127.0.0.1@evil.example:4222", False),
        ("nats://127.0.0.1:4222@evil.example", False),
        ("nats://evil.example#@127.0.0.1", False),
        ("nats://user:pw@127.0.0.1:4222", True),
        ("nats://", False),
        ("nats://:4222", False),
        ("", False),
        ("not a url", False),
    ],
)
def test_spellings(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


@pytest.mark.parametrize("value", [None, 127, b"nats://127.0.0.1", ["nats://127.0.0.1"]])
def test_non_strings_are_not_loopback(value: object) -> None:
    assert not is_loopback_url(value)


@given(address=ipv4_hosts | ipv6_hosts)
def test_host_is_loopback_takes_bracketed_and_bare_ip_addresses(address: str) -> None:
    bracketed = f"[{address}]" if ":" in address else address
    assert host_is_loopback(address) == oracle(bracketed)
    assert host_is_loopback(bracketed) == oracle(bracketed)


@pytest.mark.parametrize("host", ["localhost.", "::1%lo", "[::1%lo]", "127.1", "0177.0.0.1", ""])
def test_host_is_loopback_refuses_odd_forms(host: str) -> None:
    # cluster config asks this of listen and route hosts: odd forms need TLS there too
    assert not host_is_loopback(host)


def test_a_cleartext_session_keeps_only_loopback_servers_the_cluster_gossips() -> None:
    gossip = ["127.0.0.1:4223", "10.0.0.7:4222", "[::1]:4224", "nats.example.com:4222"]
    assert loopback_connect_urls(gossip) == ["127.0.0.1:4223", "[::1]:4224"]
