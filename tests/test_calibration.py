"""Temperature calibration: the fit, the live backend applying it per modality set, `merlb calibrate`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from obs_merlb import calibration as cal
from obs_merlb.calibration import Calibration, load_calibration, modality_sets, save_calibration

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
SHIPPED = ROOT / "assets" / "model"


def _sampled(t_true: float, n: int = 6000, k: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / t_true): t_true is the right answer."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, k))
    p = cal.scale(z, t_true).astype(np.float64)
    y = np.array([rng.choice(k, p=row / row.sum()) for row in p])
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_labels_were_drawn_with(t_true: float) -> None:
    z, y = _sampled(t_true)
    t = cal.fit_temperature(z, y)
    assert abs(t / t_true - 1) < 0.08, (t, t_true)
    # The fit is where the log-likelihood is best: nearby temperatures are worse.
    assert cal.nll(z, y, t) <= min(cal.nll(z, y, t * 0.8), cal.nll(z, y, t * 1.25))


def test_ece_sees_overconfidence_and_the_fit_removes_it() -> None:
    z, y = _sampled(2.0)                      # raw softmax(z) is far too sure of itself
    raw = cal.ece(cal.scale(z, 1.0), y)
    fitted = cal.ece(cal.scale(z, cal.fit_temperature(z, y)), y)
    assert raw > 0.1 and fitted < 0.03, (raw, fitted)
    bins = cal.reliability(cal.scale(z, 1.0), y)
    assert sum(b[2] for b in bins) == len(y) and all(0 <= b[1] <= 1 for b in bins)


def test_softmax_is_stable() -> None:
    p = cal.scale(np.array([[1000.0, 0.0, -1000.0]]), 1.0)
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-9


def test_modality_set_of_a_window_is_what_it_holds() -> None:
    mask = np.zeros((4, 8, 4), np.float32)
    mask[0, :, 0] = 1                 # face throughout
    mask[1, 3, 1] = 1                 # one voice step
    mask[2, :, :2] = 1                # both
    mask[2, :, 2] = 1                 # body: not a modality of a face+voice model
    assert modality_sets(mask, ["face", "voice"]) == ["face", "voice", "face+voice", ""]
    assert modality_sets(mask[2], ["face", "voice", "body"]) == ["face+voice+body"]


def test_each_row_gets_its_own_sets_temperature() -> None:
    c = Calibration({"voice": {"emotion": 0.5}})
    z = np.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    p = c.probs("emotion", z, ["face", "voice"])
    np.testing.assert_allclose(p[0], cal.scale(z[:1], 1.0)[0], atol=1e-6)   # no T for face: unchanged
    np.testing.assert_allclose(p[1], cal.scale(z[1:], 0.5)[0], atol=1e-6)
    assert p[1].max() > p[0].max()
    with pytest.raises(ValueError, match="positive"):
        Calibration({"face": {"emotion": 0.0}})
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibration.from_dict({"method": "isotonic"})


@pytest.fixture()
def shipped_copy(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(SHIPPED, d)
    return d


def test_backend_applies_the_calibration_of_the_windows_modality_set(shipped_copy: Path) -> None:
    from obs_merlb.inference import load_backend

    rng = np.random.default_rng(0)
    save_calibration(shipped_copy, Calibration())
    raw = load_backend(shipped_copy)
    save_calibration(shipped_copy, Calibration({"face": {"emotion": 3.0}, "voice": {"emotion": 0.5}}))
    calibrated = load_backend(shipped_copy)
    steps = raw.cfg.steps
    embs = {"face": rng.normal(0, 1, (2, steps, raw.cfg.embed_dims["face"])).astype(np.float32),
            "voice": rng.normal(0, 1, (2, steps, raw.cfg.embed_dims["voice"])).astype(np.float32)}
    mask = np.zeros((2, steps, 4), np.float32)
    mask[0, :, 0] = 1                # window 0: face only
    mask[1, :, 1] = 1                # window 1: voice only
    a, b = raw.sequence(embs, mask), calibrated.sequence(embs, mask)
    expect_face = cal.scale(np.log(a["emotion"][:1]), 3.0)[0]
    expect_voice = cal.scale(np.log(a["emotion"][1:]), 0.5)[0]
    np.testing.assert_allclose(b["emotion"][0], expect_face, atol=1e-4)
    np.testing.assert_allclose(b["emotion"][1], expect_voice, atol=1e-4)
    np.testing.assert_allclose(b["valence"], a["valence"], atol=1e-6)          # no T for valence
    assert b["emotion"][0].argmax() == a["emotion"][0].argmax()                 # accuracy unchanged


def test_shipped_model_is_calibrated_per_modality_set() -> None:
    c = load_calibration(SHIPPED)
    assert set(c.temperatures) == {"face", "voice", "face+voice"}
    for heads in c.temperatures.values():
        assert set(heads) == {"emotion", "valence", "arousal"}


def test_new_weights_drop_a_stale_calibration(shipped_copy: Path) -> None:
    from obs_merlb.model.io import load_model, save_model

    assert load_calibration(shipped_copy)
    save_model(load_model(shipped_copy), shipped_copy)
    assert not load_calibration(shipped_copy)


def test_merlb_calibrate_writes_temperatures_and_eval_reports_ece(shipped_copy: Path, tmp_path: Path,
                                                                  capsys) -> None:
    from obs_merlb.cli import main

    out, cache = tmp_path / "report", tmp_path / "cache"
    assert main(["calibrate", "--model", str(shipped_copy), "--faces", str(FIX / "fer2013"),
                 "--voices", str(FIX / "ravdess"), "--voices", str(FIX / "emodb"), "--pairs", "120",
                 "--cache", str(cache), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # 14 faces and 5 voices are too few to fit on; the 120 label-matched pairs are enough.
    assert set(report["calibration"]["temperatures"]) == {"face+voice"}
    assert {r["set"] for r in report["rows"]} == {"face+voice"}
    row = next(r for r in report["rows"] if r["head"] == "emotion")
    assert row["n"] == 120 and row["nll_calibrated"] <= row["nll_raw"] + 1e-9
    assert load_calibration(shipped_copy).temperatures == report["calibration"]["temperatures"]
    assert (out / "calibration.json").exists() and (out / "reliability_face_voice_calibrated.png").exists()

    assert main(["eval", str(FIX / "fer2013"), "--model", str(shipped_copy), "--cache", str(cache),
                 "--out", str(tmp_path / "eval"), "--json"]) == 0
    emo = json.loads(capsys.readouterr().out)["emotion"]
    assert 0 <= emo["ece"] <= 1 and emo["nll"] > 0
    assert (tmp_path / "eval" / "reliability_emotion.png").exists()


def test_calibrate_with_too_little_data_says_so_and_changes_nothing(shipped_copy: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from obs_merlb.cli import main

    before = (shipped_copy / "config.json").read_text()
    assert main(["calibrate", "--model", str(shipped_copy), "--faces", str(FIX / "fer2013"),
                 "--pairs", "0", "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.startswith("merlb calibrate: too few labelled windows")
    assert (shipped_copy / "config.json").read_text() == before
    assert main(["calibrate", "--model", str(tmp_path / "nothing"), "--faces", str(FIX / "fer2013")]) == 2
    assert capsys.readouterr().err.startswith("merlb calibrate: no model at")


def test_fit_over_a_base_fits_where_it_can_and_inherits_the_rest() -> None:
    """A personalized candidate's calibration (`merlb personalize` fits it with this)."""
    from obs_merlb.model.merlb import IGNORE
    from obs_merlb.train.calibrate import by_modality_set, fit

    rng = np.random.default_rng(0)
    n_face, n_voice, n_none = 200, cal.MIN_SAMPLES - 1, 40
    sets = ["face"] * n_face + ["voice"] * n_voice + [""] * n_none
    # Labels drawn from softmax(z / 2): the right face temperature is 2.
    z = rng.normal(scale=3.0, size=(len(sets), 5))
    p = cal.scale(z, 2.0).astype(np.float64)
    y = np.array([rng.choice(5, p=row / row.sum()) for row in p])
    y[:10] = IGNORE                                       # unlabelled windows do not count
    base = Calibration({"face": {"emotion": 1.1}, "voice": {"emotion": 0.64, "arousal": 0.5}})
    fitted, rows = fit(by_modality_set({"emotion": z}, sets, {"emotion": y}), inherited=base)
    assert 1.6 < fitted.temperature("face", "emotion") < 2.5
    # Too few voice windows to fit: the base's temperatures stay, not T = 1; windows with no modality never count.
    assert fitted.temperature("voice", "emotion") == 0.64 and fitted.temperature("voice", "arousal") == 0.5
    assert [(r["set"], r["head"], r["n"]) for r in rows] == [("face", "emotion", n_face - 10)]
    assert rows[0]["ece_calibrated"] < rows[0]["ece_raw"]
    assert fitted.info == {"fitted": ["face/emotion"], "inherited": ["voice/emotion", "voice/arousal"]}
    assert base.temperature("face", "emotion") == 1.1      # the base's calibration is not modified
    # Without a base (`merlb calibrate`): only what was fitted.
    alone, _ = fit(by_modality_set({"emotion": z}, sets, {"emotion": y}))
    assert alone.temperatures == {"face": {"emotion": fitted.temperature("face", "emotion")}} and not alone.info
