"""The harness proves it can fail: each planted bug is caught, with a readable diff.

Every test migrates one known state for real (real nats-server, real SQLite file) with a
bug planted (:mod:`tests.meta.planted`), then runs the same checkers the property tests
use and asserts that they fail, naming the record and the field. The honest migration of
the same state passes the same checkers (``test_the_honest_migration_passes_every_gate``),
so a failure below is the bug's doing, not the state's.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FailedHealthCheck
from hypothesis.stateful import run_state_machine_as_test

from fixtures.plugin import Namespace, NatsServer, unique_prefix
from harness.differential import StoreAgreement
from harness.parity import (
    IdempotenceFailure,
    LayoutFailure,
    ParityFailure,
    assert_idempotent,
    assert_kv_holds,
    assert_kv_layout,
    assert_parity,
    bucket_contents,
    snapshot_from_contents,
)
from harness.strategies import run_sync, write_sqlite
from membership import migrate as migration
from membership.demo import build_representative_state, demo_key
from membership.errors import DataError, MembershipError
from membership.memory import MemoryStore
from membership.migrate import MigrationReport
from membership.model import Snapshot
from tests.meta import planted


def known_state() -> Snapshot:
    """The representative control plane, plus two users whose ids differ only in case."""
    store = MemoryStore(clock=iter(range(1_000, 2_000)).__next__)
    run_sync(build_representative_state(store))
    run_sync(store.add_user("Case", demo_key("pk/Case", 32)))
    run_sync(store.add_user("case", demo_key("pk/case", 32)))
    return run_sync(store.export_snapshot())


STATE = known_state()


@pytest.fixture
def source_db(tmp_path: Path) -> Path:
    return write_sqlite(STATE, tmp_path / "control.db")


async def migrate(db: Path, ns: Namespace) -> MigrationReport | MembershipError:
    """Run the migration; a bug may make it fail loudly, which is fine but not the point."""
    try:
        return await migration.migrate_sqlite_to_kv(db, ns.target, prefix=ns.prefix, backup=False)
    except MembershipError as exc:
        return exc


async def parity_failure(ns: Namespace) -> ParityFailure:
    async with ns.store(create=False) as kv:
        with pytest.raises(ParityFailure) as info:
            await assert_kv_holds(kv, STATE)
    return info.value


async def idempotence_failure(db: Path, ns: Namespace) -> IdempotenceFailure:
    with pytest.raises(IdempotenceFailure) as info:
        await assert_idempotent(db, ns)
    return info.value


async def test_the_honest_migration_passes_every_gate(source_db: Path, namespace) -> None:
    report = await migrate(source_db, namespace)
    assert isinstance(report, MigrationReport) and report.verified
    async with namespace.store(create=False) as kv:
        await assert_kv_holds(kv, STATE)
    await assert_idempotent(source_db, namespace)


async def test_an_import_that_resets_epochs_to_one(
    monkeypatch: pytest.MonkeyPatch, source_db: Path, namespace
) -> None:
    with planted.on_the_wire(
        monkeypatch, namespace.prefix, planted.epochs_reset_to_one(namespace.prefix)
    ):
        await migrate(source_db, namespace)
        failure = await parity_failure(namespace)
        again = await idempotence_failure(source_db, namespace)
    assert failure.diff == (
        "rooms['general'].epoch: SQLite 2, KV 1",
        "rooms['ops.team ü'].epoch: SQLite 2, KV 1",
    )
    assert "rooms['general'].epoch: SQLite 2, KV 1" in str(failure)
    assert any(
        p.startswith("the second migration reported 2 write(s): rooms 2 written")
        for p in again.problems
    )
    assert any(
        p.startswith(f"stream KV_{namespace.prefix}_rooms: last_seq") for p in again.problems
    )


async def test_an_import_that_drops_revoked_users(
    monkeypatch: pytest.MonkeyPatch, source_db: Path, namespace
) -> None:
    with planted.on_the_wire(
        monkeypatch, namespace.prefix, planted.revoked_users_dropped(namespace.prefix)
    ):
        await migrate(source_db, namespace)
        failure = await parity_failure(namespace)
        again = await idempotence_failure(source_db, namespace)
    assert failure.diff == ("users['carol']: only in SQLite",)
    assert any("users 1 written" in p for p in again.problems)


async def test_a_key_encoding_that_maps_two_ids_to_one_key(
    monkeypatch: pytest.MonkeyPatch, source_db: Path, namespace
) -> None:
    """``Case`` and ``case`` share the key ``case``: parity, layout and idempotence all fail.

    Parity and layout see the lost user. The idempotence gate sees that a rerun is not a
    no-op: the source's ``Case`` looks missing from KV, so the rerun writes it again, under
    ``case``, and the users stream moves although the source did not change. Which error
    carries that depends on how far the rerun gets: today the migration's own read-back
    then finds the record for ``Case`` under the key ``case`` and stops with a
    :class:`DataError` naming bucket, key and record, which ``assert_idempotent`` passes
    on as it is (it wraps only a rerun that returns a report); a rerun that gets to its
    report fails as :class:`IdempotenceFailure` (``users['Case']: only in first run``,
    ``users['case']: only in second run``: each rerun overwrites the other). Either way
    the gate fails and names both ids; the moved stream is checked here directly.
    """
    with planted.on_the_wire(
        monkeypatch, namespace.prefix, planted.case_folding_keys(namespace.prefix)
    ):
        await migrate(source_db, namespace)
        async with namespace.store(create=False) as kv:
            contents = await bucket_contents(kv)
            with pytest.raises(LayoutFailure) as layout:
                await assert_kv_layout(kv, STATE, contents)
        users = f"KV_{namespace.prefix}_users"
        before = namespace.stream_seqs()[users]
        with pytest.raises((IdempotenceFailure, DataError)) as again:
            await assert_idempotent(source_db, namespace)
        after = namespace.stream_seqs()[users]
    # One of the two users is lost: both were written to the key "case".
    with pytest.raises(ParityFailure) as parity:
        assert_parity(STATE, snapshot_from_contents(contents))
    assert parity.value.diff == ("users['Case']: only in SQLite",)
    # "case" was written last (code-point order), over "Case" under the same key.
    assert layout.value.diff == ("bucket users key 'Case': only in expected (users['Case'])",)
    # The rerun wrote, and its failure names both ids.
    assert after > before, f"the rerun left {users} at last_seq {before}"
    message = str(again.value)
    assert "'Case'" in message and "'case'" in message, message
    if isinstance(again.value, DataError):
        assert "the value under key 'case' is a record for key 'Case'" in message


async def test_a_migration_that_skips_the_last_record(
    monkeypatch: pytest.MonkeyPatch, source_db: Path, namespace
) -> None:
    bug = planted.last_record_skipped(namespace.prefix, STATE)
    with planted.on_the_wire(monkeypatch, namespace.prefix, bug):
        await migrate(source_db, namespace)
        failure = await parity_failure(namespace)
        again = await idempotence_failure(source_db, namespace)
    assert failure.diff == ("sealed_keys['ops.team ü', 2, 'ünï*>=/code']: only in SQLite",)
    assert any("sealed_keys 1 written" in p for p in again.problems)


async def test_values_that_are_not_canonical_json(
    monkeypatch: pytest.MonkeyPatch, source_db: Path, namespace
) -> None:
    """The same records in other bytes: parity holds, the byte-level layout check does not.

    (Whether a second run rewrites them is the migration's business: it compares records.)
    """
    bug = planted.values_not_canonical(namespace.prefix)
    with planted.on_the_wire(monkeypatch, namespace.prefix, bug):
        await migrate(source_db, namespace)
    async with namespace.store(create=False) as kv:
        contents = await bucket_contents(kv)
        assert_parity(STATE, snapshot_from_contents(contents))  # semantically equal
        with pytest.raises(LayoutFailure) as layout:
            await assert_kv_layout(kv, STATE, contents)
    assert len(layout.value.diff) == sum(STATE.counts().values())
    assert any(
        line.startswith("bucket rooms key 'general': expected ") for line in layout.value.diff
    )
    assert all(": expected " in line and " bytes sha256:" in line for line in layout.value.diff)


async def test_a_migration_that_rewrites_its_schema_record_every_run(
    monkeypatch: pytest.MonkeyPatch, source_db: Path, namespace
) -> None:
    """Equal data, but a run that writes: only the idempotence gate can see it."""
    with planted.schema_rewritten_every_run(monkeypatch):
        await migrate(source_db, namespace)
        async with namespace.store(create=False) as kv:
            await assert_kv_holds(kv, STATE)  # parity and layout hold
        meta = f"KV_{namespace.prefix}_meta"
        before = namespace.stream_seqs()[meta]
        again = await idempotence_failure(source_db, namespace)
    assert again.problems == (f"stream {meta}: last_seq {before} before, {before + 1} after",)


# -- the differential state machine catches store bugs ------------------------------------

QUICK = settings(
    max_examples=30,
    stateful_step_count=25,
    derandomize=True,
    database=None,
    phases=[Phase.generate],  # the first failure is enough here; shrinking costs time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    deadline=None,
    print_blob=False,
)


@pytest.mark.parametrize(
    ("bug", "expected"),
    [
        (planted.kv_rekey_bumps_twice, "rekey("),
        (planted.sqlite_revoke_keeps_memberships, "revoke_user("),
        (planted.service_hides_not_found, "service: ('error', ('FailedError'"),
    ],
    ids=["kv-rekey-bumps-twice", "sqlite-revoke-keeps-memberships", "service-hides-not-found"],
)
def test_the_state_machine_catches_a_store_bug(
    monkeypatch: pytest.MonkeyPatch,
    nats_server: NatsServer,
    tmp_path_factory: pytest.TempPathFactory,
    bug: Callable[[pytest.MonkeyPatch], AbstractContextManager[None]],
    expected: str,
) -> None:
    with bug(monkeypatch), pytest.raises(AssertionError) as info:
        run_state_machine_as_test(
            lambda: StoreAgreement(
                lambda: Namespace(nats_server, unique_prefix("meta")),
                tmp_path_factory.mktemp("machine"),
            ),
            settings=QUICK,
        )
    assert not isinstance(info.value, FailedHealthCheck)
    message = str(info.value)
    assert "the stores disagree" in message or "differ in" in message, message
    assert expected in message, message
