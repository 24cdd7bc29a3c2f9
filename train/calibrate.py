"""`merlb calibrate`: fit the temperatures that make a model's probabilities honest.

    merlb calibrate --model assets/model --faces ../shared/data/fer2013/val \
        --voices runs/default/heldout/ravdess --voices runs/default/heldout/emodb

One temperature per modality set ("face", "voice", "face+voice") and head,
fitted by log-likelihood on validation windows: faces alone, voices alone,
and label-matched face+voice pairs of the same people (train/recipes/
eval_pairs.py). They go into the model's config.json (obs_merlb/
calibration.py), where the live backend and `merlb eval` pick them up;
accuracy does not change.

The calibration error is reported twice: in-sample (the fitted T scored on
the windows it was fitted on) and cross-fitted (T fitted on one half of the
windows, scored on the other, both ways), the honest figure. `--out` gets a
JSON report and reliability diagrams before and after.

`fit` is also how `merlb personalize` calibrates its candidates, on their
held-out windows, keeping the base model's temperatures where those are too few.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from obs_merlb.calibration import (MIN_SAMPLES, Calibration, ece, fit_temperature, modality_sets, nll,
                                   save_calibration, scale)
from obs_merlb.cli import refuse, whole_number
from obs_merlb.files import check_writable
from obs_merlb.labels import IGNORE

from .datasets import HEADS, DatasetError


def window_probs(model, records, key_segments: int | None = None,
                 image_steps: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Per-window raw probabilities {head: (W, C)}, targets (W, len(HEADS)) and modality sets."""
    import torch

    from .data import StepDataset, predict
    from .data import windows_of

    win, _ = windows_of(records, model.cfg.steps)
    ds = StepDataset(win, model.cfg.modalities, model.cfg.steps, train=False, image_steps=image_steps,
                     key_segments=key_segments)
    probs, y = predict(model, ds, model.cfg.modalities, torch.device("cpu"), 128)
    # The dataset's masks, not the records': key-segment selection may drop a window's voice.
    masks = np.stack([ds[i]["mask"] for i in range(len(ds))]) if len(ds) else np.zeros((0, 1, 4))
    return probs, y, modality_sets(masks, model.cfg.modalities)


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def fit(samples: Mapping[str, tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], seed: int = 0,
        inherited: Calibration | None = None) -> tuple[Calibration, list[dict[str, Any]]]:
    """Temperatures per (modality set, head) with MIN_SAMPLES labels or more, and one report row each.

    `samples` maps a modality set to (logits per head, targets per head;
    IGNORE where a window has no label). Log-probabilities serve as logits:
    they differ by a per-row constant, which softmax ignores, so the fitted T
    is the same. With `inherited`, its temperatures stay wherever none is
    fitted (rather than T = 1), and the calibration's info names which are
    fitted and which inherited.
    """
    temps = {s: dict(heads) for s, heads in (inherited.temperatures if inherited else {}).items()}
    rows = []
    for mset, (logits, targets) in samples.items():
        for head, lg in logits.items():
            if head not in targets:
                continue
            keep = targets[head] != IGNORE
            if keep.sum() < MIN_SAMPLES:
                continue
            lp, yk = lg[keep], targets[head][keep]
            t = fit_temperature(lp, yk)
            a, b = _halves(len(yk), seed)
            cross = [ece(scale(lp[test], fit_temperature(lp[train], yk[train])), yk[test])
                     for train, test in ((a, b), (b, a))]
            temps.setdefault(mset, {})[head] = t
            rows.append({"set": mset, "head": head, "n": int(len(yk)), "temperature": round(t, 3),
                         "confidence_raw": float(scale(lp, 1.0).max(axis=1).mean()),
                         "confidence_calibrated": float(scale(lp, t).max(axis=1).mean()),
                         "accuracy": float((lp.argmax(axis=1) == yk).mean()),
                         "ece_raw": ece(scale(lp, 1.0), yk), "ece_calibrated": ece(scale(lp, t), yk),
                         "ece_cross_fitted": float(np.mean(cross)),
                         "nll_raw": nll(lp, yk), "nll_calibrated": nll(lp, yk, t)})
    if inherited is None:
        return Calibration(temps), rows
    fitted = [f"{r['set']}/{r['head']}" for r in rows]
    kept = [f"{s}/{h}" for s, heads in inherited.temperatures.items() for h in heads if f"{s}/{h}" not in fitted]
    return Calibration(temps, {"fitted": fitted, "inherited": kept}), rows


def by_modality_set(logits: Mapping[str, np.ndarray], sets: Sequence[str], targets: Mapping[str, np.ndarray]
                    ) -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Per-window logits and targets grouped by each window's modality set, as `fit` takes them
    (windows with no modality at all are left out)."""
    window_sets = np.asarray(list(sets))
    out = {}
    for mset in sorted(set(window_sets.tolist()) - {""}):
        sel = window_sets == mset
        out[mset] = ({h: lg[sel] for h, lg in logits.items()}, {h: y[sel] for h, y in targets.items()})
    return out


def calibrate(model_dir: str | Path, faces: list[str], voices: list[str], n_pairs: int = 1000,
              cache: str | None = None, out: str | Path | None = None, write: bool = True,
              seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    from rich.progress import Progress

    from .evaluate import _load
    from .metrics import reliability_png, score
    from .recipes.eval_pairs import load_pair_records, pair_probs

    model_dir = Path(model_dir)
    model, meta = _load(model_dir, "cpu")     # a missing model folder stops with how to get one
    train_meta = meta.get("train") or {}
    samples: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    steps = [("face", faces), ("voice", voices)]
    with Progress(transient=True, disable=quiet) as bar:
        task = bar.add_task("calibration windows", total=len(steps) + (1 if faces and voices and n_pairs else 0))
        for mset, paths in steps:
            if paths:
                records = load_pair_records(model, [], paths, cache)
                probs, y, sets = window_probs(model, records, key_segments=train_meta.get("voice_key_segments"),
                                              image_steps=train_meta.get("image_steps", 1))
                keep = np.array([s == mset for s in sets], bool)
                samples[mset] = ({h: p[keep] for h, p in probs.items()}, y[keep])
            bar.advance(task)
        if faces and voices and n_pairs:
            records = load_pair_records(model, faces, voices, cache)
            probs, y = pair_probs(model, records, n_pairs, seed)
            samples["face+voice"] = (probs["fusion"], y)
            bar.advance(task)
    if not samples:
        raise SystemExit("nothing to calibrate on: give --faces and/or --voices (validation data of held-out people)")
    calibration, rows = fit({mset: ({h: _log(p) for h, p in probs.items()},
                                    {h: y[:, HEADS.index(h)] for h in HEADS})
                             for mset, (probs, y) in samples.items()}, seed)
    if not calibration:
        raise SystemExit(f"too few labelled windows to fit a temperature (need {MIN_SAMPLES} per set and head)")
    # Folder names, not paths: the config ships, and a path would name the build machine's folders.
    calibration.info.update({"fitted_on": {"faces": [_name(p) for p in faces], "voices": [_name(p) for p in voices],
                                           "pairs": n_pairs if faces and voices else 0},
                             "windows": {s: int(len(y)) for s, (_, y) in samples.items()}})
    report = {"model": str(model_dir), "calibration": calibration.to_dict(), "rows": rows}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "calibration.json").write_text(json.dumps(report, indent=1))
        for mset, (probs, y) in samples.items():
            if "emotion" not in probs:
                continue
            for label, cal in (("raw", Calibration()), ("calibrated", calibration)):
                p = cal.probs("emotion", _log(probs["emotion"]), [mset] * len(y))
                m = score({"emotion": p}, y).get("emotion")
                if m:
                    reliability_png(m, out / f"reliability_{mset.replace('+', '_')}_{label}.png",
                                    f"{model_dir.name}, {mset}: emotion ({label})")
    if write:
        save_calibration(model_dir, calibration)
    if not quiet:
        _print(rows, model_dir, write, out)
    return report


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, None))


def _name(path: str) -> str:
    return "/".join(Path(path).resolve().parts[-2:])


def _print(rows: list[dict], model_dir: Path, written: bool, out: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"temperature calibration: {model_dir}")
    for c in ("set", "head", "n", "T", "conf raw", "conf cal", "accuracy", "ECE raw", "ECE cal", "ECE cross-fit"):
        t.add_column(c, justify="left" if c in ("set", "head") else "right")
    for r in rows:
        t.add_row(r["set"], r["head"], str(r["n"]), f"{r['temperature']:.2f}", f"{r['confidence_raw']:.3f}",
                  f"{r['confidence_calibrated']:.3f}", f"{r['accuracy']:.3f}", f"{r['ece_raw']:.3f}",
                  f"{r['ece_calibrated']:.3f}", f"{r['ece_cross_fitted']:.3f}")
    con = Console(stderr=True, width=max(Console(stderr=True).width, 120))
    con.print(t)
    con.print(f"{'written to ' + str(model_dir / 'config.json') if written else 'dry run: config.json not changed'}"
              + (f"; report and reliability diagrams in {out}" if out else ""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder whose config.json gets the temperatures")
    parser.add_argument("--faces", action="append", default=[], help="face data of held-out people (repeatable)")
    parser.add_argument("--voices", action="append", default=[], help="voice data of held-out people (repeatable)")
    parser.add_argument("--pairs", type=whole_number(0), default=1000, help="label-matched face+voice pairs (0: none)")
    parser.add_argument("--cache", default=None, help="feature cache folder")
    parser.add_argument("--out", default=None, help="folder for calibration.json and reliability PNGs")
    parser.add_argument("--dry-run", action="store_true", help="report only; leave config.json as it is")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    import sys

    if args.out:
        check_writable(Path(args.out), "--out")
    try:
        report = calibrate(args.model, args.faces, args.voices, args.pairs, args.cache, args.out,
                           write=not args.dry_run, seed=args.seed, quiet=args.json)
    except DatasetError as e:
        return refuse("calibrate", str(e))
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    return 0
