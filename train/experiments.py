"""`merlb experiments`: the paper's grid, fusion types x {multi-task, single-task}.

    merlb experiments ../shared/data/ravdess_speech --out runs/grid
    merlb experiments tests/fixtures/seed_csv --out /tmp/grid --tiny     # minutes on 2 cores

Each cell trains a model on the same person-disjoint split: "multi" is one
model with every head the data labels; "single" is one model per labelled
head, their per-class F1 put side by side in one row, as in the paper. Rows
are scored on the validation split with the best epoch's weights. Writes
`results.csv|md|json`, `heatmap.png` and each run's folder under `runs/`.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from obs_merlb.cli import positive_int, refuse
from obs_merlb.files import check_writable

from .datasets import FORMATS, HEADS, DatasetError

FUSIONS = ("early", "late", "joint", "deep", "tt")
FUSION_NAMES = {"early": "Early", "late": "Late", "joint": "Joint", "deep": "Deep", "tt": "Ours (TT)"}

# Small enough that the 10-cell grid trains on 2 CPU cores in a few minutes.
TINY = {"epochs": 2, "batch_size": 16, "max_items": 48, "patience": 100, "onnx": False,
        "model": {"face_dim": 16, "voice_dim": 16, "body_dim": 16, "scene_dim": 16,
                  "lstm_hidden": 8, "fused_dim": 16, "tt_rank": 2, "dropout": 0.1}}


def run_grid(cfg, out: str | Path, fusions=FUSIONS, tasks=("multi", "single"), quiet: bool = False) -> list[dict[str, Any]]:
    """Train and score every cell; returns the table rows (also written to `out`)."""
    from rich.console import Console

    from .evaluate import predict_records
    from .loop import load_data, train
    from .metrics import heatmap_png, rich_table, score, table_row, write_table

    console = Console(stderr=True, quiet=quiet)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_rec, val_rec = load_data(cfg, quiet=quiet)
    if not len(val_rec):
        raise SystemExit("the split left no validation items; use more data or --val-data")
    labelled = [h for h in HEADS if (train_rec.targets[:, HEADS.index(h)] >= 0).any()
                and (val_rec.targets[:, HEADS.index(h)] >= 0).any()]
    if not labelled:
        raise SystemExit("no head has labels in both the training and the validation split")
    dataset = ", ".join(sorted({it.dataset for it in train_rec.items}))
    console.print(f"grid on {dataset}: {len(train_rec)} train / {len(val_rec)} val items, heads {labelled}")

    from obs_merlb.model.io import load_model

    rows = []
    n_runs = len(fusions) * sum(1 if t == "multi" else len(labelled) for t in tasks)
    k = 0
    t_start = time.perf_counter()
    for fusion in fusions:
        for task in tasks:
            metrics: dict[str, Any] = {}
            for head in (["multi"] if task == "multi" else labelled):
                k += 1
                run_cfg = copy.deepcopy(cfg)
                run_cfg.fusion, run_cfg.task = fusion, head
                run_cfg.out = str(out / "runs" / f"{fusion}-{head}")
                t0 = time.perf_counter()
                summary = train(run_cfg, quiet=True, data=(train_rec, val_rec))
                model = load_model(Path(run_cfg.out) / "best")
                m = score(predict_records(model, val_rec, image_steps=cfg.image_steps,
                                          key_segments=cfg.voice_key_segments),
                          val_rec.targets, model.cfg.active_heads)
                metrics.update(m if task == "multi" else {head: m[head]} if head in m else {})
                console.print(f"[{k}/{n_runs}] {fusion:>5} {head:<9} best epoch {summary['best_epoch']} "
                              f"val macro-F1 {summary['best_val_macro_f1']:.3f} ({time.perf_counter() - t0:.1f}s)")
            rows.append(table_row(metrics, dataset=dataset, fusion=FUSION_NAMES[fusion], task=task.capitalize()))
    paths = write_table(rows, out, "results")
    heatmap_png(rows, out / "heatmap.png", f"per-class F1 on {dataset} (validation)")
    (out / "grid.json").write_text(json.dumps({"config": _cfg_dict(cfg), "heads": labelled,
                                               "seconds": round(time.perf_counter() - t_start, 1)}, indent=1))
    console.print(rich_table(rows, title=f"per-class F1, {dataset}"), width=max(console.width, 200))
    console.print(f"written: {', '.join(str(p) for p in paths.values())}, {out / 'heatmap.png'}")
    return rows


def _cfg_dict(cfg) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(cfg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", metavar="DATA", help="dataset folders/CSVs or manifest JSONs")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tiny", action="store_true", help="tiny subset, tiny model, 2 epochs (CI, 2 cores)")
    parser.add_argument("--config", help="base TOML run config (fusion and task are set per cell)")
    parser.add_argument("--fusions", default=",".join(FUSIONS), help="comma-separated subset of " + ",".join(FUSIONS))
    parser.add_argument("--tasks", default="multi,single", help="multi, single or both")
    parser.add_argument("--modalities", help="comma-separated modalities (default: the config's)")
    parser.add_argument("--format", choices=FORMATS)
    parser.add_argument("--cache", help="feature cache folder")
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--max-items", type=positive_int)
    parser.add_argument("--val-groups", help="comma-separated held-out groups (e.g. ravdess:17,ravdess:18)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path as _P

    from .loop import TrainConfig, parse_modalities

    cfg = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    if args.tiny:
        for key, value in TINY.items():
            setattr(cfg, key, {**cfg.model, **value} if key == "model" else value)
    cfg.data = [str(_P(p).resolve()) for p in args.data]
    for name in ("format", "cache", "epochs", "max_items"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.modalities:
        cfg.modalities = parse_modalities(args.modalities)
    if args.val_groups:
        cfg.val_groups = [g.strip() for g in args.val_groups.split(",") if g.strip()]
    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    bad = set(fusions) - set(FUSIONS)
    if bad:
        raise SystemExit(f"unknown fusion types {sorted(bad)}; choose from {FUSIONS}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = set(tasks) - {"multi", "single"}
    if bad or not tasks:
        raise SystemExit(f"--tasks {args.tasks}: choose multi, single or multi,single")
    check_writable(_P(args.out), "--out")
    try:
        run_grid(cfg, args.out, fusions, tasks)
    except DatasetError as e:
        return refuse("experiments", str(e))
    return 0
