"""A resumed `merlb analyze` continues the person's voice exactly where the interrupted run left it.

The checkpoint (obs_merlb/report.py) holds the analyzer's `person_state()`: the voice reader's
ring of speech frames, speech step count and statistics (obs_merlb/person_reader.py), and the
band baseline with the statistics each recent voice step was heard through (a model with a voice
prior). The resumed run's warm-up replays the voice steps heard before the checkpoint without
adding them to the person again, so its rows equal an uninterrupted run's, voice-only windows
included.

The recording is the demo's speech twice over (25 s) under frames with no face, so every window is
voice-only; the runs stop at the end of the second batch of ticks (12.7 s), after the person's
statistics have grown. The models are test_reader_live's (a seeded-noise reader at weight 0.5) and
test_baseline_live's (the shipped model with a voice prior measured on the RAVDESS fixtures).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from obs_merlb.model.voice_reader import READER_FILE

from personalize_streams import FPS, SIZE, SR, write_recording  # tests/ is on sys.path under pytest
from test_baseline_live import _ravdess_prior
from test_reader_live import _population, _reader

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo.mp4"
SHIPPED = ROOT / "assets" / "model"
STOP_S = 10.0         # checkpoints come at batch ends (96 ticks): the run stops at 12.7 s

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHIPPED / "config.json").is_file() or not DEMO.is_file(),
                                 reason="needs the shipped model and assets/demo.mp4")]


@pytest.fixture(scope="module")
def voice_only_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's audio twice over, under a moving gradient (no face anywhere)."""
    from obs_merlb.capture import load_media

    audio = np.concatenate([load_media(DEMO, fps=FPS, max_width=SIZE[0]).audio] * 2).astype(np.float32)
    x = np.linspace(0, 255, SIZE[0], dtype=np.float32)[None, :, None]
    frames = [np.broadcast_to((x + 8 * i) % 256, (SIZE[1], SIZE[0], 3)).astype(np.uint8)
              for i in range(int(len(audio) / SR * FPS))]
    path = tmp_path_factory.mktemp("clip") / "voice_only.mp4"
    write_recording(path, [{"label": "speech", "frames": frames, "audio": audio}], [0])
    return path


def _plain(root: Path) -> Path:
    d = root / "model"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns(READER_FILE))
    return d


@pytest.fixture(scope="module")
def reader_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No voice prior; a voice reader that speaks loudly in voice-only windows."""
    d = _plain(tmp_path_factory.mktemp("reader-model"))
    _reader(_population()).save(d)
    return d


@pytest.fixture(scope="module")
def prior_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A voice prior and no reader: the band baseline alone carries the person."""
    d = _plain(tmp_path_factory.mktemp("prior-model"))
    doc = json.loads((d / "config.json").read_text())
    doc["config"]["voice_prior"] = _ravdess_prior().to_dict()
    (d / "config.json").write_text(json.dumps(doc))
    return d


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]


def _assert_equal_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [r["t"] for r in a] == [r["t"] for r in b]
    assert [r["label"] for r in a] == [r["label"] for r in b]
    for key in a[0]:
        if isinstance(a[0][key], float):
            assert np.allclose([r[key] for r in a], [r[key] for r in b], atol=1e-6), key


def _runs(model: Path, clip: Path, root: Path) -> dict[str, Any]:
    """The clip analysed straight through, and stopped after its checkpoint (the folder is copied
    before the stopped run continues, for the tests of older and damaged checkpoints)."""
    from obs_merlb.report import CHECKPOINT, analyze

    whole, cut = root / "whole", root / "cut"
    assert analyze(clip, whole, str(model), progress=False, body=False) == whole / "report.html"
    assert analyze(clip, cut, str(model), progress=False, body=False, stop_after_s=STOP_S) is None
    ckpt = json.loads((cut / CHECKPOINT).read_text())
    stopped = root / "stopped"
    shutil.copytree(cut, stopped)
    assert analyze(clip, cut, str(model), progress=False, body=False) == cut / "report.html"
    return {"whole": _rows(whole), "resumed": _rows(cut), "ckpt": ckpt, "stopped": stopped}


@pytest.fixture(scope="module")
def reader_runs(reader_model: Path, voice_only_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _runs(reader_model, voice_only_clip, tmp_path_factory.mktemp("reader-runs"))


def test_a_resumed_run_reads_voice_only_windows_as_an_uninterrupted_one(reader_runs: dict[str, Any]) -> None:
    ckpt, whole = reader_runs["ckpt"], reader_runs["whole"]
    assert STOP_S <= ckpt["t"] < 20.0
    assert len(whole) > 300 and not any(r["face_present"] for r in whole)
    assert sum(r["speech"] for r in whole if r["t"] > ckpt["t"]) > 50     # voice-only windows after the resume
    _assert_equal_rows(reader_runs["resumed"], whole)
    person = ckpt["person"]["reader"]
    assert person["stats"]["n"] >= 2 and person["speech_steps"] >= 16     # the person had grown by then
    assert ckpt["person"]["baseline"] is None                              # no voice prior in this model


def _continue(model: Path, clip: Path, stopped: Path, dest: Path, person: Any) -> list[dict[str, Any]]:
    """The stopped run continued (in a copy of its folder) with `person` in place of its checkpoint's
    person state ("drop": without one, as a checkpoint written before it was kept)."""
    from obs_merlb.report import CHECKPOINT, analyze

    shutil.copytree(stopped, dest)
    doc = json.loads((dest / CHECKPOINT).read_text())
    if person == "drop":
        del doc["person"]
    else:
        doc["person"] = person
    (dest / CHECKPOINT).write_text(json.dumps(doc))
    assert analyze(clip, dest, str(model), progress=False, body=False) == dest / "report.html"
    return _rows(dest)


def test_a_checkpoint_from_before_the_person_was_kept_still_continues(
        reader_runs: dict[str, Any], reader_model: Path, voice_only_clip: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rows = _continue(reader_model, voice_only_clip, reader_runs["stopped"], tmp_path / "old", "drop")
    err = capsys.readouterr().err
    whole, t = reader_runs["whole"], reader_runs["ckpt"]["t"]
    assert "continuing voice_only.mp4 from" in err and "person's voice" not in err, err
    assert [r["t"] for r in rows] == [r["t"] for r in whole]
    _assert_equal_rows([r for r in rows if r["t"] <= t], [r for r in whole if r["t"] <= t])
    # After the resume point the person is learned afresh, as before checkpoints kept them.
    assert any(not np.allclose([a[k] for k in a if k.startswith("p_")], [b[k] for k in b if k.startswith("p_")],
                               atol=1e-3) for a, b in zip(rows, whole) if a["t"] > t)


def test_a_damaged_person_in_the_checkpoint_says_so_in_one_line_and_continues(
        reader_runs: dict[str, Any], reader_model: Path, voice_only_clip: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    person = json.loads(json.dumps(reader_runs["ckpt"]["person"]))
    person["reader"]["stats"]["m2"][3] = -1.0                              # no set of windows has that
    rows = _continue(reader_model, voice_only_clip, reader_runs["stopped"], tmp_path / "damaged", person)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "person's voice" in line]
    assert len(lines) == 1 and lines[0].startswith("merlb analyze: "), err
    assert "damaged" in lines[0] and "negative spread" in lines[0] and "learned afresh" in lines[0]
    assert "continuing voice_only.mp4 from" in err and "Traceback" not in err
    whole, t = reader_runs["whole"], reader_runs["ckpt"]["t"]
    assert [r["t"] for r in rows] == [r["t"] for r in whole]
    _assert_equal_rows([r for r in rows if r["t"] <= t], [r for r in whole if r["t"] <= t])


def _damaged(saved: dict[str, Any], what: str) -> Any:
    doc = json.loads(json.dumps(saved))
    reader = doc["reader"]
    if what == "frames cut":
        reader["frames"] = reader["frames"][:-8]
    elif what == "frames not base64":
        reader["frames"] = "%%" + reader["frames"][2:]
    elif what == "pitch cut":
        reader["pitch"] = reader["pitch"][:-8]
    elif what == "no pitch (saved before pitch tracks)":
        del reader["pitch"]
    elif what == "a step in the wrong slot":
        reader["step_id"][0] = 1
    elif what == "ring too short":
        reader["step_id"] = reader["step_id"][:-1]
    elif what == "step count":
        reader["speech_steps"] = -1
    elif what == "another reader":
        reader["population"] = "0" * 16
    elif what == "a baseline for a model without a prior":
        doc["baseline"] = {"stats": {}, "heard": []}
    elif what == "last step heard":
        doc["heard_through"] = "12"
    elif what == "missing part":
        del doc["reader"]
    else:
        doc = [1, 2]
    return doc


@pytest.mark.parametrize("what", ["frames cut", "frames not base64", "pitch cut", "no pitch (saved before pitch tracks)",
                                  "a step in the wrong slot", "ring too short",
                                  "step count", "another reader", "a baseline for a model without a prior",
                                  "last step heard", "missing part", "not an object"])
def test_resume_person_refuses_a_damaged_state_and_changes_nothing(reader_runs: dict[str, Any],
                                                                   reader_model: Path, what: str) -> None:
    from obs_merlb.analyzer import Analyzer
    from obs_merlb.inference import load_backend

    saved = reader_runs["ckpt"]["person"]
    an = Analyzer(load_backend(reader_model), body=False)
    try:
        before = an.person_state()
        with pytest.raises(ValueError):
            an.resume_person(_damaged(saved, what))
        assert an.person_state() == before and an._resumed_through is None
        an.resume_person(saved)                                            # the undamaged one is taken
        assert an.person_state() == saved
    finally:
        an.close()


def test_a_resumed_run_hears_voices_through_the_baseline_as_it_stood(
        prior_model: Path, voice_only_clip: Path, tmp_path: Path) -> None:
    runs = _runs(prior_model, voice_only_clip, tmp_path)
    whole = runs["whole"]
    assert sum(r["speech"] for r in whole if r["t"] > runs["ckpt"]["t"]) > 50
    _assert_equal_rows(runs["resumed"], whole)
    base = runs["ckpt"]["person"]["baseline"]
    assert runs["ckpt"]["person"]["reader"] is None
    assert base["stats"]["n"] > 0 and base["heard"]                        # heard speech before it stopped
