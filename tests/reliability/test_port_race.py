"""A port picked free and taken by another process before nats-server binds it.

The embedded default picks free ports and then starts nats-server on them; in between,
another process (another test worker, another tool) may take one. The server then dies
of "address already in use" while the port answers, for the other process: readiness
is the server's own word in its log, not an open port, and a picked port is picked
again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from membership import embedded
from membership.connect import NatsTarget, connect_nats
from membership.embedded import EmbeddedServer, ServerStartError


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def has_jetstream(url: str) -> bool:
    nc = await connect_nats(NatsTarget(url))
    try:
        info = await nc.jetstream().account_info()
        return info is not None
    finally:
        await nc.close()


def test_a_picked_port_taken_first_is_picked_again(
    taken: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, picks = embedded.free_port, [taken]  # the first pick loses the race

    def pick(host: str = "127.0.0.1") -> int:
        return picks.pop(0) if picks else real(host)

    monkeypatch.setattr(embedded, "free_port", pick)
    with EmbeddedServer(store_dir=tmp_path / "nats") as server:
        assert server.port != taken
        assert asyncio.run(has_jetstream(server.url))
    log = (tmp_path / "nats" / "nats-server.log").read_text()
    assert log.count("address already in use") == 1


def test_a_port_the_caller_chose_and_another_process_holds_is_an_error(
    taken: int, tmp_path: Path
) -> None:
    with pytest.raises(ServerStartError, match=f"127.0.0.1:{taken}.*address already in use"):
        EmbeddedServer(port=taken, store_dir=tmp_path / "nats").start()
