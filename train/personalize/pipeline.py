"""One personalize run: windows -> features -> fine-tuned candidate -> calibration -> gate -> registry.

The candidate is written into a registry temp folder and renamed to its
version name only when complete (obs_merlb/registry.py), so a run killed at
any point leaves the active model as it was.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from obs_merlb import config as cfgmod
from obs_merlb import registry
from obs_merlb.calibration import Calibration, load_calibration, save_calibration
from obs_merlb.labels import EMOTIONS
from obs_merlb.registry import default_model_dir
from obs_merlb.model.config import ModelFolderError, load_config
from obs_merlb.model.export import export_onnx
from obs_merlb.model.io import load_model, save_model
from obs_merlb.model.voice_reader import READER_FILE, load_reader
from obs_merlb.panel.protocol import request_reload
from obs_merlb.session import default_sessions_dir

from .. import calibrate
from ..metrics import confusion_png
from ..preprocess import FeatureSettings, default_cache
from .features import RecordingSteps, predict_windows, preprocess_sessions, targets_for, window_logits
from .finetune import build_candidate, fine_tune, pseudo_windows
from .gate import gate, score_model
from .progress import Progress
from .report import f1_bars_png, loss_png, print_result, print_review, review, write_report
from .windows import (USER, Window, apply_labels_csv, find_sessions, rare_tags, split_windows, tag_table,
                      tag_windows)


def current_model(base: str | None) -> tuple[Path, str]:
    """(folder, name) of the model a candidate must beat: the active one, else `--base`, else the shipped one."""
    active = registry.active_model_dir()
    if active is not None:
        return active, active.name
    if base:
        return Path(base), "base"
    d = default_model_dir()
    if d is None:
        raise SystemExit("merlb personalize: no model to start from: no active personalized model and no "
                         "shipped model in assets/model; pass --base DIR (a saved model folder)")
    return d, registry.DEFAULT


def build_data(args: argparse.Namespace, config: dict[str, Any], progress: Progress, step_s: float,
               model_for_pseudo: Any = None, calibration: Calibration | None = None) -> dict[str, Any]:
    sessions_dir = Path(args.sessions_dir) if args.sessions_dir else default_sessions_dir()
    sessions, warnings = find_sessions(args.paths, sessions_dir, args.pair or [])
    for w in warnings:
        progress.message(f"[yellow]warning[/] {w}")
    table = tag_table(config)
    windows = tag_windows(sessions, table, args.before, args.after)
    csv_stats = None
    if args.labels:
        windows, csv_stats = apply_labels_csv(Path(args.labels), sessions, windows, table, args.before + args.after)
    if not windows:
        raise SystemExit("merlb personalize: no tagged moments found. Tag moments while streaming "
                         "(hotkeys or the panel's tag buttons), pair recordings with their session logs "
                         f"(looked in {sessions_dir}), or give --labels CSV")
    rare = rare_tags(windows, args.min_examples)
    windows = [w for w in windows if w.tag not in rare]
    split_info = split_windows(windows, sessions, args.val_fraction, args.holdout)
    settings = FeatureSettings(step_s=step_s, body=args.body, scene=args.scene)
    cache = Path(args.cache) if args.cache else default_cache()
    # Untagged recordings cost decoding time and only serve pseudo-labels.
    needed = {w.session for w in windows} if not args.pseudo_labels else set(range(len(sessions)))
    steps, failed = preprocess_sessions(sessions, cache, settings, progress, needed)
    for rec, why in failed.items():
        progress.message(f"[yellow]warning[/] skipped {rec}: {why}")
    windows = [w for w in windows if steps[w.session] is not None]
    pseudo: list[Window] = []
    if args.pseudo_labels and model_for_pseudo is not None:
        pseudo = pseudo_windows(model_for_pseudo, steps, windows, sessions, args.pseudo_threshold,
                                args.pseudo_weight, split_info, calibration)
        progress.message(f"pseudo-labels: {len(pseudo)} confident untagged windows (weight {args.pseudo_weight})")
    return {"sessions": sessions, "windows": windows + pseudo, "rare": rare, "split": split_info,
            "steps": steps, "csv": csv_stats, "failed": failed}


def evaluate(model: Any, incumbent: Any, steps: Sequence[RecordingSteps | None], val_w: Sequence[Window],
             base_calibration: Calibration, args: argparse.Namespace,
             progress: Progress) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Calibration, list[dict]]:
    """Calibrate the candidate on the held-out windows, score both models there and run the gate;
    (candidate metrics, current metrics, gate, calibration, calibration rows)."""
    progress.start("evaluate", 2, "score on held-out windows")
    heads = model.cfg.active_heads
    eval_heads = {h: names for h, names in heads.items() if (targets_for(val_w, {h: names})[h] >= 0).any()}
    cand_logits, val_sets = window_logits(model, steps, val_w)
    calibration, calib_rows = calibrate.fit(calibrate.by_modality_set(cand_logits, val_sets, targets_for(val_w, heads)),
                                            args.seed, inherited=base_calibration)
    calibration.info["fitted_on"] = "personalize validation windows"
    after, cand_pred = score_model({h: calibration.probs(h, lg, val_sets) for h, lg in cand_logits.items()},
                                   heads, val_w, eval_heads)
    progress.advance(1, 2, "candidate")
    before, inc_pred = score_model(predict_windows(incumbent, steps, val_w), incumbent.cfg.active_heads, val_w,
                                   eval_heads)
    progress.advance(2, 2, "current model")
    progress.end()
    g = gate(after, cand_pred, before, targets_for(val_w, eval_heads), eval_heads, args.margin, args.alpha,
             args.min_val, args.seed, inc_pred=inc_pred)
    return after, before, g, calibration, calib_rows


def carry_reader(base: Path, out: Path, emotions: Sequence[str]) -> str:
    """The base's voice reader, into the candidate; what became of it, for candidate.json.

    The reader judges the person's voice functionals, not the network's embeddings, so it holds for
    a fine-tuned network with the base's emotions; without it a personalized model would stop
    reading the streamer's voice against their own. A damaged one is left behind with one line
    (the base itself would not load live with it).
    """
    try:
        reader = load_reader(base)
    except ModelFolderError as e:
        print(f"merlb personalize: warning: the base's voice reader is not carried over: {e}", file=sys.stderr)
        return "damaged in the base"
    if reader is None:
        return "none in the base"
    if list(emotions) != list(EMOTIONS):
        return "not carried: the candidate's emotions are not the standard ones"
    shutil.copyfile(base / READER_FILE, out / READER_FILE)       # as it is: the base's own file, checked
    return "carried over from the base"


def train_candidate(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """The whole run; `args.worker_url` is the worker to tell about a newly active model."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or 1)))
    t_start = time.perf_counter()
    config = cfgmod.load_config()
    root = registry.models_dir()
    registry.clean_stale(root)
    inc_dir, inc_name = current_model(args.base)
    base_dir = Path(args.base) if args.base else inc_dir
    base_cfg, _ = load_config(base_dir)
    if args.body is None:
        args.body = "body" in base_cfg.modalities
    if args.scene is None:
        args.scene = "scene" in base_cfg.modalities
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    incumbent = load_model(inc_dir, device=device)
    data = build_data(args, config, progress, base_cfg.step_s, incumbent, load_calibration(inc_dir))
    sessions, windows, steps = data["sessions"], data["windows"], data["steps"]
    train_w = [w for w in windows if w.split == "train"]
    val_w = [w for w in windows if w.split == "val" and w.source != "pseudo"]
    if not train_w:
        raise SystemExit("merlb personalize: no training windows left after the split; tag more moments")

    user_classes = sorted({w.labels[USER] for w in train_w if USER in w.labels})
    model = build_candidate(base_dir, user_classes).to(device)
    tmp = registry.new_temp_dir(root)
    progress.emit({"type": "candidate", "tmp": str(tmp)})
    try:
        rv = review(sessions, steps, windows, tmp, model.cfg.step_s, data["rare"])
        print_review(progress, rv)
        history = fine_tune(model, steps, train_w, n_steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            seed=args.seed, train_encoders=args.train_encoders, progress=progress)
        after, before, g, calibration, calib_rows = evaluate(model, incumbent, steps, val_w,
                                                             load_calibration(base_dir), args, progress)
        for h, m in after.items():
            confusion_png(m, tmp / f"confusion_{h}_candidate.png", f"candidate: {h}")
            if h in before:
                confusion_png(before[h], tmp / f"confusion_{h}_current.png", f"current ({inc_name}): {h}")
        f1_bars_png(before, after, tmp / "f1_before_after.png")
        loss_png(history, tmp / "training_loss.png")

        status = "accepted" if g["passed"] else ("forced" if args.force else "rejected")
        info: dict[str, Any] = {
            "version": "(pending)", "created": time.time(), "status": status, "gate": g,
            "active_before": inc_name, "base": str(base_dir), "split": data["split"],
            "settings": {k: v for k, v in vars(args).items()
                         if isinstance(v, (str, int, float, bool, list, type(None)))},
            "data": {"sessions": [{"recording": str(s.recording), "log": str(s.log) if s.log else None,
                                   "tags": len(s.tags)} for s in sessions],
                     "windows": len(windows), "train": len(train_w), "val": len(val_w),
                     "pseudo": sum(w.source == "pseudo" for w in windows), "labels": rv["labels"],
                     "heads": rv["heads"], "rare_tags": data["rare"], "min_examples": args.min_examples,
                     "labels_csv": data["csv"], "failed": data["failed"]},
            "metrics": {"candidate": after, "current": before}, "history": history,
            "user_classes": user_classes,
            "calibration": {**calibration.to_dict(), "rows": calib_rows},
        }
        model = model.cpu().eval()
        save_model(model, tmp, meta={"personalized": True, "base": str(base_dir), "gate": g,
                                     "user_classes": user_classes})
        save_calibration(tmp, calibration)     # after the weights: saving weights drops a calibration
        export_onnx(model, tmp)
        info["voice_reader"] = carry_reader(base_dir, tmp, model.cfg.active_heads.get("emotion", []))
        registry.write_json_atomic(tmp / registry.CANDIDATE_FILE, info)
        # Everything is on disk: only now does the candidate get a version name.
        version = registry.commit_temp_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["version"] = version.name
    write_report(version.path, info, before, after)
    registry.update_info(version, version=version.name, report=str(version.path / "report.html"))

    activated = False
    notice = ""
    if (g["passed"] or args.force) and not args.no_activate:
        registry.set_active(version.name, "forced" if not g["passed"] else "passed the validation gate", root)
        activated = True
        if not args.no_notify:
            _, notice = request_reload(args.worker_url, version.path, timeout=args.notify_timeout)
    result = {"type": "result", "version": version.name, "path": str(version.path), "status": status,
              "activated": activated, "candidate_score": g["candidate_score"], "active_score": g["active_score"],
              "p_value": g["p_value"], "reasons": g["reasons"], "report": str(version.path / "report.html"),
              "rare_tags": data["rare"], "seconds": round(time.perf_counter() - t_start, 1),
              "per_head": {h: {"candidate": g["candidate_per_head"][h], "current": g["active_per_head"][h]}
                           for h in g["heads"]},
              "worker": notice}
    print_result(progress, result, after, before)
    progress.emit(result)
    return result
