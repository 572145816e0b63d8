"""The verification harness: strategies, parity and idempotence checkers, golden snapshots,
the differential state machine, fault injection, generators and benchmarks.

Importable from the repository root during tests (pytest ``pythonpath = .``); never shipped
in the wheel.
"""
