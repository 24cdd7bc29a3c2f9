"""Session log: naming, flushing within a second, torn lines, unwritable folders."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from obs_merlb.session import SessionLog, read_session, session_filename
from obs_merlb.state import error_event, tag_event

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo.mp4"


def test_named_after_recording(tmp_path: Path) -> None:
    assert session_filename("/videos/2025-01-02 20-00-00.mkv") == "2025-01-02 20-00-00.merlb.jsonl"
    log = SessionLog(tmp_path)
    path = log.open(recording="/videos/my.stream.mp4", t=0.0)
    assert path == tmp_path / "my.stream.merlb.jsonl"
    log.write(tag_event(1.0, "hype", "hotkey"))
    log.close(t=2.0)
    events = read_session(path)
    assert [e["type"] for e in events] == ["session", "tag", "session"]
    assert events[0]["recording"] == "/videos/my.stream.mp4"
    assert events[1]["name"] == "hype"


def test_unnamed_sessions_do_not_collide(tmp_path: Path) -> None:
    a, b = SessionLog(tmp_path), SessionLog(tmp_path)
    pa, pb = a.open(), b.open()
    assert pa != pb and pa.name.startswith("session-") and pa.name.endswith(".merlb.jsonl")
    a.close()
    b.close()


def test_flushed_within_a_second(tmp_path: Path) -> None:
    # A reader (standing in for a crash: nothing more gets written) sees the
    # lines once a second has passed and maybe_flush ran, without close().
    log = SessionLog(tmp_path, flush_interval_s=1.0)
    path = log.open()
    for i in range(5):
        log.write({"v": 1, "type": "state", "seq": i})
    time.sleep(1.05)
    log.maybe_flush()
    assert len(read_session(path)) == 6  # open + 5
    log.write({"v": 1, "type": "state", "seq": 99})
    time.sleep(0.6)
    log.maybe_flush()
    assert read_session(path)[-1]["seq"] == 99
    log.close()


def test_previews_not_logged_and_torn_line_skipped(tmp_path: Path) -> None:
    log = SessionLog(tmp_path)
    path = log.open()
    log.write({"v": 1, "type": "preview", "jpeg": "x" * 1000})
    log.write({"v": 1, "type": "tag", "name": "a"})
    log.close()
    with open(path, "a") as fh:
        fh.write('{"v": 1, "type": "sta')  # crash mid-line
    assert [e["type"] for e in read_session(path)] == ["session", "tag", "session"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_dir_reports_and_keeps_going(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    errors: list[str] = []
    try:
        log = SessionLog(ro / "sessions", on_error=errors.append)
        assert log.open() is None
        log.write({"v": 1, "type": "state"})
        assert errors and "session log" in errors[0]
        assert log.lines_dropped == 0 and log.pending_lines == 2   # kept until the folder is writable
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------ failures while live
# In `merlb live` the session log's `on_error` publishes an `error` event, and
# publishing writes to the same session log. These tests wire it the same way.


class _Publisher:
    """The engine's wiring: sinks get every event, the log is one of them, its errors are published."""

    def __init__(self) -> None:
        self.sinks: list = []
        self.events: list[dict] = []
        self.sinks.append(self.events.append)

    def publish(self, event: dict) -> None:
        for sink in list(self.sinks):
            sink(event)

    def session_log(self, sessions_dir: Path, **kw) -> SessionLog:
        log = SessionLog(sessions_dir, on_error=lambda m: self.publish(error_event(m, "session")), **kw)
        self.sinks.append(log.write)
        return log

    def errors(self) -> list[str]:
        return [e["message"] for e in self.events if e["type"] == "error"]


def _finishes(fn, timeout: float = 10.0) -> None:
    """Run fn in a thread: a deadlock fails the test instead of hanging it."""
    failure: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as e:  # re-raised in the test's thread
            failure.append(e)

    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), "the session log deadlocked reporting its own failure"
    if failure:
        raise failure[0]


def _seqs(path: Path) -> list[int]:
    return [e["seq"] for e in read_session(path) if e.get("type") == "state"]


def test_unopenable_folder_reported_once_through_a_publishing_callback(tmp_path: Path) -> None:
    blocker = tmp_path / "sessions"
    blocker.write_text("not a folder")
    pub = _Publisher()
    log = pub.session_log(blocker, retry_s=0.0)

    def run() -> None:
        assert log.open(t=0.0) is None
        for i in range(5):
            pub.publish({"v": 1, "type": "state", "seq": i})
        log.maybe_flush()

    _finishes(run)
    assert len(pub.errors()) == 1 and "cannot open session log" in pub.errors()[0]
    # Nothing accepted is lost: once the folder can be made, every line lands, in order.
    blocker.unlink()
    _finishes(log.maybe_flush)
    assert log.ok and log.lines_dropped == 0
    _finishes(lambda: log.close(t=1.0))
    events = read_session(log.path)
    assert events[0]["event"] == "open" and events[-1]["event"] == "close"
    assert _seqs(log.path) == list(range(5))
    assert [e["message"] for e in events if e["type"] == "error"] == pub.errors()


def test_write_failure_mid_session_does_not_deadlock_or_lose_lines(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    pub = _Publisher()
    log = pub.session_log(tmp_path, flush_interval_s=0.0, retry_s=0.2)
    log.open(t=0.0)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, log._fd)  # the disk fills up under the open file
    os.close(full)

    def burst() -> None:
        for i in range(20):
            pub.publish({"v": 1, "type": "state", "seq": i})

    _finishes(burst)
    assert len(pub.errors()) == 1 and "No space" in pub.errors()[0] and not log.ok
    time.sleep(0.25)
    _finishes(log.maybe_flush)  # space is back: it reopens and writes what it kept
    assert log.ok
    _finishes(lambda: pub.publish({"v": 1, "type": "state", "seq": 20}))
    _finishes(log.close)
    assert _seqs(log.path) == list(range(21))
    assert log.lines_dropped == 0


def test_backlog_is_bounded_and_the_gap_is_written_down(tmp_path: Path) -> None:
    blocker = tmp_path / "sessions"
    blocker.write_text("not a folder")
    pub = _Publisher()
    log = pub.session_log(blocker, retry_s=0.0, max_backlog_bytes=2000)
    _finishes(lambda: log.open(t=0.0))
    for i in range(100):
        pub.publish({"v": 1, "type": "state", "seq": i, "t": i / 10})
    kept = 100 - log.lines_dropped
    assert 0 < kept < 100 and log.pending_lines == kept + 2     # + the open line and the error
    blocker.unlink()
    _finishes(lambda: log.close(t=10.0))
    events = read_session(log.path)
    assert _seqs(log.path) == list(range(kept))    # the oldest are kept, in order
    assert [e.get("event") for e in events if e["type"] == "session"] == ["open", "gap", "close"]
    gap = events[-2]
    assert gap["lost"] == log.lines_dropped == 100 - kept
    assert gap["t_from"] == pytest.approx(kept / 10) and gap["t_to"] == pytest.approx(9.9)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 64 KiB filesystem (tmpfs), so a full disk is the kernel's ENOSPC, not a stand-in."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_disk_full_keeps_going_and_loses_nothing_accepted(tiny_disk: Path) -> None:
    pub = _Publisher()
    log = pub.session_log(tiny_disk / "sessions", flush_interval_s=0.0, retry_s=0.1)
    _finishes(lambda: log.open(t=0.0))
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last byte
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)

    def burst(start: int, n: int) -> None:
        for i in range(start, start + n):
            pub.publish({"v": 1, "type": "state", "seq": i, "pad": "y" * 200})

    _finishes(lambda: burst(0, 200))
    assert len(pub.errors()) == 1 and "No space" in pub.errors()[0]
    _finishes(lambda: burst(200, 50))
    assert len(pub.errors()) == 1          # reported once, not per line
    filler.unlink()                        # the streamer frees space
    time.sleep(0.15)
    _finishes(log.maybe_flush)
    _finishes(lambda: burst(250, 10))
    _finishes(log.close)
    assert _seqs(log.path) == list(range(260)) and log.lines_dropped == 0


def test_live_with_unwritable_sessions_folder_runs_and_says_so(tmp_path: Path) -> None:
    # The reported hang: before any status was written, the worker blocked forever.
    status = tmp_path / "status.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MERLB_CONFIG": str(tmp_path / "config.toml"),
           "MERLB_MODELS": str(tmp_path / "models")}
    blocker = tmp_path / "nope"
    blocker.write_text("a file where the sessions folder should be")
    proc = subprocess.Popen([sys.executable, "-m", "obs_merlb", "live", "--video", str(DEMO), "--loop",
                             "--sessions-dir", str(blocker), "--status-file", str(status),
                             "--control", "none", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        doc: dict = {}
        end = time.monotonic() + 90
        while time.monotonic() < end and proc.poll() is None:
            try:
                doc = json.loads(status.read_text())
            except (OSError, ValueError):
                doc = {}
            if doc.get("state") == "running" and doc.get("fps"):
                break
            time.sleep(0.5)
        assert doc.get("state") == "running" and doc.get("fps"), f"no running status: {doc}"
        assert "session log" in (doc.get("last_error") or "")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert err.count("cannot open session log") == 1, err
    assert "Traceback" not in err, err


def test_events_outside_a_session_are_not_kept(tmp_path: Path) -> None:
    log = SessionLog(tmp_path)
    log.write({"v": 1, "type": "hello"})      # the engine publishes before it opens the log
    path = log.open(t=0.0)
    log.close()
    assert [e["type"] for e in read_session(path)] == ["session", "session"]
    assert log.lines_dropped == 1 and log.pending_lines == 0


def test_sessions_folder_deleted_mid_session_is_made_again(tmp_path: Path) -> None:
    # Writes to a deleted file succeed and vanish with it; the log notices and starts the file again.
    import shutil

    sessions = tmp_path / "sessions"
    pub = _Publisher()
    log = pub.session_log(sessions, flush_interval_s=0.0)
    path = log.open(t=0.0)
    pub.publish({"v": 1, "type": "state", "seq": 0})
    shutil.rmtree(sessions)
    for i in range(1, 4):
        pub.publish({"v": 1, "type": "state", "seq": i})
    log.close()
    assert _seqs(path) == [1, 2, 3] and not pub.errors()
