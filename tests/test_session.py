"""Session log: naming, flushing within a second, torn lines, unwritable folders."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from obs_merlb.session import SessionLog, read_session, session_filename
from obs_merlb.state import tag_event


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
        assert log.lines_dropped == 1
    finally:
        ro.chmod(0o700)


def test_disk_full_reports_once_and_retries(tmp_path: Path) -> None:
    # /dev/full fails every write with ENOSPC, like a full disk.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    errors: list[str] = []
    log = SessionLog(tmp_path, on_error=errors.append, flush_interval_s=0.0, retry_s=0.2)
    log.open()
    log._fh.close()
    log._fh = open("/dev/full", "w", buffering=1)  # the disk fills up mid-session
    for i in range(20):
        log.write({"v": 1, "type": "state", "seq": i})
    assert len(errors) == 1 and "No space" in errors[0]
    assert log.lines_dropped >= 1 and not log.ok
    time.sleep(0.25)
    log.maybe_flush()  # space is back (the real file is writable): it reopens
    assert log.ok
    log.write({"v": 1, "type": "state", "seq": 100})
    log.close()
    assert read_session(log.path)[-2]["seq"] == 100


def test_sessions_dir_is_a_file_reports_and_keeps_going(tmp_path: Path) -> None:
    # Works as root too (root ignores permission bits, not "is a file").
    blocker = tmp_path / "sessions"
    blocker.write_text("not a folder")
    errors: list[str] = []
    log = SessionLog(blocker, on_error=errors.append, retry_s=0.0)
    assert log.open() is None
    for _ in range(3):
        log.write({"v": 1, "type": "state"})
    log.maybe_flush()
    assert len(errors) == 1 and "cannot open session log" in errors[0]
    assert log.lines_dropped == 3 and not log.ok
