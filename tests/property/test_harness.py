"""The harness tested on its own: strategies that mean what they say, checkers that see.

No server here: these are cheap, and they make the properties' promises credible. The
states are what the docstrings claim (valid ones have no invariant findings, dirty ones
do, the reachable ones stay valid), they cover the whole id domain and every kind of
dirt, and the parity checker names exactly the record and field that differ, with both
values, never printing key material.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from harness.parity import (
    ParityFailure,
    assert_parity,
    diff_bucket_contents,
    expected_bucket_contents,
)
from harness.strategies import (
    DIRT_KINDS,
    any_states,
    dirty_states,
    large_states,
    reachable_states,
    valid_states,
)
from membership.audit import invariant_findings
from membership.diff import format_pk, format_value
from membership.model import MAX_ID_BYTES, MAX_INT, Record, Snapshot
from tests.property.support import KINDS


@given(state=st.one_of(valid_states(), large_states(dirty=False)))
def test_valid_states_break_no_rule(state: Snapshot) -> None:
    assert invariant_findings(state) == []


@given(state=reachable_states())
def test_states_the_api_reaches_break_no_rule(state: Snapshot) -> None:
    assert invariant_findings(state) == []


@given(state=dirty_states())
def test_dirty_states_break_some_rule(state: Snapshot) -> None:
    assert invariant_findings(state)


# -- coverage: every feature the issue asks for turns up ------------------------------------

SEARCH = settings(max_examples=400, derandomize=True, database=None, phases=[Phase.generate])


def ids_of(state: Snapshot) -> set[str]:
    return {u.id for u in state.users} | {r.id for r in state.rooms}


FEATURES: dict[str, Callable[[Snapshot], bool]] = {
    "empty": lambda s: sum(s.counts().values()) == 0,
    "a rekeyed room": lambda s: any(r.epoch > 1 for r in s.rooms),
    "a room at the highest epochs": lambda s: any(r.epoch >= MAX_INT - 1 for r in s.rooms),
    "a revoked user with history": lambda s: any(
        k.user_id in {u.id for u in s.users if u.status == "revoked"} for k in s.sealed_keys
    ),
    "sealed keys across epochs": lambda s: len({(k.room_id, k.epoch) for k in s.sealed_keys}) > 2,
    "case twins": lambda s: any(
        i != j and i.lower() == j.lower() for i in ids_of(s) for j in ids_of(s)
    ),
    "a 128-byte id": lambda s: any(len(i.encode()) == MAX_ID_BYTES for i in ids_of(s)),
    "NATS wildcards and separators": lambda s: any(c in i for i in ids_of(s) for c in ".*>"),
    "slash, equals and space": lambda s: any(c in i for i in ids_of(s) for c in "/= "),
    "non-ASCII": lambda s: any(not i.isascii() for i in ids_of(s)),
    "a _kv id": lambda s: any(i.startswith("_kv") for i in ids_of(s)),
    "a 4096-byte sealed key": lambda s: any(len(k.sealed_key) == 4096 for k in s.sealed_keys),
    "a few hundred records": lambda s: sum(s.counts().values()) >= 200,
}


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_the_state_strategies_reach(feature: str) -> None:
    find(any_states(), FEATURES[feature], settings=SEARCH)


DIRT_FINDINGS = {
    "orphan member (no room)": "does not exist (orphan member)",
    "orphan member (no user)": "does not exist (orphan member)",
    "revoked member": "is revoked but still a member",
    "member joined above the room's epoch": "above the room's",
    "sealed key above the room's epoch": "is above the room's epoch",
    "sealed key of a non-member at the current epoch": "for a user who is not a member",
    "sealed key of a missing room": ": room ",
    "sealed key of a missing user": ": user ",
    "users sharing an nkey": "share the nkey",
}


@pytest.mark.parametrize("kind", DIRT_KINDS)
def test_the_dirty_strategy_reaches(kind: str) -> None:
    needle = DIRT_FINDINGS[kind]
    find(dirty_states(), lambda s: any(needle in f for f in invariant_findings(s)), settings=SEARCH)


# -- the parity checker sees one changed field, and says which ----------------------------

FIELDS = {
    "users": ("public_key", "status", "created_at"),
    "rooms": ("epoch", "created_at"),
    "members": ("role", "joined_epoch"),
    "sealed_keys": ("sealed_key",),
}


def other_value(value: Any, field: str) -> Any:
    if isinstance(value, bytes):
        return bytes([value[0] ^ 0xFF]) + value[1:]
    if field == "status":
        return "revoked" if value == "active" else "active"
    if field == "role":
        return "member" if value == "owner" else "owner"
    return value + 1 if value < MAX_INT else value - 1


@given(state=any_states(), data=st.data())
def test_one_changed_field_is_named_with_both_values(state: Snapshot, data: st.DataObject) -> None:
    kinds = [k for k in KINDS if getattr(state, k)]
    if not kinds:
        assert_parity(state, state)
        return
    kind = data.draw(st.sampled_from(kinds))
    record: Record = data.draw(st.sampled_from(getattr(state, kind)))
    field = data.draw(st.sampled_from(FIELDS[kind]))
    old = getattr(record, field)
    changed = replace(record, **{field: other_value(old, field)})  # type: ignore[arg-type]
    target = replace(
        state, **{kind: tuple(changed if r is record else r for r in getattr(state, kind))}
    )
    with pytest.raises(ParityFailure) as info:
        assert_parity(state, target)
    line = (
        f"{format_pk(kind, record.pk)}.{field}: SQLite {format_value(old)}, "
        f"KV {format_value(getattr(changed, field))}"
    )
    assert info.value.diff == (line,)
    assert line in str(info.value)
    for secret in (old, getattr(changed, field)):
        if isinstance(secret, bytes):  # key material never reaches a log
            assert base64.b64encode(secret).decode() not in str(info.value)
            assert secret.hex() not in str(info.value)
    # A record missing on one side is named too, and the layout check sees the same.
    dropped = replace(state, **{kind: tuple(r for r in getattr(state, kind) if r is not record)})
    with pytest.raises(ParityFailure) as gone:
        assert_parity(state, dropped)
    assert gone.value.diff == (f"{format_pk(kind, record.pk)}: only in SQLite",)
    layout = diff_bucket_contents(
        expected_bucket_contents(state), expected_bucket_contents(target), actual_name="KV"
    )
    assert len(layout) == 1 and format_pk(kind, record.pk) in layout[0]
