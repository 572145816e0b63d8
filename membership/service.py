"""The control plane as a NATS micro service (``membershipd serve``).

One :class:`MembershipService` puts a :class:`~membership.store.Store` (SQLite or KV)
on NATS as the micro service ``membershipd``, discoverable with ``$SRV.PING``,
``$SRV.INFO`` and ``$SRV.STATS``, with one endpoint per operation of
:mod:`membership.protocol`. Every endpoint is in the queue group ``q``: any number of
instances on one KV namespace share the load, each request answered by one of them.

Requests are handled concurrently (one task each), so a slow store call does not
hold up the rest. Micro times only its handler, which starts the task, and counts
only errors its handler raises, which never happens: each task adds its own time
and its error to its endpoint's ``$SRV.STATS`` figures, so they tell what the
service did. Stopping is a drain: the endpoints stop taking new requests (the
server then sends them to the other instances), every request already received is
answered, and only then are the control subjects and the connection released -- no
request is lost in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Endpoint, EndpointConfig, Service, ServiceConfig

from . import __version__
from .authz import DEFAULT_SUBJECT_PREFIX, SERVICE_NAME
from .errors import FailedError, InvalidInputError, MembershipError
from .keycodec import decode_id
from .protocol import ADMIN_OPERATIONS, USER_OPERATIONS, Params, error_reply, result_reply
from .store import Store

__all__ = ["MembershipService", "validate_subject_prefix"]

QUEUE_GROUP: Final = "q"
_log = logging.getLogger("membership.service")


def validate_subject_prefix(prefix: str) -> str:
    """``--subject-prefix``: dot-separated tokens of ``[A-Za-z0-9_-]``."""
    tokens = prefix.split(".")
    if not prefix or any(
        not t or not all(c.isascii() and (c.isalnum() or c in "_-") for c in t) for t in tokens
    ):
        raise InvalidInputError(
            f"--subject-prefix {prefix!r} is not valid: dot-separated tokens of A-Z a-z 0-9 _ -"
        )
    return prefix


class MembershipService:
    """A store served on NATS. ``await start()``; ``await stop()`` drains."""

    def __init__(
        self,
        nc: Client,
        store: Store,
        *,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        store_kind: str = "sqlite",
        on_allowlist_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._nc = nc
        self._store = store
        self.prefix = validate_subject_prefix(subject_prefix)
        self._kind = store_kind
        self._on_allowlist_change = on_allowlist_change
        self._service: Service | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, Endpoint] = {}
        self.handled = 0

    @property
    def id(self) -> str:
        return self._service.id if self._service is not None else ""

    async def start(self) -> None:
        self._service = await add_service(
            self._nc,
            ServiceConfig(
                name=SERVICE_NAME,
                version=__version__,
                description="unibus control plane: allowlist, rooms, epochs, sealed keys",
                metadata={"store": self._kind, "subject_prefix": self.prefix},
                queue_group=QUEUE_GROUP,
            ),
        )
        endpoints = [
            ("admin-" + op.name.replace(".", "-"), f"admin.{op.name}", self._admin(op.method),
             "admin")
            for op in ADMIN_OPERATIONS.values()
        ] + [
            (f"user-{name}", f"user.*.{name}", self._user(name),
             "the user named by the subject token")
            for name in USER_OPERATIONS
        ]  # fmt: skip
        for name, subject, handle, who in endpoints:
            await self._service.add_endpoint(
                EndpointConfig(
                    name=name,
                    subject=f"{self.prefix}.{subject}",
                    handler=self._spawner(name, handle),
                    metadata={"who": who},
                )
            )
            self._endpoints[name] = self._service._endpoints[-1]
        await self._nc.flush()

    def _spawner(
        self, name: str, handle: Callable[[Request], Awaitable[str | None]]
    ) -> Callable[[Request], Awaitable[None]]:
        async def timed(request: Request) -> None:
            started = time.perf_counter_ns()
            error = await handle(request)
            self._account(name, time.perf_counter_ns() - started, error)

        async def spawn(request: Request) -> None:
            task = asyncio.ensure_future(timed(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return spawn

    def _account(self, name: str, elapsed_ns: int, error: str | None) -> None:
        """Add a request's own time, and its error, to its endpoint's ``$SRV.STATS``.

        Micro's handler here only starts the task (micro adds that moment itself);
        the figures are micro's own fields, averaged the way micro averages them.
        """
        endpoint = self._endpoints[name]
        endpoint._processing_time += elapsed_ns
        endpoint._average_processing_time = int(
            endpoint._processing_time / max(endpoint._num_requests, 1)
        )
        if error is not None:
            endpoint._num_errors += 1
            endpoint._last_error = error  # type: ignore[assignment]  # micro sets a str too

    def _admin(self, method: str) -> Callable[[Request], Awaitable[str | None]]:
        op = ADMIN_OPERATIONS[method]

        async def handle(request: Request) -> str | None:
            async def work() -> Any:
                result = await op.call(self._store, Params(request.data))
                if op.writes_allowlist and self._on_allowlist_change is not None:
                    # Answer once the server lets in exactly the new allowlist: a
                    # revoked user is disconnected before its revocation is confirmed.
                    await self._on_allowlist_change()
                return result

            return await self._answer(request, work)

        return handle

    def _user(self, name: str) -> Callable[[Request], Awaitable[str | None]]:
        read = USER_OPERATIONS[name]

        async def handle(request: Request) -> str | None:
            async def work() -> Any:
                # P.user.<token>.<name>: the server lets only that user publish here.
                token = request.subject[len(self.prefix) + len(".user.") :].rsplit(".", 1)[0]
                try:
                    user_id = decode_id(token)
                except MembershipError:
                    raise InvalidInputError(
                        f"subject token {token!r} is not an encoded user id"
                    ) from None
                return await read(self._store, user_id, Params(request.data))

            return await self._answer(request, work)

        return handle

    async def _answer(self, request: Request, work: Callable[[], Awaitable[Any]]) -> str | None:
        """Run ``work`` and reply with its result or its error; the error as
        ``code:message`` (micro's ``last_error`` form), None when it succeeded."""
        try:
            body = result_reply(await work())
            if len(body) > self._nc.max_payload:  # it would never arrive: say so instead
                raise FailedError(
                    f"the reply ({len(body):,} bytes) is larger than the server's max_payload "
                    f"({self._nc.max_payload:,} bytes); read a state this large with "
                    "`membershipd export` on the store itself"
                )
        except Exception as exc:  # every failure is answered, never dropped
            if not isinstance(exc, MembershipError):
                _log.exception("request on %s failed", request.subject)
            code, message, data = error_reply(exc)
            with contextlib.suppress(Exception):
                await request.respond_error(code, message, data)
            return f"{code}:{message}"
        finally:
            self.handled += 1
        with contextlib.suppress(Exception):  # a requester that left cannot be answered
            await request.respond(body)
        return None

    async def stop(self) -> None:
        """Drain: take no new request, answer every one received, then let go."""
        service, self._service = self._service, None
        if service is None:
            return
        for endpoint in list(service._endpoints):
            subscription = endpoint._subscription
            if subscription is not None and not self._nc.is_closed:
                with contextlib.suppress(Exception):
                    await subscription.drain()  # the queued requests become tasks
                endpoint._subscription = None
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        service._endpoints = []
        with contextlib.suppress(Exception):
            await service.stop()
        with contextlib.suppress(Exception):
            await self._nc.flush()
