"""Migration properties against the real nats-server: parity, idempotence, convergence.

Every Hypothesis example gets its own SQLite file and its own KV namespace (bucket
prefix), removed afterwards, so examples never see each other. KV is checked twice over:
through the product's own read path (the report's verification) and through an
independent one (every bucket read raw, decoded by the canonical decoder, each key
compared with the README's encoding).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.plugin import NatsServer, fresh_namespace
from harness.parity import (
    assert_idempotent,
    assert_kv_holds,
    assert_parity,
    diff_bucket_contents,
    snapshot_digest,
)
from harness.strategies import (
    any_states,
    dirty_states,
    large_states,
    reachable_states,
    state_pairs,
    valid_states,
)
from membership.audit import invariant_findings
from membership.errors import TargetNotEmptyError
from membership.migrate import migrate_sqlite_to_kv, verify_parity
from membership.model import Snapshot
from tests.property.support import KINDS, run, scaled


async def migrate_and_check(server: NatsServer, db: Path, state: Snapshot) -> None:
    """Migrate ``db`` (holding ``state``) into a fresh namespace; KV must be ``state``."""
    async with fresh_namespace(server) as ns:
        report = await migrate_sqlite_to_kv(db, ns.target, prefix=ns.prefix, backup=False)
        async with ns.store(create=False) as kv:
            await assert_kv_holds(kv, state)
        assert report.verified, report.differences
        assert report.digest == snapshot_digest(state)
        assert {k: c.source for k, c in report.records.items()} == state.counts()
        assert {k: c.written for k, c in report.records.items()} == state.counts()
        if invariant_findings(state):
            result = await verify_parity(db, ns.target, prefix=ns.prefix)
            assert result.equal, result.differences
            assert result.findings == invariant_findings(state)


@scaled(0.5)
@given(state=st.one_of(valid_states(), reachable_states(), large_states(dirty=False)))
def test_valid_states_migrate_with_parity(
    nats_server: NatsServer, sqlite_factory: Callable[..., Path], state: Snapshot
) -> None:
    assert invariant_findings(state) == []
    db = sqlite_factory(state)
    assert_parity(state, db, source_name="drawn", target_name="SQLite")  # the file is faithful
    run(migrate_and_check(nats_server, db, state))


@scaled(0.5)
@given(state=st.one_of(dirty_states(), large_states(dirty=True)))
def test_dirty_states_are_copied_faithfully(
    nats_server: NatsServer, sqlite_factory: Callable[..., Path], state: Snapshot
) -> None:
    """Legacy rows that break API rules arrive as they are, and verify lists them."""
    assert invariant_findings(state)
    db = sqlite_factory(state)
    assert_parity(state, db, source_name="drawn", target_name="SQLite")
    run(migrate_and_check(nats_server, db, state))


@scaled(0.5)
@given(state=any_states())
def test_a_second_migration_writes_nothing(
    nats_server: NatsServer, sqlite_factory: Callable[..., Path], state: Snapshot
) -> None:
    db = sqlite_factory(state)

    async def body() -> None:
        async with fresh_namespace(nats_server) as ns:
            first = await migrate_sqlite_to_kv(db, ns.target, prefix=ns.prefix, backup=False)
            assert first.verified
            second = await assert_idempotent(db, ns)
            assert second.digest == first.digest == snapshot_digest(state)

    run(body())


def lacking(s1: Snapshot, s2: Snapshot) -> dict[str, int]:
    """Per kind, how many records of S1 S2 does not have (by primary key)."""
    return {
        kind: len({r.pk for r in getattr(s1, kind)} - {r.pk for r in getattr(s2, kind)})
        for kind in KINDS
    }


@scaled(0.5)
@given(pair=state_pairs())
def test_prune_converges_to_a_fresh_migration(
    nats_server: NatsServer,
    sqlite_factory: Callable[..., Path],
    pair: tuple[Snapshot, Snapshot],
) -> None:
    """S1 then S2 with --prune leaves exactly what S2 alone leaves in an empty target."""
    s1, s2 = pair
    db1, db2 = sqlite_factory(s1), sqlite_factory(s2)

    async def body() -> None:
        async with fresh_namespace(nats_server) as moved, fresh_namespace(nats_server) as fresh:
            await migrate_sqlite_to_kv(db1, moved.target, prefix=moved.prefix, backup=False)
            report = await migrate_sqlite_to_kv(
                db2, moved.target, prefix=moved.prefix, backup=False, prune=True
            )
            await migrate_sqlite_to_kv(db2, fresh.target, prefix=fresh.prefix, backup=False)
            async with moved.store(create=False) as a, fresh.store(create=False) as b:
                raw_b = await assert_kv_holds(b, s2, source_name="S2")
                raw_a = await assert_kv_holds(a, s2, source_name="S2")
            lines = diff_bucket_contents(raw_b, raw_a, "fresh target", "S1 then S2")
            assert not lines, "\n".join(lines)
            assert report.verified
            assert {k: c.pruned for k, c in report.records.items()} == lacking(s1, s2)

    run(body())


@scaled(0.5)
@given(pair=state_pairs())
def test_records_only_in_kv_refuse_the_run_before_any_write(
    nats_server: NatsServer,
    sqlite_factory: Callable[..., Path],
    pair: tuple[Snapshot, Snapshot],
) -> None:
    """Without --prune, S2 lacking records of S1 is refused and KV stays S1, byte for byte."""
    s1, s2 = pair
    db1, db2 = sqlite_factory(s1), sqlite_factory(s2)
    missing = sum(lacking(s1, s2).values())

    async def body() -> None:
        async with fresh_namespace(nats_server) as ns:
            await migrate_sqlite_to_kv(db1, ns.target, prefix=ns.prefix, backup=False)
            seqs = ns.stream_seqs()
            if missing:
                with pytest.raises(TargetNotEmptyError) as refused:
                    await migrate_sqlite_to_kv(db2, ns.target, prefix=ns.prefix, backup=False)
                assert len(refused.value.extra) == missing
                assert ns.stream_seqs() == seqs  # nothing written, not even S2's new records
                async with ns.store(create=False) as kv:
                    await assert_kv_holds(kv, s1, source_name="S1")
            else:
                report = await migrate_sqlite_to_kv(db2, ns.target, prefix=ns.prefix, backup=False)
                assert report.verified
                async with ns.store(create=False) as kv:
                    await assert_kv_holds(kv, s2, source_name="S2")

    run(body())
