"""Session log: naming, flushing within a second, torn lines, unwritable folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from obs_merlb.session import SessionLog, read_session, session_filename
from live_worker import live_env, run_until_running, start_live
from obs_merlb.state import error_event, session_event, tag_event

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
    blocker = tmp_path / "nope"
    blocker.write_text("a file where the sessions folder should be")
    proc = start_live(tmp_path, status, "--sessions-dir", str(blocker))
    doc, err = run_until_running(proc, status)
    assert "session log" in (doc.get("last_error") or "")
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
    # The file made anew starts as the deleted one did: personalize reads the recording's start there.
    assert [e.get("event") for e in read_session(path) if e["type"] == "session"] == ["open", "close"]


# ------------------------------------------------------------ one recording, one log (issue 23 item 4)


def test_one_open_line_per_file_with_the_engine_wiring(tmp_path: Path) -> None:
    # live.py publishes a `session` event for its clients after opening the log; it was logged again.
    pub = _Publisher()
    log = pub.session_log(tmp_path)
    path = log.open(recording="/videos/rec.mkv", t=0.0)
    pub.publish(session_event("open", str(path), "/videos/rec.mkv", 0.0))
    pub.publish({"v": 1, "type": "state", "seq": 0})
    log.close(t=1.0)
    pub.publish(session_event("close", str(path), "/videos/rec.mkv", 1.0))
    markers = [e["event"] for e in read_session(path) if e["type"] == "session"]
    assert markers == ["open", "close"]


def test_a_tag_is_on_disk_at_once(tmp_path: Path) -> None:
    # A crash right after the hotkey lost the tag with the last second of unflushed lines.
    log = SessionLog(tmp_path, flush_interval_s=60.0)
    path = log.open(t=0.0)
    log.write({"v": 1, "type": "state", "seq": 0})
    log.write(tag_event(0.5, "hype", "hotkey"))
    # Read as a crash would leave it: no close, no maybe_flush.
    assert [e["type"] for e in read_session(path)] == ["session", "state", "tag"]
    log.close()


def test_a_restarted_worker_continues_the_recordings_log(tmp_path: Path) -> None:
    from obs_merlb.train.personalize.windows import read_session_log

    rec = str(tmp_path / "2025-01-02 20-00-00.mkv")
    first = SessionLog(tmp_path)
    path = first.open(recording=rec, t=3.0)          # the recording started 3 s into this worker's stream
    first.write(tag_event(5.0, "hype", "hotkey"))    # 2 s into the recording
    start_wall = read_session(path)[0]["wall"]
    first._close_fd_locked()                         # the worker dies: no close line...
    with open(path, "a") as fh:
        fh.write('{"v":1,"type":"sta')               # ...and a line cut in the middle
    second = SessionLog(tmp_path)
    assert second.open(recording=rec, t=0.0, resume=True) == path
    tag = tag_event(0.2, "funny", "hotkey")          # the new worker's clock started again at 0
    tag["wall"] = start_wall + 40.0                  # 40 s into the recording
    second.write(tag)
    second.close(t=1.0)
    events = read_session(path)
    markers = [e["event"] for e in events if e["type"] == "session"]
    assert markers == ["open", "resume", "close"]
    assert events[2]["recording_wall"] == start_wall
    tags, recording, _ = read_session_log(path)
    assert recording == rec
    assert [(round(t, 3), n) for t, n in tags] == [(2.0, "hype"), (40.0, "funny")]


def test_resume_without_an_earlier_log_opens_one(tmp_path: Path) -> None:
    log = SessionLog(tmp_path)
    path = log.open(recording=str(tmp_path / "r.mkv"), t=0.0, resume=True)
    log.close()
    assert [e["event"] for e in read_session(path)] == ["open", "close"]


def test_worker_restart_during_a_recording_keeps_one_log(tmp_path: Path) -> None:
    """`merlb live --recording` (what the OBS script passes a restarted worker) appends to that log,
    and the script's `session open` for the same recording that follows it changes nothing."""
    rec = str(tmp_path / "stream.mkv")
    sessions = tmp_path / "sessions"
    env = live_env(tmp_path)
    log_path = sessions / "stream.merlb.jsonl"

    def worker(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "obs_merlb", "live", "--video", str(DEMO), "--loop",
                                 "--sessions-dir", str(sessions), "--control", "stdin", "--port", "0", *extra],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                text=True, env=env, cwd=tmp_path)

    def send(proc: subprocess.Popen, msg: dict) -> None:
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()

    def wait_for_line(pred, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if log_path.is_file() and any(pred(e) for e in read_session(log_path)):
                return
            time.sleep(0.1)
        raise AssertionError("the line never reached the session log")

    procs = [worker()]
    try:
        send(procs[0], {"cmd": "session", "event": "open", "kind": "recording", "recording": rec})
        wait_for_line(lambda e: e["type"] == "state")
        send(procs[0], {"cmd": "tag", "name": "before-crash"})
        wait_for_line(lambda e: e.get("name") == "before-crash", timeout=0.8)   # flushed at once
        procs[0].kill()
        procs[0].wait()
        procs.append(worker("--recording", rec))
        send(procs[1], {"cmd": "session", "event": "open", "kind": "recording", "recording": rec})
        send(procs[1], {"cmd": "session", "event": "open", "kind": "streaming", "recording": rec})
        send(procs[1], {"cmd": "tag", "name": "after-restart"})
        send(procs[1], {"cmd": "session", "event": "close", "kind": "streaming", "recording": rec})
        send(procs[1], {"cmd": "tag", "name": "after-stream"})
        wait_for_line(lambda e: e.get("name") == "after-stream")
        send(procs[1], {"cmd": "stop"})
        assert procs[1].wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # The first worker's log from before the recording started, and the recording's: none of the restart's own.
    names = sorted(p.name for p in sessions.iterdir())
    assert len(names) == 2 and names[0].startswith("session-") and names[1] == "stream.merlb.jsonl", names
    events = read_session(log_path)
    assert [e["event"] for e in events if e["type"] == "session"] == ["open", "resume", "close"]
    assert [e["name"] for e in events if e["type"] == "tag"] == ["before-crash", "after-restart", "after-stream"]
