"""Long recordings: flat memory, resumable runs, recordings cut off mid-file, and
the same timeline and highlights as the live analyzer.

Recordings are the demo clip looped with PyAV (benchmarks/long_recording.py),
analysed with the shipped model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from obs_merlb.timeline import PlotSeries

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"
MODEL = ROOT / "assets" / "model"
pytestmark = pytest.mark.slow


def _bench():
    spec = importlib.util.spec_from_file_location("long_recording", ROOT / "benchmarks" / "long_recording.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _rows(out: Path, name: str = "timeline.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def _partial_rows(out: Path) -> list[dict]:
    """The rows an unfinished run has written (they take their own name when it completes)."""
    from obs_merlb.timeline import JSONL_NAME, PARTIAL_PREFIX

    assert not (out / JSONL_NAME).exists()
    return _rows(out, PARTIAL_PREFIX + JSONL_NAME)


def _highlights(out: Path) -> list[tuple]:
    return [(h["t"], h["kind"], h["label"], h["score"])
            for h in json.loads((out / "timeline.json").read_text())["highlights"]]


def _assert_close(a: list[dict], b: list[dict]) -> None:
    """Resumed vs uninterrupted: a resumed run restarts the face mesh's tracking a few
    seconds before its checkpoint, which moves a crop by a fraction of a grey level."""
    assert [r["t"] for r in a] == [r["t"] for r in b]
    probs = [k for k in a[0] if k.startswith("p_") or k.endswith("_score")]
    diff = np.abs(np.array([[r[k] for k in probs] for r in a]) - np.array([[r[k] for k in probs] for r in b]))
    assert diff.max() < 0.03, diff.max()
    same = np.mean([x["label"] == y["label"] for x, y in zip(a, b)])
    assert same >= 0.98, same


@pytest.fixture(scope="module")
def minute(tmp_path_factory) -> Path:
    """The demo looped to a minute (emotion changes there make highlights)."""
    path = tmp_path_factory.mktemp("long") / "minute.mkv"
    _bench().make_long_recording(DEMO, path, 60.0)
    return path


@pytest.fixture(scope="module")
def reference(minute: Path, tmp_path_factory) -> Path:
    """The uninterrupted analysis of `minute`."""
    from obs_merlb.report import analyze

    out = tmp_path_factory.mktemp("reference")
    assert analyze(minute, out, str(MODEL), progress=False) == out / "report.html"
    return out


def test_timeline_and_highlights_equal_the_live_analyzers(minute: Path, reference: Path) -> None:
    """`merlb analyze` (batched, pipelined, streamed to disk) writes exactly the rows and
    highlights the live analyzer and its peak detector give on the same file."""
    from obs_merlb.analyzer import Analyzer, iter_file_ticks
    from obs_merlb.highlights import PeakDetector
    from obs_merlb.inference import load_backend
    from obs_merlb.state import StateTracker
    from obs_merlb.timeline import row_from_event

    analyzer = Analyzer(load_backend(MODEL), StateTracker())
    detector = PeakDetector()
    rows, highlights = [], []
    try:
        for res, _ in iter_file_ticks(analyzer, str(minute), 15.0):
            ev = res.event
            rows.append(row_from_event(ev))
            highlights += [(round(h.t, 3), h.kind, h.label, round(h.score, 3))
                           for h in detector.update(ev["t"], ev["arousal_score"], ev["label"], ev["confidence"])]
    finally:
        analyzer.close()
    written = _rows(reference)
    assert len(written) == len(rows) > 800
    assert [r["label"] for r in written] == [r["label"] for r in rows]
    for k in rows[0]:
        if isinstance(rows[0][k], float):
            assert np.allclose([r[k] for r in written], [r[k] for r in rows], atol=1e-6), k
    assert highlights and _highlights(reference) == highlights


def test_interrupted_analysis_continues_where_it_stopped(minute: Path, reference: Path, tmp_path: Path) -> None:
    from obs_merlb.report import CHECKPOINT, analyze

    out = tmp_path / "out"
    assert analyze(minute, out, str(MODEL), progress=False, checkpoint_every_s=5.0, stop_after_s=25.0) is None
    assert (out / CHECKPOINT).is_file() and not (out / "report.html").exists()
    partial = _partial_rows(out)
    assert 20.0 <= partial[-1]["t"] < 40.0
    assert analyze(minute, out, str(MODEL), progress=False) == out / "report.html"
    assert not (out / CHECKPOINT).exists()
    rows = _rows(out)
    assert rows[:len(partial)] == partial               # what was written stays
    _assert_close(rows, _rows(reference))
    assert [h[:3] for h in _highlights(out)] == [h[:3] for h in _highlights(reference)]


def test_killed_analysis_resumes(minute: Path, reference: Path, tmp_path: Path) -> None:
    """As after a crash: the process is killed (SIGKILL) after a checkpoint; the same command continues."""
    from obs_merlb.report import CHECKPOINT

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "obs_merlb", "analyze", str(minute), "--out", str(out), "--model", str(MODEL),
           "--no-progress", "--checkpoint-every", "5"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before its first checkpoint"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "report.html").exists()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "continuing" in done.stderr and "Traceback" not in done.stderr
    _assert_close(_rows(out), _rows(reference))


def test_interrupted_preprocessing_resumes_identically(minute: Path, tmp_path: Path, monkeypatch) -> None:
    """A recording's partial shard continues from its checkpoint; the shard equals an uninterrupted run's."""
    from obs_merlb.perception import steps as steps_mod
    from obs_merlb.train import preprocess as P

    table = tmp_path / "rec.csv"
    table.write_text(f"path,label\n{minute},neutral\n")
    whole = P.prepare(table, tmp_path / "whole", quiet=True)
    assert not whole.failed

    real = steps_mod.iter_clip_steps
    started: list[int] = []

    def interrupted(*a, **kw):
        started.append(kw.get("from_step", 0))
        for n, block in enumerate(real(*a, **{**kw, "block": 40})):     # 10 s blocks
            if n == 3:
                raise KeyboardInterrupt      # after three blocks, each checkpointed
            yield block

    monkeypatch.setattr(steps_mod, "iter_clip_steps", interrupted)
    monkeypatch.setattr(P, "CHECKPOINT_EVERY_S", 10.0)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(table, tmp_path / "cache", quiet=True)
    (ckpt,) = (tmp_path / "cache" / "partial").glob("*/checkpoint.json")
    assert json.loads(ckpt.read_text())["steps"] == 120
    monkeypatch.setattr(steps_mod, "iter_clip_steps", real)
    again = P.prepare(table, tmp_path / "cache", quiet=True)
    assert started == [0] and not again.failed
    a, b = P.read_shard(whole.shards[0]), P.read_shard(again.shards[0])
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not any((tmp_path / "cache" / "partial").iterdir())     # spools gone once the shard is whole


def _crashed_recording(path: Path, seconds: float) -> None:
    """A Matroska recording whose writer died mid-way (never finalised: no length in its header)."""
    code = ("import os, sys\n"
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "from long_recording import make_long_recording\n"
            "make_long_recording(sys.argv[1], sys.argv[2], float(sys.argv[3]), finish=False)\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(DEMO), str(path), str(seconds)], check=True, timeout=120)


def test_recording_cut_off_mid_file_is_analysed_up_to_the_cut(tmp_path: Path) -> None:
    rec = tmp_path / "crashed.mkv"
    _crashed_recording(rec, 40.0)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "obs_merlb", "analyze", str(rec), "--out", str(out),
                           "--model", str(MODEL), "--no-progress"], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    note = [line for line in proc.stderr.splitlines() if line.startswith("merlb analyze: warning:")]
    assert len(note) == 1 and "cut off" in note[0]
    rows = _rows(out)
    assert 20.0 < rows[-1]["t"] <= 51.0     # four loops of 12.7 s were written; the tail never reached the disk
    meta = json.loads((out / "timeline.json").read_text())["meta"]
    assert meta["warnings"] == [note[0].removeprefix("merlb analyze: warning: ")]
    assert "cut off" in (out / "report.html").read_text()


def test_a_recording_still_being_written_says_so(tmp_path: Path, monkeypatch) -> None:
    """OBS still recording the file `merlb analyze` reads: the end it reaches is where the
    writer was, so the note says to run again later, not that the file was cut off."""
    from obs_merlb import report

    rec = tmp_path / "recording.mkv"
    _crashed_recording(rec, 20.0)
    real_probe = report.probe

    def probe_then_grow(path):
        info = real_probe(path)
        with open(path, "ab") as f:           # the writer's next cluster, half written
            f.write(os.urandom(64 * 1024))
        return info

    monkeypatch.setattr(report, "probe", probe_then_grow)
    out = tmp_path / "out"
    assert report.analyze(rec, out, str(MODEL), progress=False) is not None
    warnings = json.loads((out / "timeline.json").read_text())["meta"]["warnings"]
    assert len(warnings) == 1, warnings
    assert "grew while it was read" in warnings[0] and "run again when the recording has ended" in warnings[0]
    assert "cut off" not in warnings[0] and "truncated" not in warnings[0]
    assert _rows(out)[-1]["t"] > 10.0


def test_memory_stays_flat_on_a_long_recording(tmp_path: Path) -> None:
    """Four minutes of media: RSS sampled during `merlb analyze` and `merlb preprocess`
    stays under a bound and does not grow in the second half of the run."""
    bench = _bench()
    rec = tmp_path / "four.mkv"
    duration = bench.make_long_recording(DEMO, rec, 240.0)
    table = tmp_path / "four.csv"
    table.write_text(f"path,label\n{rec},neutral\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    runs = {
        "analyze": bench.measure([sys.executable, "-m", "obs_merlb", "analyze", str(rec), "--out", str(out),
                                  "--model", str(MODEL), "--no-progress"],
                                 lambda: bench._analyze_progress(out), duration, _env()),
        "preprocess": bench.measure([sys.executable, "-m", "obs_merlb", "preprocess", str(table), "--out",
                                     str(cache), "-j", "1"], lambda: bench._preprocess_progress(cache),
                                    duration, _env()),
    }
    for name, run in runs.items():
        rss = run["rss_mb"]
        assert run["peak_rss_mb"] < 600, (name, run["peak_rss_mb"])
        half = len(rss) // 2
        # The end of the run (plots, the shard's assembly) may add a little; growth with the
        # recording's length would add ~13 MB a minute (the measurement before).
        assert max(rss[half:-2] or rss[half:]) - np.median(rss[half // 2:half]) < 40, (name, rss)


def test_plot_series_downsamples_keeping_extremes() -> None:
    """Hours of rows reduce to what a screen shows, and a one-row spike survives."""
    series = PlotSeries(duration=4 * 3600.0)
    base = {f"p_{e}": 1 / 7 for e in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")}
    for i in range(4 * 3600 * 15):
        t = i / 15
        series.add({"t": t, "label": "happy" if t < 7200 else "sad", "valence_score": 0.9 if i == 100_000 else 0.0,
                    "arousal_score": -0.5, **base})
    t, v = series.line("valence_score")
    assert len(t) <= 2000 and v.max() == 0.9 and np.all(np.diff(t) >= 0)
    assert len(series.times()) <= 1000 and np.allclose(series.probs().sum(axis=1), 1.0)
    runs = series.label_runs(1 / 15)
    assert [r[2] for r in runs] == ["happy", "sad"] and abs(runs[0][1] - 7200) < 20
    assert series.label_counts == {"happy": 7200 * 15, "sad": 7200 * 15}
