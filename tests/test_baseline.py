"""The person voice baseline (issue 22 item 4): statistics without labels,
each clip adapted from its own person's clips only, training and `merlb eval
--adapt person` on it. The live side (persistence, reset, panel) is in
tests/test_baseline_live.py."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from obs_merlb.cli import main
from obs_merlb.labels import VOICE
from obs_merlb.model.voice_reader import READER_FILE
from obs_merlb.perception.baseline import (LEARNED_FRAMES, PRIOR_FRAMES, BandStats, Prior, VoiceBaseline, apply,
                                           transform)
from obs_merlb.perception.voice import N_FRAMES, N_MELS
from obs_merlb.train.data import PersonBaselines, Records
from obs_merlb.train.datasets import Item
from obs_merlb.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


def _voice(rng: np.random.Generator, steps: int, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Log-mel steps whose bands have the given offset and spread."""
    x = rng.standard_normal((steps, 1, N_MELS, N_FRAMES)) * scale[:, None] + offset[:, None]
    return x.astype(np.float32)


def _prior() -> Prior:
    return Prior(np.linspace(-1, 1, N_MELS), np.full(N_MELS, 2.0))


def test_no_baseline_is_the_identity_and_full_one_reaches_the_prior() -> None:
    rng = np.random.default_rng(0)
    prior = _prior()
    person_mean, person_std = rng.normal(0, 2, N_MELS), rng.uniform(1.5, 3.0, N_MELS)
    x = _voice(rng, 2000, person_mean, person_std)   # 2,000 steps: the prior weighs 1.5%
    assert apply(x, prior, BandStats()) is x
    y = apply(x, prior, BandStats.of(x))
    # After a long enough stretch of the person's speech, their centred bands
    # look like the population's: what is left is the emotion, not the voice.
    c = y - y.mean(axis=(2, 3), keepdims=True)
    band_mean = c.mean(axis=(0, 1, 3))
    band_std = c.transpose(2, 0, 1, 3).reshape(N_MELS, -1).std(axis=1)
    centred_prior = prior.mean - prior.mean.mean()
    assert np.abs(band_mean - centred_prior).max() < 0.15
    assert np.abs(band_std / prior.std - 1).max() < 0.1


def test_a_short_baseline_is_pulled_toward_the_prior() -> None:
    rng = np.random.default_rng(1)
    prior = _prior()
    x = _voice(rng, 1, np.full(N_MELS, 3.0) + np.linspace(0, 4, N_MELS), np.full(N_MELS, 2.0))
    short = transform(prior, BandStats.of(x))[0]
    long = transform(prior, BandStats.of(np.repeat(x, 200, axis=0)))[0]
    person = BandStats.of(x).s1 / BandStats.of(x).n
    # One step (100 frames) against PRIOR_FRAMES of prior: mostly the prior.
    w = N_FRAMES / (N_FRAMES + PRIOR_FRAMES)
    assert np.allclose(short, w * person + (1 - w) * prior.mean)
    assert np.abs(long - person).max() < np.abs(short - person).max() / 5


def test_silence_and_broken_steps_do_not_count() -> None:
    prior = _prior()
    base = VoiceBaseline(prior)
    x = _voice(np.random.default_rng(2), 1, np.zeros(N_MELS), np.ones(N_MELS))[0]
    base.update(x, speech_prob=0.1)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    base.update(bad, speech_prob=0.9)
    assert base.stats.n == 0 and base.learning and base.progress == 0
    for _ in range(LEARNED_FRAMES // N_FRAMES):
        base.update(x, speech_prob=0.9)
    assert not base.learning and base.progress == 1.0
    assert base.seconds == pytest.approx(LEARNED_FRAMES / N_FRAMES * 0.25)


def test_saved_baseline_round_trips_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    base = VoiceBaseline(_prior())
    base.update(_voice(np.random.default_rng(3), 1, np.zeros(N_MELS), np.ones(N_MELS))[0], 0.9)
    path = tmp_path / "b" / "default.json"
    base.save(path)
    again = VoiceBaseline.read_stats(path)
    assert again.n == base.stats.n and np.allclose(again.s1, base.stats.s1) and np.allclose(again.s2, base.stats.s2)
    assert [p.name for p in path.parent.iterdir()] == ["default.json"]       # no temp file left
    for text in ("{not json", json.dumps({"format": 99}), json.dumps({"format": 1, "stats": {"n": 1}}),
                 json.dumps({"format": 1, "stats": {"n": 1, "s1": [0] * 3, "s2": [0] * 3}})):
        path.write_text(text)
        with pytest.raises(ValueError):
            VoiceBaseline.read_stats(path)


def _records(steps_per_clip: list[int], groups: list[str], seed: int = 0) -> Records:
    rng = np.random.default_rng(seed)
    items, arrays = [], []
    for i, (n, g) in enumerate(zip(steps_per_clip, groups)):
        items.append(Item(path=f"clip{i}.wav", group=g, labels={"emotion": "happy"}, dataset="t"))
        mask = np.zeros((n, 4), np.float32)
        mask[:, VOICE] = 1
        arrays.append({"mask": mask, "speech_prob": np.full(n, 0.9, np.float16),
                       "energy": np.ones(n, np.float16),
                       "voice": _voice(rng, n, rng.normal(0, 1, N_MELS), np.ones(N_MELS)).astype(np.float16)})
    return Records(items, arrays, np.zeros((len(items), 4), np.int64))


def _doc(n: object, s1: list[float] | None = None, s2: list[float] | None = None) -> str:
    return json.dumps({"format": 1, "stats": {"n": n, "s1": s1 if s1 is not None else [0.0] * N_MELS,
                                              "s2": s2 if s2 is not None else [1.0] * N_MELS}})


@pytest.mark.parametrize("text, why", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than the JSON parser goes"),
    ("[1, 2]", "not an object"),
    (_doc(True), "a boolean count"),
    (_doc("400"), "a count given as text"),
    (_doc(1e300, [1.0] * N_MELS, [1e300] * N_MELS), "a count no one could speak, freezing learning"),
    (_doc(150.0), "not whole steps of N_FRAMES frames"),
    (_doc(400.0, [1e6] * N_MELS, [1.0] * N_MELS), "a squared sum above count x sum of squares"),
    (_doc(400.0, [0.0] * N_MELS, [-1e6] * N_MELS), "a negative sum of squares"),
    (_doc(0.0, [1e6] * N_MELS, [1e9] * N_MELS), "sums without frames"),
])
def test_a_baseline_no_speech_could_have_made_is_refused(tmp_path: Path, text: str, why: str) -> None:
    """A hand-edited or damaged file is refused (and moved aside by the store), never a traceback
    and never a baseline that skews every voice step (the inconsistent one shifted bands by ~600)."""
    path = tmp_path / "default.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        VoiceBaseline.read_stats(path)


def test_only_a_small_regular_file_is_read_as_a_baseline(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:           # sparse: a 64 MB "baseline" costs no disk
        f.truncate(64 * 2**20)
    with pytest.raises(ValueError, match="MB"):
        VoiceBaseline.read_stats(huge)
    with pytest.raises(ValueError, match="regular file"):
        VoiceBaseline.read_stats(tmp_path)
    if hasattr(os, "mkfifo"):             # a FIFO would block the worker's start forever on open()
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match="regular file"):
            VoiceBaseline.read_stats(fifo)


def test_training_baselines_come_from_the_same_persons_other_clips_only() -> None:
    # Clip j has 2**j speech steps, so a baseline's frame count names the clips it summed.
    groups = ["a", "a", "a", "b", "b", "c"]
    rec = _records([2 ** j for j in range(6)], groups)
    pb = PersonBaselines(rec, _prior(), none_p=0.25)
    seen_none = 0
    for i in range(len(rec)):
        for draw in range(40):
            n = int(pb.of(i, np.random.default_rng((i, draw))).n) // N_FRAMES
            if n == 0:
                seen_none += 1
                continue
            used = {j for j in range(6) if n & (1 << j)}
            assert i not in used and used and all(groups[j] == groups[i] for j in used)
    assert 0 < seen_none < 6 * 40           # a share of clips train without a baseline (and "c" always)
    # Evaluation: all of the person's clips, the clip itself included.
    assert [int(pb.of(i, None).n) // N_FRAMES for i in range(6)] == [7, 7, 7, 24, 24, 32]


def test_labels_play_no_part_in_the_adaptation() -> None:
    rec = _records([3, 4, 5], ["a", "a", "a"])
    other = Records(rec.items, rec.arrays, np.random.default_rng(0).integers(0, 7, rec.targets.shape))
    x = rec.arrays[0]["voice"].astype(np.float32)
    for rng_seed in (None, 1):
        a = PersonBaselines(rec, _prior()).normalise(x, 0, None if rng_seed is None else np.random.default_rng(1))
        b = PersonBaselines(other, _prior()).normalise(x, 0, None if rng_seed is None else np.random.default_rng(1))
        assert np.array_equal(a, b)


@pytest.fixture(scope="module")
def baseline_model(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("baseline")
    cfg = TrainConfig.from_toml(ROOT / "train" / "recipes" / "tiny.toml")
    cfg.out, cfg.cache, cfg.epochs, cfg.voice_baseline = str(tmp / "run"), str(tmp / "cache"), 1, True
    train(cfg, quiet=True)
    return tmp / "run" / "model", tmp / "cache"


def test_a_model_trained_with_baselines_carries_its_prior_and_evaluates_adapted(baseline_model, capsys,
                                                                                  tmp_path: Path) -> None:
    model, cache = baseline_model
    prior = json.loads((model / "config.json").read_text())["config"]["voice_prior"]
    Prior.from_dict(prior)                 # 64 finite means, positive spreads
    args = ["eval", str(FIX / "ravdess"), "--model", str(model), "--cache", str(cache), "--json"]
    assert main([*args, "--out", str(tmp_path / "a"), "--adapt", "person"]) == 0
    adapted = json.loads(capsys.readouterr().out)
    # The fixture holds actors 01 (two clips) and 02 (one): one baseline each.
    assert adapted["adapt"] == "person" and list(adapted["baselines"]) == ["ravdess:01", "ravdess:02"]
    assert all(s > 0 for s in adapted["baselines"].values())
    assert main([*args, "--out", str(tmp_path / "n")]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "adapt" not in plain and plain["emotion"]["n"] == adapted["emotion"]["n"] == 3
    # Images have no voice to adapt: refused in one line rather than silently the same as no adaptation.
    assert main(["eval", str(FIX / "fer2013"), "--model", str(model), "--cache", str(cache),
                 "--out", str(tmp_path / "f"), "--adapt", "person"]) == 2
    assert "no speech" in capsys.readouterr().err


def test_adapting_a_model_without_a_prior_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain"              # the shipped model less its voice reader: no way to adapt
    shutil.copytree(ROOT / "assets" / "model", plain, ignore=shutil.ignore_patterns(READER_FILE))
    assert main(["eval", str(FIX / "ravdess"), "--model", str(plain), "--adapt", "person", "--cache",
                 str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "without a person baseline" in err and "no voice reader" in err and "\n" not in err


@pytest.mark.parametrize("settings, words", [
    ({"data": [str(FIX / "fer2013")]}, "needs speech"),             # a prior of MIN_STD spreads, before
    ({"modalities": ["face"]}, "no voice input"),
    ({"baseline_none_p": 1.5}, "baseline_none_p"),
])
def test_a_person_baseline_training_cannot_use_is_refused_in_one_line(tmp_path: Path, settings: dict,
                                                                      words: str) -> None:
    cfg = TrainConfig.from_toml(ROOT / "train" / "recipes" / "tiny.toml")
    cfg.out, cfg.cache, cfg.epochs, cfg.voice_baseline = str(tmp_path / "run"), str(tmp_path / "cache"), 1, True
    cfg.pairing = False
    for key, value in settings.items():
        setattr(cfg, key, value)
    with pytest.raises(SystemExit) as e:
        train(cfg, quiet=True)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "model").exists()
