"""Soak test: the engine on a looping video for hours of stream time.

Streamers run for many hours; a leak of a few KB per frame is a crash by the
end of a long stream. This runs the live engine's analysis core over a
looping video as fast as the machine allows (faster than real time), and
samples the process's RSS, thread count and open files as it goes.

Pass criteria (printed, and the exit code): after warm-up, RSS stays within
5% (last tenth vs first tenth of the run, medians), and neither the thread
count nor the open-file count grows. A PNG plot of memory over stream time
is written next to the JSON figures.

    python benchmarks/soak.py --video assets/demo.mp4 --hours 1 [--model DIR] [--out DIR]

Without --model (and no assets/model), a freshly initialised seeded model is
used: memory behaviour does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default=str(ROOT / "assets" / "demo.mp4"))
    p.add_argument("--hours", type=float, default=1.0, help="stream time to simulate (default 1 h; CI: 0.02)")
    p.add_argument("--rate", type=float, default=15.0)
    p.add_argument("--model", help="saved model folder (default assets/model or a fresh seeded model)")
    p.add_argument("--out", default=".", help="folder for soak.json and soak.png")
    p.add_argument("--warmup", type=float, default=0.1, help="share of the run treated as warm-up (default 0.1)")
    p.add_argument("--sample-s", type=float, default=10.0, help="stream seconds between samples")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import psutil

    from obs_merlb.engine import Engine, cap_threads
    from obs_merlb.live_bench import _model_dir

    cap_threads(1)
    proc = psutil.Process()
    total_s = args.hours * 3600.0
    samples: list[dict[str, float]] = []
    next_sample = 0.0
    wall0 = time.monotonic()

    def sample(t: float) -> None:
        samples.append({"t": t, "wall": time.monotonic() - wall0, "rss_mb": proc.memory_info().rss / 2**20,
                        "threads": proc.num_threads(), "open_files": len(proc.open_files()),
                        "fds": proc.num_fds() if hasattr(proc, "num_fds") else -1})

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("soak"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s of stream"),
                        TextColumn("RSS {task.fields[rss]:.0f} MiB"), TimeRemainingColumn())
    bar = progress.add_task("", total=total_s, rss=0.0)

    def on_tick(_ev: dict, t: float) -> None:
        nonlocal next_sample
        if t >= next_sample:
            sample(t)
            next_sample = t + args.sample_s
            progress.update(bar, completed=t, rss=samples[-1]["rss_mb"])

    with tempfile.TemporaryDirectory() as tmp, progress:
        model_dir, model_name = _model_dir(args.model, tmp)
        engine = Engine(model_dir, rate=args.rate)
        # Samples come from inside the run only: after it, perception is closed
        # and its threads are gone, which would flatter the thread count.
        run = engine.run_file(args.video, on_tick=on_tick, loop_until_s=total_s)
        progress.update(bar, completed=total_s)

    warm = [s for s in samples if s["t"] >= args.warmup * total_s]
    n = max(1, len(warm) // 10)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    rss_first, rss_last = med([s["rss_mb"] for s in warm[:n]]), med([s["rss_mb"] for s in warm[-n:]])
    growth = (rss_last - rss_first) / rss_first
    threads_growth = warm[-1]["threads"] - warm[0]["threads"]
    files_growth = warm[-1]["open_files"] - warm[0]["open_files"]
    fds_growth = warm[-1]["fds"] - warm[0]["fds"]
    ok = abs(growth) <= 0.05 and threads_growth <= 0 and files_growth <= 0 and fds_growth <= 0
    figures = {"stream_hours": run.duration / 3600, "wall_s": run.wall_s, "realtime_factor": run.realtime_factor,
               "frames": run.frames, "rss_mb_after_warmup": rss_first, "rss_mb_end": rss_last,
               "rss_growth_pct": 100 * growth, "rss_max_mb": max(s["rss_mb"] for s in samples),
               "threads_start": warm[0]["threads"], "threads_end": warm[-1]["threads"],
               "open_files_start": warm[0]["open_files"], "open_files_end": warm[-1]["open_files"],
               "fds_start": warm[0]["fds"], "fds_end": warm[-1]["fds"], "flat": ok, "model": model_name}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({"figures": figures, "samples": samples}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot([s["t"] / 3600 for s in samples], [s["rss_mb"] for s in samples], lw=1.2)
    ax.axvline(args.warmup * total_s / 3600, color="grey", ls="--", lw=1, label="end of warm-up")
    ax.axhspan(rss_first * 0.95, rss_first * 1.05, color="green", alpha=0.1, label="±5% of warm RSS")
    ax.set_xlabel("stream time (h)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"merlb engine soak: {run.duration / 3600:.2f} h of stream in {run.wall_s / 60:.1f} min")
    ax.legend(loc="lower right")
    fig.savefig(out / "soak.png", dpi=100, bbox_inches="tight")

    for k, v in figures.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(f"plot: {(out / 'soak.png').resolve()}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
