"""A JetStream API request that goes unanswered while the connection is up is asked again.

Right after a cluster node is lost, the survivors elect leaders and catch up, and for a
while a stream-info or consumer request may get no answer at all: a re-run a moment
later succeeds (CI saw it in ``test_a_node_killed_mid_migration_into_r3_loses_nothing``).
Here a real server's JetStream API sits behind a hop on another API prefix that drops
the requests it is told to drop, and forwards the rest to ``$JS.API`` unchanged: the
answers are the server's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.errors
import pytest
from nats.aio.client import Client

from fixtures.plugin import NatsServer, unique_prefix
from membership.connect import connect_nats
from membership.kv import API_ATTEMPTS, HISTORY, _PatientJetStream

HOP = "$LOSSY.API"


@asynccontextmanager
async def lossy_hop(nc: Client, drop: int) -> AsyncIterator[list[str]]:
    """Forward ``HOP.>`` to ``$JS.API.>``, ignoring the first ``drop`` requests."""
    seen: list[str] = []

    async def forward(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)
        if len(seen) <= drop:
            return
        answer = await nc.request("$JS.API" + msg.subject[len(HOP) :], msg.data, timeout=5)
        await msg.respond(answer.data)

    sub = await nc.subscribe(f"{HOP}.>", cb=forward)
    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def test_an_unanswered_request_is_asked_again_and_the_answer_is_the_servers(
    nats_server: NatsServer,
) -> None:
    nc = await connect_nats(nats_server.target)
    try:
        bucket = unique_prefix("lossy")
        await nc.jetstream().create_key_value(bucket=bucket, history=HISTORY)
        js = _PatientJetStream(nc, prefix=HOP, timeout=0.5)
        async with lossy_hop(nc, drop=2) as seen:  # two unanswered, the third answered
            info = await js.stream_info(f"KV_{bucket}")
        assert info.config.name == f"KV_{bucket}"
        assert seen == [f"{HOP}.STREAM.INFO.KV_{bucket}"] * 3
        await nc.jetstream().delete_key_value(bucket)
    finally:
        await nc.close()


async def test_a_request_never_answered_fails_after_its_tries(nats_server: NatsServer) -> None:
    nc = await connect_nats(nats_server.target)
    try:
        js = _PatientJetStream(nc, prefix=HOP, timeout=0.3)
        async with lossy_hop(nc, drop=API_ATTEMPTS) as seen:
            with pytest.raises(nats.errors.TimeoutError):
                await js.stream_info("KV_never_answered")
        assert len(seen) == API_ATTEMPTS
    finally:
        await nc.close()
