"""The cluster fixtures (fixtures/cluster.py) for the tests in this directory."""

from __future__ import annotations

from fixtures.cluster import nats_cluster

__all__ = ["nats_cluster"]
