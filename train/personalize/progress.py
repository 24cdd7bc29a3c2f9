"""Progress of a personalize run: rich on stderr for people, JSON lines on stdout for the panel."""
from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
from rich.text import Text


class Progress:
    """Rich progress on stderr for people, JSON lines on stdout for the panel (`--progress-json`)."""

    def __init__(self, json_lines: bool = False, quiet: bool = False) -> None:
        self.json_lines = json_lines
        self.console = Console(stderr=True, quiet=quiet)
        self._bar: Any = None
        self._task: Any = None
        self.stage = ""

    def emit(self, doc: dict[str, Any]) -> None:
        if self.json_lines:
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()

    def message(self, text: str) -> None:
        self.console.print(text)
        self.emit({"type": "message", "text": _plain(text)})

    def start(self, stage: str, total: int, description: str) -> None:
        self.end()
        self.stage = stage
        self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, info="")
        self.emit({"type": "progress", "stage": stage, "done": 0, "total": total, "text": description})

    def advance(self, done: int, total: int, info: str = "", **extra: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
        self.emit({"type": "progress", "stage": self.stage, "done": done, "total": total, "text": info, **extra})

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _plain(text: str) -> str:
    return Text.from_markup(text).plain
