"""Golden snapshots that auditors read: one canonical, indented JSON file per snapshot.

:class:`GoldenJSONExtension` is a syrupy extension (a single-file JSON extension):
every snapshot is its own ``.json`` file under ``tests/golden/__snapshots__/``,
written as the project's canonical JSON (keys sorted in code-point order, non-ASCII
as itself, integers as integers, no floats) but indented by two spaces and ending
with one newline, so that a change to one record is a change to one line in review.

It accepts only plain JSON data (dicts with string keys, lists, strings, integers,
booleans, ``None``): anything else (bytes, floats, dataclasses, objects whose
``repr`` would leak into a file) is a ``TypeError`` naming where it was found,
never a silently different golden file. Byte fields reach a golden file only as
canonical base64, because the tests snapshot what ``membershipd`` prints or what
the buckets hold, never Python objects.

The helpers turn run-specific output into stable data: :func:`text_lines` for
text output, :func:`normalise` for paths and timestamps, :func:`read_kv_layout`
for the raw content of a KV namespace (bucket -> key -> value) with the random
bucket prefix replaced by a fixed label and without revisions or timestamps.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

import nats.js.errors
from nats.js import JetStreamContext
from syrupy.extensions.json import JSONSnapshotExtension

from membership.connect import NatsTarget, connect_nats

__all__ = [
    "PREFIX_LABEL",
    "GoldenJSONExtension",
    "check_plain",
    "golden_text",
    "normalise",
    "read_kv_layout",
    "read_raw_kv",
    "stream_keys",
    "text_lines",
]

PREFIX_LABEL: Final = "<prefix>"
"""What a golden file shows in place of the test's random bucket prefix."""


def check_plain(data: Any, where: str = "$") -> None:
    """Raise ``TypeError`` unless ``data`` is plain JSON data without floats."""
    if data is None or isinstance(data, (str, bool, int)):
        return
    if isinstance(data, Mapping):
        for key, value in data.items():
            if not isinstance(key, str):
                raise TypeError(f"golden data at {where}: key {key!r} is not a string")
            check_plain(value, f"{where}.{key}")
        return
    if isinstance(data, list):
        for i, value in enumerate(data):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"golden data at {where} is a {type(data).__name__}; convert it to plain JSON "
        "(canonical base64 for bytes, lists for tuples) before snapshotting"
    )


def golden_text(data: Any) -> str:
    """The exact text of a golden file for ``data``."""
    check_plain(data)
    return json.dumps(data, ensure_ascii=False, sort_keys=True, indent=2, allow_nan=False) + "\n"


class GoldenJSONExtension(JSONSnapshotExtension):
    """One canonical, indented JSON file per snapshot (see the module docstring)."""

    def serialize(
        self, data: Any, *, exclude: Any = None, include: Any = None, matcher: Any = None
    ) -> str:
        check_plain(data)
        filtered = self._filter(  # syrupy's include/exclude/matcher, should a test use them
            data=data, depth=0, path=(), exclude=exclude, include=include, matcher=matcher
        )
        return golden_text(filtered)


def text_lines(text: str) -> list[str]:
    """Text output as a list of lines, the readable way to keep it in a JSON file."""
    return text.splitlines()


def normalise(data: Any, replacements: Mapping[str, str]) -> Any:
    """``data`` with every regular expression in ``replacements`` replaced in every string.

    Keys are patterns, applied in order; a pattern that never matches is an error,
    so a golden cannot silently keep a run-specific value the test meant to hide.
    """
    unused = set(replacements)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            for pattern, label in replacements.items():
                value, n = re.subn(pattern, label, value)
                if n:
                    unused.discard(pattern)
            return value
        if isinstance(value, Mapping):
            return {walk(k): walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    out = walk(data)
    if unused:
        raise AssertionError(f"normalise: no string matched {sorted(unused)}")
    return out


async def stream_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """Every key whose latest message the bucket's stream holds (deleted ones too), as
    the server lists the stream's subjects.

    Not nats-py's ``kv.keys()``: its watcher can signal "no more keys" before handing
    over the first one (consumer info already counts it delivered), a ``NoKeysError``
    for a bucket that has keys.
    """
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=">")
    return [s.removeprefix(f"$KV.{bucket}.") for s in info.state.subjects or {}]


async def read_raw_kv(target: NatsTarget, prefix: str) -> dict[str, dict[str, bytes]]:
    """Every bucket ``<prefix>_*`` on the server: bucket -> key -> the value's bytes.

    Read with nats-py's own KV API (not :mod:`membership.kv`), the way an auditor
    with the ``nats`` CLI would see it: live keys only, the latest value of each.
    """
    nc = await connect_nats(target)
    try:
        js = nc.jetstream()
        streams = [s.config.name for s in await js.streams_info()]
        buckets = sorted(name[3:] for name in streams if name and name.startswith(f"KV_{prefix}_"))
        layout: dict[str, dict[str, bytes]] = {}
        for bucket in buckets:
            kv = await js.key_value(bucket)
            values: dict[str, bytes] = {}
            for key in sorted(await stream_keys(js, bucket)):  # deleted keys skipped below
                with contextlib.suppress(nats.js.errors.KeyDeletedError):
                    entry = await kv.get(key)
                    values[key] = entry.value or b""
            layout[bucket] = values
        return layout
    finally:
        await nc.close()


def read_kv_layout(
    raw: Mapping[str, Mapping[str, bytes]], prefix: str, label: str = PREFIX_LABEL
) -> dict[str, dict[str, Any]]:
    """The raw layout with each value parsed as JSON and the prefix replaced by ``label``."""
    layout: dict[str, dict[str, Any]] = {}
    for bucket, values in raw.items():
        if not bucket.startswith(f"{prefix}_"):
            raise AssertionError(f"bucket {bucket!r} is outside the namespace {prefix!r}")
        name = label + bucket[len(prefix) :]
        layout[name] = {key: json.loads(value) for key, value in values.items()}
    return layout
