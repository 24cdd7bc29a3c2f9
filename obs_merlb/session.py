"""Session log: every event and tag as JSON lines, one file per session.

Files live in the user data dir (`platformdirs.user_data_dir("obs-merlb")/
sessions/`). A session that belongs to an OBS recording is named after it
(`<recording stem>.merlb.jsonl`), so retraining and later tools can pair a
recording with its log by name; otherwise `session-YYYYmmdd-HHMMSS.merlb.jsonl`.

Lines are kept in memory and handed to the OS at least once a second (on
the next write or on `maybe_flush()`, which the engine calls from its ~1 Hz
health tick), so a crash of the worker loses at most the last second;
closing the file also fsyncs it. A tag goes to the OS at once: it is the
streamer's label for training (`merlb personalize`), and the hotkey is often
pressed just before something goes wrong.

One recording, one log, one `open` line. The log writes its own `open` and
`close` lines; the `session` events the engine publishes for its clients
are not written again. A worker restarted while OBS records (the OBS script
passes the recording as `merlb live --recording`) opens with `resume=True`:
it appends to that recording's log with a `resume` line carrying
`recording_wall`, the wall time of the log's `open` line, because the new
worker's stream clock starts again at zero (train/personalize/windows.py
places the tags after a `resume` line by their wall time). A torn last line
left by the crash is ended first, so the `resume` line stays readable.

A full disk or an unwritable folder must never stop the engine, nor lose
what was already accepted:
- the failure is reported once through `on_error` (the engine turns it into
  an `error` event), always *after* the log's lock is released: the callback
  publishes an event, and publishing writes to this same log;
- lines not yet on disk stay in memory, in order (at most
  `max_backlog_bytes`, about 15 minutes of events), and are written when
  the file can be written again (retried every `retry_s` seconds); a write
  the OS took only in part continues where it stopped;
- past that bound new lines are refused and counted (`lines_dropped`), and
  once writing works again the file gets a line
  `{"type": "session", "event": "gap", "lost": N, "t_from", "t_to"}`
  saying exactly what is missing. Lines still unwritten at `close()` are
  reported the same way (log and `on_error`).
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SUFFIX = ".merlb.jsonl"
MAX_BACKLOG_BYTES = 8 * 1024 * 1024
_FLUSH_BYTES = 64 * 1024       # a backlog this large is written without waiting for the interval
_WRITE_CHUNK = 256 * 1024
_O_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)


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


class _Lost:
    """How many lines never reached the file, and the stream times they covered."""

    def __init__(self) -> None:
        self.count = 0
        self.t_from: float | None = None
        self.t_to: float | None = None

    def add(self, t: Any) -> None:
        self.count += 1
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            self.t_from = t if self.t_from is None else min(self.t_from, t)
            self.t_to = t if self.t_to is None else max(self.t_to, t)

    def describe(self) -> str:
        span = "" if self.t_from is None else f" (stream time {self.t_from:g}-{self.t_to:g} s)"
        return f"{self.count} line{'s' if self.count != 1 else ''}{span}"


class SessionLog:
    """Thread-safe JSON-lines writer: bounded loss on a crash, none on a full disk that recovers."""

    def __init__(self, sessions_dir: str | os.PathLike[str] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 flush_interval_s: float = 1.0, retry_s: float = 5.0,
                 max_backlog_bytes: int = MAX_BACKLOG_BYTES) -> None:
        self.dir = Path(sessions_dir) if sessions_dir else default_sessions_dir()
        self.on_error = on_error
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self.max_backlog_bytes = max_backlog_bytes
        self.path: Path | None = None
        self.recording: str | None = None
        self.lines_written = 0
        self.lines_dropped = 0
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._failed_at: float | None = None   # set while failing; the failure was reported
        self._want_open = False
        # Encoded lines not yet (entirely) on disk, oldest first; the first one
        # may be partly written already (`_head_done` bytes of it).
        self._backlog: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._backlog_bytes = 0
        self._head_done = 0
        self._lost = _Lost()
        self._messages: list[str] = []   # failures to report once the lock is released
        self._marker = b""   # this file's open (or resume) line, again at the top of a file made anew

    # -- lifecycle
    def open(self, recording: str | None = None, t: float | None = None, resume: bool = False) -> Path | None:
        """Start a new session file (closing any open one). Returns its path or None on failure.

        `resume`: `recording` was already being recorded (the worker restarted);
        its log, when there is one, is continued after a `resume` line.
        """
        with self._lock:
            self._finish_locked()
            self.recording = recording
            self._want_open = True
            name = session_filename(recording)
            self.path = self._unique(self.dir / name) if recording is None else self.dir / name
            self._failed_at = None
            marker = {"v": 1, "type": "session", "event": "open", "path": str(self.path),
                      "recording": recording, "t": t, "wall": time.time()}
            first = _first_open(self.path) if resume and recording is not None else None
            if first is not None and first.get("recording") == recording:
                marker.update(event="resume", recording_wall=first.get("wall"))
            # Kept even when the file cannot be opened yet: it is written first once it can.
            self._accept_locked(marker, bounded=False)
            self._marker = self._backlog[-1][0] if self._backlog else b""
            self._drain_locked()
            opened = self.path if self._fd is not None else None
        self._report()
        return opened

    def close(self, t: float | None = None) -> Path | None:
        with self._lock:
            path = self.path
            if self._want_open:
                self._accept_locked({"v": 1, "type": "session", "event": "close", "path": str(path),
                                     "recording": self.recording, "t": t, "wall": time.time()},
                                    bounded=False)
            self._finish_locked()
            self._want_open = False
        self._report()
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

    def _open_locked(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._marker and not self.path.exists():
                self._restart_file_locked()
            # A line cut by a crash is ended before ours, unless ours is the cut one being finished.
            torn = self._head_done == 0 and _torn_tail(self.path)
            # Append: a recording that is resumed (same name) keeps one log.
            fd = os.open(self.path, _O_FLAGS, 0o644)
        except OSError as e:
            self._fd = None
            self._fail_locked(f"cannot open session log {self.path}: {e.strerror or e}")
            return
        if torn:
            try:
                os.write(fd, b"\n")
            except OSError as e:
                os.close(fd)
                self._fail_locked(f"cannot write session log {self.path}: {e.strerror or e}")
                return
        self._fd = fd

    def _restart_file_locked(self) -> None:
        """The file is gone (its folder was deleted): the new one starts with the marker and whole lines."""
        self._head_done = 0
        if not (self._backlog and self._backlog[0][0] is self._marker):
            self._backlog.appendleft((self._marker, None))
            self._backlog_bytes += len(self._marker)

    def _finish_locked(self) -> None:
        """Last write, fsync and close; whatever still could not be written is reported lost."""
        if self._want_open and (self._backlog or self._lost.count):
            self._drain_locked(force=True)   # the last chance, even before the next retry is due
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass  # the data is with the OS; fsync only makes it durable sooner
            self._close_fd_locked()
        for _line, t in self._backlog:
            self._lost.add(t)
            self.lines_dropped += 1
        self._backlog.clear()
        self._backlog_bytes = self._head_done = 0
        if self._lost.count:
            message = f"session log {self.path}: {self._lost.describe()} could not be saved"
            log.error("%s", message)
            self._messages.append(message)
            self._lost = _Lost()

    def _fail_locked(self, message: str) -> None:
        first = self._failed_at is None
        self._failed_at = time.monotonic()
        if first:
            log.error("%s; the engine keeps running and keeps the lines in memory", message)
            self._messages.append(message + "; events are kept in memory until it can be written "
                                  "(free disk space or check permissions)")

    def _report(self) -> None:
        """Deliver failures to `on_error` without the lock: the callback writes to this log."""
        with self._lock:
            messages, self._messages = self._messages, []
        if self.on_error is None:
            return
        for message in messages:
            try:
                self.on_error(message)
            except Exception:  # the callback must never break logging
                log.exception("session error callback failed")

    # -- writing
    def write(self, event: dict[str, Any]) -> None:
        """Accept one event; it reaches the file within flush_interval_s while the file is writable."""
        # Previews are large and only useful live; they never go to disk. Session
        # events are the clients' copy of the open/close lines this log wrote itself.
        if event.get("type") in ("preview", "session"):
            return
        with self._lock:
            if not self._want_open:
                self.lines_dropped += 1   # no session open (before the first, between two)
                return
            self._accept_locked(event)
            if event.get("type") == "tag" or self._backlog_bytes >= _FLUSH_BYTES or \
                    time.monotonic() - self._last_flush >= self.flush_interval_s:
                self._drain_locked()
        self._report()

    def _accept_locked(self, event: dict[str, Any], bounded: bool = True) -> None:
        """Queue one line; `bounded=False` for the few session markers, which are never refused."""
        try:
            line = (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        except (TypeError, ValueError):
            self.lines_dropped += 1   # not JSON (a NaN): nothing could ever read it back
            return
        if bounded and self._backlog_bytes + len(line) > self.max_backlog_bytes:
            self.lines_dropped += 1
            self._lost.add(event.get("t"))
            return
        if self._lost.count:
            self._mark_gap_locked()   # the gap line goes where the lines are missing
        self._backlog.append((line, event.get("t")))
        self._backlog_bytes += len(line)

    def _retry_due(self) -> bool:
        return self._failed_at is None or time.monotonic() - self._failed_at >= self.retry_s

    def _drain_locked(self, force: bool = False) -> None:
        """Write the backlog; on failure keep what the OS did not take and retry later."""
        self._last_flush = time.monotonic()
        if not self._want_open or not (force or self._retry_due()):
            return
        if self._fd is not None and self._deleted():
            log.warning("session log %s was deleted; starting it again", self.path)
            self._close_fd_locked()
        if self._fd is None:
            self._open_locked()
            if self._fd is None:
                return
        try:
            self._write_backlog_locked()
            if self._lost.count:
                self._mark_gap_locked()
                self._write_backlog_locked()
        except OSError as e:
            self._close_fd_locked()
            self._fail_locked(f"cannot write session log {self.path}: {e.strerror or e}")
            return
        if self._failed_at is not None:
            self._failed_at = None
            log.info("session log %s writable again; the lines kept meanwhile are written", self.path)

    def _write_backlog_locked(self) -> None:
        while self._backlog:
            parts = [self._backlog[0][0][self._head_done:]]
            size = len(parts[0])
            for line, _t in itertools.islice(self._backlog, 1, None):
                if size >= _WRITE_CHUNK:
                    break
                parts.append(line)
                size += len(line)
            n = os.write(self._fd, b"".join(parts))
            while n > 0:
                rest = len(self._backlog[0][0]) - self._head_done
                if n < rest:
                    self._head_done += n
                    break
                n -= rest
                self._backlog_bytes -= len(self._backlog.popleft()[0])
                self._head_done = 0
                self.lines_written += 1

    def _mark_gap_locked(self) -> None:
        lost, self._lost = self._lost, _Lost()
        log.warning("session log %s: %s not saved while it could not be written; a gap line marks them",
                    self.path, lost.describe())
        line = (json.dumps({"v": 1, "type": "session", "event": "gap", "lost": lost.count,
                            "t_from": lost.t_from, "t_to": lost.t_to, "wall": time.time()}) + "\n").encode()
        self._backlog.append((line, None))
        self._backlog_bytes += len(line)

    def _close_fd_locked(self) -> None:
        fd, self._fd = self._fd, None
        try:
            os.close(fd)
        except OSError:
            pass  # a failing disk may fail the close too; the fd is released either way

    def _deleted(self) -> bool:
        # Writes to a file whose folder was deleted succeed and vanish with it.
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def maybe_flush(self) -> None:
        """Flush if due; also retries a failed file. Call about once a second."""
        with self._lock:
            if self._fd is None or time.monotonic() - self._last_flush >= self.flush_interval_s * 0.5:
                self._drain_locked()
        self._report()

    @property
    def ok(self) -> bool:
        """The file is open and the last write went through."""
        return self._fd is not None

    @property
    def pending_lines(self) -> int:
        """Lines accepted but not yet on disk."""
        return len(self._backlog)


def _first_open(path: Path) -> dict[str, Any] | None:
    """The `open` line a log starts with, or None (no file, empty, or something else first)."""
    try:
        with open(path, "rb") as fh:
            ev = json.loads(fh.readline(1 << 16))
    except (OSError, ValueError):
        return None
    return ev if isinstance(ev, dict) and ev.get("type") == "session" and ev.get("event") == "open" else None


def _torn_tail(path: Path) -> bool:
    """The file ends inside a line (a crash mid-write)."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                return False
            fh.seek(-1, 2)
            return fh.read(1) != b"\n"
    except OSError:
        return False


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
