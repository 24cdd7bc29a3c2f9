"""The `merlb personalize` command: train (the default action), review, list, activate, rollback.

`list`, `activate` and `rollback` only read and write the registry, so this
module loads torch only when a run or a review needs it (pipeline.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from obs_merlb import config as cfgmod
from obs_merlb import registry
from obs_merlb.cli import device_type, number, positive_float, positive_int, refuse, whole_number
from obs_merlb.registry import default_model_dir
from obs_merlb.model.config import load_config
from obs_merlb.panel.protocol import request_reload, worker_url

from .progress import Progress

ACTIONS = ("train", "review", "list", "rollback", "activate")


def default_worker_url(config: dict[str, Any]) -> str:
    """`[personalize] worker_url` when set, else the worker's usual address."""
    url = (config.get("personalize") or {}).get("worker_url")
    return url if isinstance(url, str) and url else worker_url(config)


def cmd_list(args: argparse.Namespace, progress: Progress) -> int:
    root = registry.models_dir()
    active = registry.active_version(root) or registry.DEFAULT
    vs = registry.versions(root)
    if args.json:
        sys.stdout.write(json.dumps({"active": active, "root": str(root), "versions": [
            {"version": v.name, "path": str(v.path), "status": v.status, "score": v.score,
             "created": v.info.get("created"), "active": v.name == active,
             "current_score": (v.info.get("gate") or {}).get("active_score"),
             "report": v.info.get("report")} for v in vs]}) + "\n")
        return 0
    t = Table(title=f"models in {root}")
    for c in ("", "version", "created", "status", "macro-F1", "vs. then-current", "report"):
        t.add_column(c)
    t.add_row("*" if active == registry.DEFAULT else "", registry.DEFAULT, "", "shipped", "", "", "")
    for v in vs:
        g = v.info.get("gate") or {}
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.info.get("created", 0)))
        t.add_row("*" if v.name == active else "", v.name, created, v.status,
                  f"{g.get('candidate_score', float('nan')):.3f}", f"{g.get('active_score', float('nan')):.3f}",
                  str(v.info.get("report", "")))
    progress.console.print(t)
    return 0


def cmd_activate(args: argparse.Namespace, progress: Progress, version: str | None, rollback: bool) -> int:
    root = registry.models_dir()
    try:
        if rollback and not version:
            name = registry.previous_active(root)
        else:
            name = registry.normalize_version(version or "")
        if name != registry.DEFAULT:
            v = registry.get_version(name, root)
            if v.status == "rejected" and not args.force and not rollback:
                progress.message(f"[red]{name} was rejected by the validation gate[/]; "
                                 "use --force to activate it anyway")
                return 1
    except KeyError as e:
        raise SystemExit(e.args[0]) from None
    registry.set_active(name, "rollback" if rollback else ("forced" if args.force else "activated by hand"), root)
    target = registry.active_model_dir(root) or default_model_dir()
    msg = ""
    if not args.no_notify:
        _, msg = request_reload(args.worker_url or default_worker_url(cfgmod.load_config()), target,
                                timeout=args.notify_timeout)
    progress.message(f"active model: {name}. {msg}")
    progress.emit({"type": "result", "active": name, "path": str(target) if target else None, "worker": msg})
    return 0


def cmd_review(args: argparse.Namespace, progress: Progress) -> int:
    # Deferred (torch, matplotlib): only runs and reviews need them, and only after `run` set OMP_NUM_THREADS.
    from .pipeline import build_data, current_model
    from .report import print_review, review

    inc_dir, _ = current_model(args.base)
    cfg, _ = load_config(inc_dir)
    # Same feature settings as a training run, so the review's preprocessing is reused by it.
    args.body = "body" in cfg.modalities if args.body is None else args.body
    args.scene = "scene" in cfg.modalities if args.scene is None else args.scene
    data = build_data(args, cfgmod.load_config(), progress, cfg.step_s, None)
    out = Path(args.out) if args.out else registry.models_dir().parent / "personalize-review"
    doc = review(data["sessions"], data["steps"], data["windows"], out, cfg.step_s, data["rare"])
    print_review(progress, doc)
    progress.emit({"type": "result", **doc})
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="[ACTION] RECORDING",
                        help="recordings or folders of them (default: every session log with its recording); "
                             "or an action first: review, list, rollback [VERSION], activate VERSION")
    g = parser.add_argument_group("data")
    g.add_argument("--pair", action="append", metavar="REC=LOG", help="pair a recording with a session log")
    g.add_argument("--sessions-dir", help="where session logs are (default: the user data folder)")
    g.add_argument("--labels", metavar="CSV", help="path,start,end,label rows adding or correcting labels "
                                                    "(label 'ignore' deletes the tags it overlaps)")
    g.add_argument("--before", type=number(0), default=2.0, help="seconds before a tag its window starts (2)")
    g.add_argument("--after", type=number(0), default=1.0, help="seconds after a tag its window ends (1)")
    g.add_argument("--min-examples", type=positive_int, default=5, help="tags seen fewer times are too rare to learn (5)")
    g.add_argument("--pseudo-labels", action="store_true", help="add confident predictions on untagged stretches")
    g.add_argument("--pseudo-threshold", type=number(0, 1), default=0.85)
    g.add_argument("--pseudo-weight", type=number(0, 1), default=0.3)
    g.add_argument("--val-fraction", type=number(0, 1, above=True), default=0.25, help="held-out share (0.25)")
    g.add_argument("--holdout", choices=("auto", "sessions", "tail"), default="auto",
                   help="whole latest sessions (auto with >= 3 sessions) or the tail of each session")
    g.add_argument("--body", dest="body", action="store_true", default=None, help="compute body pose (default: "
                   "when the model has a body encoder)")
    g.add_argument("--no-body", dest="body", action="store_false")
    g.add_argument("--scene", dest="scene", action="store_true", default=None)
    g.add_argument("--no-scene", dest="scene", action="store_false")
    g.add_argument("--cache", help="feature cache folder")
    g.add_argument("--review", action="store_true", help="only write the review (counts, contact sheet) and stop")
    g.add_argument("--out", help="review output folder")
    t = parser.add_argument_group("training")
    t.add_argument("--base", help="model to start from (default: the active model, else the shipped one)")
    t.add_argument("--train-encoders", action="store_true",
                   help="also fine-tune the per-modality encoders "
                        "(seconds per step on a CPU: use a GPU or fewer --steps)")
    t.add_argument("--device", type=device_type(auto=True), default="auto", help="auto (CUDA when there), cpu, cuda, cuda:N")
    t.add_argument("--steps", type=positive_int, default=300, help="optimizer steps (300)")
    t.add_argument("--lr", type=positive_float, default=2e-3)
    t.add_argument("--batch-size", type=positive_int, default=32)
    t.add_argument("--seed", type=int, default=0)
    a = parser.add_argument_group("gate and registry")
    a.add_argument("--margin", type=float, default=0.02, help="macro-F1 the candidate must gain (0.02)")
    a.add_argument("--alpha", type=number(0, 1, above=True), default=0.05, help="permutation-test level against chance (0.05)")
    a.add_argument("--min-val", type=whole_number(0), default=6, help="fewest held-out windows to decide on (6)")
    a.add_argument("--force", action="store_true", help="activate even if the gate says no")
    a.add_argument("--no-activate", action="store_true", help="register the candidate only")
    a.add_argument("--worker-url", help="the worker's WebSocket (default from config.toml, ws://127.0.0.1:8765/ws)")
    a.add_argument("--no-notify", action="store_true", help="do not tell a running worker")
    a.add_argument("--notify-timeout", type=positive_float, default=20.0)
    parser.add_argument("--json", action="store_true", help="list: one JSON object")
    parser.add_argument("--progress-json", action="store_true", help="JSON lines on stdout (the panel uses them)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1" if (os.cpu_count() or 1) <= 2 else "2")
    progress = Progress(args.progress_json, quiet=bool(getattr(args, "json", False)))
    action = args.paths[0] if args.paths and args.paths[0] in ACTIONS else "train"
    rest = args.paths[1:] if args.paths and args.paths[0] in ACTIONS else list(args.paths)
    try:
        if action == "list":
            return cmd_list(args, progress)
        if action in ("rollback", "activate"):
            if action == "activate" and not rest:
                raise SystemExit("activate needs a VERSION (see `merlb personalize list`)")
            return cmd_activate(args, progress, rest[0] if rest else None, rollback=action == "rollback")
        args.paths = rest
        if action == "review" or args.review:
            return cmd_review(args, progress)
        from .pipeline import train_candidate     # deferred like cmd_review's imports

        args.worker_url = args.worker_url or default_worker_url(cfgmod.load_config())
        train_candidate(args, progress)
        # A rejected candidate is a finished run (the gate did its job), not a failure.
        return 0
    except SystemExit as e:
        if isinstance(e.code, str):
            progress.emit({"type": "error", "message": e.code})
            return refuse("personalize", e.code)
        raise
