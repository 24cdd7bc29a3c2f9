"""`merlb eval`: score a saved model on a dataset, in the paper's per-class F1 layout.

    merlb eval ../shared/data/fer2013/val                 # the shipped model (assets/model)
    merlb eval clips/ --model runs/x/model --json         # one JSON object on stdout

PATH is any layout `datasets.detect_format` recognises (`--format`
overrides); `--people` keeps only the named people (e.g. the validation
speakers of a recipe). Without PATH the model is scored on the validation
split it was trained with (recorded in its config.json). A PATH holding
several sets is also scored per set (`sets` in the JSON); FER2013 folders
with FER+ votes are scored on both label kinds (`label_kinds`: the FER+
majority of the voted images, and every image's original folder label). A clip longer than the model's
window is scored as the mean of its windows' probabilities (consecutive,
and one more ending at the clip's end: train/data.py windows_of), which is
what a whole-clip label asks about. Heads the data has no labels for are
skipped, never scored as zero. Each score comes with a 95% interval
(`ci95`) from resampling the people scored (train/metrics.py bootstrap_ci):
four validation actors leave a wide one, and a difference inside it is not
evidence; fewer than four people get none.

Writes, into --out: `metrics.json` (everything), `table.csv|md|json` (the
paper's layout) and a confusion-matrix PNG per head.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from obs_merlb import labels as L
from obs_merlb.cli import positive_int, refuse
from obs_merlb.files import check_writable
from obs_merlb.labels import IGNORE

from .datasets import FORMATS, HEAD_CLASSES, HEADS, VOTES_HELP, DatasetError, describe, detect_format, parse_votes
from .metrics import confusion_png, reliability_png, rich_table, score, table_row, write_table


def default_model_dir() -> Path:
    from obs_merlb.registry import shipped_path
    return shipped_path("model")


def _load(model_dir: Path, device: str):
    import torch

    from obs_merlb.model.io import load_config, load_model

    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise SystemExit(f"--device {device!r} is not a device: cpu, cuda or cuda:N") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available here (CPU-only torch build, or no "
                         "driver); use --device cpu")

    if not (model_dir / "config.json").exists():
        raise SystemExit(
            f"no model at {model_dir} (config.json missing).\n"
            f"Train one with `merlb train --config train/recipes/tiny.toml --out runs/tiny` and pass "
            f"`--model runs/tiny/model`, or see assets/MODEL_CARD.md for the shipped model's recipe.")
    _, meta = load_config(model_dir)
    return load_model(model_dir, device=device), meta


def predict_records(model, records, device: str = "cpu", batch_size: int = 128,
                    image_steps: int = 1, key_segments: int | None = None,
                    calibration=None, adapt_prior=None, reader=None) -> dict[str, np.ndarray]:
    """Per item and head, class probabilities (mean over the item's windows),
    temperature-scaled per window when a calibration is given. With
    `adapt_prior` (a perception.baseline.Prior) each voice is heard against
    its person's baseline, built from all of that person's clips here; with
    `reader` (model/voice_reader.py) each window's speech is also read against
    the person's functionals, built the same way, and mixed into the emotion."""
    import torch

    from .data import PersonBaselines, StepDataset, predict, windows_of

    steps = model.cfg.steps
    win, owners = windows_of(records, steps)
    baselines = None if adapt_prior is None else PersonBaselines(win, adapt_prior, people_from=records)
    ds = StepDataset(win, model.cfg.modalities, steps, train=False, image_steps=image_steps,
                     key_segments=key_segments, baselines=baselines)
    probs, _ = predict(model, ds, model.cfg.modalities, torch.device(device), batch_size, calibration)
    if reader is not None and "emotion" in probs:
        from obs_merlb.person_reader import window_weight

        from .fit_reader import person_zscores, window_functionals

        x, idx = window_functionals(win, model.cfg.step_s)
        if len(idx):
            # The person's statistics come from all of their windows; the mix, as live, at each
            # window's weight (none with a face in it: person_reader.FACE_WEIGHT).
            z = person_zscores(x, np.array([win.items[j].group for j in idx]), reader.population)
            weights = np.array([window_weight(reader, win.arrays[j]["mask"]) for j in idx])
            probs["emotion"] = probs["emotion"].copy()
            probs["emotion"][idx] = reader.fuse(probs["emotion"][idx], z, weights)
    out = {}
    for head, p in probs.items():
        acc = np.zeros((len(records), p.shape[1]), np.float64)
        np.add.at(acc, owners, p)
        counts = np.bincount(owners, minlength=len(records)).reshape(-1, 1)
        out[head] = (acc / np.maximum(counts, 1)).astype(np.float32)
    return out


def remap_targets(targets: np.ndarray, model_heads: dict[str, list[str]]) -> np.ndarray:
    """Data label indices -> the model's class indices, by name (custom behaviour names)."""
    t = targets.copy()
    for head, names in model_heads.items():
        if head not in HEADS or list(names) == list(HEAD_CLASSES[head]):
            continue
        col = HEADS.index(head)
        lut = np.array([names.index(c) if c in names else IGNORE for c in HEAD_CLASSES[head]], np.int64)
        t[:, col] = np.where(t[:, col] >= 0, lut[np.clip(t[:, col], 0, None)], IGNORE)
    return t


METRIC_KEYS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "per_class_f1", "ece", "nll", "ci95")


def _summary(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {h: {k: m[k] for k in METRIC_KEYS if k in m} for h, m in metrics.items()}


def _people(records) -> np.ndarray:
    return np.array([it.group for it in records.items], dtype=object)


def _scored(probs: dict[str, np.ndarray], targets: np.ndarray, idx: np.ndarray,
            heads: dict[str, list[str]], people: np.ndarray) -> dict[str, Any]:
    return _summary(score({h: p[idx] for h, p in probs.items()}, remap_targets(targets[idx], heads), heads,
                          groups=people[idx]))


def _per_set(probs: dict[str, np.ndarray], records, heads: dict[str, list[str]]) -> dict[str, Any]:
    """Metrics per dataset when the records hold more than one."""
    names = np.array([it.dataset for it in records.items])
    if len(set(names)) < 2:
        return {}
    return {name: _scored(probs, records.targets, np.flatnonzero(names == name), heads, _people(records))
            for name in sorted(set(names))}


def _label_kinds(probs: dict[str, np.ndarray], records, heads: dict[str, list[str]]) -> dict[str, Any]:
    """FER2013 with FER+ votes: the FER+ majority (voted images) and the original folder labels (all)."""
    voted = np.array([it.soft is not None for it in records.items])
    if not voted.any():
        return {}
    original = records.targets.copy()
    for i, it in enumerate(records.items):
        emo, val, aro = L.emotion_targets(it.orig if it.orig is not None else it.labels.get("emotion"))
        for head, name in (("emotion", emo), ("valence", val), ("arousal", aro)):
            original[i, HEADS.index(head)] = IGNORE if name is None else HEAD_CLASSES[head].index(name)
    people = _people(records)
    return {"ferplus_majority": _scored(probs, records.targets, np.flatnonzero(voted), heads, people),
            "original": _scored(probs, original, np.arange(len(records)), heads, people),
            "agreement": _agreement(probs["emotion"], records, heads["emotion"]) if "emotion" in probs else {}}


def _agreement(probs: np.ndarray, records, names: list[str]) -> dict[str, Any]:
    """Emotion predictions split by whether the FER+ majority and the folder label agree.

    The two label kinds disagree on about a third of FER2013, and one
    prediction can match only one of them there; so accuracy on the images
    where they agree, and which kind wins where they do not, say what both
    targets together ask of a model (MODEL_CARD.md).
    """
    pred = [names[i] for i in probs.argmax(1)]
    agree, disagree, no_majority = [], [], []
    for it, p in zip(records.items, pred):
        majority = it.labels.get("emotion") if it.soft is not None else None
        if majority is not None and majority == it.orig:
            agree.append(p == majority)
        elif majority is not None:
            disagree.append((p == majority, p == it.orig))
        elif it.orig is not None:
            no_majority.append(p == it.orig)

    def share(xs: list) -> float | None:
        return float(np.mean(xs)) if xs else None

    return {"agree": {"n": len(agree), "accuracy": share(agree)},
            "disagree": {"n": len(disagree), "as_ferplus": share([f for f, _ in disagree]),
                         "as_original": share([o for _, o in disagree])},
            "no_majority": {"n": len(no_majority), "accuracy_original": share(no_majority)}}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _with_ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m["ci95"][key] if "ci95" in m else (None, None)
    return f"{m[key]:.3f}" + ("" if lo is None else f" [{lo:.3f}-{hi:.3f}]")


def evaluate(model_dir: str | Path, data: str | None = None, *, fmt: str | None = None,
             cache: str | None = None, out: str | Path | None = None, device: str = "cpu",
             workers: int = 1, limit: int | None = None, quiet: bool = False,
             calibrated: bool = True, people: list[str] | None = None, adapt: str = "none",
             votes: str | Path | bool = True) -> dict[str, Any]:
    """Metrics per head (and files in `out`); the dict `merlb eval --json` prints.

    Probabilities are those the live engine shows: temperature-scaled by the
    model's calibration unless `calibrated` is False. Only the calibration
    error (ECE) and log-loss depend on that; argmax metrics do not.
    `adapt="person"` hears each voice against its person's baseline, built
    without labels from that person's clips in `data` (the live engine's
    adaptation); only a model trained with one (`voice_prior`) takes it.
    """
    from obs_merlb.calibration import Calibration, load_calibration

    from .data import load_records
    from .loop import TrainConfig, load_data
    from .preprocess import FeatureSettings, default_cache, prepare

    model_dir = Path(model_dir)
    # Every input is checked before the model loads and the data is preprocessed.
    if data is not None:
        fmt = fmt or detect_format(data)
        votes = parse_votes(votes)
    model, meta = _load(model_dir, device)
    adapt_prior, reader = adaptation(model, model_dir) if adapt == "person" else (None, None)
    train_meta = meta.get("train")
    if data is None and not train_meta:
        raise SystemExit(f"{model_dir} records no training data; give a dataset PATH to evaluate on")
    tcfg = TrainConfig.from_dict(train_meta) if data is None else None
    cache_dir = Path(cache or (tcfg.cache if tcfg else None) or default_cache())
    check_writable(cache_dir, "--cache")
    if out is not None:
        check_writable(Path(out), "--out")
    if tcfg is not None:
        tcfg.cache = str(cache_dir)
        _, records = load_data(tcfg, quiet=quiet)
        data_name = "validation split"
    else:
        prep = prepare(data, cache_dir, fmt=fmt,
                       settings=FeatureSettings(step_s=model.cfg.step_s), workers=workers,
                       limit=limit, quiet=quiet, votes=votes)
        records = load_records(prep)
        data_name = Path(data).name
    if people:
        wanted = set(people)
        records = records.subset([i for i, it in enumerate(records.items) if it.group in wanted])
        missing = wanted - {it.group for it in records.items}
        if missing:
            raise SystemExit(f"--people: nobody called {', '.join(sorted(missing))} in "
                             f"{data or 'the validation split'}")
    if not len(records):
        raise SystemExit(f"no readable items in {data or 'the validation split'}")
    if adapt == "person" and not speech_per_person(records, model.cfg.step_s):
        raise SystemExit(f"--adapt person: no speech in {data or 'the validation split'} to build a person's "
                         f"baseline from (images have none); adapt on voices, or leave --adapt out")
    key_segments = (train_meta or {}).get("voice_key_segments")
    image_steps = (train_meta or {}).get("image_steps", 1)
    calibration = load_calibration(model_dir) if calibrated else Calibration()
    probs = predict_records(model, records, device, image_steps=image_steps, key_segments=key_segments,
                            calibration=calibration, adapt_prior=adapt_prior, reader=reader)
    heads = model.cfg.active_heads
    metrics = score(probs, remap_targets(records.targets, heads), heads, groups=_people(records))
    result: dict[str, Any] = _summary(metrics)
    if adapt == "person":
        result["adapt"] = adapt
        result["adapted_by"] = [name for name, part in (("band baseline", adapt_prior), ("voice reader", reader))
                                if part is not None]
        result["baselines"] = speech_per_person(records, model.cfg.step_s)
    by_set = _per_set(probs, records, heads)
    if by_set:
        result["sets"] = by_set
    kinds = _label_kinds(probs, records, heads)
    if kinds:
        result["label_kinds"] = kinds

    if out is not None:
        out = Path(out)
        row = table_row(metrics, model=model_dir.name, data=data_name, fusion=model.cfg.fusion, task=model.cfg.task)
        try:   # checked writable before the work; a disk filled since still gets one line
            out.mkdir(parents=True, exist_ok=True)
            write_table([row], out, "table")
            for h, m in metrics.items():
                confusion_png(m, out / f"confusion_{h}.png", f"{model_dir.name} on {data_name}: {h}")
                reliability_png(m, out / f"reliability_{h}.png", f"{model_dir.name} on {data_name}: {h}"
                                f" ({'calibrated' if calibration else 'uncalibrated'})")
            (out / "metrics.json").write_text(json.dumps(
                {"model": str(model_dir), "data": data or "validation split", "adapt": adapt, "items": describe(records.items),
                 "heads": metrics, "sets": by_set, "label_kinds": kinds,
                 "skipped_heads": [h for h in heads if h not in metrics],
                 "calibration": calibration.to_dict() if calibration else None}, indent=1))
        except OSError as e:
            raise SystemExit(f"--out {out}: cannot write the results ({e.strerror or e})") from None
        if not quiet:
            from rich.console import Console
            con = Console(stderr=True)
            con.print(rich_table([row], title=f"per-class F1: {model_dir.name} on {data_name}"), width=max(con.width, 200))
            for h, m in metrics.items():
                con.print(f"{h:>9}: n={m['n']} accuracy {_with_ci(m, 'accuracy')}  balanced accuracy "
                          f"{_with_ci(m, 'balanced_accuracy')}  macro-F1 {_with_ci(m, 'macro_f1')}  "
                          f"ECE {m['ece']:.3f}")
            agreement = kinds.get("agreement")
            if agreement:
                a, d, r = agreement["agree"], agreement["disagree"], agreement["no_majority"]
                con.print(f"{'label agreement':>16}: both kinds agree on {a['n']} images, accuracy "
                          f"{_fmt(a['accuracy'])}; they disagree on {d['n']}, predicted as FER+ "
                          f"{_fmt(d['as_ferplus'])} / as the folder {_fmt(d['as_original'])}; "
                          f"{r['n']} without a FER+ majority, accuracy {_fmt(r['accuracy_original'])}")
            for name, part in {**by_set, **kinds}.items():
                if "emotion" in part:
                    e = part["emotion"]
                    con.print(f"{name:>16}: emotion n={e['n']} accuracy {_with_ci(e, 'accuracy')}  "
                              f"balanced accuracy {_with_ci(e, 'balanced_accuracy')}  "
                              f"macro-F1 {_with_ci(e, 'macro_f1')}")
            skipped = [h for h in heads if h not in metrics]
            if skipped:
                con.print(f"not scored (no labels in the data): {', '.join(skipped)}")
            con.print(f"written to {out}")
    return result


def adaptation_prior(model, model_dir: Path):
    """The band baseline's population prior, None for a model trained without one."""
    from obs_merlb.perception.baseline import Prior

    return None if model.cfg.voice_prior is None else Prior.from_dict(model.cfg.voice_prior)


def adaptation(model, model_dir: Path):
    """(band-baseline prior, voice reader) for `--adapt person`; at least one, else one line."""
    from obs_merlb.model.config import ModelFolderError
    from obs_merlb.model.voice_reader import load_reader

    try:
        reader = load_reader(model_dir)
    except ModelFolderError as e:
        raise SystemExit(f"--adapt person: {e}") from None
    if reader is not None and list(model.cfg.active_heads.get("emotion", [])) != list(L.EMOTIONS):
        raise SystemExit(f"--adapt person: {model_dir}'s emotion classes are not the standard ones the voice "
                         f"reader reads ({', '.join(L.EMOTIONS)}); fit the reader for a standard model")
    prior = adaptation_prior(model, model_dir)
    if prior is None and reader is None:
        raise SystemExit(f"--adapt person: {model_dir} has no way to adapt to a person: it was trained without "
                         f"a person baseline (its config.json has no voice_prior) and has no voice reader; fit "
                         f"one with `merlb fit-reader --model {model_dir}`, or train with "
                         f"voice_baseline = true (train/recipes/default_voice_baseline.toml)")
    return prior, reader


def speech_per_person(records, step_s: float) -> dict[str, float]:
    """Seconds of speech each person's baseline was built from."""
    from obs_merlb.perception.voice import N_FRAMES

    from .data import voice_stats

    seconds: dict[str, float] = {}
    for it, rec in zip(records.items, records.arrays):
        seconds[it.group] = seconds.get(it.group, 0.0) + voice_stats(rec).n / N_FRAMES * step_s
    return {g: round(s, 1) for g, s in sorted(seconds.items()) if s > 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="dataset folder or CSV (default: the model's own validation split)")
    parser.add_argument("--model", default=None, help=f"model folder (default {default_model_dir()})")
    parser.add_argument("--format", choices=FORMATS, default=None, help="override layout detection")
    parser.add_argument("--json", action="store_true", help="print one JSON object (per head metrics) on stdout")
    parser.add_argument("--out", default=None, help="folder for CSV/MD/JSON and confusion PNGs "
                                                     "(default runs/eval/MODEL-DATA)")
    parser.add_argument("--cache", default=None, help="feature cache folder")
    parser.add_argument("--workers", "-j", type=positive_int, default=1)
    parser.add_argument("--limit", type=positive_int, default=None, help="first N items only")
    parser.add_argument("--people", default=None, metavar="G1,G2",
                        help="only these people (groups as the readers name them, e.g. ravdess:17,ased:01-27)")
    parser.add_argument("--adapt", choices=("none", "person"), default="none",
                        help="person: hear each voice against its person's baseline, built without labels "
                             "from that person's clips in PATH (people as the readers name them)")
    parser.add_argument("--votes", default="auto", metavar="auto|none|CSV", help=VOTES_HELP)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-calibration", dest="calibrated", action="store_false",
                        help="score the raw softmax, ignoring the model's temperature calibration")


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model) if args.model else default_model_dir()
    # Under runs/ (ignored by git), never inside the model folder: that may be the shipped assets/.
    out = Path(args.out) if args.out else (
        Path("runs") / "eval" / f"{model_dir.name}-{Path(args.path).name if args.path else 'validation'}")
    try:
        result = evaluate(model_dir, args.path, fmt=args.format, cache=args.cache, out=out, device=args.device,
                          workers=args.workers, limit=args.limit, quiet=args.json, calibrated=args.calibrated,
                          people=[g.strip() for g in args.people.split(",") if g.strip()] if args.people else None,
                          adapt=args.adapt, votes=args.votes)
    except DatasetError as e:
        return refuse("eval", str(e))
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    return 0
