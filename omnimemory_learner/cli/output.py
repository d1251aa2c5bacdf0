"""Every line the CLI shows a person goes through here.

Human-readable output is written by `echo` (standard output) and `error`
(standard error); machine-readable output by `print_json`.  Text that comes
from outside (session ids, event types, the API's answers, paths, URLs) is
made safe to show with `shown()` (text.py has the whole rule):

- `echo(text)`: our own lines; every untrusted value in them is passed as
  `shown(value)` by the caller.  Under that, `echo` escapes any control
  character but the line break, so nothing can drive the terminal even if a
  caller forgets.
- `error(text)`: one message on one line; the whole text goes through
  `shown()` here, so callers pass values as they are.
- `print_json(data)`: exact values; JSON escapes control characters itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from ..text import printable_lines, shown

__all__ = ["Progress", "echo", "error", "print_json", "shown"]

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 5.0


def echo(text: str = "", stream: TextIO | None = None, end: str = "\n") -> None:
    """Lines for a person, on standard output; values in them already went through shown()."""
    stream = stream or sys.stdout
    stream.write(printable_lines(text) + end)


def error(text: str) -> None:
    """A message for a person, on one line of standard error, prefixed with the program's name."""
    sys.stderr.write(f"omnimemory-learner: {shown(text)}\n")


def print_json(data: Any) -> None:
    """Machine-readable output: exact, JSON escapes by itself."""
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


class Progress:
    """A redrawn line on a terminal; a log line every few seconds otherwise."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream = stream or sys.stderr
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.started = time.monotonic()
        self._last = float("-inf")

    def show(self, read: int, total: int, learned: int, pending: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else PROGRESS_EVERY_SECONDS):
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        rate = read / elapsed
        left = max(0, total - read)
        eta = f"{left / rate:.0f}s left" if rate > 0 and left else "reading done"
        line = f"{read}/{total} events read ({rate:,.0f}/s, {eta}), {learned} sessions learned, {pending} pending"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        else:
            log.info("Backfill: %s", line)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
