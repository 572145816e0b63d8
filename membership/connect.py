"""Reaching NATS safely: URL checks, TLS, and a connection that fails fast.

Two promises of the contract live here:

* a ``--nats-url`` whose host is not loopback is refused without ``--ca``, *before*
  any connection, because the allowlist and the sealed keys must not cross a network
  in cleartext (:func:`check_nats_url`);
* a server that cannot be reached, or a TLS handshake that fails, is a one-line
  :class:`NatsUnavailableError` within seconds, never a reconnect loop
  (:func:`connect_nats`). nats-py retries a pool forever unless
  ``max_reconnect_attempts`` is positive, so it always is here.

Two gaps of nats-py are closed by :class:`_GuardedClient`: nats-py upgrades to TLS
only when the server's INFO says ``tls_required``, so a server (or a man in the
middle) that does not ask for TLS would get a cleartext session even with ``--ca``
or a ``tls://`` URL -- here such a server is refused before anything is sent to it;
and nats-py adds every server a cluster gossips (``connect_urls``) to its pool, so a
cleartext loopback session could reconnect in cleartext to a remote node -- here a
session without TLS only ever adds loopback servers.

A third is closed by :class:`_TLSTransport`: nats-py upgrades a plain socket with
``loop.start_tls`` into a fresh ``StreamReaderProtocol`` but never calls its
``connection_made``, so asyncio's stream protocol does not know it runs over SSL and
answers every end of session with "keep the transport open", which asyncio's SSL layer
logs as ``returning true from eof_received() has no effect when using ssl`` -- noise on
stderr after each successful TLS command (nats-io/nats.py#574; the fix httpcore made for
the same bug, encode/httpx#859). Here the upgraded protocol is told its transport.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import ParseResult, SplitResult, urlsplit

import nats
import nats.errors
from nats.aio.client import DEFAULT_BUFFER_SIZE, Client, Srv
from nats.aio.transport import TcpTransport

from .errors import InsecureURLError, InvalidInputError, NatsUnavailableError

__all__ = [
    "NatsTarget",
    "TLSRequiredError",
    "check_nats_url",
    "close_nats",
    "connect_nats",
    "host_is_loopback",
    "is_loopback_url",
    "split_nats_urls",
]

SCHEMES: Final = ("nats", "tls")
CONNECT_TIMEOUT: Final = 2.0
"""Seconds for one TCP+TLS connection attempt."""
FLUSH_TIMEOUT: Final = 10.0
"""Seconds a publish may wait for nats-py to hand its buffer to the socket."""


def host_is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8``, ``::1`` and IPv4-mapped loopback.

    Only these spellings count; every other one is not loopback, which is the safe
    answer (it only means ``--ca`` is needed):

    * ``localhost`` in any case, but not ``localhost.``: a trailing-dot name is absolute,
      and whether ``/etc/hosts`` or some DNS server answers it depends on the resolver;
      nor names under it (``x.localhost``) or look-alikes (``localhost.example.com``);
    * IPv4 as a strict dotted quad: not ``127.1``, ``0177.0.0.1``, ``0x7f000001`` or
      ``2130706433``, which some resolvers read as loopback and others as names;
    * IPv6 bare or in brackets, without a zone id (``::1%lo``).
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    if "%" in host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped is not None and mapped.is_loopback


_AUTHORITY: Final = re.compile(r"(?:.*@)?(?:\[[^\[\]@]*\]|[^\[\]:@]*)(?::[0-9]*)?", re.DOTALL)
"""``[userinfo@]host[:port]``, the host after the last ``@``: urlsplit tolerates more
(``[::1]x``, ``[::1]]``) and reads a host out of it; such a URL is malformed here."""


def _split(url: str) -> SplitResult | None:
    """``url`` (stripped) split, or None if it is malformed."""
    text = url.strip()
    # urlsplit silently drops tabs and newlines inside a URL; here they make it malformed.
    if any(c.isspace() or not c.isprintable() for c in text):
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return None
    if not _AUTHORITY.fullmatch(parts.netloc):
        return None
    return parts


def is_loopback_url(url: object) -> bool:
    """True only if ``url`` is a well-formed URL whose host is this machine.

    ``localhost``, ``127.0.0.0/8``, ``::1`` and IPv4-mapped loopback
    (``::ffff:127.0.0.1``) count, spelled as :func:`host_is_loopback` says; anything
    else does not: malformed URLs, empty hosts, ``localhost.``, and look-alikes such
    as ``localhost.example.com``, ``127.0.0.1.nip.io`` or ``127.0.0.1@evil``.
    """
    if not isinstance(url, str):
        return False
    parts = _split(url)
    if parts is None or not parts.hostname or not parts.scheme:
        return False
    return host_is_loopback(parts.hostname)


def split_nats_urls(value: str) -> list[str]:
    """``--nats-url`` takes one URL or a comma-separated seed list of a cluster."""
    urls = [u.strip() for u in value.split(",")]
    if not value.strip() or any(not u for u in urls):
        raise InvalidInputError(
            f"--nats-url {','.join(_redact(u) for u in value.split(','))!r} is empty or "
            "has an empty entry (a stray comma?)"
        )
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


_SCHEME_PREFIX: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _redact(url: str) -> str:
    """The URL without its credentials, fit for a message -- malformed ones too.

    Everything up to the last ``@`` is userinfo (over-masking a path is harmless, showing
    a password that holds ``/`` or ``#`` is not). A password becomes ``***``; userinfo
    without a colon may be a NATS token, and one that spans several URLs may hold one: those
    are masked whole.
    """
    scheme = _SCHEME_PREFIX.match(url)  # only a scheme at the very start is one
    start = scheme.end() if scheme else 0
    at = url.rfind("@", start)
    if at == -1:
        return url
    user, colon, _ = url[start:at].partition(":")
    plain_user = colon and not set(user) & set("@/?#,")  # else it may hold a secret too
    return f"{url[:start]}{f'{user}:***' if plain_user else '***'}{url[at:]}"


@dataclass(frozen=True)
class NatsTarget:
    """Where and how to connect: a URL (or seed list), optional TLS material, and
    optionally an nkey identity (``seed_file``: a user seed, readable by its owner only)
    for a server whose authorization asks for one (``membershipd serve`` makes such)."""

    url: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    seed_file: str | None = None

    def display(self) -> str:
        return ",".join(_redact(u) for u in split_nats_urls(self.url))

    def check(self) -> list[str]:
        if (self.cert is None) != (self.key is None):
            raise InvalidInputError("--cert and --key go together (mutual TLS needs both)")
        return check_nats_url(self.url, self.ca)

    @property
    def tls_required(self) -> bool:
        """TLS is demanded: ``--ca``/``--cert`` given, or a ``tls://`` URL."""
        if self.ca is not None or self.cert is not None:
            return True
        return any(u.lower().startswith("tls://") for u in split_nats_urls(self.url))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context to verify servers with: ``--ca`` if given, else the system's CAs."""
        if not self.tls_required:
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


class TLSRequiredError(nats.errors.Error):
    """The server did not ask for TLS although the caller demanded it."""

    def __str__(self) -> str:
        return (
            "the server does not offer TLS, but --ca/--cert or a tls:// URL demands it; "
            "nothing was sent (check the URL and the server's tls block)"
        )


def loopback_connect_urls(urls: list[str]) -> list[str]:
    """The gossiped ``host:port`` entries a cleartext session may use: loopback ones."""
    return [u for u in urls if is_loopback_url(f"nats://{u}")]


class _TLSTransport(TcpTransport):
    """nats-py's TCP transport with a TLS upgrade that completes the protocol hand-over.

    ``loop.start_tls`` does not call ``connection_made`` on the protocol it is given (it
    expects one that is connected already); nats-py passes a new one and never calls it.
    Called here, the stream protocol knows it runs over SSL (no eof_received warning at
    the end of a session) and its reader knows its transport (flow control, as with
    ``asyncio.open_connection(ssl=...)``). The whole upgrade is ours, so a nats-py that
    fixes this itself cannot make it happen twice.
    """

    async def connect_tls(
        self,
        uri: str | ParseResult,
        ssl_context: ssl.SSLContext,
        buffer_size: int,
        connect_timeout: int,
    ) -> None:
        assert self._io_writer is not None, "connect() comes first"
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = await asyncio.wait_for(
            loop.start_tls(
                self._io_writer.transport,
                protocol,
                ssl_context,
                server_hostname=uri if isinstance(uri, str) else uri.hostname,
            ),
            connect_timeout,
        )
        assert transport is not None
        protocol.connection_made(transport)
        self._io_reader = reader
        self._io_writer = asyncio.StreamWriter(transport, protocol, reader, loop)


class _GuardedClient(Client):
    """nats-py's client, refusing cleartext where TLS is demanded (see module docstring).

    ``_process_info`` runs on every server's first INFO, before the TLS upgrade and
    before CONNECT is written, and again on each gossip update. ``_connect_to_server``
    is nats-py's own (2.16) for ``nats://`` and ``tls://``, with :class:`_TLSTransport`
    in place of nats-py's: nats-py keeps the transport it made for every reconnect.
    """

    require_tls = False

    async def _connect_to_server(self, s: Srv) -> None:
        if s.uri.scheme not in SCHEMES:
            await super()._connect_to_server(s)
            return
        s.last_attempt = time.monotonic()
        if not isinstance(self._transport, _TLSTransport):
            self._transport = _TLSTransport()  # type: ignore[no-untyped-call]
        await self._transport.connect(
            s.uri, buffer_size=DEFAULT_BUFFER_SIZE, connect_timeout=self.options["connect_timeout"]
        )

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and self.require_tls and not info.get("tls_required"):
            raise TLSRequiredError()
        if not self.require_tls and info.get("connect_urls"):
            info["connect_urls"] = loopback_connect_urls(list(info["connect_urls"]))
        await super()._process_info(info, initial_connection)


async def connect_nats(
    target: NatsTarget,
    *,
    name: str = "membershipd",
    nkey_seed: bytes | None = None,
    inbox_prefix: str | None = None,
) -> Client:
    """Connect, or raise :class:`NatsUnavailableError` within a few seconds.

    The identity is ``nkey_seed`` (a user seed held in memory: the service's own) or
    the seed in ``target.seed_file``; ``inbox_prefix`` replaces ``_INBOX`` for replies
    (a user of ``membershipd serve`` may only subscribe below ``_INBOX.<its nkey>``).

    Every server of the seed list is tried twice at most; the last low-level error
    (refused, timeout, TLS verification, authorization) is named in the message.
    A TLS failure ends the attempt at once: it is a wrong ``--ca`` or a server that
    is not who it claims to be, which retrying cannot fix (and nats-py 2.16 stalls
    after a failed handshake instead of moving on).
    """
    urls = target.check()
    tls = target.ssl_context()
    if nkey_seed is None and target.seed_file is not None:
        from .nkey import read_seed_file

        nkey_seed = read_seed_file(target.seed_file).seed
    errors: list[BaseException] = []
    fatal = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        if isinstance(exc, (ssl.SSLError, TLSRequiredError)):
            fatal.set()
        elif "authorization violation" in str(exc).lower():
            # Refused credentials: another server of the same cluster (or a retry) would
            # refuse them too; say so now instead of after a round of the whole pool.
            fatal.set()

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
        # nats-py waits for its flusher without a limit when its outbound buffer is full;
        # if the server dies then, a publish would hang for ever (seen with nats-py 2.x).
        "flush_timeout": FLUSH_TIMEOUT,
    }
    if tls is not None:
        # Each server's certificate is checked against that server's own host name.
        options["tls"] = tls
    if nkey_seed is not None:
        options["nkeys_seed_str"] = nkey_seed.decode("ascii")
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    nc = _GuardedClient()
    nc.require_tls = target.tls_required
    connecting = asyncio.ensure_future(nc.connect(**options))
    failed = asyncio.ensure_future(fatal.wait())
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT * 2 * len(urls) + 5):
            await asyncio.wait({connecting, failed}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            raise errors[-1]
        connecting.result()
    except (OSError, TimeoutError, nats.errors.Error, ssl.SSLError) as exc:
        await _abandon(nc, connecting)
        refused = [e for e in errors if "authorization" in str(e).lower()]
        cause = _describe(refused[0] if refused else errors[-1] if errors else exc)
        raise NatsUnavailableError(
            f"cannot connect to NATS at {target.display()}: {cause}"
        ) from None
    finally:
        failed.cancel()
    # Connected: ride out short disconnects during long runs, but still end within seconds.
    nc.options["max_reconnect_attempts"] = 10
    nc.options["reconnect_time_wait"] = 0.5
    return nc


async def close_nats(nc: Client, *, drain: bool = False) -> None:
    """Close a connection, whatever state it is in, within a few seconds.

    nats-py's ``close`` flushes what is buffered, and raises ``ConnectionResetError``
    when the server is already gone: in a ``finally`` that would replace the real,
    one-line error of a lost server with a traceback. Closing is best effort: a
    connection that cannot flush has nothing left to say. With ``drain``, the
    subscriptions are drained first (nats-py's own ``drain_timeout`` bounds that).
    """
    if drain:
        await _quietly(nc.drain(), None)
    await _quietly(nc.close(), FLUSH_TIMEOUT)


async def _quietly(ending: Awaitable[None], within: float | None) -> None:
    """Await one step of ending a connection; nothing it raises gets out, but our own cancel.

    A ``CancelledError`` can come out of nats-py's ``close`` although nobody cancelled
    us: when the connection is caught mid-reconnect, ``close`` cancels the reconnect
    task while that task waits for the old socket to close, which cancels the very
    future ``close`` then waits on itself (nats-py 2.16). It is told from a real
    cancellation of this task by the task's own count of cancel requests.
    """
    try:
        async with asyncio.timeout(within):
            await ending
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:  # noqa: S110 - best effort, see close_nats
        pass


async def _abandon(nc: Client, connecting: asyncio.Future[Any]) -> None:
    """Stop a connection attempt that failed, and release its socket."""
    connecting.cancel()
    await _quietly(connecting, None)
    await _quietly(nc.close(), 1)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TLSRequiredError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message}); check --ca"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is nats-server running there?)"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if (
        isinstance(exc, nats.errors.AuthorizationError)
        or "authorization violation" in str(exc).lower()
    ):
        return "the server refused the credentials (authorization violation)"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0][:200]
