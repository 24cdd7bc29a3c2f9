"""`merlb analyze`'s output folder and its media errors (issue 23, items 6 and 16).

An unusable `--out` is refused in one line before any work; a disk that
fills up ends the run in one line, leaving the folder's earlier outputs
whole and no new output that stops short; a damaged file says on the
terminal how much of it could be analysed; a file that is only briefly
shown per frame (1 fps) is not called truncated; every media error exits 2.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"
MODEL = ROOT / "assets" / "model"
OUTPUTS = ("timeline.csv", "timeline.jsonl", "timeline.json", "report.html")


def _args(file: Path, out: Path) -> list[str]:
    return ["analyze", str(file), "--out", str(out), "--model", str(MODEL), "--no-progress"]


def _analyze(file: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "obs_merlb", "analyze", str(file), "--out", str(out),
                           "--model", str(MODEL), "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=600)


def _our_lines(stderr: str) -> list[str]:
    """What merlb says (mediapipe and TensorFlow Lite write their own lines to stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("merlb analyze:")]


def _no_work(monkeypatch) -> None:
    """Loading a model is the start of the work: a refusal must come before it."""
    import obs_merlb.report as report

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the output folder was checked")
    monkeypatch.setattr(report, "load_backend", refuse)


@contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs stands in for a full disk, and mounting one needs root")


def _need_model() -> None:
    if not (MODEL / "config.json").is_file():
        pytest.skip("no shipped model in assets/model")


def test_an_existing_file_as_out_is_refused_before_the_work(tmp_path: Path, monkeypatch, capsys) -> None:
    from obs_merlb.cli import main

    _no_work(monkeypatch)
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main(_args(DEMO, taken)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0] and str(taken) in err[0]
    assert taken.read_text() == "mine"


def test_a_read_only_out_is_refused_before_the_work(tmp_path: Path, monkeypatch, capsys) -> None:
    from obs_merlb.cli import main

    _no_work(monkeypatch)
    if os.geteuid() == 0:       # root writes through file modes: a read-only mount it is
        ctx = _tmpfs(tmp_path / "ro", "ro,size=64k")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        ctx = _nullcontext(tmp_path / "ro")
    with ctx as ro:
        assert main(_args(DEMO, ro / "reports")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("merlb analyze: --out") and "cannot write there" in err[0]


def test_a_second_analysis_into_the_same_out_is_refused_before_the_work(tmp_path: Path, monkeypatch,
                                                                      capsys) -> None:
    """Two runs into one folder wrote rows into the same partial timeline; the second failed at the
    end with "free some space", which was not the problem."""
    from obs_merlb.cli import main
    from obs_merlb.report import LOCK
    from obs_merlb.runlock import try_hold

    _no_work(monkeypatch)
    out = tmp_path / "report"
    first = try_hold(out / LOCK)            # the running analysis's hold
    assert first is not None
    try:
        assert main(_args(DEMO, out)) == 2
    finally:
        first.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another merlb analyze is writing there" in err[0] and str(out) in err[0]
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]
    held = try_hold(out / LOCK)             # a refused run holds nothing afterwards
    assert held is not None
    held.close()


@contextmanager
def _nullcontext(value: Path) -> Iterator[Path]:
    yield value


@pytest.mark.parametrize("size, when", [("96k", "while analysing"), ("200k", "when publishing")])
def test_a_full_disk_ends_in_one_line_and_leaves_no_mixed_folder(tmp_path: Path, size: str, when: str) -> None:
    """96 KB fill up with the rows (the demo's are ~130 KB); 200 KB hold the rows and fill up
    with the report (~135 KB more). An earlier run's outputs in the folder stay as they were."""
    _need_root()
    _need_model()
    with _tmpfs(tmp_path / "disk", f"size={size}") as disk:
        out = disk / "report"
        out.mkdir()
        before = {name: f"an earlier run's {name}\n" for name in OUTPUTS}
        for name, text in before.items():
            (out / name).write_text(text)
        proc = _analyze(DEMO, out)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        lines = _our_lines(proc.stderr)
        assert len(lines) == 1 and "No space left on device" in lines[0] and "run the same command again" in lines[0]
        for name, text in before.items():
            assert (out / name).read_text() == text, name
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(OUTPUTS)


def test_a_damaged_file_says_on_the_terminal_how_much_was_analysed(tmp_path: Path) -> None:
    _need_model()
    data = bytearray(DEMO.read_bytes())
    a, b = int(len(data) * 0.05), int(len(data) * 0.9)
    data[a:b] = bytes(b - a)                    # the middle of the file overwritten with zeros
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(data)
    proc = _analyze(damaged, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]      # a report of the part that decoded
    lines = _our_lines(proc.stderr)
    assert any("warning" in line and "damaged" in line for line in lines), lines
    assert any(line.startswith("merlb analyze: warning: only 0:00 of the 0:12") for line in lines), lines
    assert (tmp_path / "out" / "report.html").is_file()


def test_a_low_fps_file_is_not_called_truncated(tmp_path: Path, capsys, caplog) -> None:
    """A complete 4 s file at 1 fps: its last frame starts at 3 s and is shown until 4 s.
    It has no audio track, which is no error either."""
    import av

    from obs_merlb.capture.file import iter_media
    from obs_merlb.cli import main

    path = tmp_path / "slides.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=1)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(iter_media(path))
    assert len(frames) == 4
    assert not [str(w.message) for w in caught if "truncated" in str(w.message)]
    _need_model()
    assert main(_args(path, tmp_path / "out")) == 0
    assert "warning" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


def test_every_media_error_exits_2(tmp_path: Path, monkeypatch, capsys) -> None:
    """Not media, and media without video: the same exit code, one line each."""
    import av

    from obs_merlb.cli import main

    _no_work(monkeypatch)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    voice = tmp_path / "voice.wav"
    with av.open(str(voice), "w") as out:
        st = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in st.encode(frame):
            out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    for bad in (text, voice):
        assert main(_args(bad, tmp_path / "out")) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"merlb analyze: {bad}"), err


def test_a_checkpoint_whose_rows_another_run_replaced_starts_afresh(tmp_path: Path) -> None:
    """Recording A stopped after a checkpoint; recording B then began in the same folder (its rows
    replace A's partial rows) and was stopped before a checkpoint of its own; A's rerun must not
    continue from rows that are gone."""
    from obs_merlb.report import analyze
    from obs_merlb.timeline import TimelineWriter

    _need_model()
    out = tmp_path / "out"
    assert analyze(DEMO, out, str(MODEL), progress=False, checkpoint_every_s=2.0, stop_after_s=6.0) is None
    for path in TimelineWriter.partial_paths(out):
        path.write_bytes(b"")                     # what B's start did to them
    assert analyze(DEMO, out, str(MODEL), progress=False) == out / "report.html"
    rows = (out / "timeline.jsonl").read_text().splitlines()
    assert len(rows) > 170 and '"t": 0.0' in rows[0]
