"""Long recordings: memory and speed of `merlb analyze` and `merlb preprocess` over hours of media.

Makes a recording of each length by looping a shipped clip (packets copied
into Matroska with PyAV, no re-encoding: seconds even for hours), runs both
commands on it in subprocesses as a user would, samples their RSS (the
process and its children) twice a second, and reports per run:

* peak RSS (MB);
* the RSS slope per hour of media: a linear fit of RSS over media time,
  after the first 10% (model loading and warm-up) - flat memory is ~0;
* the real-time factor: media seconds per wall second, start-up included.

    python benchmarks/long_recording.py --minutes 5 10 [--json] [--clip assets/demo.mp4] [--model DIR]

Targets (issue 25, 2-core machine, shipped model): peak RSS under 600 MB on
a 4-hour recording, slope under 20 MB per hour, `merlb analyze` at >= 40x
real time and `merlb preprocess` at least as fast.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEP_S = 0.25          # preprocess's step (its spool grows one row per step)
SAMPLE_S = 0.5


def make_long_recording(clip: str | os.PathLike, dst: str | os.PathLike, seconds: float,
                        finish: bool = True) -> float:
    """Loop ``clip`` into ``dst`` (Matroska) until it lasts at least ``seconds``; returns its length.

    Packets are copied with their timestamps shifted by one loop's span per
    repetition, as `ffmpeg -stream_loop -1 -c copy` does. ``finish=False``
    leaves the file as a writer that died leaves it (the caller then exits
    without cleanup, as OBS crashing would): no length in its header.
    """
    import av

    with av.open(str(clip)) as inp:
        streams = [s for s in inp.streams if s.type in ("video", "audio")]
        lo = hi = 0.0
        for pkt in inp.demux(*streams):
            if pkt.pts is None:
                continue
            first = min(pkt.pts, pkt.dts if pkt.dts is not None else pkt.pts)
            lo = min(lo, float(first * pkt.time_base))
            hi = max(hi, float((pkt.pts + (pkt.duration or 0)) * pkt.time_base))
        span = hi - lo          # one loop, priming included, so timestamps never go back
        out = av.open(str(dst), "w", format="matroska")
        omap = {s.index: out.add_stream_from_template(s) for s in streams}
        offset = 0.0
        while offset < seconds:
            inp.seek(0)
            for pkt in inp.demux(*streams):
                if pkt.pts is None or pkt.size == 0:
                    continue
                shift = int(round(offset / pkt.time_base))
                pkt.pts += shift
                if pkt.dts is not None:
                    pkt.dts += shift
                pkt.stream = omap[pkt.stream.index]
                out.mux(pkt)
            offset += span
        if finish:
            out.close()
    return offset


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _analyze_progress(out: Path) -> float | None:
    """Media time the analysis has written (the last row of its partial timeline.jsonl)."""
    from obs_merlb.timeline import JSONL_NAME, PARTIAL_PREFIX

    path = out / (PARTIAL_PREFIX + JSONL_NAME)
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            lines = fh.read().splitlines()
        for line in reversed(lines[1:] if len(lines) > 1 else lines):
            try:
                return float(json.loads(line)["t"])
            except (ValueError, KeyError):
                continue
    except OSError:
        return None
    return None


def _preprocess_progress(cache: Path) -> float | None:
    """Media time preprocessing has spooled (one mask row of 4 bytes per step)."""
    sizes = [p.stat().st_size for p in (cache / "partial").glob("*/mask.bin")] if (cache / "partial").is_dir() else []
    return max(sizes) / 4 * STEP_S if sizes else None


def measure(cmd: list[str], progress: Any, duration: float, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``, sampling RSS against media time; peak, slope and speed."""
    import numpy as np
    import psutil

    wall0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float, float | None]] = []   # wall, rss MB, media t
    try:
        while proc.poll() is None:
            samples.append((time.monotonic() - wall0, _tree_rss(ps) / 2**20, progress()))
            time.sleep(SAMPLE_S)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:      # the benchmark was stopped: its command must not run on alone
            proc.kill()
            proc.wait()
    wall = time.monotonic() - wall0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    # Media time where the command said; else proportional to wall time after start-up.
    pts = [(t, rss) for _, rss, t in samples if t is not None and t >= 0.1 * duration]
    if len(pts) < 4:
        pts = [(duration * w / wall, rss) for w, rss, _ in samples if w >= 0.1 * wall]
    slope = float(np.polyfit([t / 3600 for t, _ in pts], [r for _, r in pts], 1)[0]) if len(pts) >= 4 else None
    return {"peak_rss_mb": round(max((r for _, r, _ in samples), default=0.0), 1),
            "rss_slope_mb_per_hour": None if slope is None else round(slope, 1),
            "realtime_factor": round(duration / wall, 1), "wall_s": round(wall, 1),
            "rss_mb": [round(r, 1) for _, r, _ in samples]}


def _done(run: dict[str, Any]) -> None:
    """Each run's figures on stderr as it ends: a run of hours keeps what it measured if stopped."""
    print(json.dumps({k: v for k, v in run.items() if k != "rss_mb"}), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0], help="recording lengths (default 5 10)")
    p.add_argument("--clip", default=str(ROOT / "assets" / "demo.mp4"), help="clip to loop (default the demo)")
    p.add_argument("--model", help="saved model folder (default: the shipped one)")
    p.add_argument("--only", choices=("analyze", "preprocess"), help="run one command only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--keep", help="folder to keep the recordings and outputs in (default: a temporary one)")
    args = p.parse_args(argv)

    import psutil

    # A stopped benchmark (kill, nohup's end) cleans up: its running command is killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="merlb-long-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    model = ["--model", args.model] if args.model else []
    runs = []
    try:
        for minutes in args.minutes:
            rec = work / f"loop_{minutes:g}min.mkv"
            duration = make_long_recording(args.clip, rec, minutes * 60.0)
            if args.only in (None, "analyze"):
                out = work / f"analyze_{minutes:g}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = [sys.executable, "-m", "obs_merlb", "analyze", str(rec), "--out", str(out), "--no-progress", *model]
                runs.append({"command": "analyze", "minutes": minutes,
                             **measure(cmd, lambda o=out: _analyze_progress(o), duration, env)})
                _done(runs[-1])
            if args.only in (None, "preprocess"):
                cache = work / f"cache_{minutes:g}"
                shutil.rmtree(cache, ignore_errors=True)
                table = work / f"loop_{minutes:g}min.csv"
                table.write_text(f"path,label\n{rec},neutral\n")
                cmd = [sys.executable, "-m", "obs_merlb", "preprocess", str(table), "--out", str(cache), "-j", "1"]
                runs.append({"command": "preprocess", "minutes": minutes,
                             **measure(cmd, lambda c=cache: _preprocess_progress(c), duration, env)})
                _done(runs[-1])
            if not args.keep:
                rec.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = {"benchmark": "long_recording", "clip": Path(args.clip).name, "cpus": psutil.cpu_count(),
           "command": "python benchmarks/long_recording.py --minutes " + " ".join(f"{m:g}" for m in args.minutes),
           "runs": runs}
    for r in runs:
        r.pop("rss_mb")
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(f"{'command':<11} {'minutes':>7} {'peak RSS MB':>11} {'MB/hour':>8} {'x real time':>11} {'wall s':>7}")
        for r in runs:
            slope = "-" if r["rss_slope_mb_per_hour"] is None else f"{r['rss_slope_mb_per_hour']:.1f}"
            print(f"{r['command']:<11} {r['minutes']:>7g} {r['peak_rss_mb']:>11.1f} {slope:>8} "
                  f"{r['realtime_factor']:>11.1f} {r['wall_s']:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
