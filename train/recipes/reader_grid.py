"""How the shipped voice reader was chosen: functionals x training speakers x C x weight.

    python -m obs_merlb.train.recipes.reader_grid --model assets/model [--json] [--plot grid.png]

Every combination is scored the way `merlb eval PATH --people <a set's
validation speakers> --adapt person` scores the model folder's own reader
(verified equal for the shipped one, MODEL_CARD.md session 16): the model's
calibrated window probabilities on each set's validation speakers
(default_voice_all.toml's `val_groups`), each window with speech mixed with
the reader at the weight, z-scored with all of its person's windows; a
clip's probabilities the mean of its windows'; balanced accuracy per set.

- functionals: "session 15" (the 205 of MFCCs, deltas and energy: mean,
  spread, percentiles), "session 16" (the 442 from the log-mel alone) or
  "all" (perception/functionals.py's N_FUNCTIONALS: those and the pitch's);
- training speakers: "two" (RAVDESS 01-16 and EmoDB's training speakers,
  what the model's voice trained on) or "six" (every speech set's training
  speakers);
- the classifier: a logistic regression at C (its inverse regularisation)
  0.01, 0.03 or 0.1, or linear discriminant analysis with a shrunk
  covariance ("lda", no C); and the weight.

Selection is on the validation speakers given: the best mean over the six
sets (one language is not more the streamer's than another) among the
readers that lower no set below the model alone (adapting to a person must
not cost any of them).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from obs_merlb.calibration import load_calibration
from obs_merlb.jobprogress import clock
from obs_merlb.labels import EMOTIONS
from obs_merlb.perception.functionals import N_FUNCTIONALS, N_LLD, N_MFCC, N_PITCH, PERCENTILES

from ..evaluate import _load
from ..fit_reader import C, fit_windows, person_zscores, window_functionals
from ..loop import TrainConfig
from ..preprocess import FeatureSettings, default_cache, prepare

RECIPES = Path(__file__).resolve().parent
SETS = ("ravdess_speech", "emodb", "ased", "urdu", "emotiontts_kr", "nemo")
TWO = SETS[:2]
CS = (0.01, 0.03, 0.1)
CLASSIFIERS = tuple(("logistic", c) for c in CS) + (("lda", None),)
WEIGHTS = (0.25, 0.5, 0.75)


def session15_columns() -> np.ndarray:
    """The 205 functionals session 15 shipped: mean, spread and percentiles of the MFCCs, deltas and
    energy (the first 2 * N_MFCC + 1 of each block of N_LLD frame descriptors)."""
    blocks = 2 + len(PERCENTILES)
    return np.array([b * N_LLD + j for b in range(blocks) for j in range(2 * N_MFCC + 1)])


FEATURES = {"session 15": session15_columns(), "session 16": np.arange(N_FUNCTIONALS - N_PITCH),
            "all": np.arange(N_FUNCTIONALS)}


def windows(model, model_dir: Path, root: Path, cache: Path) -> dict[str, Any]:
    """Every set's windows: functionals (zeros where a window has too little speech, `speech`
    False), label, person, set, validation or not, the clip they belong to and (validation
    windows) the model's calibrated emotion probabilities. A clip's score counts all of its
    windows, as `merlb eval` does; only those with speech are read."""
    import torch

    from ..data import StepDataset, load_records, predict, windows_of

    missing = [name for name in SETS if not (root / name).is_dir()]
    if missing:     # the choice is made over all six: a partial grid would choose another way
        raise SystemExit(f"reader_grid: {root} lacks {', '.join(missing)}; the grid reads all six speech sets "
                         f"(name their folder with --data-root)")
    val = set(TrainConfig.from_toml(RECIPES / "default_voice_all.toml").val_groups or [])
    calibration = load_calibration(model_dir)
    cols: dict[str, list] = {k: [] for k in ("x", "speech", "label", "person", "set", "val", "clip", "probs")}
    clips = 0
    for name in SETS:
        rec = load_records(prepare(root / name, cache, settings=FeatureSettings(step_s=model.cfg.step_s),
                                   quiet=True))
        win, owners = windows_of(rec, model.cfg.steps)
        x, idx = window_functionals(win, model.cfg.step_s)
        full = np.zeros((len(win), N_FUNCTIONALS), np.float32)
        full[idx] = x
        speech = np.zeros(len(win), bool)
        speech[idx] = True
        held = np.array([it.group in val for it in win.items], bool)
        probs = np.zeros((len(win), len(EMOTIONS)), np.float32)
        if held.any():
            part = win.subset(np.flatnonzero(held))
            probs[held] = predict(model, StepDataset(part, model.cfg.modalities, model.cfg.steps, train=False),
                                  model.cfg.modalities, torch.device("cpu"), 128, calibration)[0]["emotion"]
        cols["x"].append(full)
        cols["speech"].append(speech)
        cols["label"] += [it.labels.get("emotion") or "" for it in win.items]
        cols["person"] += [it.group for it in win.items]
        cols["set"] += [name] * len(win)
        cols["val"].append(held)
        cols["clip"].append(clips + owners)
        cols["probs"].append(probs)
        clips += len(rec)
        print(f"{name}: {len(rec)} clips, {len(win)} windows, {len(idx)} with speech", file=sys.stderr, flush=True)
    return {k: np.concatenate(v) if isinstance(v[0], np.ndarray) else np.array(v) for k, v in cols.items()}


def scores(w: dict[str, Any], columns: np.ndarray, train_sets: tuple[str, ...], classifier: str,
           c: float | None, weights: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """{set: {weight: balanced accuracy}} for a reader of `columns` fitted on `train_sets`' training
    speakers; weight 0 is the model alone."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
    x = w["x"][:, columns]
    fit = ~w["val"] & w["speech"] & np.isin(w["set"], train_sets)
    reader = fit_windows(x[fit], w["label"][fit], w["person"][fit], C if c is None else c,   # LDA reads no C
                         classifier=classifier)
    out: dict[str, dict[str, float]] = {}
    for name in SETS:
        held = w["val"] & (w["set"] == name)
        if not held.any():
            continue
        read = w["speech"][held]
        z = person_zscores(x[held][read], w["person"][held][read], reader.population)
        clip, label = w["clip"][held], w["label"][held]
        ids, first, row = np.unique(clip, return_index=True, return_inverse=True)
        truth = label[first]                  # a clip's windows share its label
        known = np.isin(truth, EMOTIONS)
        out[name] = {}
        for weight in (0.0, *weights):
            p = w["probs"][held].copy()
            p[read] = reader.fuse(p[read], z, weight)
            per_clip = np.zeros((len(ids), len(EMOTIONS)))
            np.add.at(per_clip, row, p)
            pred = np.array(EMOTIONS)[per_clip.argmax(1)]
            out[name][f"{weight:g}"] = round(float(balanced_accuracy_score(truth[known], pred[known])), 3)
    return out


def label(row: dict[str, Any]) -> str:
    """A row's classifier in a few characters: "C 0.03" for a logistic regression, "lda"."""
    return "lda" if row.get("classifier") == "lda" else f"C {row['C']:g}"


def chosen(rows: list[dict[str, Any]], train: str | None = None) -> dict[str, Any] | None:
    """The best mean among the rows (of one training set) that lower no set below the model alone."""
    ok = [r for r in rows if (train is None or r["train"] == train) and all(
        v[f"{r['weight']:g}"] >= v["0"] for v in r["per_set"].values())]
    return max(ok, key=lambda r: r["mean"]) if ok else None


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per set, the model alone, session 15's reader, and the readers the rule picks on six sets from
    session 16's functionals and from all of them (with the pitch's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {f: r for f in ("session 16", "all") if (r := chosen([x for x in rows if x["features"] == f], "six"))}
    s15 = next(r for r in rows if r["features"] == "session 15" and r["train"] == "two" and r["C"] == 0.01
               and r.get("classifier", "logistic") == "logistic" and r["weight"] == 0.5)
    bars = [("model alone", {s: v["0"] for s, v in s15["per_set"].items()}),
            ("session 15 reader (205, two sets, C 0.01, w 0.5)", {s: v["0.5"] for s, v in s15["per_set"].items()})]
    for f, r in best.items():
        bars.append((f"{'all functionals' if f == 'all' else f + ' functionals'}, six sets, {label(r)}, "
                     f"w {r['weight']:g}",
                     {s: v[f"{r['weight']:g}"] for s, v in r["per_set"].items()}))
    names = list(bars[0][1])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(bars)
    for i, (name, vals) in enumerate(bars):
        ax.bar(np.arange(len(names)) + i * width, [vals[n] for n in names], width, label=name)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel("balanced accuracy (validation speakers)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("voice reader: model alone vs read against the person")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="assets/model")
    ap.add_argument("--data-root", default=str(RECIPES.parent.parent.parent / "shared" / "data"))
    ap.add_argument("--cache", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", default=None, help="PNG: the model alone, session 15's reader, the best of each")
    args = ap.parse_args(argv)
    model_dir = Path(args.model)
    model, _ = _load(model_dir, "cpu")
    if list(model.cfg.active_heads["emotion"]) != list(EMOTIONS):
        raise SystemExit(f"{model_dir}: the grid reads the standard emotion classes {list(EMOTIONS)}")
    w = windows(model, model_dir, Path(args.data_root), Path(args.cache) if args.cache else default_cache())
    rows = []
    grid = list(itertools.product(FEATURES.items(), (("two", TWO), ("six", SETS)), CLASSIFIERS))
    t0 = time.monotonic()
    for i, ((feat, cols), (train, sets), (classifier, c)) in enumerate(grid):
        per_set = scores(w, cols, sets, classifier, c, WEIGHTS)
        each = (time.monotonic() - t0) / (i + 1)
        print(f"reader_grid: reader {i + 1}/{len(grid)} fitted and scored, {each:.1f} s each, about "
              f"{clock(each * (len(grid) - i - 1))} left", file=sys.stderr, flush=True)
        for weight in WEIGHTS:
            vals = [v[f"{weight:g}"] for v in per_set.values()]
            rows.append({"features": feat, "train": train, "classifier": classifier, "C": c, "weight": weight,
                         "mean": round(float(np.mean(vals)), 3), "per_set": per_set})
    pick = chosen(rows)
    if args.plot:
        plot(rows, Path(args.plot))
    if args.json:
        sys.stdout.write(json.dumps({"model": str(model_dir), "rows": rows, "chosen": pick}) + "\n")
    else:
        names = list(rows[0]["per_set"])
        print(f"{'functionals':>11} {'sets':>4} {'reader':>10} {'w':>5} {'mean':>6}  "
              + " ".join(f"{n[:8]:>8}" for n in names))
        print(f"{'model alone':>34} " + f"{np.mean([rows[0]['per_set'][n]['0'] for n in names]):6.3f}  "
              + " ".join(f"{rows[0]['per_set'][n]['0']:8.3f}" for n in names))
        for r in rows:
            key = f"{r['weight']:g}"
            print(f"{r['features']:>11} {r['train']:>4} {label(r):>10} {r['weight']:5g} {r['mean']:6.3f}  "
                  + " ".join(f"{r['per_set'][n][key]:8.3f}" for n in names) + ("  <- chosen" if r is pick else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
