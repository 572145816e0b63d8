"""Reaching NATS safely: URL checks, TLS, and a connection that fails fast.

Two promises of the contract live here:

* a ``--nats-url`` whose host is not loopback is refused without ``--ca``, *before*
  any connection, because the allowlist and the sealed keys must not cross a network
  in cleartext (:func:`check_nats_url`);
* a server that cannot be reached, or a TLS handshake that fails, is a one-line
  :class:`NatsUnavailableError` within seconds, never a reconnect loop
  (:func:`connect_nats`). nats-py retries a pool forever unless
  ``max_reconnect_attempts`` is positive, so it always is here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import nats
import nats.errors
from nats.aio.client import Client

from .errors import InsecureURLError, InvalidInputError, NatsUnavailableError

__all__ = [
    "NatsTarget",
    "check_nats_url",
    "connect_nats",
    "is_loopback_url",
    "split_nats_urls",
]

SCHEMES: Final = ("nats", "tls")
CONNECT_TIMEOUT: Final = 2.0
"""Seconds for one TCP+TLS connection attempt."""


def _host_is_loopback(host: str) -> bool:
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


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return None
    return parts


def is_loopback_url(url: object) -> bool:
    """True only if ``url`` is a well-formed URL whose host is this machine.

    ``localhost``, ``127.0.0.0/8``, ``::1`` and IPv4-mapped loopback
    (``::ffff:127.0.0.1``) count; anything else does, malformed URLs, empty hosts
    and look-alikes such as ``localhost.example.com`` or ``127.0.0.1.nip.io`` not.
    """
    if not isinstance(url, str):
        return False
    parts = _split(url)
    if parts is None or not parts.hostname or not parts.scheme:
        return False
    # urlsplit keeps zone ids and brackets out of hostname; reject anything odd.
    host = parts.hostname
    if "%" in host:
        return False
    return _host_is_loopback(host)


def split_nats_urls(value: str) -> list[str]:
    """``--nats-url`` takes one URL or a comma-separated seed list of a cluster."""
    urls = [u.strip() for u in value.split(",")]
    if not value.strip() or any(not u for u in urls):
        raise InvalidInputError(f"--nats-url {value!r} is empty or has an empty entry")
    return urls


def check_nats_url(value: str, ca: str | Path | None) -> list[str]:
    """Validate a ``--nats-url`` value and apply the cleartext rule; return its URLs.

    Malformed URLs and unknown schemes raise :class:`InvalidInputError`; a host that
    is not loopback without ``ca`` raises :class:`InsecureURLError`. No I/O happens.
    """
    urls = split_nats_urls(value)
    for url in urls:
        parts = _split(url)
        if parts is None or parts.scheme.lower() not in SCHEMES or not parts.hostname:
            raise InvalidInputError(
                f"--nats-url {_redact(url)!r} is not a NATS URL; "
                "expected nats://HOST:PORT or tls://HOST:PORT"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidInputError(f"--nats-url {_redact(url)!r} must not have a path or query")
        if ca is None and not is_loopback_url(url):
            raise InsecureURLError(
                f"--nats-url {_redact(url)!r} is not a loopback address; pass --ca CERT to "
                "connect over TLS (the allowlist and sealed keys must not travel in cleartext)"
            )
    return urls


def _redact(url: str) -> str:
    """The URL without any password, fit for a message."""
    parts = _split(url)
    if parts is None or parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


@dataclass(frozen=True)
class NatsTarget:
    """Where and how to connect: a URL (or seed list) and optional TLS material."""

    url: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def display(self) -> str:
        return ",".join(_redact(u) for u in split_nats_urls(self.url))

    def check(self) -> list[str]:
        if (self.cert is None) != (self.key is None):
            raise InvalidInputError("--cert and --key go together (mutual TLS needs both)")
        return check_nats_url(self.url, self.ca)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca is None:
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
            if self.cert is not None:
                ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInputError(
                f"cannot load TLS material (--ca {self.ca}"
                + (f", --cert {self.cert}" if self.cert else "")
                + f"): {getattr(exc, 'strerror', None) or exc.__class__.__name__}"
            ) from None
        return ctx


async def connect_nats(target: NatsTarget, *, name: str = "membershipd") -> Client:
    """Connect, or raise :class:`NatsUnavailableError` within a few seconds.

    Every server of the seed list is tried twice at most; the last low-level error
    (refused, timeout, TLS verification, authorization) is named in the message.
    """
    urls = target.check()
    tls = target.ssl_context()
    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    async def quiet(*_: Any) -> None:
        return None

    options: dict[str, Any] = {
        "servers": urls,
        "name": name,
        "connect_timeout": CONNECT_TIMEOUT,
        "allow_reconnect": True,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.25,
        "error_cb": on_error,
        "disconnected_cb": quiet,
        "closed_cb": quiet,
        "reconnected_cb": quiet,
        "dont_randomize": True,
    }
    if tls is not None:
        options["tls"] = tls
        if urls:
            parts = _split(urls[0])
            if parts is not None and parts.hostname:
                options["tls_hostname"] = parts.hostname
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT * 2 * len(urls) + 5):
            nc = await nats.connect(**options)
    except (OSError, TimeoutError, nats.errors.Error, ssl.SSLError) as exc:
        cause = _describe(errors[-1] if errors else exc)
        raise NatsUnavailableError(
            f"cannot connect to NATS at {target.display()}: {cause}"
        ) from None
    # Connected: ride out short disconnects during long runs, but still end within seconds.
    nc.options["max_reconnect_attempts"] = 5
    nc.options["reconnect_time_wait"] = 0.5
    return nc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message}); check --ca"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is nats-server running there?)"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, nats.errors.AuthorizationError):
        return "the server refused the credentials (authorization violation)"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0][:200]
