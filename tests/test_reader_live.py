"""The voice reader live (obs_merlb/person_reader.py): a model folder carrying voice_reader.safetensors
reads each window's speech against the person's voice functionals and mixes that into the emotion,
in the live Analyzer and in `merlb analyze`'s batched one alike; the person's statistics are kept per
profile beside the band baseline (obs_merlb/baseline_store.py).

The reader here is the shipped model's folder with its own reader replaced by one whose population
is the RAVDESS fixture clips' functionals and whose coefficients are seeded noise: the plumbing under
test does not depend on what it learned. The clip is the demo's audio under frames with no face for its first half and
the demo's face for its second, so one run holds voice-only windows and windows with a face.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from obs_merlb.labels import EMOTIONS, FACE
from obs_merlb.model.config import ModelFolderError
from obs_merlb.model.voice_reader import READER_FILE, VoiceReader, load_reader
from obs_merlb.perception.functionals import (N_FUNCTIONALS, PersonStats, Population, functionals,
                                              speech_frames, speech_pitch)
from obs_merlb.person_reader import population_digest

from media import FIX  # tests/media.py (pytest puts tests/ on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo.mp4"
SHIPPED = ROOT / "assets" / "model"
RATE = 15.0

pytestmark = pytest.mark.skipif(not (SHIPPED / "config.json").is_file() or not DEMO.is_file(),
                                reason="needs the shipped model and assets/demo.mp4")


def _population() -> Population:
    from obs_merlb.perception import clip_steps

    rows = []
    for wav in sorted((FIX / "ravdess").glob("*.wav")):
        s = clip_steps(wav, face=False)
        for a in range(0, max(1, len(s.speech_prob) - 7)):
            speech = s.speech_prob[a:a + 8] > 0.5
            frames = speech_frames(s.voice[a:a + 8], speech, 0.25)
            if frames is not None:
                rows.append(functionals(frames, speech_pitch(s.pitch[a:a + 8], speech)))
    assert len(rows) >= 5
    return Population.of(np.stack(rows))


def _reader(population: Population, weight: float = 0.5) -> VoiceReader:
    rng = np.random.default_rng(7)
    k = len(EMOTIONS)
    return VoiceReader(population, np.zeros(N_FUNCTIONALS), np.ones(N_FUNCTIONALS),
                       0.3 * rng.normal(size=(k, N_FUNCTIONALS)), np.zeros(k), EMOTIONS, weight)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model's folder without its own reader."""
    d = tmp_path_factory.mktemp("plain-model") / "model"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns(READER_FILE))
    return d


@pytest.fixture(scope="module")
def reader_model(tmp_path_factory: pytest.TempPathFactory, plain_model: Path) -> Path:
    """The shipped model's folder with this test's reader in it."""
    d = tmp_path_factory.mktemp("reader-model") / "model"
    shutil.copytree(plain_model, d)
    _reader(_population()).save(d)
    return d


@pytest.fixture(scope="module")
def population(reader_model: Path) -> Population:
    return load_reader(reader_model).population


@pytest.fixture(scope="module")
def half_face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's audio; frames without a face for the first half, the demo's frames after."""
    import av

    from obs_merlb.capture import load_media

    media = load_media(DEMO, fps=RATE, max_width=320)
    path = tmp_path_factory.mktemp("clip") / "half_face.mp4"
    h, w = media.frames[0].shape[:2]
    half = len(media.frames) // 2
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=int(RATE))
        vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        as_ = out.add_stream("aac", rate=16000, layout="mono")
        for i, img in enumerate(media.frames):
            if i < half:
                x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
                img = np.broadcast_to((x + 8 * i) % 256, (h, w, 3)).astype(np.uint8)
            img = np.ascontiguousarray(img[:vs.height, :vs.width])
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        pcm = np.ascontiguousarray(media.audio, np.float32)
        for s0 in range(0, len(pcm), 1024):
            fr = av.AudioFrame.from_ndarray(pcm[None, s0:s0 + 1024], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, s0
            for p in as_.encode(fr):
                out.mux(p)
        for p in as_.encode():
            out.mux(p)
    return path


# ------------------------------------------------------------------ loading

def test_the_backend_loads_the_reader_beside_the_model(reader_model: Path, population: Population,
                                                       plain_model: Path) -> None:
    from obs_merlb.inference import load_backend

    backend = load_backend(reader_model)
    assert backend.reader is not None and backend.reader.weight == 0.5
    assert population_digest(backend.reader.population) == population_digest(population)
    assert load_backend(plain_model).reader is None
    assert load_backend(SHIPPED).reader is not None          # the shipped model carries one (MODEL_CARD.md)


def test_a_damaged_reader_stops_the_load_with_one_line(reader_model: Path, tmp_path: Path) -> None:
    from obs_merlb.inference import load_backend
    from obs_merlb.model_check import load_checked

    bad = tmp_path / "model"
    shutil.copytree(reader_model, bad)
    data = (bad / READER_FILE).read_bytes()
    (bad / READER_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFolderError, match=f"{READER_FILE} is damaged or incomplete"):
        load_backend(bad)
    with pytest.raises(SystemExit) as e:
        load_checked(load_backend, str(bad), "analyze")
    msg = str(e.value)
    assert msg.startswith("merlb analyze: ") and READER_FILE in msg and "\n" not in msg


def test_a_reader_for_other_emotion_classes_is_refused(reader_model: Path, tmp_path: Path) -> None:
    from obs_merlb.inference import load_backend

    other = tmp_path / "model"
    shutil.copytree(reader_model, other)
    doc = json.loads((other / "config.json").read_text())
    heads = doc["config"]["heads"]
    heads["emotion"] = heads["emotion"][::-1]
    (other / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFolderError, match="reads the standard emotions"):
        load_backend(other)


# ------------------------------------------------------------------ the analyzer

def _run(model: Path, clip: Path) -> dict[str, Any]:
    """The live Analyzer over `clip`: per tick, its window's mask, the probabilities handed to the
    state tracker and the person's statistics then; the voice steps it heard."""
    from obs_merlb.analyzer import Analyzer, iter_file_ticks
    from obs_merlb.inference import load_backend

    an = Analyzer(load_backend(model), body=False)
    out: dict[str, Any] = {"ticks": [], "steps": {}, "an": an}
    voice_step, state_update = an._voice_step, an._state_update

    def heard(k: int, window: np.ndarray) -> Any:
        step, emb = voice_step(k, window)
        out["steps"][k] = step
        return step, emb

    def update(t: float, probs: Any, *rest: Any) -> Any:
        k = int(np.floor(t / an.step_s + 1e-9))
        _, mask, _ = an.ring.window(k, an.voice_k)
        heard_by = max(out["steps"], default=-1)           # the voice steps heard before this tick
        out["ticks"].append((k, mask, probs, None if an.person is None else an.person.stats, heard_by))
        return state_update(t, probs, *rest)

    an._voice_step, an._state_update = heard, update
    try:
        out["events"] = [res.event for res, _ in iter_file_ticks(an, str(clip), RATE)]
    finally:
        an.close()
    return out


@pytest.fixture(scope="module")
def runs(reader_model: Path, plain_model: Path, half_face_clip: Path) -> dict[str, Any]:
    return {"plain": _run(plain_model, half_face_clip), "reader": _run(reader_model, half_face_clip)}


def _window_functionals(steps: dict[int, Any], k_last: int, heard_by: int | None = None,
                        T: int = 8) -> np.ndarray | None:
    """As `merlb eval` computes them: the window's speech steps' whole log-mels, cut by speech_frames."""
    ks = [k for k in range(k_last - T + 1, k_last + 1) if k in steps and (heard_by is None or k <= heard_by)]
    if not ks:
        return None
    voice = np.stack([steps[k].feature for k in ks])
    speech = np.array([steps[k].present and steps[k].speech_prob > 0.5 for k in ks])
    frames = speech_frames(voice, speech, 0.25)
    pitch = np.stack([steps[k].pitch for k in ks])
    return None if frames is None else functionals(frames, speech_pitch(pitch, speech))


def test_voice_only_windows_are_read_and_face_windows_left_alone(runs: dict[str, Any],
                                                                 reader_model: Path) -> None:
    plain, read = runs["plain"], runs["reader"]
    reader = load_reader(reader_model)
    assert len(plain["ticks"]) == len(read["ticks"]) > 150
    fused = with_face = 0
    for (k, mask, p0, _, _), (k1, mask1, p1, stats, heard_by) in zip(plain["ticks"], read["ticks"]):
        assert k == k1 and np.array_equal(mask, mask1)
        if p0 is None:
            assert p1 is None
            continue
        for head in ("valence", "arousal"):
            assert np.array_equal(p0[head], p1[head]), head              # the reader speaks of emotion only
        f = _window_functionals(read["steps"], k, heard_by)
        if mask[:, FACE].any() or f is None:
            with_face += bool(mask[:, FACE].any())
            assert np.array_equal(p0["emotion"], p1["emotion"])          # weight 0 with a face; no speech
            continue
        expect = reader.fuse(p0["emotion"][None], stats.zscore(f, reader.population)[None])[0]
        assert np.allclose(p1["emotion"], expect, atol=1e-6)
        assert not np.allclose(p1["emotion"], p0["emotion"], atol=1e-4)
        fused += 1
    assert fused > 20 and with_face > 20


def test_the_person_grows_from_speech_only_a_window_every_T_speech_steps(runs: dict[str, Any],
                                                                         population: Population) -> None:
    read = runs["reader"]
    steps = read["steps"]
    speech = [k for k in sorted(steps) if steps[k].present and steps[k].speech_prob > 0.5]
    assert len(speech) < len(steps)                                      # the clip has pauses
    rows = [_window_functionals(steps, k) for k in speech[7::8]]
    person = read["an"].person
    assert person.stats.n == len(rows) >= 3
    expect = PersonStats.of(np.stack(rows))
    assert np.allclose(person.stats.mean, expect.mean, rtol=1e-5, atol=1e-5)
    assert np.allclose(person.stats.m2, expect.m2, rtol=1e-4, atol=1e-4)
    # Statistics are replaced, never changed in place: each tick's snapshot is what it read with.
    seen = [t[3].n for t in read["ticks"]]
    assert seen == sorted(seen) and seen[0] == 0


def test_batched_offline_analysis_equals_live_with_a_reader(runs: dict[str, Any], reader_model: Path,
                                                            half_face_clip: Path) -> None:
    from obs_merlb.inference import load_backend
    from obs_merlb.offline import BatchedAnalyzer, iter_ticks
    from obs_merlb.state import StateTracker

    an = BatchedAnalyzer(load_backend(reader_model), StateTracker(), body=False)
    try:
        offline = [t.result.event for t in iter_ticks(an, str(half_face_clip), RATE)]
        n = an.person.stats.n
    finally:
        an.close()
    live, plain = runs["reader"]["events"], runs["plain"]["events"]
    assert n == runs["reader"]["an"].person.stats.n
    assert len(offline) == len(live) > 150
    for a, b in zip(live, offline):
        assert a["t"] == b["t"] and a["label"] == b["label"] and a["speech"] == b["speech"]
        for key in ("probs", "valence", "arousal", "contributions"):
            assert np.allclose(list(a[key].values()), list(b[key].values()), atol=1e-5), key
    assert any(not np.allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-3)
               for a, b in zip(live, plain))                              # and the reader did speak


# ------------------------------------------------------------------ the profile's file

def _engine(model: Path, root: Path, **kw: Any) -> Any:
    from obs_merlb.engine import Engine

    events: list[dict[str, Any]] = []
    eng = Engine(model, highlights=False, body=False, baseline_dir=root, profile="streamer", **kw)
    eng.add_sink(events.append)
    eng.events = events
    return eng


def test_the_person_persists_across_worker_restarts_and_is_reset(reader_model: Path, half_face_clip: Path,
                                                                 population: Population,
                                                                 tmp_path: Path) -> None:
    """A model with a reader and no voice prior keeps a profile file too: the reader's part only."""
    from obs_merlb.panel.live_tab import baseline_text

    root = tmp_path / "baselines"
    seen = []
    for _ in (1, 2):                                                     # two workers, one after the other
        eng = _engine(reader_model, root)
        store = eng.open_baseline()
        assert store is not None and store.baseline is None
        before = store.person.stats.n
        eng.run_file(str(half_face_clip))
        assert eng._analyzer.person is store.person                      # the analyzer grew the store's
        seen.append((before, store.person.stats.n, eng.baseline_status()))
        eng.shutdown()
    (b1, n1, s1), (b2, n2, s2) = seen
    assert b1 == 0 and n1 >= 3 and b2 == n1 and n2 == 2 * n1
    doc = json.loads((root / "streamer.json").read_text())
    assert "prior" not in doc and doc["stats"]["n"] == 0                 # no band part learned
    assert doc["reader"]["population"] == population_digest(population) and doc["reader"]["stats"]["n"] == n2
    assert s1 == {"profile": "streamer", "seconds": n1 * 2.0, "learning": True, "progress": round(n1 / 30, 3)}
    assert baseline_text(s2) == f"learning your voice: {100 * n2 / 30:.0f}%"

    eng = _engine(reader_model, root)
    eng.open_baseline()
    eng.command({"cmd": "reset_baseline"})
    assert not [e for e in eng.events if e["type"] == "error"]
    assert eng.baseline_status()["seconds"] == 0
    assert json.loads((root / "streamer.json").read_text())["reader"]["stats"]["n"] == 0   # forgotten on disk too
    eng.shutdown()

    eng = _engine(reader_model, root)
    eng.open_baseline().person.add(np.ones(N_FUNCTIONALS))
    eng.shutdown()
    eng = _engine(reader_model, root, reset_baseline=True)
    assert eng.open_baseline().person.stats.n == 0
    assert json.loads((root / "streamer.json").read_text())["reader"]["stats"]["n"] == 0
    eng.shutdown()


def _person(n: int, seed: int = 0) -> PersonStats:
    return PersonStats.of(np.random.default_rng(seed).normal(size=(n, N_FUNCTIONALS)))


def _band_prior() -> Any:
    from obs_merlb.perception.baseline import Prior
    from obs_merlb.perception.voice import N_MELS

    return Prior(np.zeros(N_MELS), np.ones(N_MELS))


def test_each_part_belongs_to_what_it_was_learned_for(population: Population, tmp_path: Path) -> None:
    from obs_merlb.baseline_store import BaselineStore, baseline_path
    from obs_merlb.perception.baseline import BandStats
    from obs_merlb.perception.voice import N_FRAMES, N_MELS

    prior = _band_prior()
    both, problems, notes = BaselineStore.open(prior, "p", 0.25, population=population, root=tmp_path)
    assert not problems and not notes and both.baseline is not None and both.person is not None
    both.baseline.stats = BandStats.of(np.random.default_rng(1).normal(size=(40, 1, N_MELS, N_FRAMES)))
    both.person.stats = _person(12)
    assert both.status()["seconds"] == 10.0                             # the band counts every speech step
    assert both.save() is None

    # A model with a prior only carries the reader's part through its saves, and the other way round.
    band_only, _, notes = BaselineStore.open(prior, "p", 0.25, root=tmp_path)
    assert not notes and band_only.baseline.stats.n == 40 * N_FRAMES and band_only.person is None
    band_only.baseline.stats = band_only.baseline.stats + BandStats.of(np.zeros((1, 1, N_MELS, N_FRAMES)) + 1)
    assert band_only.save() is None
    reader_only, _, notes = BaselineStore.open(None, "p", 0.25, population=population, root=tmp_path)
    assert not notes and reader_only.baseline is None and reader_only.person.stats.n == 12
    assert np.allclose(reader_only.person.stats.mean, _person(12).mean)
    reader_only.person.add(np.zeros(N_FUNCTIONALS))
    assert reader_only.save() is None
    again, _, _ = BaselineStore.open(prior, "p", 0.25, population=population, root=tmp_path)
    assert again.baseline.stats.n == 41 * N_FRAMES and again.person.stats.n == 13

    # Statistics gathered for another reader's population are not used, and replaced at the first save.
    other = Population(population.mean + 1.0, population.std)
    fresh, problems, notes = BaselineStore.open(prior, "p", 0.25, population=other, root=tmp_path)
    assert not problems and fresh.person.stats.n == 0 and fresh.baseline.stats.n == 41 * N_FRAMES
    assert len(notes) == 1 and "voice reader's statistics" in notes[0] and "another model" in notes[0]
    # Forgetting forgets every part, including the ones this model has no use for.
    assert reader_only.reset() is None
    doc = json.loads(baseline_path("p", tmp_path).read_text())
    assert doc["reader"]["stats"]["n"] == 0 and doc["stats"]["n"] == 0 and "prior" not in doc


def test_an_older_releases_statistics_are_a_note_not_damage(population: Population, tmp_path: Path) -> None:
    """A profile saved by session 15's reader (205 functionals, its own population) is not damaged:
    the new reader learns the voice afresh with one note, and the file is not moved aside."""
    from obs_merlb.baseline_store import BaselineStore, baseline_path
    from obs_merlb.perception.baseline import BandStats

    path = baseline_path("p", tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = PersonStats.of(np.random.default_rng(5).normal(size=(40, 205)))
    path.write_text(json.dumps({"format": 1, "profile": "p", "stats": BandStats().to_dict(),
                                "reader": {"population": "0123456789abcdef", "stats": old.to_dict()}}))
    store, problems, notes = BaselineStore.open(None, "p", 0.25, population=population, root=tmp_path)
    assert not problems and len(notes) == 1 and "another model" in notes[0]
    assert store.person.stats.n == 0 and store.writable and path.exists()
    assert [q.name for q in tmp_path.rglob("*damaged*")] == []
    store.person.add(np.ones(N_FUNCTIONALS))
    assert store.save() is None
    assert len(json.loads(path.read_text())["reader"]["stats"]["mean"]) == N_FUNCTIONALS


def test_a_damaged_reader_part_is_moved_aside(reader_model: Path, population: Population,
                                              tmp_path: Path) -> None:
    from obs_merlb.baseline_store import BaselineStore, baseline_path

    root = tmp_path / "baselines"
    store, _, _ = BaselineStore.open(None, "streamer", 0.25, population=population, root=root)
    store.person.stats = _person(5)
    assert store.save() is None
    path = baseline_path("streamer", root)
    doc = json.loads(path.read_text())
    doc["reader"]["stats"]["m2"][3] = -1.0                                # no set of windows has that
    bad = json.dumps(doc).encode()
    path.write_bytes(bad)
    eng = _engine(reader_model, root)
    store = eng.open_baseline()
    assert store.person.stats.n == 0 and store.writable
    errors = [e for e in eng.events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["where"] == "baseline"
    msg = errors[0]["message"]
    assert "damaged" in msg and "negative spread" in msg and "moved aside" in msg and "\n" not in msg
    aside = [p for p in root.iterdir() if p.name.startswith("streamer.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == bad and not path.exists()
    store.person.add(np.ones(N_FUNCTIONALS))
    eng.shutdown()                                                        # the fresh one is saved beside it
    assert json.loads(path.read_text())["reader"]["stats"]["n"] == 1 and aside[0].read_bytes() == bad
    for broken in ({"population": 5, "stats": {}}, {"population": "x"}, [1], {"population": "x", "stats": {
            "n": 1.5, "mean": [0.0] * N_FUNCTIONALS, "m2": [0.0] * N_FUNCTIONALS}}):
        path.write_text(json.dumps({**doc, "reader": broken}))
        _, problems, _ = BaselineStore.open(None, "streamer", 0.25, population=population, root=root)
        assert len(problems) == 1 and "damaged" in problems[0], broken
