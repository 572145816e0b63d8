"""A small run of `python -m harness.bench`: it runs, its JSON has every field, parity
holds. No timing is asserted: the figures belong in the README, measured on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEASURED = ("seconds", "records_per_s")
MIGRATION = (*MEASURED, "writes", "peak_rss_mb")


def test_a_small_benchmark_run_reports_every_figure_and_parity(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.bench",
            "--records",
            "1500",
            "--naive-sample",
            "200",
            "--rounds",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    total = figures["records"]["total"]
    assert total == sum(figures["records"][k] for k in ("users", "rooms", "members", "sealed_keys"))
    assert figures["records"]["sealed_keys"] >= 1500
    for name in ("ceiling", "raw_publish", "naive", "bulk_read"):
        assert all(figures[name][f] > 0 for f in MEASURED), name
    assert figures["ceiling"]["records"] == figures["raw_publish"]["records"] == total
    assert figures["naive"]["records"] == 200 and figures["bulk_read"]["records"] == total
    for name in ("migrate_first", "migrate_again", "verify"):
        assert all(figures[name][f] >= 0 for f in MIGRATION), name
        assert figures[name]["seconds"] > 0 and figures[name]["peak_rss_mb"] > 10
    assert figures["migrate_first"]["writes"] == total
    assert figures["migrate_again"]["writes"] == 0
    assert figures["verify"]["equal"] is True
    for name in ("bulk_read", "verify"):  # measured in turn, medians reported
        assert len(figures[name]["rounds"]) == 2, name
        assert figures[name]["seconds"] == pytest.approx(sum(figures[name]["rounds"]) / 2, abs=2e-3)
    for ratio in (
        "ratio_to_ceiling",
        "ratio_to_raw_publish",
        "speedup_over_naive",
        "again_over_first",
        "verify_over_bulk_read",
    ):
        assert figures[ratio] > 0, ratio
    assert figures["ratio_to_ceiling"] == round(
        figures["migrate_first"]["records_per_s"] / figures["ceiling"]["records_per_s"], 3
    )
    assert figures["parity"] is True and all(figures["parity_checks"].values())
    assert set(figures["targets"]) == {
        "ratio_to_ceiling",
        "speedup_over_naive",
        "again_over_first",
        "verify_over_bulk_read",
        "peak_rss_mb",
    }
    assert "| migrate-to-kv, first run |" in result.stdout  # the table
