"""`merlb demo`: the whole path on the shipped CREMA-D clip, stage by stage.

Decode the clip (PyAV), perceive every step (face mesh crop, log-mel +
silero-vad), run the MERLB model through the onnxruntime backend on sliding
2 s windows, and print what it sees next to the clip's true labels with the
time each stage took. It then runs `merlb analyze` on the clip for the
HTML report when the live engine is installed.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from obs_merlb.cli import positive_int, refuse
from obs_merlb.labels import FACE, MODALITIES, VOICE
from obs_merlb.registry import shipped_path

SHIPPED_MODEL = shipped_path("model")
# Its true labels are in demo.csv beside it (see _labels_at).
DEMO_VIDEO = shipped_path("demo.mp4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", type=Path, default=DEMO_VIDEO, help="clip to run on (default: the shipped demo)")
    parser.add_argument("--model", type=Path, default=None,
                        help="saved model folder (default: the shipped model, else a freshly initialised one)")
    parser.add_argument("--hop", type=positive_int, default=2, help="steps between printed windows (0.25 s each)")
    parser.add_argument("--no-report", action="store_true", help="skip the `merlb analyze` HTML report")
    parser.add_argument("--without", choices=("face", "voice"), default=None,
                        help="mask one modality out of every window: what the other reads alone (no report)")


def _labels_at(video: Path) -> list[tuple[float, float, str]]:
    """True labels from the CSV beside the demo clip, if there is one."""
    table = video.with_suffix(".csv")
    if not table.exists():
        return []
    with open(table, newline="") as f:
        return [(float(r["start"]), float(r["end"]), r["label"]) for r in csv.DictReader(f)]


def _model_dir(requested: Path | None, tmp: Path) -> tuple[Path, str]:
    if requested is not None:
        return requested, f"model {requested}"
    if (SHIPPED_MODEL / "config.json").exists():
        return SHIPPED_MODEL, f"shipped model {SHIPPED_MODEL}"
    import torch

    from obs_merlb.model import MERLB, MERLBConfig
    from obs_merlb.model.export import export_onnx
    from obs_merlb.model.io import save_model

    torch.manual_seed(0)
    model = MERLB(MERLBConfig(modalities=["face", "voice"])).eval()
    export_onnx(model, save_model(model, tmp / "model"))
    return tmp / "model", "a freshly initialised model (no trained weights shipped: outputs are not meaningful)"


def window_predictions(backend, steps, embs: dict[str, np.ndarray], truth: list[tuple[float, float, str]],
                       hop: int = 2, without: str | None = None) -> list[dict]:
    """The model on sliding windows of the clip's steps, one row per window with the true label at its middle;
    `without` (a modality) is masked out of every window, as live when the camera or mic is off."""
    T = backend.cfg.steps
    heads = backend.labels
    rows = []
    for start in range(0, max(1, len(steps) - T + 1), max(1, hop)):
        w = steps.window(start, T)
        if without:     # after the cut: a window re-derives its voice mask from the speech (key segments)
            w.mask[:, MODALITIES.index(without)] = 0
        idx = np.clip(np.arange(start, start + T), 0, len(steps) - 1)
        win_embs = {m: e[idx] * w.mask[:, [MODALITIES.index(m)]] for m, e in embs.items()}
        probs = backend.sequence(win_embs, w.mask)
        mid = (start + T / 2) * steps.step_s
        emo = probs.get("emotion")
        row = {"start": start * steps.step_s, "end": (start + T) * steps.step_s,
               "true": next((lab for s, e, lab in truth if s <= mid < e), ""),
               "face": f"{int(w.mask[:, FACE].sum())}/{T}", "speech": f"{int(w.mask[:, VOICE].sum())}/{T}",
               "emotion": heads["emotion"][int(emo.argmax())] if emo is not None else "-",
               "p": float(emo.max()) if emo is not None else None}
        for h in ("valence", "arousal"):
            p = probs.get(h)
            row[h] = heads[h][int(p.argmax())] if p is not None else "-"
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from obs_merlb.capture.file import MediaError
    from obs_merlb.inference import load_backend
    from obs_merlb.perception.steps import clip_steps

    console = Console()
    if not args.video.exists():
        return refuse("demo", f"--video {args.video}: no such file")
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir, what = _model_dir(args.model, Path(tmp))
        backend = load_backend(model_dir)
        timings["load model (onnxruntime)"] = time.perf_counter() - t0
        console.print(f"model: {what}; backend {backend.name}; modalities {', '.join(backend.modalities)}")

        t0 = time.perf_counter()
        try:
            steps = clip_steps(args.video, face=True, voice=True)
        except MediaError as e:
            return refuse("demo", str(e))
        timings["decode + perceive (face mesh, log-mel, VAD)"] = time.perf_counter() - t0
        duration = len(steps) * steps.step_s
        console.print(f"clip: {args.video.name}, {duration:.2f} s = {len(steps)} steps of {steps.step_s} s; "
                      f"face in {int(steps.mask[:, FACE].sum())} steps, speech in {int(steps.mask[:, VOICE].sum())}")
        if args.without:
            console.print(f"{args.without} masked out of every window: what the "
                          f"{'voice' if args.without == 'face' else 'face'} reads alone")

        t0 = time.perf_counter()
        embs = {}
        for m in backend.modalities:
            x = getattr(steps, m)
            embs[m] = backend.encode(m, x)
        timings["encoders (all steps, batch)"] = time.perf_counter() - t0

        truth = _labels_at(args.video)
        t0 = time.perf_counter()
        rows = window_predictions(backend, steps, embs, truth, args.hop, args.without)
        timings[f"sequence model ({len(rows)} windows)"] = time.perf_counter() - t0
        table = Table(title="MERLB on the demo clip, sliding 2 s windows")
        for col in ("window", "true", "face", "speech", "emotion", "p", "valence", "arousal"):
            table.add_column(col)
        for r in rows:
            table.add_row(f"{r['start']:5.2f}-{r['end']:5.2f}s", r["true"], r["face"], r["speech"],
                          r["emotion"], f"{r['p']:.2f}" if r["p"] is not None else "-", r["valence"], r["arousal"])
        console.print(table)
        scored = [r for r in rows if r["true"]]
        if scored:
            hits = sum(r["emotion"] == r["true"] for r in scored)
            console.print(f"emotion matches the clip's label in {hits} of {len(scored)} windows "
                          f"(chance: about {len(scored) / 7:.0f})")

        tt = Table(title="timings")
        tt.add_column("stage")
        tt.add_column("total ms", justify="right")
        tt.add_column("ms per step", justify="right")
        for k, v in timings.items():
            tt.add_row(k, f"{1000 * v:.1f}", f"{1000 * v / max(1, len(steps)):.2f}")
        console.print(tt)
        console.print(f"{len(steps) * steps.step_s / sum(v for k, v in timings.items() if 'load' not in k):.1f}x "
                      "faster than real time on this machine")

        if args.no_report or args.without:
            return 0
        # The same model (shipped or fresh) goes on to the live engine's
        # offline path, which writes the HTML report.
        from obs_merlb.cli import main as merlb
        return merlb(["analyze", str(args.video), "--model", str(model_dir)])
