"""The soak tests reuse the reliability tests' fixtures (a big database, a server of their own)."""

from tests.reliability.test_crash_and_server_loss import big_db, server

__all__ = ["big_db", "server"]
