"""Closing a connection that nats-py is busy reconnecting ends quietly.

CI saw it in ``test_a_revocation_on_the_file_reaches_the_server_too``: the server ended
a revoked user's connection, nats-py started reconnecting, and the test closed the
connection at that moment. nats-py's reconnect task waits for the old socket to close;
``close()`` cancels that task, and with it the very future it then waits on itself, so
``close()`` raised ``CancelledError`` out of ``close_nats`` — which every command calls
in a ``finally``, where it would replace the command's own one-line error.

Here the moment is held open instead of hit by chance: a hop between client and server
stops reading what the client sends, the client has more buffered than the sockets
hold (so its old socket cannot finish closing), and then the hop ends the stream
towards the client, which starts the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest

from fixtures.plugin import NatsServer
from membership.connect import FLUSH_TIMEOUT, close_nats
from tests.serve.support import eventually


def _socket_buffers_max() -> int:
    """The most Linux may buffer for one TCP connection: sender's plus receiver's (0
    where there is no /proc to say)."""
    total = 0
    for name in ("tcp_wmem", "tcp_rmem"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
    return total


#: More than the socket buffers of both ends can hold (here 4 MiB + 32 MiB): while the hop
#: reads nothing, part of what the client wrote stays in its own transport's buffer.
STUCK_BYTES = max(96 << 20, 3 * _socket_buffers_max())
CHUNK = 512 * 1024


class Hop:
    """A TCP relay on loopback that can stop reading from its clients and end their streams."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.reading = asyncio.Event()
        self.reading.set()
        self.clients: list[asyncio.StreamWriter] = []
        self._upstreams: list[asyncio.StreamWriter] = []
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                if gate is not None:
                    await gate.wait()
                data = await src.read(65536)
                if not data:
                    break
                dst.write(data)
                await dst.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.append(writer)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._upstreams.append(up_writer)
        for pump in (
            self._pump(reader, up_writer, self.reading),
            self._pump(up_reader, writer, None),
        ):
            task = asyncio.ensure_future(pump)
            self._tasks.add(task)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hop]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in self._tasks:
                task.cancel()
            for writer in (*self.clients, *self._upstreams):
                writer.transport.abort()


async def test_closing_a_connection_caught_mid_reconnect_returns_quietly(
    nats_server: NatsServer,
) -> None:
    async with Hop("127.0.0.1", nats_server.server.port).running() as hop:
        nc = await nats.connect(
            f"nats://127.0.0.1:{hop.port}",
            pending_size=STUCK_BYTES * 2,  # publishes queue up, none waits for a flush
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
        )
        hop.reading.clear()
        for _ in range(STUCK_BYTES // CHUNK):
            await nc.publish("stuck", b"x" * CHUNK)
        # All of it handed to the socket at once, which cannot pass it on: the hop reads nothing.
        await eventually(lambda: nc.pending_data_size == 0, "the buffer to reach the socket")
        for writer in hop.clients:
            writer.write_eof()
        await eventually(lambda: nc.is_reconnecting, "nats-py to start reconnecting")

        started = time.monotonic()
        await close_nats(nc)  # raised CancelledError before
        assert nc.is_closed
        assert time.monotonic() - started < FLUSH_TIMEOUT


async def test_a_caller_cancelled_while_closing_is_still_cancelled(
    nats_server: NatsServer,
) -> None:
    """What close_nats swallows is nats-py's stray cancellation, never the caller's own."""
    async with Hop("127.0.0.1", nats_server.server.port).running() as hop:
        nc = await nats.connect(f"nats://127.0.0.1:{hop.port}", pending_size=STUCK_BYTES * 2)
        hop.reading.clear()
        for _ in range(STUCK_BYTES // CHUNK):
            await nc.publish("stuck", b"x" * CHUNK)
        # close() flushes what is queued, and the hop reads nothing: closing hangs.
        closing = asyncio.ensure_future(close_nats(nc))
        await eventually(lambda: nc.is_closed, "close to begin")
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
