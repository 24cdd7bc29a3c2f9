"""The live side of the person voice baseline (perception/baseline.py): a model
that carries a voice prior hears each voice step through the streamer's
baseline, kept per profile beside the config file (obs_merlb/baseline_store.py)
across worker restarts, reset by flag, command and panel button; a model
without a prior behaves exactly as before.

The prior-carrying model is the shipped one, less its voice reader, with a
`voice_prior` added to its config (the ONNX graphs do not change), measured
on the RAVDESS fixture actors: another person than the demo clip's, as a
population prior is.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from obs_merlb.baseline_store import BaselineStore, baseline_path, prior_digest
from obs_merlb.perception.baseline import LEARNED_FRAMES, BandStats, Prior, VoiceBaseline, apply
from obs_merlb.perception.voice import N_FRAMES, N_MELS
from obs_merlb.model.voice_reader import READER_FILE
from obs_merlb.settings import SettingError, check_profile, checked_live_config

from media import FIX  # tests/media.py (pytest puts tests/ on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo.mp4"
SHIPPED = ROOT / "assets" / "model"

pytestmark = pytest.mark.skipif(not (SHIPPED / "config.json").is_file() or not DEMO.is_file(),
                                reason="needs the shipped model and assets/demo.mp4")


def _ravdess_prior() -> Prior:
    from obs_merlb.perception import clip_steps

    total = BandStats()
    for wav in sorted((FIX / "ravdess").glob("*.wav")):
        s = clip_steps(wav, face=False)
        total = total + BandStats.of(s.voice, s.speech_prob)
    assert total.n > 0
    return Prior.of(total)


@pytest.fixture(scope="module")
def prior() -> Prior:
    return _ravdess_prior()


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model without its voice reader: neither part of the person's adaptation
    (the reader's own tests are tests/test_reader_live.py)."""
    d = tmp_path_factory.mktemp("plain-model") / "model"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns(READER_FILE))
    return d


@pytest.fixture(scope="module")
def prior_model(tmp_path_factory: pytest.TempPathFactory, prior: Prior, plain_model: Path) -> Path:
    d = tmp_path_factory.mktemp("prior-model") / "model"
    shutil.copytree(plain_model, d)
    doc = json.loads((d / "config.json").read_text())
    doc["config"]["voice_prior"] = prior.to_dict()
    (d / "config.json").write_text(json.dumps(doc))
    return d


def _stats(n_steps: int, seed: int = 0, level: float = -6.0) -> BandStats:
    rng = np.random.default_rng(seed)
    x = rng.normal(level, 2.0, (n_steps, 1, N_MELS, N_FRAMES))
    return BandStats.of(x)


def _engine(model: Path, root: Path, **kw: Any) -> Any:
    from obs_merlb.engine import Engine

    events: list[dict[str, Any]] = []
    eng = Engine(model, highlights=False, body=False, baseline_dir=root, **kw)
    eng.add_sink(events.append)
    eng.events = events
    return eng


# ------------------------------------------------------------------ a model without a prior

def test_a_model_without_a_prior_hears_raw_voices_and_keeps_nothing(plain_model: Path, tmp_path: Path) -> None:
    from obs_merlb.analyzer import Analyzer
    from obs_merlb.capture import load_media
    from obs_merlb.perception.voice import NEEDED

    eng = _engine(plain_model, tmp_path / "baselines", reset_baseline=True)
    assert eng.backend.cfg.voice_prior is None
    assert eng.open_baseline() is None and eng.baseline_status() is None
    assert "baseline" not in eng.health()
    eng.command({"cmd": "reset_baseline"})
    assert eng.events[-1]["type"] == "error" and "keeps no voice baseline" in eng.events[-1]["message"]
    assert not (tmp_path / "baselines").exists()

    an = Analyzer(eng.backend, body=False, baseline=VoiceBaseline(_ravdess_prior()))
    try:
        assert an.baseline is None          # a prior-less model ignores a baseline it is handed
        audio = load_media(FIX / "ravdess" / "03-01-05-01-01-01-01.wav").audio
        step, emb = an._voice_step(0, audio[8000:8000 + NEEDED])
        assert step.present
        assert np.array_equal(emb, eng.backend.encode("voice", step.feature[None])[0])
    finally:
        an.close()


# ------------------------------------------------------------------ the analyzer

def test_each_speech_step_adds_to_the_baseline_then_is_heard_through_it(prior_model: Path) -> None:
    from obs_merlb.analyzer import Analyzer
    from obs_merlb.capture import load_media
    from obs_merlb.inference import load_backend
    from obs_merlb.perception.voice import NEEDED

    backend = load_backend(prior_model)
    an = Analyzer(backend, body=False)
    try:
        assert an.baseline is not None and an.baseline.stats.n == 0      # fresh: nobody heard yet
        audio = load_media(FIX / "ravdess" / "03-01-05-01-01-01-01.wav").audio
        seen = BandStats()
        changed = False
        for k, end in enumerate(range(NEEDED, len(audio), 4000)):
            step, emb = an._voice_step(k, audio[end - NEEDED:end])
            if not step.present:
                assert emb is None
                continue
            seen = seen + BandStats.of(step.feature)
            assert an.baseline.stats.n == seen.n
            expect = backend.encode("voice", apply(step.feature, an.baseline.prior, seen)[None])[0]
            assert np.allclose(emb, expect, atol=1e-6)
            raw = backend.encode("voice", step.feature[None])[0]
            changed |= not np.allclose(emb, raw, atol=1e-3)
        assert seen.n >= 5 * N_FRAMES and changed
    finally:
        an.close()


# ------------------------------------------------------------------ across restarts, offline parity

@pytest.fixture(scope="module")
def demo_runs(prior_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The engine run twice on the demo clip (two workers, one after the other), profile 'streamer'."""
    root = tmp_path_factory.mktemp("home") / "baselines"
    out: dict[str, Any] = {"root": root}
    for i in (1, 2):
        eng = _engine(prior_model, root, profile="streamer")
        store = eng.open_baseline()
        out[f"loaded{i}"] = store.baseline.stats.n
        run = eng.run_file(str(DEMO))
        out[f"events{i}"] = run.events
        out[f"n{i}"] = store.baseline.stats.n
        out[f"status{i}"] = eng.baseline_status()
        eng.shutdown()
        out[f"file{i}"] = json.loads((root / "streamer.json").read_text())
    return out


def test_the_baseline_persists_across_worker_restarts(demo_runs: dict[str, Any], prior: Prior) -> None:
    r = demo_runs
    assert r["loaded1"] == 0 and r["n1"] > 20 * N_FRAMES                # the demo's speech was heard
    assert r["file1"]["prior"] == prior_digest(prior) and r["file1"]["profile"] == "streamer"
    assert r["file1"]["stats"]["n"] == r["n1"]                         # saved at the clean stop
    assert r["loaded2"] == r["n1"]                                     # the second worker continues it
    assert r["n2"] == 2 * r["n1"] and r["file2"]["stats"]["n"] == r["n2"]
    s1, s2 = r["status1"], r["status2"]
    # Seconds of speech heard, not of overlapping log-mel frames: the clip is 12.6 s long.
    assert 3.0 < s1["seconds"] < 12.6 and s2["seconds"] == pytest.approx(2 * s1["seconds"], abs=0.15)
    assert s1["learning"] and 0 < s1["progress"] < 1
    assert s2["progress"] == pytest.approx(min(1.0, r["n2"] / LEARNED_FRAMES), abs=1e-3)
    assert s2["learning"] == (r["n2"] < LEARNED_FRAMES)
    # The same clip, heard against a baseline that knows the voice, is answered differently.
    ev1 = [e for e in r["events1"] if e["speech"]]
    ev2 = [e for e in r["events2"] if e["speech"]]
    assert len(ev1) == len(ev2) > 20
    assert any(not np.allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-4)
               for a, b in zip(ev1, ev2))


def test_batched_offline_analysis_equals_live_with_a_prior(demo_runs: dict[str, Any], prior_model: Path) -> None:
    """`merlb analyze`'s batched path (offline.py) hears voices through the same baseline, step by step."""
    from obs_merlb.inference import load_backend
    from obs_merlb.offline import BatchedAnalyzer, iter_ticks
    from obs_merlb.state import StateTracker

    an = BatchedAnalyzer(load_backend(prior_model), StateTracker(), body=False)
    try:
        ticks = list(iter_ticks(an, str(DEMO), 15.0))
        n = an.baseline.stats.n
    finally:
        an.close()
    live = demo_runs["events1"]       # the first worker started with a fresh baseline, as this run does
    offline = [t.result.event for t in ticks]
    assert n == demo_runs["n1"]
    assert len(offline) == len(live) > 150
    for a, b in zip(live, offline):
        assert a["t"] == b["t"] and a["label"] == b["label"] and a["speech"] == b["speech"]
        for key in ("probs", "valence", "arousal", "contributions"):
            assert np.allclose(list(a[key].values()), list(b[key].values()), atol=1e-5), key


# ------------------------------------------------------------------ the file

def _saved(root: Path, prior: Prior, n_steps: int, profile: str = "streamer") -> BandStats:
    stats = _stats(n_steps)
    store = BaselineStore(baseline_path(profile, root), VoiceBaseline(prior, stats), profile, 0.25)
    assert store.save() is None
    return stats


def test_a_damaged_file_is_moved_aside_and_learning_starts_afresh(prior_model: Path, prior: Prior,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "baselines"
    root.mkdir()
    bad = b'{"format": 1, "stats": {"n": 12, "s1": [1, 2'
    (root / "streamer.json").write_bytes(bad)
    eng = _engine(prior_model, root, profile="streamer")
    store = eng.open_baseline()
    assert store.baseline.stats.n == 0 and store.writable
    errors = [e for e in eng.events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["where"] == "baseline"
    msg = errors[0]["message"]
    assert "damaged" in msg and "moved aside" in msg and "\n" not in msg
    aside = [p for p in root.iterdir() if p.name.startswith("streamer.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == bad and aside[0].name in msg   # kept, byte for byte
    assert not (root / "streamer.json").exists()
    store.baseline.stats = _stats(3)
    eng.shutdown()                                                       # the fresh one is saved beside it
    assert VoiceBaseline.read_stats(root / "streamer.json").n == 3 * N_FRAMES
    assert aside[0].read_bytes() == bad


def test_a_second_worker_on_a_profile_starts_from_it_but_never_writes_it(prior: Prior, tmp_path: Path) -> None:
    """Two workers on one profile each saved their own learning over the other's, without a word."""
    saved = _saved(tmp_path, prior, 40)
    before = baseline_path("streamer", tmp_path).read_bytes()
    lock = baseline_path("streamer", tmp_path).with_suffix(".lock")
    first = subprocess.Popen([sys.executable, "-c", (
        "import sys, pathlib; from obs_merlb.runlock import try_hold; "
        f"h = try_hold(pathlib.Path({str(lock)!r})); print(h is not None, flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert first.stdout.readline().strip() == "True"       # the first worker holds the profile
        store, problems, _ = BaselineStore.open(prior, "streamer", 0.25, root=tmp_path)
        assert len(problems) == 1 and "another merlb live" in problems[0] and "saves nothing" in problems[0]
        assert store.baseline.stats.n == saved.n                  # it starts from what was learned
        store.baseline.stats = store.baseline.stats + _stats(200)
        assert not store.due() and store.save() is None and store.reset() is None
        again, problems, _ = BaselineStore.open(prior, "streamer", 0.25, root=tmp_path, reset=True)
        assert problems and again.baseline.stats.n == 0
        assert baseline_path("streamer", tmp_path).read_bytes() == before     # never written
    finally:
        first.stdin.close()
        first.wait(timeout=30)
    store, problems, _ = BaselineStore.open(prior, "streamer", 0.25, root=tmp_path)   # the first has exited
    assert problems == [] and store.writable and store.baseline.stats.n == saved.n


def test_a_file_that_cannot_be_moved_aside_is_never_written_over(prior: Prior, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = baseline_path("streamer", tmp_path)
    path.write_text("not json")

    def refuse(self: Path, target: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "rename", refuse)
    store, problems, notes = BaselineStore.open(prior, "streamer", 0.25, root=tmp_path)
    assert len(problems) == 1 and "left in place" in problems[0] and "not saved" in problems[0]
    store.baseline.stats = _stats(80)
    assert store.due() is False and store.save() is None
    assert path.read_text() == "not json"


def test_a_baseline_learned_for_another_model_is_not_used(prior_model: Path, prior: Prior, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "baselines"
    other = Prior(prior.mean + 0.5, prior.std * 1.2)
    _saved(root, other, 40)
    before = (root / "streamer.json").read_bytes()
    eng = _engine(prior_model, root, profile="streamer")
    with caplog.at_level("WARNING"):
        store = eng.open_baseline()
    assert store.baseline.stats.n == 0
    lines = [r.getMessage() for r in caplog.records if "another model" in r.getMessage()]
    assert len(lines) == 1 and "learning your voice afresh" in lines[0]
    assert not [e for e in eng.events if e["type"] == "error"]      # a note, not an error
    eng.shutdown()                                                    # nothing heard: the old file stays
    assert (root / "streamer.json").read_bytes() == before
    store.baseline.stats = _stats(2)
    assert store.save() is None
    assert json.loads((root / "streamer.json").read_text())["prior"] == prior_digest(prior)


def test_saved_every_30_s_of_speech(prior: Prior, tmp_path: Path) -> None:
    store, problems, notes = BaselineStore.open(prior, "p", 0.25, root=tmp_path)
    assert not problems and not notes and not store.due()
    # 30 s of speech live: 120 steps of 0.25 s, each adding its second of frames.
    store.baseline.stats = _stats(119)
    assert not store.due()
    store.baseline.stats = _stats(120)
    assert store.due() and store.save() is None and not store.due()
    # Half of the minute of speech (LEARNED_FRAMES) the baseline learns from.
    assert store.status() == {"profile": "p", "seconds": 30.0, "learning": True, "progress": 0.5}


def test_profiles_are_kept_apart(prior: Prior, tmp_path: Path) -> None:
    _saved(tmp_path, prior, 7, profile="alice")
    a, _, _ = BaselineStore.open(prior, "alice", 0.25, root=tmp_path)
    b, _, _ = BaselineStore.open(prior, "bob", 0.25, root=tmp_path)
    assert a.baseline.stats.n == 7 * N_FRAMES and b.baseline.stats.n == 0
    # Case does not tell profiles apart: on Windows and macOS the two names are one file.
    assert baseline_path("Alice", tmp_path) == baseline_path("alice", tmp_path)
    big, _, _ = BaselineStore.open(prior, "ALICE", 0.25, root=tmp_path)
    assert big.baseline.stats.n == 7 * N_FRAMES
    assert sorted(f.name for f in tmp_path.glob("*.json")) == ["alice.json"]


# ------------------------------------------------------------------ resets

def test_reset_by_command_and_by_flag(prior_model: Path, prior: Prior, tmp_path: Path) -> None:
    root = tmp_path / "baselines"
    _saved(root, prior, 250)                                  # 62.5 s of speech: learned
    eng = _engine(prior_model, root, profile="streamer")
    assert eng.open_baseline().baseline.stats.n == 250 * N_FRAMES
    assert eng.health()["baseline"] == {"profile": "streamer", "seconds": 62.5, "learning": False, "progress": 1.0}
    eng.command({"cmd": "reset_baseline"})
    assert not [e for e in eng.events if e["type"] == "error"]
    assert eng.baseline_status()["seconds"] == 0 and eng.baseline_status()["learning"]
    assert VoiceBaseline.read_stats(root / "streamer.json").n == 0       # forgotten on disk too
    eng.shutdown()

    _saved(root, prior, 70)
    eng = _engine(prior_model, root, profile="streamer", reset_baseline=True)
    assert eng.open_baseline().baseline.stats.n == 0
    assert VoiceBaseline.read_stats(root / "streamer.json").n == 0
    eng.shutdown()


class _Worker:
    """`merlb live` on the demo clip, its events read over the WebSocket."""

    def __init__(self, args: list[str], home: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MERLB_CONFIG": str(home / "config.toml"),
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "obs_merlb", "live", "--video", str(DEMO), "--port", "0", "--no-session",
             "--no-body", "--control", "stdin", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=home)
        self.events: list[dict[str, Any]] = []
        url = None
        for line in self.proc.stdout:
            if line.startswith("overlay:"):
                url = line.split("events:")[1].strip()
                break
        assert url, self.finish()
        self._open = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._reader.start()
        assert self._open.wait(15)

    def _read(self, url: str) -> None:
        from websockets.sync.client import connect

        with connect(url, open_timeout=10) as ws:
            self.ws = ws
            self._open.set()
            try:
                for msg in ws:
                    self.events.append(json.loads(msg))
            except Exception:  # noqa: BLE001 - the worker went away
                pass

    def health(self, pred: Any, timeout: float = 60.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < end and self.proc.poll() is None:
            upto = len(self.events)
            for ev in self.events[seen:upto]:
                if ev.get("type") == "health" and "baseline" in ev and pred(ev["baseline"]):
                    return ev["baseline"]
            seen = upto
            time.sleep(0.1)
        raise AssertionError(f"no such health event; stderr: {self.finish()[-2000:]}")

    def command(self, cmd: str) -> None:
        self.ws.send(json.dumps({"v": 1, "type": "command", "cmd": cmd}))

    def finish(self) -> str:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read()


def test_merlb_live_continues_resets_and_saves_the_profile(prior_model: Path, prior: Prior, tmp_path: Path) -> None:
    """End to end: a saved profile is continued, the WebSocket command resets it, a clean stop saves
    it, and `--reset-baseline` starts afresh."""
    root = tmp_path / "baselines"                          # beside MERLB_CONFIG
    _saved(root, prior, 250, profile="streamer")
    w = _Worker(["--model", str(prior_model), "--profile", "streamer"], tmp_path)
    try:
        first = w.health(lambda b: True)
        assert first["profile"] == "streamer" and not first["learning"] and first["seconds"] >= 62.5
        w.command("reset_baseline")
        after = w.health(lambda b: b["learning"] and b["seconds"] < 5.0)
        assert after["progress"] < 0.5
    finally:
        err = w.finish()
    assert w.proc.returncode == 0, err[-2000:]
    saved = VoiceBaseline.read_stats(root / "streamer.json")
    assert saved.n < 70 * N_FRAMES                        # the reset, and what was heard after it

    _saved(root, prior, 250, profile="streamer")
    w = _Worker(["--model", str(prior_model), "--profile", "streamer", "--reset-baseline"], tmp_path)
    try:
        first = w.health(lambda b: True)
        assert first["learning"] and first["seconds"] < 5.0
    finally:
        err = w.finish()
    assert w.proc.returncode == 0 and "--reset-baseline" in err
    assert not list(root.glob("*.damaged-*"))


# ------------------------------------------------------------------ the profile setting

def test_profile_names_are_checked_where_they_are_set(tmp_path: Path) -> None:
    from obs_merlb.live import add_arguments, apply_config_defaults

    for good in ("default", "Alice_2", "stream.main-1", "console", "COM10", "nullify"):
        assert check_profile(good) == good
    for bad in ("", "../x", "a/b", "a\\b", ".hidden", "x" * 65, 5, None, "CON", "nul", "Com1", "lpt9.main"):
        with pytest.raises(SettingError):
            check_profile(bad)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    with pytest.raises(SystemExit, match=r"--profile '\.\./x' is refused: a profile name is"):
        checked_live_config(parser.parse_args(["--profile", "../x"]), str(cfg))
    cfg.write_text('[engine]\nprofile = "a/b"\n')
    with pytest.raises(SystemExit, match=r"\[engine\] profile = 'a/b' in .* is refused"):
        checked_live_config(parser.parse_args([]), str(cfg))
    args = parser.parse_args(["--profile", "bob"])        # the flag wins over the file
    assert checked_live_config(args, str(cfg)) and args.profile == "bob"
    args = parser.parse_args([])
    apply_config_defaults(args, {"engine": {"profile": "alice"}})
    assert args.profile == "alice" and not args.reset_baseline
    args = parser.parse_args([])
    apply_config_defaults(args, {})
    assert args.profile == "default"


# ------------------------------------------------------------------ the panel

@pytest.mark.qt
def test_panel_shows_the_learning_and_resets_it(qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("MERLB_CONFIG", str(tmp_path / "config" / "obs-merlb" / "config.toml"))
    from PyQt5.QtCore import Qt

    from obs_merlb.overlay.server import OverlayServer
    from obs_merlb.panel.app import free_port
    from obs_merlb.panel.client import WorkerClient
    from obs_merlb.panel.main_window import MainWindow
    from obs_merlb.state import health_event

    def health(baseline: dict[str, Any] | None) -> dict[str, Any]:
        return health_event(fps=15, target_fps=15, latency_ms_p50=10, latency_ms_p95=20, cpu_percent=20,
                            backend="onnxruntime", dropped=0, last_error=None, obs=None, baseline=baseline)

    port = free_port()
    commands: list[dict[str, Any]] = []
    client = WorkerClient(f"ws://127.0.0.1:{port}/ws")
    window = MainWindow(client, sessions_dir=tmp_path / "none")
    qtbot.addWidget(window)
    window.show()
    srv = OverlayServer(port=port).start()
    srv.on_command(commands.append)
    live = window.live
    try:
        client.start()
        qtbot.waitUntil(lambda: client.connected and srv.client_count == 1, timeout=10_000)
        srv.publish(health(None))                       # a model without a prior: nothing shown
        qtbot.waitUntil(lambda: window.last_health is not None, timeout=5000)
        assert not live.baseline_label.isVisible() and not live.baseline_reset.isVisible()
        srv.publish(health({"profile": "default", "seconds": 4.2, "learning": True, "progress": 0.4}))
        qtbot.waitUntil(lambda: live.baseline_label.isVisible(), timeout=5000)
        assert live.baseline_label.text() == "learning your voice: 40%"
        srv.publish(health({"profile": "default", "seconds": 181.0, "learning": False, "progress": 1.0}))
        qtbot.waitUntil(lambda: live.baseline_label.text() == "adapted to your voice (3 min of speech)",
                        timeout=5000)
        assert live.baseline_reset.isVisible() and live.baseline_reset.isEnabled()
        qtbot.mouseClick(live.baseline_reset, Qt.LeftButton)
        qtbot.waitUntil(lambda: any(c.get("cmd") == "reset_baseline" for c in commands), timeout=5000)
        assert live.baseline_label.text() == "learning your voice: 0%"
        srv.publish(health(None))                       # another model, without a prior
        qtbot.waitUntil(lambda: not live.baseline_label.isVisible(), timeout=5000)
        assert not live.baseline_reset.isVisible()
    finally:
        window.close()
        srv.stop()


# ------------------------------------------------------------------ cost

def test_the_baseline_costs_well_under_half_a_millisecond_per_step(prior: Prior) -> None:
    from obs_merlb.bench import bench_baseline

    ms = bench_baseline(prior.to_dict(), 200)
    assert 0 < ms < 0.5
