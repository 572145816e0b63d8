"""Progress of a long run, per phase, on stderr: a bar on a terminal, a line otherwise.

A migration has four phases -- ``backup``, ``read``, ``write``, ``verify`` -- and a
million records keep it busy for a minute. The library reports through a
:class:`Progress`: :meth:`~Progress.start` a phase (with its total, when known),
:meth:`~Progress.advance` it, and :meth:`~Progress.done` it with a one-line
summary. Three implementations:

* :class:`BarProgress` redraws one line (``\\r``) at most ten times a second while a
  phase runs and leaves the summary line behind -- for a terminal;
* :class:`LineProgress` writes only the summaries, one plain line per phase -- for
  pipes, CI logs and tests. ``membershipd`` holds them back until the run has
  succeeded (:meth:`LineProgress.flush`): a script reading stderr then gets either
  the phase lines of a finished run or exactly one line, the error;
* :class:`NullProgress` prints nothing (``--quiet``, and library callers).

Nothing here ever writes to stdout: ``--json`` output stays one JSON document.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Final, Protocol, runtime_checkable

__all__ = [
    "BarProgress",
    "LineProgress",
    "NullProgress",
    "Progress",
    "as_progress",
    "for_stderr",
]

REDRAW_EVERY_S: Final = 0.1
BAR_WIDTH: Final = 28


@runtime_checkable
class Progress(Protocol):
    def start(self, phase: str, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def done(self, summary: str) -> None: ...


class NullProgress:
    """Reports nothing."""

    def start(self, phase: str, total: int | None = None) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None

    def done(self, summary: str) -> None:
        return None

    def flush(self) -> None:
        return None


class LineProgress:
    """One plain line per finished phase: ``<phase>: <summary> (<seconds> s)``.

    With ``hold``, the lines wait for :meth:`flush` (a run that fails drops them, so
    its error stays the only line); without, each is written when its phase ends.
    """

    def __init__(self, write: Callable[[str], None], *, hold: bool = False) -> None:
        self._write = write
        self._hold = hold
        self._held: list[str] = []
        self._phase = ""
        self._started = 0.0

    def start(self, phase: str, total: int | None = None) -> None:
        self._phase = phase
        self._started = time.monotonic()

    def advance(self, n: int = 1) -> None:
        return None

    def done(self, summary: str) -> None:
        seconds = time.monotonic() - self._started
        line = f"{self._phase}: {summary} ({seconds:.1f} s)"
        if self._hold:
            self._held.append(line)
        else:
            self._write(line)

    def flush(self) -> None:
        held, self._held = self._held, []
        for line in held:
            self._write(line)


class BarProgress:
    """A bar per phase on a terminal, redrawn in place, then the summary line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._phase = ""
        self._total: int | None = None
        self._count = 0
        self._started = 0.0
        self._drawn = 0.0
        self._width = 0

    def start(self, phase: str, total: int | None = None) -> None:
        self._phase = phase
        self._total = total
        self._count = 0
        self._started = self._drawn = time.monotonic()
        self._draw()

    def advance(self, n: int = 1) -> None:
        self._count += n
        now = time.monotonic()
        if now - self._drawn >= REDRAW_EVERY_S:
            self._drawn = now
            self._draw()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self._started
        rate = f"{self._count / elapsed:,.0f}/s" if elapsed > 0 and self._count else ""
        if self._total:
            share = min(self._count / self._total, 1.0)
            filled = int(share * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            text = f"{self._phase:7} [{bar}] {share:4.0%} {self._count:,}/{self._total:,} {rate}"
        else:
            text = f"{self._phase:7} {self._count:,} {rate}"
        self._line(text)

    def _line(self, text: str, end: str = "") -> None:
        pad = max(self._width - len(text), 0)
        self._stream.write("\r" + text + " " * pad + end)
        self._stream.flush()
        self._width = 0 if end else len(text)

    def done(self, summary: str) -> None:
        seconds = time.monotonic() - self._started
        self._line(f"{self._phase}: {summary} ({seconds:.1f} s)", end="\n")

    def flush(self) -> None:
        return None


class _Lines(LineProgress):
    """A legacy ``progress(str)`` callback behind the :class:`Progress` interface."""


def as_progress(progress: Progress | Callable[[str], None] | None) -> Progress:
    """Accept a :class:`Progress`, a plain ``callable(line)`` (one line per phase), or None."""
    if progress is None:
        return NullProgress()
    if isinstance(progress, Progress):
        return progress
    return _Lines(progress)


def for_stderr(
    quiet: bool = False, stream: IO[str] | None = None
) -> NullProgress | BarProgress | LineProgress:
    """What a command shows on stderr: nothing with ``--quiet``; on a terminal a bar
    per phase; otherwise one line per phase, held until :meth:`flush` (call it once
    the command has succeeded)."""
    if quiet:
        return NullProgress()
    err = stream if stream is not None else sys.stderr
    if err.isatty():
        return BarProgress(err)

    def write(line: str) -> None:
        err.write(f"membershipd: {line}\n")
        err.flush()

    return LineProgress(write, hold=True)
