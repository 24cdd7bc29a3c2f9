"""`merlb bench live --video FILE [--json]`: the live path, measured.

Three runs over the same video:

1. As fast as possible, single-threaded (the `merlb analyze` path): CPU ms
   per analysed frame by stage (process time, so mediapipe's and
   onnxruntime's helper threads count), and the analysis speed as a multiple
   of real time.
2. Paced in real time through the live engine at `--rate` Hz (capture
   thread -> latest-frame slot -> analysis thread): frame-to-event latency,
   from the moment a frame is released by the capture thread to the moment
   its `state` event is published, p50 and p95.
3. The seed's live demo path re-created for comparison: OpenCV face
   detection (Haar cascade, shipped in OpenCV; the seed's SSD model is not
   available offline) plus an Inception-v3-shaped classifier (8 labels, 224
   px input, randomly initialised in torch: the seed's weights are not
   available, and CPU time does not depend on weight values) on every face
   of every frame. `seed_path_ratio` is its CPU ms per frame over ours.

`--json` prints one object with p95_latency_ms, cpu_ms_per_frame,
realtime_factor and seed_path_ratio (and the details).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from obs_merlb.cli import device_type, positive_float, positive_int, refuse, setting_type


def add_arguments(group: Any) -> None:
    # bench.py's group already has --video, --json, --model and --repeat.
    group.add_argument("--rate", type=setting_type("rate"), default=15.0, help="analysis rate for the live run (Hz, default 15)")
    group.add_argument("--seconds", type=positive_float, default=12.0,
                       help="length of the paced latency run (default 12 s; the file loops if shorter)")
    group.add_argument("--seed-frames", type=positive_int, default=10, help="frames through the seed-style path (default 10)")
    group.add_argument("--device", type=device_type(), default="cpu", help="cpu or cuda / cuda:N")
    group.add_argument("--no-body", action="store_true", help="skip body pose")


# ---------------------------------------------------------------- Inception-v3 (seed classifier)

def inception_v3(num_classes: int = 8) -> Any:
    """Inception-v3 (Szegedy et al. 2016) layer for layer as in the Keras
    application the seed used, without the auxiliary head; random weights."""
    import torch
    from torch import nn

    class Conv(nn.Sequential):
        def __init__(self, cin: int, cout: int, k: Any, s: int = 1, p: Any = 0) -> None:
            super().__init__(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU(True))

    class A(nn.Module):
        def __init__(self, cin: int, pool: int) -> None:
            super().__init__()
            self.b1 = Conv(cin, 64, 1)
            self.b5 = nn.Sequential(Conv(cin, 48, 1), Conv(48, 64, 5, p=2))
            self.b3 = nn.Sequential(Conv(cin, 64, 1), Conv(64, 96, 3, p=1), Conv(96, 96, 3, p=1))
            self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), Conv(cin, pool, 1))

        def forward(self, x: Any) -> Any:
            return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(x)], 1)

    class B(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.b3 = Conv(cin, 384, 3, 2)
            self.bd = nn.Sequential(Conv(cin, 64, 1), Conv(64, 96, 3, p=1), Conv(96, 96, 3, 2))
            self.pool = nn.MaxPool2d(3, 2)

        def forward(self, x: Any) -> Any:
            return torch.cat([self.b3(x), self.bd(x), self.pool(x)], 1)

    class C(nn.Module):
        def __init__(self, cin: int, c7: int) -> None:
            super().__init__()
            self.b1 = Conv(cin, 192, 1)
            self.b7 = nn.Sequential(Conv(cin, c7, 1), Conv(c7, c7, (1, 7), p=(0, 3)), Conv(c7, 192, (7, 1), p=(3, 0)))
            self.bd = nn.Sequential(Conv(cin, c7, 1), Conv(c7, c7, (7, 1), p=(3, 0)), Conv(c7, c7, (1, 7), p=(0, 3)),
                                    Conv(c7, c7, (7, 1), p=(3, 0)), Conv(c7, 192, (1, 7), p=(0, 3)))
            self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), Conv(cin, 192, 1))

        def forward(self, x: Any) -> Any:
            return torch.cat([self.b1(x), self.b7(x), self.bd(x), self.bp(x)], 1)

    class D(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.b3 = nn.Sequential(Conv(cin, 192, 1), Conv(192, 320, 3, 2))
            self.b7 = nn.Sequential(Conv(cin, 192, 1), Conv(192, 192, (1, 7), p=(0, 3)),
                                    Conv(192, 192, (7, 1), p=(3, 0)), Conv(192, 192, 3, 2))
            self.pool = nn.MaxPool2d(3, 2)

        def forward(self, x: Any) -> Any:
            return torch.cat([self.b3(x), self.b7(x), self.pool(x)], 1)

    class E(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.b1 = Conv(cin, 320, 1)
            self.b3 = Conv(cin, 384, 1)
            self.b3a, self.b3b = Conv(384, 384, (1, 3), p=(0, 1)), Conv(384, 384, (3, 1), p=(1, 0))
            self.bd = nn.Sequential(Conv(cin, 448, 1), Conv(448, 384, 3, p=1))
            self.bda, self.bdb = Conv(384, 384, (1, 3), p=(0, 1)), Conv(384, 384, (3, 1), p=(1, 0))
            self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), Conv(cin, 192, 1))

        def forward(self, x: Any) -> Any:
            b3, bd = self.b3(x), self.bd(x)
            return torch.cat([self.b1(x), self.b3a(b3), self.b3b(b3), self.bda(bd), self.bdb(bd), self.bp(x)], 1)

    net = nn.Sequential(
        Conv(3, 32, 3, 2), Conv(32, 32, 3), Conv(32, 64, 3, p=1), nn.MaxPool2d(3, 2),
        Conv(64, 80, 1), Conv(80, 192, 3), nn.MaxPool2d(3, 2),
        A(192, 32), A(256, 64), A(288, 64), B(288),
        C(768, 128), C(768, 160), C(768, 160), C(768, 192), D(768), E(1280), E(2048),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(2048, num_classes))
    return net.eval()


def seed_path_ms(video: str, frames: int) -> dict[str, Any]:
    """CPU ms per frame of the seed-style path (detector + Inception-v3 at 224 px per face)."""
    import cv2
    import torch

    from obs_merlb.capture.file import load_media

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # same budget as our pipeline (one intra-op thread)
    try:
        net = inception_v3(8)
        n_params = sum(p.numel() for p in net.parameters())
        cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        media = load_media(video, audio=False, fps=2.0, max_width=640)
        imgs = media.frames[:frames] or []
        if not imgs:
            raise SystemExit(f"no frames decoded from {video}")
        with torch.inference_mode():
            net(torch.zeros(1, 3, 224, 224))   # warm-up (allocator, kernels)
            faces = 0
            t0 = time.process_time()
            for img in imgs:
                grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
                boxes = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
                for (x, y, w, h) in boxes:
                    crop = cv2.resize(img[y:y + h, x:x + w], (224, 224)).astype(np.float32) / 127.5 - 1.0
                    net(torch.from_numpy(crop.transpose(2, 0, 1)[None].copy()))
                    faces += 1
            cpu = time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    return {"cpu_ms_per_frame": 1000.0 * cpu / len(imgs), "frames": len(imgs), "faces": faces,
            "classifier_params": n_params, "detector": "OpenCV Haar cascade (frontalface_default)",
            "classifier": "Inception-v3, 224 px, 8 labels, random init (torch, 1 thread)"}


# ---------------------------------------------------------------- our path

def _model_dir(arg: str | None, tmp: str) -> tuple[Path, str]:
    from obs_merlb.registry import default_model_dir

    if arg:
        return Path(arg), arg
    d = default_model_dir()
    if d is not None:
        return d, str(d)
    import torch

    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.export import export_onnx
    from obs_merlb.model.io import save_model
    from obs_merlb.model.merlb import MERLB

    torch.manual_seed(0)
    model = MERLB(MERLBConfig()).eval()
    save_model(model, tmp)
    export_onnx(model, tmp)
    # CPU time does not depend on weight values; say which model was timed.
    return Path(tmp), "fresh MERLB (random init, seed 0; no trained weights in assets/model)"


def fast_run(model_dir: Path, video: str, rate: float, device: str, body: bool) -> dict[str, Any]:
    from obs_merlb.engine import Engine

    engine = Engine(model_dir, device=device, rate=rate, body=body, highlights=False)
    run = engine.run_file(video)
    stages = run.clock.per_frame_ms()
    return {"stages_ms": {k: round(v, 3) for k, v in stages.items()}, "cpu_ms_per_frame": sum(stages.values()),
            "realtime_factor": run.realtime_factor, "frames": run.frames, "duration_s": run.duration,
            "wall_s": run.wall_s, "backend": run.backend}


def paced_run(model_dir: Path, video: str, rate: float, seconds: float, device: str, body: bool) -> dict[str, Any]:
    import psutil

    from obs_merlb.capture.feeds import FileFeed
    from obs_merlb.engine import Engine

    engine = Engine(model_dir, device=device, rate=rate, body=body, highlights=False)
    states: list[dict[str, Any]] = []
    engine.add_sink(lambda ev: states.append(ev) if ev.get("type") == "state" else None)
    proc = psutil.Process()
    engine.start_threads(FileFeed(video, paced=True, loop=True))
    warm = 1.5   # perception graphs and caches settle
    time.sleep(warm)
    n0, cpu0, t0 = len(states), proc.cpu_times(), time.monotonic()
    time.sleep(max(1.0, seconds - warm))
    n1, cpu1, t1 = len(states), proc.cpu_times(), time.monotonic()
    engine.shutdown()
    lat = np.array([s["latency_ms"] for s in states[n0:n1] if s["latency_ms"] is not None])
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else None,
            "achieved_hz": (n1 - n0) / (t1 - t0), "ticks": n1 - n0,
            # whole process, capture/decoding included: the share of one core the worker takes
            "cpu_percent_of_one_core": 100.0 * cpu_s / (t1 - t0)}


def run(args: argparse.Namespace) -> int:
    from obs_merlb.capture.file import MediaError
    from obs_merlb.engine import cap_threads

    if not args.video:
        return refuse("bench live", "--video FILE is required")
    cap_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir, model_name = _model_dir(args.model, tmp)
            fast = fast_run(model_dir, args.video, args.rate, args.device, not args.no_body)
            paced = paced_run(model_dir, args.video, args.rate, args.seconds, args.device, not args.no_body)
        seed = seed_path_ms(args.video, args.seed_frames)
    except MediaError as e:
        return refuse("bench live", str(e))
    ours = fast["cpu_ms_per_frame"]
    report = {
        "p95_latency_ms": paced["latency_ms_p95"], "p50_latency_ms": paced["latency_ms_p50"],
        "cpu_ms_per_frame": round(ours, 3), "cpu_ms_per_frame_by_stage": fast["stages_ms"],
        "realtime_factor": round(fast["realtime_factor"], 3),
        "seed_path_ratio": round(seed["cpu_ms_per_frame"] / ours, 2) if ours > 0 else None,
        "seed_cpu_ms_per_frame": round(seed["cpu_ms_per_frame"], 2),
        "rate_hz": args.rate, "one_core_share_at_rate": round(ours * args.rate / 1000.0, 3),
        "live": paced, "fast": fast, "seed": seed, "model": model_name, "video": args.video,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"live path on {Path(args.video).name} at {args.rate:g} Hz ({fast['backend']})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("frame-to-event latency p50 / p95 (paced, ms)",
              f"{paced['latency_ms_p50']:.1f} / {paced['latency_ms_p95']:.1f}")
    t.add_row("achieved rate (Hz)", f"{paced['achieved_hz']:.1f}")
    for k, v in fast["stages_ms"].items():
        t.add_row(f"  CPU ms/frame: {k}", f"{v:.2f}")
    t.add_row("CPU ms per analysed frame (total)", f"{ours:.2f}")
    t.add_row(f"share of one core at {args.rate:g} Hz (analysis)", f"{100 * ours * args.rate / 1000:.0f}%")
    t.add_row("worker process CPU while paced (% of one core)", f"{paced['cpu_percent_of_one_core']:.0f}%")
    t.add_row("analysis speed (x real time)", f"{fast['realtime_factor']:.2f}")
    t.add_row("seed-style path CPU ms/frame", f"{seed['cpu_ms_per_frame']:.1f}")
    t.add_row("seed_path_ratio (seed / ours)", f"{report['seed_path_ratio']:.1f}x")
    c.print(t)
    c.print(f"model: {model_name}; seed path: {seed['detector']} + {seed['classifier']}")
    return 0
