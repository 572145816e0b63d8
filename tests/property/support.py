"""Plumbing shared by the property tests: one file, one namespace, one loop per example."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import settings

T = TypeVar("T")

KINDS = ("users", "rooms", "members", "sealed_keys")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Hypothesis tests are sync: each example runs its coroutine on a fresh loop."""
    return asyncio.run(coro)


def scaled(fraction: float) -> settings:
    """The active profile (dev/ci/thorough) with a fraction of its examples.

    For properties that run several migrations per example, so that ``ci`` keeps the
    suite fast while ``thorough`` still runs hundreds of them.
    """
    return settings(max_examples=max(5, int(settings.default.max_examples * fraction)))
