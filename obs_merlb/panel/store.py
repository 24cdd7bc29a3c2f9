"""The project's config file as the panel's tabs read and write it.

One object per window, shared by the tabs, so a value one tab saves is what
the next tab reads. Problems are signalled, never raised: a panel that
cannot save a slider position or meets a bad value in the file still runs,
and the window shows the message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from PyQt5.QtCore import QObject, pyqtSignal

from obs_merlb import config as cfgmod


class ConfigStore(QObject):
    """Sections of config.toml (`path`, else the user's default file)."""

    save_failed = pyqtSignal(str)   # a transient message: the change is kept in the widgets only
    invalid = pyqtSignal(str)       # a value in the file the panel ignores, and what it uses instead

    def __init__(self, path: str | Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = Path(path) if path else None
        self.data = cfgmod.load_config(self.path)

    @property
    def file(self) -> Path:
        return self.path or cfgmod.config_path()

    def section(self, name: str) -> dict[str, Any]:
        s = self.data.get(name, {})
        return dict(s) if isinstance(s, dict) else {}

    def save(self, name: str, values: Mapping[str, Any]) -> None:
        try:
            cfgmod.update_section(name, values, self.path)
            self.data = cfgmod.load_config(self.path)
        except OSError as e:
            self.save_failed.emit(f"settings not saved: {e}")

    def report_invalid(self, section: str, key: str, value: Any, expected: str, used: Any) -> None:
        """One line naming the file, the setting, what it must be and what the panel uses."""
        self.invalid.emit(f"{self.file}: [{section}] {key} = {value!r} is not {expected}; using {used}")
