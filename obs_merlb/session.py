"""Session log: every event and tag as JSON lines, one file per session.

Files live in the user data dir (`platformdirs.user_data_dir("obs-merlb")/
sessions/`). A session that belongs to an OBS recording is named after it
(`<recording stem>.merlb.jsonl`), so retraining and later tools can pair a
recording with its log by name; otherwise `session-YYYYmmdd-HHMMSS.merlb.jsonl`.

Lines are buffered by Python and flushed to the OS at least once a second
(on the next write or on `maybe_flush()`, which the engine calls from its
~1 Hz health tick), so a crash of the worker loses at most the last second;
closing the file also fsyncs it.

A full disk or an unwritable folder must never stop the engine: the failure
is reported once through `on_error` (the engine turns it into an `error`
event), lines are dropped meanwhile, and opening is retried every
`retry_s` seconds.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SUFFIX = ".merlb.jsonl"


def default_sessions_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("obs-merlb", appauthor=False)) / "sessions"


def session_filename(recording: str | None, now: float | None = None) -> str:
    if recording:
        stem = Path(recording).name
        # "stream.mkv" -> "stream"; keep dots inside names ("my.stream.mkv" -> "my.stream")
        stem = stem.rsplit(".", 1)[0] if "." in stem else stem
        return stem + SUFFIX
    return time.strftime("session-%Y%m%d-%H%M%S", time.localtime(now)) + SUFFIX


class SessionLog:
    """Thread-safe JSON-lines writer with bounded data loss and soft failure."""

    def __init__(self, sessions_dir: str | os.PathLike[str] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 flush_interval_s: float = 1.0, retry_s: float = 5.0) -> None:
        self.dir = Path(sessions_dir) if sessions_dir else default_sessions_dir()
        self.on_error = on_error
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self.path: Path | None = None
        self.recording: str | None = None
        self.lines_written = 0
        self.lines_dropped = 0
        self._fh: Any = None
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._failed_at: float | None = None
        self._want_open = False

    # -- lifecycle
    def open(self, recording: str | None = None, t: float | None = None) -> Path | None:
        """Start a new session file (closing any open one). Returns its path or None on failure."""
        with self._lock:
            self._close_locked()
            self.recording = recording
            self._want_open = True
            name = session_filename(recording)
            self.path = self._unique(self.dir / name) if recording is None else self.dir / name
            self._try_open_locked()
            if self._fh is not None:
                self._write_locked({"v": 1, "type": "session", "event": "open", "path": str(self.path),
                                    "recording": recording, "t": t, "wall": time.time()})
            return self.path if self._fh is not None else None

    def close(self, t: float | None = None) -> Path | None:
        with self._lock:
            path = self.path
            if self._fh is not None:
                self._write_locked({"v": 1, "type": "session", "event": "close", "path": str(path),
                                    "recording": self.recording, "t": t, "wall": time.time()})
            self._close_locked()
            self._want_open = False
            return path

    @staticmethod
    def _unique(p: Path) -> Path:
        if not p.exists():
            return p
        base = p.name[: -len(SUFFIX)]
        i = 2
        while (p.parent / f"{base}-{i}{SUFFIX}").exists():
            i += 1
        return p.parent / f"{base}-{i}{SUFFIX}"

    def _try_open_locked(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Append: a recording that is resumed (same name) keeps one log.
            self._fh = open(self.path, "a", encoding="utf-8", buffering=64 * 1024)
            self._failed_at = None
        except OSError as e:
            self._fh = None
            self._fail_locked(f"cannot open session log {self.path}: {e.strerror or e}")

    def _close_locked(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as e:
            self._fail_locked(f"cannot write session log {self.path}: {e.strerror or e}")
        finally:
            try:
                fh.close()
            except OSError:
                pass

    def _fail_locked(self, message: str) -> None:
        first = self._failed_at is None
        self._failed_at = time.monotonic()
        if first:
            log.error("%s; the engine keeps running without a session log", message)
            if self.on_error is not None:
                try:
                    self.on_error(message + "; events are not being saved (free disk space or check permissions)")
                except Exception:  # the callback must never break logging
                    log.exception("session error callback failed")

    # -- writing
    def write(self, event: dict[str, Any]) -> None:
        """Append one event; flushes when the last flush is >= flush_interval_s old."""
        with self._lock:
            if self._fh is None:
                if not self._want_open or self._failed_at is None \
                        or time.monotonic() - self._failed_at < self.retry_s:
                    self.lines_dropped += 1
                    return
                self._try_open_locked()
                if self._fh is None:
                    self.lines_dropped += 1
                    return
                log.info("session log %s writable again", self.path)
            self._write_locked(event)

    def _write_locked(self, event: dict[str, Any]) -> None:
        try:
            # Previews are large and only useful live; they never go to disk.
            if event.get("type") == "preview":
                return
            self._fh.write(json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n")
            self.lines_written += 1
            if time.monotonic() - self._last_flush >= self.flush_interval_s:
                self._flush_locked()
        except (OSError, ValueError) as e:
            self.lines_dropped += 1
            if isinstance(e, OSError):
                fh, self._fh = self._fh, None
                try:
                    fh.close()
                except OSError:
                    pass
                self._fail_locked(f"cannot write session log {self.path}: {e.strerror or e}")

    def _flush_locked(self) -> None:
        self._last_flush = time.monotonic()
        if self._fh is not None:
            self._fh.flush()

    def maybe_flush(self) -> None:
        """Flush if due; also retries a failed file. Call about once a second."""
        with self._lock:
            try:
                if self._fh is None and self._want_open and self._failed_at is not None \
                        and time.monotonic() - self._failed_at >= self.retry_s:
                    self._try_open_locked()
                if self._fh is not None and time.monotonic() - self._last_flush >= self.flush_interval_s * 0.5:
                    self._flush_locked()
            except OSError as e:
                fh, self._fh = self._fh, None
                try:
                    fh.close()
                except (OSError, AttributeError):
                    pass
                self._fail_locked(f"cannot write session log {self.path}: {e.strerror or e}")

    @property
    def ok(self) -> bool:
        return self._fh is not None


def read_session(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete events of a session file (a torn last line after a crash is skipped)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
