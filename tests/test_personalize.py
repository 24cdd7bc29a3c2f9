"""`merlb personalize` end to end: past streams -> candidate -> gate -> registry -> running worker.

The "past streams" are three recordings made of the demo clip's six CREMA-D
emotions in shuffled orders, with session logs whose tags sit on those
emotions (tests/personalize_streams.py). The default model is a freshly
initialised, seeded MERLB (no shipped weights needed). Everything the code
writes goes to a private XDG data/cache/config folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEMO = ROOT / "assets" / "demo.mp4"

pytestmark = pytest.mark.personalize


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("personalize-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(d / "data"))
        mp.setenv("XDG_CACHE_HOME", str(d / "cache"))
        mp.setenv("XDG_CONFIG_HOME", str(d / "config"))
        mp.setenv("MERLB_CONFIG", str(d / "config" / "obs-merlb" / "config.toml"))
        mp.delenv("MERLB_MODELS", raising=False)
        mp.delenv("MERLB_CACHE", raising=False)
        yield d


@pytest.fixture(scope="module")
def streams(home: Path) -> SimpleNamespace:
    pytest.importorskip("av")
    from merlb_testmodel import fresh_model_dir
    from personalize_streams import make_streams, write_sessions

    from obs_merlb.calibration import Calibration, save_calibration

    recordings, tags = make_streams(home / "recordings", n=3)
    base = fresh_model_dir(home / "base-model")
    # A calibrated base, as the shipped model is; a set these streams never show,
    # so it changes no prediction here, only what a candidate must carry over.
    save_calibration(base, Calibration({"scene": {"emotion": 1.5}}))
    # ... and carries a voice reader, as the shipped model does (what a candidate must carry over).
    _voice_reader().save(base)
    return SimpleNamespace(
        recordings=recordings, tags=tags,
        sessions=home / "sessions", shuffled=home / "shuffled",
        logs=write_sessions(home / "sessions", tags),
        shuffled_logs=write_sessions(home / "shuffled", tags, shuffle_seed=1),
        base=base,
    )


def _voice_reader():
    import numpy as np

    from obs_merlb.labels import EMOTIONS
    from obs_merlb.model.voice_reader import VoiceReader
    from obs_merlb.perception.functionals import N_FUNCTIONALS, Population

    rng = np.random.default_rng(0)
    ones, zeros = np.ones(N_FUNCTIONALS), np.zeros(N_FUNCTIONALS)
    return VoiceReader(Population(zeros, ones), zeros, ones, 0.1 * rng.normal(size=(len(EMOTIONS), N_FUNCTIONALS)),
                       np.zeros(len(EMOTIONS)), tuple(EMOTIONS), 0.5)


def models_root() -> Path:
    from obs_merlb import registry
    return registry.models_dir()


def personalize(*args: str, timeout: float = 240) -> tuple[int, list[dict[str, Any]], str]:
    """Run `merlb personalize ... --progress-json`; (exit code, JSON lines, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "obs_merlb", "personalize", *args, "--progress-json"],
                       capture_output=True, text=True, timeout=timeout, env=env)
    lines = []
    for ln in p.stdout.splitlines():
        try:
            lines.append(json.loads(ln))
        except json.JSONDecodeError:
            pass
    return p.returncode, lines, p.stderr


def result_of(lines: list[dict[str, Any]]) -> dict[str, Any]:
    res = [ln for ln in lines if ln.get("type") == "result"]
    assert res, f"no result line in {lines[-5:]}"
    return res[-1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Worker:
    """`merlb live --video demo.mp4 --loop` and a WebSocket reader of its events."""

    def __init__(self, *args: str, tmp: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "obs_merlb", "live", "--video", str(DEMO), "--loop", "--port", "0",
             "--rate", "4", "--no-session", "--no-body", "--control", "none", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
        self.events: list[dict[str, Any]] = []
        self.ws_url = None
        for line in self.proc.stdout:
            if line.startswith("overlay:"):
                self.ws_url = line.split("events:")[1].strip()
                break
        assert self.ws_url, f"worker did not start: {self.proc.stderr.read()[-2000:]}"
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(15)

    def _read(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.ws_url, open_timeout=10) as ws:
                self._ready.set()
                for msg in ws:
                    self.events.append(json.loads(msg))
        except Exception:
            self._ready.set()

    def wait_for(self, pred: Any, timeout: float = 30.0) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for ev in list(self.events):
                if pred(ev):
                    return ev
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ fast unit tests

def test_tag_table_and_resolution() -> None:
    from obs_merlb.train.personalize.windows import resolve_tag, tag_table

    table = tag_table({"personalize": {"tags": {"tilted": "angry", "clutch": {"valence": "positive",
                                                                              "arousal": "high"},
                                                "gg": "user"}}})
    assert resolve_tag("Hype", table) == {"emotion": "happy", "valence": "positive", "arousal": "high"}
    assert resolve_tag("calm", table)["arousal"] == "low"
    assert resolve_tag("tilted", table)["emotion"] == "angry"
    assert resolve_tag("clutch", table) == {"valence": "positive", "arousal": "high"}
    assert resolve_tag("gg", table) == {"user": "gg"}
    assert resolve_tag("sadness", table)["emotion"] == "sad"           # an emotion alias
    assert resolve_tag("fighting", table) == {"behaviour": "fighting"}  # a game behaviour
    assert resolve_tag("cringe", table) == {"user": "cringe"}           # the streamer's own class
    with pytest.raises(ValueError):
        tag_table({"personalize": {"tags": {"x": "bananas"}}})


def test_split_is_time_disjoint_and_csv_corrects(tmp_path: Path) -> None:
    from obs_merlb.train.personalize.windows import Session, Window, apply_labels_csv, split_windows, tag_table

    rec = tmp_path / "a.mkv"
    rec.write_bytes(b"x")
    s = [Session(rec, None, [], 1.0)]
    ws = [Window(0, t - 2, t + 1, "hype", {"emotion": "happy"}) for t in (5, 10, 15, 20, 25, 30, 35, 40)]
    info = split_windows(ws, s, 0.25, "auto")
    assert info["mode"] == "tail"
    val = [w for w in ws if w.split == "val"]
    train = [w for w in ws if w.split == "train"]
    assert len(val) == 2 and max(w.end for w in train) <= min(w.start for w in val)

    csv_path = tmp_path / "fix.csv"
    csv_path.write_text("path,start,end,label\na.mkv,3,6,sad\na.mkv,8,11,ignore\na.mkv,50,56,tilted\n")
    ws2 = [Window(0, t - 2, t + 1, "hype", {"emotion": "happy"}) for t in (5, 10, 15)]
    ws2, stats = apply_labels_csv(csv_path, s, ws2, tag_table(), 3.0)
    assert stats == {"added": 3, "replaced": 1, "deleted": 1}
    assert sorted((w.tag, round(w.start)) for w in ws2) == [("hype", 13), ("sad", 3), ("tilted", 50), ("tilted", 53)]


def test_gate_rejects_noise_and_accepts_signal() -> None:
    from obs_merlb.train.personalize.gate import gate

    rng = np.random.default_rng(0)
    y = {"emotion": rng.integers(0, 4, 40)}
    heads = {"emotion": ["angry", "happy", "neutral", "sad"]}
    m = lambda f1: {"emotion": {"macro_f1": f1}}  # noqa: E731
    noise = gate(m(0.3), {"emotion": rng.integers(0, 4, 40)}, m(0.25), y, heads, 0.02, 0.05, 6)
    assert not noise["passed"]
    good = gate(m(1.0), {"emotion": y["emotion"].copy()}, m(0.25), y, heads, 0.02, 0.05, 6,
                inc_pred={"emotion": rng.integers(0, 4, 40)})
    assert good["passed"] and good["p_value"] < 0.01 and good["p_better"] < 0.01


def test_embedding_norm_folds_exactly() -> None:
    """Training in standardized coordinates must not change what the saved model computes."""
    torch = pytest.importorskip("torch")
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.merlb import MERLB
    from obs_merlb.train.personalize.features import RecordingSteps
    from obs_merlb.train.personalize.finetune import EmbeddingNorm

    torch.manual_seed(0)
    model = MERLB(MERLBConfig(modalities=["face", "voice"])).eval()
    rng = np.random.default_rng(0)
    mask = np.ones((20, 4), np.uint8)
    mask[3:6, 0] = 0
    rs = RecordingSteps({"mask": mask}, {"face": (0.3 + 1e-3 * rng.standard_normal((20, 128))).astype(np.float32),
                                         "voice": rng.standard_normal((20, 128)).astype(np.float32)})
    raw = {m: v.copy() for m, v in rs.embs.items()}

    def out(embs: dict[str, np.ndarray]) -> torch.Tensor:
        e = {m: torch.from_numpy(embs[m][None] * mask[None, :, i:i + 1]) for i, m in enumerate(["face", "voice"])}
        with torch.no_grad():
            m = torch.from_numpy(mask[None].astype(np.float32))
            return model.sequence(e["face"], e["voice"], None, None, m)["emotion"]

    before = out(raw)
    norm = EmbeddingNorm(model, [rs], {0})
    norm.fold_in(model, [rs])
    assert abs(float(rs.embs["face"].std()) - 1.0) < 0.1
    torch.testing.assert_close(out(rs.embs), before, atol=1e-4, rtol=1e-4)
    norm.fold_out(model, [rs])
    torch.testing.assert_close(out(raw), before, atol=1e-5, rtol=1e-5)


def test_pseudo_labels_only_on_untagged_training_time() -> None:
    torch = pytest.importorskip("torch")
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.merlb import MERLB
    from obs_merlb.train.personalize.features import RecordingSteps
    from obs_merlb.train.personalize.finetune import pseudo_windows
    from obs_merlb.train.personalize.windows import Session, Window

    torch.manual_seed(0)
    model = MERLB(MERLBConfig(modalities=["face", "voice"])).eval()
    mask = np.zeros((40, 4), np.uint8)
    mask[:, 0] = 1
    rs = RecordingSteps({"mask": mask, "face": np.full((40, 1, 64, 64), 128, np.uint8)})
    tagged = [Window(0, 1.0, 4.0, "hype", {"emotion": "happy"})]
    # Validation starts at 8 s: pseudo-labels must not reach into it; tags keep a second of margin.
    out = pseudo_windows(model, [rs], tagged, [Session(Path("x.mp4"), None)], threshold=0.0, weight=0.3,
                         val_info={"val_from_s": {"x": 8.0}})
    assert [(w.start, w.end) for w in out] == [(6.0, 8.0)]
    assert out[0].source == "pseudo" and out[0].weight == 0.3 and out[0].labels["emotion"]
    assert pseudo_windows(model, [rs], tagged, [Session(Path("x.mp4"), None)], threshold=1.01, weight=0.3,
                          val_info={}) == []

    # Confidence is the model's calibrated one: this random model is near uniform
    # (nothing reaches 0.9), but a face temperature of 0.005 makes its face windows sure.
    from obs_merlb.calibration import Calibration
    args = (model, [rs], tagged, [Session(Path("x.mp4"), None)])
    assert pseudo_windows(*args, threshold=0.9, weight=0.3, val_info={}) == []
    sharp = pseudo_windows(*args, threshold=0.9, weight=0.3, val_info={},
                           calibration=Calibration({"face": {"emotion": 0.005}}))
    assert len(sharp) == len(out) + 1       # no validation cut this time: the window at 6-8 s and 8-10 s
    assert pseudo_windows(*args, threshold=0.9, weight=0.3, val_info={},
                          calibration=Calibration({"voice": {"emotion": 0.005}})) == []   # not these windows' set


def test_registry_atomic_pointer_and_rollback(tmp_path: Path) -> None:
    from obs_merlb import registry

    root = tmp_path / "models"
    for i in range(2):
        tmp = registry.new_temp_dir(root)
        (tmp / "config.json").write_text("{}")
        registry.write_json_atomic(tmp / registry.CANDIDATE_FILE, {"status": "accepted"})
        registry.commit_temp_dir(tmp, root)
    assert [v.name for v in registry.versions(root)] == ["v0001", "v0002"]
    assert registry.active_model_dir(root) is None
    registry.set_active("1", "test", root)
    registry.set_active("v0002", "test", root)
    assert registry.active_model_dir(root) == root / "v0002"
    assert registry.previous_active(root) == "v0001"
    # Activating the active version again is no switch: nothing changes, rollback still goes back.
    pointer = (root / registry.ACTIVE_FILE).read_bytes()
    registry.set_active("v0002", "again", root)
    assert (root / registry.ACTIVE_FILE).read_bytes() == pointer
    assert registry.previous_active(root) == "v0001"
    registry.set_active(registry.previous_active(root), "rollback", root)
    assert registry.active_version(root) == "v0001"
    assert registry.read_active(root)["previous"] == "v0002" and registry.previous_active(root) == "v0002"
    with pytest.raises(KeyError):
        registry.set_active("v0009", "test", root)
    # A temp folder of a dead process is never listed and gets cleaned.
    dead = root / f"{registry.TMP_PREFIX}999999-dead"
    dead.mkdir()
    (dead / "config.json").write_text("{}")
    assert [v.name for v in registry.versions(root)] == ["v0001", "v0002"]
    assert dead in registry.clean_stale(root) and not dead.exists()


def test_carry_reader_takes_a_sound_reader_for_the_standard_emotions_only(tmp_path: Path, capsys) -> None:
    from obs_merlb.labels import EMOTIONS
    from obs_merlb.model.voice_reader import READER_FILE
    from obs_merlb.train.personalize.pipeline import carry_reader

    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir()
    out.mkdir()
    assert carry_reader(base, out, EMOTIONS) == "none in the base" and not (out / READER_FILE).exists()
    _voice_reader().save(base)
    assert carry_reader(base, out, ["happy", "sad"]).startswith("not carried")
    assert not (out / READER_FILE).exists()
    assert carry_reader(base, out, EMOTIONS) == "carried over from the base"
    assert (out / READER_FILE).read_bytes() == (base / READER_FILE).read_bytes()
    (out / READER_FILE).unlink()
    (base / READER_FILE).write_bytes(b"\0" * 64)
    assert carry_reader(base, out, EMOTIONS) == "damaged in the base" and not (out / READER_FILE).exists()
    err = capsys.readouterr().err
    assert "not carried over" in err and READER_FILE in err and err.count("\n") == 1


# ------------------------------------------------------------------ end to end

@pytest.mark.timeout(300)
def test_candidate_beats_default_and_running_worker_switches(streams: SimpleNamespace, home: Path) -> None:
    worker = Worker("--model", str(streams.base), tmp=home)
    try:
        hello = worker.wait_for(lambda e: e["type"] == "hello")
        assert hello and hello["config"]["model"] == str(streams.base)
        t0 = time.perf_counter()
        rc, lines, err = personalize(*map(str, streams.recordings), "--sessions-dir", str(streams.sessions),
                                     "--base", str(streams.base), "--worker-url", worker.ws_url)
        took = time.perf_counter() - t0
        assert rc == 0, err[-3000:]
        res = result_of(lines)
        # The candidate beats the default on the held-out session, by the gate's rules.
        assert res["status"] == "accepted" and res["activated"], res
        assert res["candidate_score"] >= res["active_score"] + 0.2, res
        assert res["p_value"] <= 0.05
        assert set(res["per_head"]) == {"emotion", "valence", "arousal", "user"}
        assert res["rare_tags"] == {"lol": 2}
        stages = {ln.get("stage") for ln in lines if ln.get("type") == "progress"}
        assert {"preprocess", "train", "evaluate"} <= stages
        version = Path(res["path"])
        assert version.parent == models_root() and version.name == "v0001"
        for f in ("model.safetensors", "config.json", "sequence.onnx", "candidate.json", "report.html",
                  "report.md", "contact_sheet.png", "f1_before_after.png", "confusion_emotion_candidate.png",
                  "confusion_emotion_current.png", "confusion_user_candidate.png"):
            assert (version / f).is_file(), f
        info = json.loads((version / "candidate.json").read_text())
        assert info["data"]["val"] > 0 and info["split"]["mode"] == "sessions"
        # The base's voice reader comes along: a personalized model still reads the streamer's voice.
        from obs_merlb.model.voice_reader import READER_FILE
        assert info["voice_reader"] == "carried over from the base"
        assert (version / READER_FILE).read_bytes() == (streams.base / READER_FILE).read_bytes()
        assert json.loads((version / "config.json").read_text())["labels"]["user"] == ["cringe", "spooked"]
        # The candidate ships with the temperatures fitted on its held-out windows.
        from obs_merlb.calibration import load_calibration
        # The candidate ships calibrated: temperatures fitted on its held-out windows where
        # a set has enough of them (these streams have too few), the base's elsewhere.
        cal = load_calibration(version)
        assert cal.info["fitted"] == [f"{r['set']}/{r['head']}" for r in info["calibration"]["rows"]]
        assert cal.temperature("scene", "emotion") == 1.5 and "scene/emotion" in cal.info["inherited"]
        assert cal.temperatures == info["calibration"]["temperatures"]
        assert json.loads((models_root() / "active.json").read_text())["version"] == "v0001"
        # The running worker switched without a restart.
        assert worker.wait_for(lambda e: e["type"] == "hello" and e["config"]["model"] == str(version), 30), \
            res["worker"]
        assert "switched" in res["worker"]
        print(f"\npersonalize (3 recordings, cold cache): {took:.1f} s; "
              f"macro-F1 {res['candidate_score']:.3f} vs default {res['active_score']:.3f}")
    finally:
        worker.stop()
    # A worker started later (no --model) loads the registry's active model.
    fresh = Worker(tmp=home)
    try:
        hello = fresh.wait_for(lambda e: e["type"] == "hello")
        assert hello and hello["config"]["model"] == str(models_root() / "v0001")
    finally:
        fresh.stop()


@pytest.mark.timeout(240)
def test_shuffled_tags_are_rejected_by_the_gate(streams: SimpleNamespace) -> None:
    active = models_root() / "active.json"
    if not active.is_file():
        pytest.skip("needs the accepted model of the end-to-end test")
    before = active.read_bytes()
    rc, lines, err = personalize(*map(str, streams.recordings), "--sessions-dir", str(streams.shuffled),
                                 "--no-notify")
    assert rc == 0, err[-3000:]
    res = result_of(lines)
    assert res["status"] == "rejected" and not res["activated"], res
    assert res["reasons"]
    assert active.read_bytes() == before
    info = json.loads((Path(res["path"]) / "candidate.json").read_text())
    assert info["status"] == "rejected" and info["active_before"] == "v0001"


@pytest.mark.timeout(120)
def test_review_writes_counts_and_contact_sheet(streams: SimpleNamespace, tmp_path: Path) -> None:
    rc, lines, err = personalize("review", *map(str, streams.recordings), "--sessions-dir", str(streams.sessions),
                                 "--base", str(streams.base), "--out", str(tmp_path))
    assert rc == 0, err[-3000:]
    doc = json.loads((tmp_path / "review.json").read_text())
    assert (tmp_path / "contact_sheet.png").stat().st_size > 10_000
    assert doc["labels"]["hype (happy)"] == {"train": 4, "val": 2}
    assert doc["labels"]["cringe"]["train"] == 4 and doc["rare_tags"] == {"lol": 2}
    assert not any(ln.get("stage") == "train" for ln in lines if ln.get("type") == "progress")


@pytest.mark.timeout(240)
def test_kill_midway_leaves_registry_and_active_model_intact(streams: SimpleNamespace) -> None:
    from obs_merlb import registry

    root = models_root()
    if not (root / "active.json").is_file():
        pytest.skip("needs the accepted model of the end-to-end test")
    active_doc = (root / "active.json").read_bytes()
    versions = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    weights = digest(root / "v0001" / "model.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "obs_merlb", "personalize", *map(str, streams.recordings),
                             "--sessions-dir", str(streams.sessions), "--steps", "100000", "--force",
                             "--no-notify", "--progress-json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    tmp_dir = None
    try:
        for line in proc.stdout:
            doc = json.loads(line) if line.startswith("{") else {}
            if doc.get("type") == "candidate":
                tmp_dir = Path(doc["tmp"])
            if doc.get("type") == "progress" and doc.get("stage") == "train" and doc.get("done", 0) >= 20:
                break
        assert tmp_dir is not None and tmp_dir.is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert (root / "active.json").read_bytes() == active_doc
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == versions
    assert digest(root / "v0001" / "model.safetensors") == weights
    assert registry.active_model_dir() == root / "v0001"
    assert tmp_dir in registry.clean_stale()
    rc, lines, _ = personalize("list", "--json")
    assert rc == 0


# ------------------------------------------------------------------ the panel's training tab

# The gate's options decide its outcome here, not the scores: a margin of -1 with alpha 1
# lets every candidate through, a margin of 2 (macro-F1 is at most 1) none.
GATE = {"pass": ["--margin", "-1", "--alpha", "1", "--min-val", "0"], "refuse": ["--margin", "2"]}


@pytest.mark.qt
@pytest.mark.timeout(360)      # run alone, the first case also builds the streams and their features
@pytest.mark.parametrize("outcome", sorted(GATE))
def test_training_tab_drives_personalize_with_progress(streams: SimpleNamespace, qtbot: Any, outcome: str) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("PyQt5.QtWidgets")
    from obs_merlb import registry
    from obs_merlb.panel.training import TrainingTab

    tab = TrainingTab(None, streams.sessions, extra_args=["--base", str(streams.base), "--steps", "150",
                                                          "--no-notify", *GATE[outcome]])
    qtbot.addWidget(tab)
    qtbot.waitUntil(lambda: len(tab.selected_recordings()) == 3, timeout=10_000)
    before = {v.name for v in registry.versions()}
    was = registry.active_version() or registry.DEFAULT
    with qtbot.waitSignal(tab.finished, timeout=300_000) as sig:
        tab.start()
        assert tab.proc is not None
    res = sig.args[0]
    assert res.get("type") == "result", res
    stages = {p["stage"] for p in tab.progress_seen}
    assert {"preprocess", "train", "evaluate"} <= stages
    assert any(p["stage"] == "train" and 0 < p["done"] < p["total"] for p in tab.progress_seen)
    new = {v.name for v in registry.versions()} - before
    assert new == {res["version"]}
    shown = [tab.models.topLevelItem(i).text(1) for i in range(tab.models.topLevelItemCount())]
    assert res["version"] in shown and res["version"] in tab.status.text()
    passed = outcome == "pass"
    assert (res["status"], res["activated"]) == (("accepted", True) if passed else ("rejected", False)), res
    assert (registry.active_version() or registry.DEFAULT) == (res["version"] if passed else was)
    # Activating the run's candidate by hand (already active when the gate passed: no switch),
    # then rolling back, returns to the model that was active before the run.
    tab.activate(res["version"], "test")
    assert registry.active_version() == res["version"]
    tab.rollback()
    assert (registry.active_version() or registry.DEFAULT) == was
