"""`merlb --log-file`: the worker's log is size-capped and rotated (issue 23 item 13)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from obs_merlb import cli
from obs_merlb.obs_supervisor import Supervisor, WorkerConfig


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    yield
    for h in root.handlers:
        h.close()
    root.handlers, root.level = saved[0], saved[1]


def test_log_file_rotates_at_its_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_root_logging) -> None:
    monkeypatch.setattr(cli, "LOG_FILE_BYTES", 4096)
    log = tmp_path / "worker.log"
    cli.setup_logging(False, str(log))
    for i in range(2000):
        logging.getLogger("obs_merlb.test").info("line %d of a page that loops requests", i)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["worker.log", "worker.log.1", "worker.log.2"]          # two older files kept, no more
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    assert "line 1999" in log.read_text()


def test_unwritable_log_file_falls_back_to_stderr(tmp_path: Path, capsys, restore_root_logging) -> None:
    cli.setup_logging(False, str(tmp_path / "missing-folder" / "worker.log"))
    assert "cannot write the log file" in capsys.readouterr().err
    logging.getLogger("obs_merlb.test").info("still logged")       # to stderr: no exception


def test_supervised_worker_logs_to_a_capped_file_and_its_output_apart(tmp_path: Path) -> None:
    cfg = WorkerConfig(python="python3", camera="Camera", data_dir=str(tmp_path))
    argv = cfg.argv(4455, "127.0.0.1")
    assert argv[argv.index("--log-file") + 1] == str(tmp_path / "worker.log")
    sup = Supervisor(log=lambda _m: None)
    try:
        (tmp_path / "worker.log").write_text("2026-12-05 INFO obs_merlb.live: running\n")
        assert sup._log_tail(cfg).endswith("running")
        (tmp_path / "worker.out").write_text("merlb live: --threshold 5 is refused: threshold must be 0-1\n")
        assert sup._log_tail(cfg).startswith("merlb live: --threshold 5")   # the fatal line wins
    finally:
        sup.shutdown()
        sup.thread.join(5)
