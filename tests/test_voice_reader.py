"""The voice reader: person-z-scored voice functionals read by a linear classifier and mixed
into the model's emotion (perception/functionals.py, model/voice_reader.py, train/fit_reader.py),
fitted and evaluated on fixture clips cut from RAVDESS and EmoDB (tests/fixtures/README.md)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from obs_merlb.cli import main
from obs_merlb.labels import EMOTIONS
from obs_merlb.model.config import ModelFolderError
from obs_merlb.model.voice_reader import READER_FILE, VoiceReader, load_reader
from obs_merlb.perception.functionals import N_FUNCTIONALS, PRIOR_WINDOWS, Population, PersonStats
from obs_merlb.train.fit_reader import CLASSIFIERS, fit_windows, person_zscores

FIX = Path(__file__).resolve().parent / "fixtures"


def test_person_stats_follow_the_person_and_start_from_the_population() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(400, N_FUNCTIONALS))
    pop = Population(np.zeros(N_FUNCTIONALS), np.ones(N_FUNCTIONALS))
    stats = PersonStats.of(x)
    assert np.allclose(stats.mean, x.mean(0)) and np.allclose(stats.m2 / stats.n, x.var(0))
    z = stats.zscore(x, pop)
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1               # 400 windows: the person's own
    assert np.allclose(PersonStats().zscore(x[:1], pop), x[:1])          # nobody heard yet: the population's
    one = PersonStats.of(x[:1]).zscore(x[:1], pop)                       # one window moves it a little
    assert np.all(np.abs(one) < np.abs(x[:1])) and np.allclose(one, x[:1] * PRIOR_WINDOWS / (PRIOR_WINDOWS + 1)
                                                                    / np.sqrt(PRIOR_WINDOWS / (PRIOR_WINDOWS + 1)), atol=1e-4)


def test_each_person_is_judged_by_their_own_windows_only() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, N_FUNCTIONALS))
    people = np.array(["a"] * 10 + ["b"] * 20)
    pop = Population.of(x)
    z = person_zscores(x, people, pop)
    changed = x.copy()
    changed[10:] += 5.0                                                  # b's voice changes, a's does not
    z2 = person_zscores(changed, people, pop)
    assert np.allclose(z[:10], z2[:10]) and not np.allclose(z[10:], changed[10:])


def _reader(weight: float = 0.5, classes=("angry", "happy", "sad")) -> VoiceReader:
    rng = np.random.default_rng(2)
    k = len(classes)
    return VoiceReader(Population(np.zeros(N_FUNCTIONALS), np.ones(N_FUNCTIONALS)), np.zeros(N_FUNCTIONALS),
                       np.ones(N_FUNCTIONALS), rng.normal(size=(k, N_FUNCTIONALS)), np.zeros(k), tuple(classes), weight)


def test_reader_probabilities_and_fusion() -> None:
    r = _reader()
    z = np.random.default_rng(3).normal(size=(5, N_FUNCTIONALS))
    p = r.probs(z)
    assert p.shape == (5, len(EMOTIONS)) and np.allclose(p.sum(1), 1)
    assert (p[:, EMOTIONS.index("neutral")] < 1e-5).all()               # a class it never saw
    model = np.full((5, len(EMOTIONS)), 1 / len(EMOTIONS))
    fused = r.fuse(model, z)
    assert np.allclose(fused.sum(1), 1) and np.allclose(fused.argmax(1), p.argmax(1))
    assert np.allclose(_reader(0.0).fuse(model, z), model)             # weight 0: the model alone
    kept = r.fuse(model, z, np.array([0.5, 0.0, 0.5, 0.0, 0.25]))   # per row: 0 keeps the model's exactly
    assert np.array_equal(kept[1], model[1].astype(np.float32)) and not np.allclose(kept[0], model[0])
    assert np.allclose(kept[4], r.fuse(model[4:], z[4:], 0.25)[0]) and not np.allclose(kept[4], kept[0])


def test_reader_file_round_trip_and_damage(tmp_path: Path) -> None:
    r = _reader()
    r.save(tmp_path)
    back = load_reader(tmp_path)
    assert back.classes == r.classes and back.weight == 0.5 and np.allclose(back.coef, r.coef, atol=1e-6)
    assert load_reader(tmp_path / "nothing") is None
    data = (tmp_path / READER_FILE).read_bytes()
    (tmp_path / READER_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFolderError, match=f"{READER_FILE} is damaged or incomplete"):
        load_reader(tmp_path)
    (tmp_path / READER_FILE).unlink()
    os.mkfifo(tmp_path / READER_FILE)                                    # would block a plain open
    with pytest.raises(ModelFolderError, match="is not a regular file"):
        load_reader(tmp_path)
    (tmp_path / READER_FILE).unlink()
    _reader(classes=("angry", "bored")).save(tmp_path)                  # not an emotion of the model
    with pytest.raises(ModelFolderError, match="does not hold a voice reader"):
        load_reader(tmp_path)


def _windows(emotions: tuple[str, ...], per_person: int = 30, people: int = 4, seed: int = 0):
    """Functionals of `people` speakers, each with their own offset (the person's baseline), where
    each emotion moves different columns away from it."""
    rng = np.random.default_rng(seed)
    x, labels, who = [], [], []
    for p in range(people):
        offset = rng.normal(0, 3, N_FUNCTIONALS)
        for i in range(per_person):
            e = i % len(emotions)
            row = offset + rng.normal(0, 1, N_FUNCTIONALS)
            row[5 * e:5 * e + 5] += 3.0
            x.append(row), labels.append(emotions[e]), who.append(f"p{p}")
    return np.array(x, np.float32), np.array(labels), np.array(who)


@pytest.mark.parametrize("classifier", CLASSIFIERS)
@pytest.mark.parametrize("emotions", [("angry", "happy", "sad"), ("happy", "sad")])
def test_both_classifiers_fit_a_reader_that_loads_and_reads(tmp_path: Path, classifier: str,
                                                           emotions: tuple[str, ...]) -> None:
    """Logistic regression and shrunk LDA both give one row of weights per emotion, two emotions
    included (a two-class fit has one log-odds row, which the reader's softmax cannot read as is),
    and the saved reader reads held-out windows of new people against each person's own."""
    x, labels, who = _windows(emotions)
    reader = fit_windows(x, labels, who, classifier=classifier)
    assert reader.coef.shape == (len(emotions), N_FUNCTIONALS) and reader.classes == tuple(sorted(emotions))
    reader.save(tmp_path)
    loaded = load_reader(tmp_path)
    tx, tlabels, twho = _windows(emotions, seed=1)
    z = person_zscores(tx, twho, loaded.population)
    probs = loaded.probs(z)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (np.array(EMOTIONS)[probs.argmax(1)] == tlabels).mean() > 0.9
    with pytest.raises(ValueError, match="classifier"):
        fit_windows(x, labels, who, classifier="svm")


def test_fit_reader_then_eval_adapts_by_person(tiny_model, tmp_path: Path, capsys) -> None:
    model, cache = tiny_model
    recipe = tmp_path / "voices.toml"
    recipe.write_text(f'data = ["{FIX / "ravdess"}", "{FIX / "emodb"}"]\nval_groups = ["emodb:03"]\n')
    assert main(["fit-reader", "--model", str(model), "--config", str(recipe), "--cache", str(cache)]) == 0
    assert "voice reader fitted on 3 clips with an emotion label" in capsys.readouterr().out     # EmoDB's speaker 03 validates
    reader = load_reader(model)
    assert set(reader.classes) <= set(EMOTIONS) and len(reader.classes) >= 2
    args = ["eval", str(FIX / "ravdess"), "--model", str(model), "--cache", str(cache), "--json"]
    assert main([*args, "--out", str(tmp_path / "a"), "--adapt", "person"]) == 0
    adapted = json.loads(capsys.readouterr().out)
    assert adapted["adapted_by"] == ["voice reader"] and adapted["emotion"]["n"] == 3
    assert main([*args, "--out", str(tmp_path / "n")]) == 0
    assert "adapted_by" not in json.loads(capsys.readouterr().out)
    # A damaged reader is one line naming the file, not a traceback.
    (model / READER_FILE).write_bytes(b"\0" * 64)
    assert main([*args, "--out", str(tmp_path / "d"), "--adapt", "person"]) == 2
    err = capsys.readouterr().err
    assert READER_FILE in err and "damaged" in err and err.count("\n") == 1
    (model / READER_FILE).unlink()
    assert main(["fit-reader", "--model", str(model), "--config", str(recipe), "--cache", str(cache),
                 "--weight", "2"]) == 2
    assert "--weight is a share" in capsys.readouterr().err


def test_bench_times_the_shipped_reader_and_says_when_a_folder_has_none(tiny_model) -> None:
    """`merlb bench` reports the reader's cost per voice step: the model folder's reader when it
    has one, else a made-up one of the same shape (flagged, since it would not run live)."""
    from obs_merlb.bench import bench_reader
    from obs_merlb.registry import shipped_path

    ms, has = bench_reader(str(shipped_path("model")), 8, 0.25, 5)
    assert has and ms > 0
    model, _ = tiny_model
    ms, has = bench_reader(str(model), 8, 0.25, 5)
    assert not has and ms > 0
