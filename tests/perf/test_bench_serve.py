"""A small run of `python -m harness.bench serve`: it runs, every reply was the asking user's
own key, and the JSON has every figure. No timing is asserted (the README has the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("store", ["sqlite", "kv"])
def test_a_small_serve_benchmark_reports_every_figure(tmp_path: Path, store: str) -> None:
    out = tmp_path / "serve.json"
    result = subprocess.run(
        [sys.executable, "-m", "harness.bench", "serve", "--clients", "3", "--seconds", "0.5",
         "--warmup", "0.2", "--users", "10", "--store", store, "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["store"] == store and figures["clients"] == 3
    for phase in ("echo", "serve"):
        measured = figures[phase]
        assert measured["requests"] > 0 and measured["requests_per_s"] > 0, phase
        assert 0 < measured["p50_ms"] <= measured["p90_ms"] <= measured["p99_ms"], phase
    assert figures["wrong_replies"] == 0 and figures["exit_status"] == 0
    assert figures["ratio_to_echo"] == round(
        figures["serve"]["requests_per_s"] / figures["echo"]["requests_per_s"], 3
    )
    assert "| serve: user key fetch |" in result.stdout
