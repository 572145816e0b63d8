"""Print the mutation score of the last ``mutmut run``: ``python -m harness.mutation_score``.

Reads ``mutants/mutmut-cicd-stats.json`` (written by ``mutmut export-cicd-stats``) and
prints one line with mutmut's own definition of the score, (killed + timeout) /
(total - skipped), over the mutants that were checked, then the counts behind it. Exit 1 if there are no results, so a
``tox -e mutation`` that measured nothing cannot look like a pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

VERDICTS = (
    "killed",
    "timeout",
    "survived",
    "no_tests",
    "suspicious",
    "skipped",
    "segfault",
    "check_was_interrupted_by_user",
)


def not_checked(stats: dict[str, Any]) -> int:
    """Mutants without a verdict (a run limited to some mutants, or interrupted)."""
    return int(stats.get("total", 0)) - sum(int(stats.get(v, 0)) for v in VERDICTS)


def score(stats: dict[str, Any]) -> tuple[float, int]:
    """(score in percent, mutants tested): mutmut's (killed + timeout) / (total - skipped),
    counting only the mutants that were checked."""
    tested = int(stats.get("total", 0)) - int(stats.get("skipped", 0)) - not_checked(stats)
    killed = int(stats.get("killed", 0)) + int(stats.get("timeout", 0))
    return (100.0 * killed / tested if tested > 0 else 0.0), tested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", type=Path, default=Path("mutants/mutmut-cicd-stats.json"))
    args = parser.parse_args(argv)
    try:
        stats = json.loads(args.stats.read_text())
    except FileNotFoundError:
        print(
            f"mutation score: no results in {args.stats}; run `mutmut run` first", file=sys.stderr
        )
        return 1
    percent, tested = score(stats)
    if tested <= 0:
        print(f"mutation score: {args.stats} counts no tested mutant", file=sys.stderr)
        return 1
    killed = int(stats.get("killed", 0)) + int(stats.get("timeout", 0))
    print(f"mutation score: {percent:.1f}% ({killed} of {tested} mutants killed)")
    print(
        "  "
        + ", ".join(
            f"{name.replace('_', ' ')} {int(stats.get(name, 0))}"
            for name in ("killed", "timeout", "survived", "no_tests", "suspicious", "skipped")
        )
        + f", not checked {not_checked(stats)}"
    )
    print("  survivors: `mutmut results`; one mutant's diff: `mutmut show <name>`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
