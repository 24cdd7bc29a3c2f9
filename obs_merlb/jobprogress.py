"""Progress of a long media job that a person can trust: done, elapsed, speed, ETA.

On a terminal, a rich bar on stderr; in a log (stderr not a terminal), one
line every `log_every_s` seconds. Speed is media seconds per wall second
("x real time") over this run only: a resumed job's earlier part neither
inflates it nor shortens the ETA wrongly.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def clock(seconds: float) -> str:
    """h:mm:ss (m:ss under an hour)."""
    s = int(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class MediaProgress:
    """``with MediaProgress("analysing x.mkv", total_s) as p: p.update(media_t)``."""

    def __init__(self, what: str, total_s: float | None, *, start_s: float = 0.0, enabled: bool = True,
                 log_every_s: float = 30.0, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = total_s if total_s and total_s > 0 else None
        self.start_s = start_s
        self.done_s = start_s
        self.log_every_s = log_every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._wall0 = time.monotonic()
        self._last_log = self._wall0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> "MediaProgress":
        self._wall0 = self._last_log = time.monotonic()
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                 console=Console(file=self.stream), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total or 1.0, completed=self.start_s,
                                            info=self.line(short=True))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._wall0

    @property
    def rate(self) -> float:
        """Media seconds per wall second in this run."""
        return (self.done_s - self.start_s) / max(self.elapsed, 1e-6)

    def eta(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, self.total - self.done_s) / self.rate

    def line(self, short: bool = False) -> str:
        done = clock(self.done_s) + (f" of {clock(self.total)}" if self.total else "")
        pct = f" ({100.0 * min(self.done_s / self.total, 1.0):.1f}%)" if self.total else ""
        eta = self.eta()
        tail = f"{self.rate:.1f}x real time, elapsed {clock(self.elapsed)}" + \
            (f", ETA {clock(eta)}" if eta is not None else "")
        return f"{done}{pct}, {tail}" if short else f"{self.what}: {done}{pct}, {tail}"

    def update(self, media_s: float) -> None:
        self.done_s = max(self.done_s, float(media_s))
        if not self.enabled:
            return
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done_s, self.total or self.done_s),
                             info=self.line(short=True))
        elif now - self._last_log >= self.log_every_s:
            self._last_log = now
            print(self.line(), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A message that stays (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)
