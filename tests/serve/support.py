"""Helpers of the serve tests: connecting as an admin or a user, waiting with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from nats.aio.client import Client

from membership.authz import DEFAULT_SUBJECT_PREFIX
from membership.client import ServiceStore, UserClient, connect_user
from membership.connect import NatsTarget, close_nats, connect_nats
from membership.nkey import UserKeyPair


@asynccontextmanager
async def as_admin(
    url: str, pair: UserKeyPair, prefix: str = DEFAULT_SUBJECT_PREFIX, wait: float = 10.0
) -> AsyncIterator[ServiceStore]:
    nc = await connect_nats(NatsTarget(url), nkey_seed=pair.seed)
    try:
        yield ServiceStore(nc, prefix, timeout=wait)
    finally:
        await close_nats(nc)


class Watched:
    """A user's connection, and every asynchronous error the server sent it."""

    def __init__(self, nc: Client, user_id: str) -> None:
        self.nc = nc
        self.errors: list[str] = []
        self.client = UserClient(nc, user_id, timeout=2.0)

    def as_someone_else(self, user_id: str) -> UserClient:
        return UserClient(self.nc, user_id, timeout=1.0)


@asynccontextmanager
async def as_user(url: str, user_id: str, pair: UserKeyPair) -> AsyncIterator[Watched]:
    nc = await connect_user(NatsTarget(url), pair)
    watched = Watched(nc, user_id)

    async def on_error(exc: Exception) -> None:
        watched.errors.append(str(exc))

    nc._error_cb = on_error  # what the server says to this client (permission violations ...)
    try:
        yield watched
    finally:
        await close_nats(nc)


async def eventually(check: Callable[[], Any], what: str, within: float = 10.0) -> None:
    """Poll ``check`` (sync or async) until it is true; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.02)
