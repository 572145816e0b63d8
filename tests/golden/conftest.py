"""The golden snapshot fixture: syrupy with the harness's canonical JSON extension."""

from __future__ import annotations

import pytest
from syrupy.assertion import SnapshotAssertion

from harness.golden import GoldenJSONExtension


@pytest.fixture
def golden(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    """``assert golden == data`` compares ``data`` with its own JSON file under
    ``__snapshots__/``; ``tox -e golden`` rewrites the files for review."""
    return snapshot.use_extension(GoldenJSONExtension)
