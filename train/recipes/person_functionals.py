"""Probe: a person's voice judged against their own baseline, on clip-level functionals.

    python -m obs_merlb.train.recipes.person_functionals --model assets/model --json

Issue 22's evidence for adapting to the person was per-speaker z-scoring of
a standard acoustic feature set read by a linear classifier. The band-level
baseline (perception/baseline.py) normalises each 10 ms frame and did not
carry that gain (MODEL_CARD.md, session 14). This probe tests the issue's
recipe on the model's own inputs, the cached log-mel steps that live computes
too, before anything is built into the model:

- per clip, the functionals of perception/functionals.py over all of its
  speech steps (205 numbers in session 15, 442 in session 16, 457 with
  the pitch since session 17);
- z-scored per person with all of that person's clips, no labels ("person"),
  or with the training speakers' statistics ("global");
- read by a logistic regression (balanced classes) fitted on the training
  speakers of RAVDESS and EmoDB, the sets the model's voice trained on;
- fused with the model's calibrated voice-only probabilities as a weighted
  mean of log-probabilities (`--weight`; 0 = the model alone).

Every set's validation speakers (default_voice_all.toml's `val_groups`) are
scored; the four sets the model never trained on are scored cross-corpus,
with their speakers' own z-scores. Numbers in MODEL_CARD.md, session 15.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from obs_merlb.labels import EMOTIONS, VOICE
from obs_merlb.perception.functionals import N_FUNCTIONALS

from obs_merlb.calibration import load_calibration
from ..data import load_records
from ..evaluate import _load, predict_records
from ..fit_reader import record_functionals
from ..loop import TrainConfig
from ..preprocess import FeatureSettings, default_cache, prepare

RECIPES = Path(__file__).resolve().parent
TRAIN_SETS = ("ravdess_speech", "emodb")          # what the shipped voice trained on
SETS = ("ravdess_speech", "emodb", "ased", "urdu", "emotiontts_kr", "nemo")


def zscore_by(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row z-scored with its group's mean and spread (no labels used)."""
    out = np.empty_like(x)
    for g in np.unique(groups):
        m = groups == g
        out[m] = (x[m] - x[m].mean(0)) / (x[m].std(0) + 1e-6)
    return out


def _clips(model, model_dir: Path, data: Path, cache: Path, people: set[str] | None) -> dict[str, Any]:
    prep = prepare(data, cache, settings=FeatureSettings(step_s=model.cfg.step_s), quiet=True)
    rec = load_records(prep)
    keep = [i for i, (it, a) in enumerate(zip(rec.items, rec.arrays))
            if it.labels.get("emotion") and (people is None or it.group in people)
            and record_functionals(a, model.cfg.step_s) is not None]
    rec = rec.subset(keep)
    probs = predict_records(model, rec, calibration=load_calibration(model_dir))["emotion"]
    return {"x": np.stack([record_functionals(a, model.cfg.step_s) for a in rec.arrays]),
            "y": np.array([it.labels["emotion"] for it in rec.items]),
            "group": np.array([it.group for it in rec.items]),
            "allowed": np.array([[e in it.emotions for e in EMOTIONS] for it in rec.items]),
            "model": probs}


def fused_scores(clips: dict[str, Any], reader, scaler, z: str, weights: tuple[float, ...],
                 classes: list[str]) -> dict[str, float]:
    """Balanced accuracy of the model fused with the reader at each weight, argmax over the set's emotions."""
    from sklearn.metrics import balanced_accuracy_score

    x = zscore_by(clips["x"], clips["group"]) if z == "person" else clips["x"]
    read = np.full_like(clips["model"], 1e-6)
    read[:, [classes.index(c) for c in reader.classes_]] = reader.predict_proba(scaler.transform(x))
    out = {}
    for w in weights:
        logp = (1 - w) * np.log(clips["model"] + 1e-6) + w * np.log(read + 1e-6)
        logp[~clips["allowed"]] = -np.inf
        out[f"w={w:g}"] = round(float(balanced_accuracy_score(clips["y"], np.array(classes)[logp.argmax(1)])), 3)
    return out


def pair_scores(model, model_dir: Path, root: Path, cache: Path, reader, scaler, weights: tuple[float, ...],
                n_pairs: int = 1000) -> dict[str, dict[str, float]]:
    """Emotion accuracy on eval_pairs.py's label-matched pairs (FER2013 val faces, held-out voices),
    face+voice and voice only, with each pair's voice read by the person-z-scored reader too."""
    from obs_merlb.calibration import load_calibration

    from ..data import PairedDataset, Records
    from .eval_pairs import pair_probs

    val = set(TrainConfig.from_toml(RECIPES / "default_voice.toml").val_groups or [])
    settings = FeatureSettings(step_s=model.cfg.step_s)
    parts = [load_records(prepare(root / "fer2013" / "val", cache, settings=settings, quiet=True))]
    for s in TRAIN_SETS:
        rec = load_records(prepare(root / s, cache, settings=settings, quiet=True))
        parts.append(rec.subset([i for i, it in enumerate(rec.items) if it.group in val]))
    records = Records.concat(parts)
    probs, y = pair_probs(model, records, n_pairs, 0, load_calibration(model_dir))
    ds = PairedDataset(records, model.cfg.modalities, model.cfg.steps, train=False, n_pairs=n_pairs,
                       augment=False, seed=0)
    voices = [ds.pair(i)[1] for i in range(len(ds))]
    clips = sorted(set(voices))
    feats = {i: record_functionals(records.arrays[i], model.cfg.step_s) for i in clips}
    people = np.array([records.items[i].group for i in clips])
    x = zscore_by(np.stack([feats[i] if feats[i] is not None else np.zeros(N_FUNCTIONALS, np.float32)
                            for i in clips]), people)
    read = np.full((len(clips), len(EMOTIONS)), 1e-6)
    read[:, [list(EMOTIONS).index(c) for c in reader.classes_]] = reader.predict_proba(scaler.transform(x))
    row = {c: k for k, c in enumerate(clips)}
    per_pair = read[[row[v] for v in voices]]
    spoken = np.array([feats[v] is not None for v in voices])
    target = y[:, 0]
    out = {}
    for way in ("fusion", "voice_only"):
        p = probs[way]["emotion"]
        for w in weights:
            logp = (1 - w) * np.log(p + 1e-6) + w * np.log(per_pair + 1e-6) * spoken[:, None]
            logp = np.where(spoken[:, None], logp, np.log(p + 1e-6))
            out.setdefault(way, {})[f"w={w:g}"] = round(float((logp.argmax(1) == target).mean()), 3)
    return out


def demo_scores(model_dir: Path, reader, scaler, weights: tuple[float, ...]) -> dict[str, int]:
    """`merlb demo`'s 22 windows (one actor, face and voice) matched, with each window's speech
    read against the actor's other windows (the clip is all there is of this person)."""
    from obs_merlb.demo import _labels_at
    from obs_merlb.inference import load_backend
    from obs_merlb.labels import MODALITIES
    from obs_merlb.perception.functionals import functionals, speech_frames, speech_pitch
    from obs_merlb.perception.steps import clip_steps
    from obs_merlb.registry import shipped_path

    video = shipped_path("demo.mp4")
    backend = load_backend(model_dir)
    steps = clip_steps(video, face=True, voice=True)
    embs = {m: backend.encode(m, getattr(steps, m)) for m in backend.modalities}
    truth, t_steps, names = _labels_at(video), backend.cfg.steps, list(backend.labels["emotion"])
    rows = []
    for start in range(0, max(1, len(steps) - t_steps + 1), 2):      # the demo's windows and hop
        w = steps.window(start, t_steps)
        idx = np.clip(np.arange(start, start + t_steps), 0, len(steps) - 1)
        probs = backend.sequence({m: e[idx] * w.mask[:, [MODALITIES.index(m)]] for m, e in embs.items()}, w.mask)
        speech = w.mask[:, VOICE] > 0
        frames = speech_frames(steps.voice[idx], speech, steps.step_s)
        mid = (start + t_steps / 2) * steps.step_s
        rows.append((next((lab for s, e, lab in truth if s <= mid < e), ""), probs["emotion"],
                     None if frames is None else functionals(frames, speech_pitch(steps.pitch[idx], speech))))
    spoken = [i for i, r in enumerate(rows) if r[2] is not None]
    x = zscore_by(np.stack([rows[i][2] for i in spoken]), np.zeros(len(spoken)))
    read = dict(zip(spoken, reader.predict_proba(scaler.transform(x))))
    cols = [names.index(c) for c in reader.classes_]
    out = {}
    for w in weights:
        hits = 0
        for i, (true, p, _) in enumerate(rows):
            logp = np.log(p + 1e-6)
            if i in read:
                r = np.full(len(names), 1e-6)
                r[cols] = read[i]
                logp = (1 - w) * logp + w * np.log(r + 1e-6)
            hits += names[int(logp.argmax())] == true
        out[f"w={w:g}"] = hits
    return out


def grown_scores(model, model_dir: Path, root: Path, cache: Path, seed: int = 0) -> dict[str, dict[str, float]]:
    """The model folder's fitted reader (`merlb fit-reader`) with each person's statistics from all of
    their windows (as `merlb eval --adapt person`) and grown as live grows them: every window read
    with the statistics so far, then added, the person's windows in a random order."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from obs_merlb.calibration import load_calibration
    from obs_merlb.model.voice_reader import load_reader
    from obs_merlb.perception.functionals import PersonStats

    from ..data import StepDataset, predict, windows_of
    from ..fit_reader import person_zscores, window_functionals

    reader = load_reader(model_dir)
    if reader is None:
        raise SystemExit(f"--grown: {model_dir} has no voice reader; fit one with `merlb fit-reader`")
    val = set(TrainConfig.from_toml(RECIPES / "default_voice_all.toml").val_groups or [])
    rng = np.random.default_rng(seed)
    out = {}
    for s in SETS:
        if not (root / s).is_dir():
            continue
        rec = load_records(prepare(root / s, cache, settings=FeatureSettings(step_s=model.cfg.step_s), quiet=True))
        rec = rec.subset([i for i, it in enumerate(rec.items) if it.group in val])
        win, owners = windows_of(rec, model.cfg.steps)
        ds = StepDataset(win, model.cfg.modalities, model.cfg.steps, train=False)
        p0 = predict(model, ds, model.cfg.modalities, torch.device("cpu"), 128, load_calibration(model_dir))[0]["emotion"]
        x, idx = window_functionals(win, model.cfg.step_s)
        people = np.array([win.items[j].group for j in idx])
        grown = np.empty_like(x)
        for person in np.unique(people):
            stats = PersonStats()
            for r in rng.permutation(np.flatnonzero(people == person)):
                grown[r] = stats.zscore(x[r][None], reader.population)[0]
                stats.add(x[r])
        y = np.array([it.labels.get("emotion") or "" for it in rec.items])
        labelled = np.isin(y, EMOTIONS)

        def clip_score(z: np.ndarray | None) -> float:
            p = p0.copy()
            if z is not None:
                p[idx] = reader.fuse(p0[idx], z)
            per_clip = np.zeros((len(rec), p.shape[1]))
            np.add.at(per_clip, owners, p)
            pred = np.array(EMOTIONS)[per_clip.argmax(1)]
            return round(float(balanced_accuracy_score(y[labelled], pred[labelled])), 3)

        out[s] = {"model": clip_score(None), "all windows": clip_score(person_zscores(x, people, reader.population)),
                  "grown": clip_score(grown)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="assets/model")
    ap.add_argument("--data-root", default=str(RECIPES.parent.parent.parent / "shared" / "data"))
    ap.add_argument("--cache", default=None)
    ap.add_argument("--C", type=float, default=0.01, help="inverse regularisation of the reader")
    ap.add_argument("--weights", default="0,0.25,0.5,1", help="reader weights to report (0 = the model alone)")
    ap.add_argument("--pairs", type=int, default=0,
                    help="also score this many label-matched face+voice pairs (eval_pairs.py's)")
    ap.add_argument("--demo", action="store_true", help="also count `merlb demo`'s windows matched")
    ap.add_argument("--grown", action="store_true",
                    help="also score the model folder's fitted reader with each person's statistics grown "
                         "window by window, as live grows them")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    model_dir, root = Path(args.model), Path(args.data_root)
    cache = Path(args.cache) if args.cache else default_cache()
    weights = tuple(float(w) for w in args.weights.split(","))
    model, _ = _load(model_dir, "cpu")
    classes = list(EMOTIONS)
    if list(model.cfg.active_heads["emotion"]) != classes:
        raise SystemExit(f"{model_dir}: the probe reads the standard emotion classes {classes}")
    val = set(TrainConfig.from_toml(RECIPES / "default_voice_all.toml").val_groups or [])
    train = [_clips(model, model_dir, root / s, cache, None) for s in TRAIN_SETS]
    fit = {k: np.concatenate([c[k][~np.isin(c["group"], list(val))] for c in train]) for k in ("x", "y", "group")}
    held = {s: _clips(model, model_dir, root / s, cache, val) for s in SETS if (root / s).is_dir()}
    result: dict[str, Any] = {"model": str(model_dir), "C": args.C, "training_clips": int(len(fit["y"]))}
    for z in ("global", "person"):
        x = zscore_by(fit["x"], fit["group"]) if z == "person" else fit["x"]
        scaler = StandardScaler().fit(x)
        reader = LogisticRegression(C=args.C, max_iter=3000, class_weight="balanced").fit(scaler.transform(x), fit["y"])
        result[z] = {s: {"clips": int(len(c["y"])), **fused_scores(c, reader, scaler, z, weights, classes)}
                     for s, c in held.items()}
    if args.pairs:   # the last reader fitted is the person-z-scored one
        result["pairs_person"] = pair_scores(model, model_dir, root, cache, reader, scaler, weights, args.pairs)
    if args.grown:
        result["grown_reader"] = grown_scores(model, model_dir, root, cache)
    if args.demo:
        result["demo_person"] = {"windows matched": demo_scores(model_dir, reader, scaler, weights)}
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for z in ("global", "person", "pairs_person", "demo_person", "grown_reader"):
            for s, r in result.get(z, {}).items():
                print(f"{z:>6} {s:>14}: " + "  ".join(f"{k} {v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
