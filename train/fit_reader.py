"""Fit the voice reader (model/voice_reader.py) for a model folder.

    merlb fit-reader --model runs/x/model [--config train/recipes/default_voice_all.toml]

The reader is a logistic regression (balanced classes) over each 8-step
window's voice functionals (perception/functionals.py), z-scored with the
window's speaker's statistics: in training as `merlb eval --adapt person`
and live build them, from the person's speech with no labels. It trains on
the recipe's training speakers (its `data` less its `val_groups`): by
default every speech set's, about 110 people in six languages, since the
functionals are the same numbers for any model and a streamer may speak any
language (MODEL_CARD.md, session 16, measured both ways). It is written into
the model folder. `--weight` is how much of the fused emotion it carries
(0.5: as much as the model).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from obs_merlb.cli import refuse
from obs_merlb.labels import EMOTIONS, VOICE
from obs_merlb.model.voice_reader import VoiceReader
from obs_merlb.perception.functionals import (N_FUNCTIONALS, Population, PersonStats, functionals, speech_frames,
                                             speech_pitch)

from .data import Records, load_records, windows_of
from .datasets import DatasetError, detect_format
from .loop import TrainConfig
from .preprocess import FeatureSettings, default_cache, prepare

RECIPE = Path(__file__).resolve().parent / "recipes" / "default_voice_all.toml"
CLASSIFIERS = ("logistic", "lda")
CLASSIFIER = "logistic"   # chosen with C and WEIGHT on the validation speakers of all six sets (MODEL_CARD.md, session 17)
C = 0.1           # the logistic regression's
WEIGHT = 0.5


def record_functionals(arrays: dict[str, np.ndarray], step_s: float) -> np.ndarray | None:
    """The functionals of a record's speech steps (a window's or a whole clip's); None without speech."""
    if "voice" not in arrays:
        return None
    speech = (arrays["speech_prob"] > 0.5) & (arrays["mask"][:, VOICE] > 0)
    frames = speech_frames(arrays["voice"], speech, step_s)
    return None if frames is None else functionals(frames, speech_pitch(arrays["pitch"], speech))


def window_functionals(windows: Records, step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(functionals of each window that holds speech, that window's index in `windows`)."""
    rows, keep = [], []
    for j, rec in enumerate(windows.arrays):
        f = record_functionals(rec, step_s)
        if f is not None:
            rows.append(f)
            keep.append(j)
    x = np.stack(rows) if rows else np.zeros((0, N_FUNCTIONALS), np.float32)
    return x, np.array(keep, dtype=np.int64)


def person_zscores(x: np.ndarray, people: np.ndarray, population: Population) -> np.ndarray:
    """Each row against its person's statistics, built from all of that person's rows (no labels)."""
    z = np.empty_like(x, dtype=np.float32)
    for person in np.unique(people):
        m = people == person
        z[m] = PersonStats.of(x[m]).zscore(x[m], population)
    return z


def fit(records: Records, steps: int, step_s: float, c: float = C, weight: float = WEIGHT,
        classifier: str = CLASSIFIER) -> VoiceReader:
    win, _ = windows_of(records, steps)
    x, idx = window_functionals(win, step_s)
    labels = np.array([win.items[j].labels.get("emotion") or "" for j in idx])
    return fit_windows(x, labels, np.array([win.items[j].group for j in idx]), c, weight, classifier)


def fit_windows(x: np.ndarray, labels: np.ndarray, people: np.ndarray, c: float = C,
                weight: float = WEIGHT, classifier: str = CLASSIFIER) -> VoiceReader:
    """The reader of windows' functionals `x` (N, F), their emotion labels ("" = none; unlabelled
    windows still count in their person's statistics) and their people.

    `classifier`: "logistic" (balanced classes, inverse regularisation `c`) or "lda" (linear
    discriminant analysis with a Ledoit-Wolf shrunk covariance and equal class priors; `c` unused).
    Both are linear: the reader keeps one row of weights per emotion either way."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, not {classifier!r}")
    known = np.isin(labels, EMOTIONS)
    if known.sum() < 2 or len(set(labels[known])) < 2:
        raise DatasetError("the reader needs speech clips of at least two emotions to fit; "
                           f"found {int(known.sum())} labelled windows with speech")
    population = Population.of(x)
    z = person_zscores(x, people, population)[known]
    mean, std = z.mean(0), np.maximum(z.std(0), 1e-6)
    k = len(set(labels[known]))
    clf = (LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=np.full(k, 1.0 / k))
           if classifier == "lda" else LogisticRegression(C=c, max_iter=3000, class_weight="balanced"))
    clf.fit((z - mean) / std, labels[known])
    coef, intercept = np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_)
    if k == 2:      # one log-odds row for the second class; the reader's softmax wants a row per class
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return VoiceReader(population, mean, std, coef, intercept, tuple(clf.classes_), weight)


def training_records(recipe: Path, cache: Path, step_s: float) -> Records:
    cfg = TrainConfig.from_toml(recipe)
    val = set(cfg.val_groups or [])
    for path in cfg.data:      # before any preprocessing: FER2013's folders would take many minutes
        if detect_format(path) == "images":
            raise DatasetError(f"--config {recipe}: {path} holds images; the reader reads voices "
                               f"(a voice recipe such as train/recipes/default_voice.toml)")
    parts = []
    for path in cfg.data:
        rec = load_records(prepare(path, cache, settings=FeatureSettings(step_s=step_s), quiet=True))
        parts.append(rec.subset([i for i, it in enumerate(rec.items) if it.group not in val]))
    return Records.concat(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder to write voice_reader.safetensors into")
    parser.add_argument("--config", default=str(RECIPE), help="recipe whose data and val_groups pick the "
                        "training speakers (default: every speech set's)")
    parser.add_argument("--cache", default=None, help="feature cache folder")
    parser.add_argument("--weight", type=float, default=WEIGHT, help="the reader's share of the fused emotion")
    parser.add_argument("--classifier", choices=CLASSIFIERS, default=CLASSIFIER,
                        help="logistic regression or shrunk linear discriminant analysis")
    parser.add_argument("--C", type=float, default=C, help="inverse regularisation of the logistic regression")


def run(args: argparse.Namespace) -> int:
    from obs_merlb.model.config import load_config

    from obs_merlb.files import check_writable

    if not 0.0 <= args.weight <= 1.0:
        raise SystemExit(f"--weight is a share, 0 to 1; got {args.weight}")
    if not 0 < args.C < float("inf"):
        raise SystemExit(f"--C is an inverse regularisation, a number above 0; got {args.C}")
    model_dir = Path(args.model)
    cfg, _ = load_config(model_dir)
    check_writable(model_dir, "--model")
    try:
        records = training_records(Path(args.config), Path(args.cache) if args.cache else default_cache(), cfg.step_s)
        reader = fit(records, cfg.steps, cfg.step_s, c=args.C, weight=args.weight, classifier=args.classifier)
    except DatasetError as e:
        return refuse("fit-reader", str(e))
    path = reader.save(model_dir)
    labelled = sum(it.labels.get("emotion") in EMOTIONS for it in records.items)
    print(f"voice reader fitted on {labelled} clips with an emotion label ({', '.join(reader.classes)}), "
          f"weight {reader.weight}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
