"""`merlb analyze FILE [--out DIR] [--model DIR]`: a past stream as a timeline and a report.

Runs the live engine's core (`Engine.run_file`) over the file as fast as
decoding and analysis go, then writes into DIR:

* `timeline.csv`: one row per analysed frame (time, label, confidence, face,
  speech, valence/arousal scores, every probability, modality shares);
* `timeline.json`: the same rows plus the run's metadata and highlights;
* `report.html`: self-contained (plots inlined as PNG), with emotions,
  valence and arousal over time and the list of highlights.

and prints the report's path.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from obs_merlb.capture.file import MediaError, probe
from obs_merlb.config import APP_NAME
from obs_merlb.engine import Engine
from obs_merlb.labels import AROUSAL, EMOTIONS, MODALITIES, VALENCE
from obs_merlb.palette import EMOTION_COLORS, UNCERTAIN_COLOR
from obs_merlb.registry import resolve_model_dir

log = logging.getLogger(__name__)

# Overlay-consistent colours per emotion, so a streamer reads the report like the overlay.
COLOURS = {**EMOTION_COLORS, "uncertain": UNCERTAIN_COLOR}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a recording (any format FFmpeg reads)")
    parser.add_argument("--out", help="output folder (default: <user data dir>/obs-merlb/reports/<file stem>)")
    parser.add_argument("--model", help="saved model folder (default: assets/model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda / cuda:N")
    parser.add_argument("--rate", type=float, default=15.0, help="frames analysed per second of video (default 15)")
    parser.add_argument("--no-body", action="store_true", help="skip body pose (faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def rows_from_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for ev in events:
        if ev.get("type") != "state":
            continue
        row: dict[str, Any] = {"t": ev["t"], "label": ev["label"], "confidence": ev["confidence"],
                               "visible": ev["visible"], "face_present": ev["face_present"],
                               "speech": ev["speech"], "valence_score": ev["valence_score"],
                               "arousal_score": ev["arousal_score"]}
        row.update({f"p_{k}": v for k, v in ev["probs"].items()})
        row.update({f"valence_{k}": v for k, v in ev["valence"].items()})
        row.update({f"arousal_{k}": v for k, v in ev["arousal"].items()})
        row.update({f"share_{k}": v for k, v in ev["contributions"].items()})
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = (["t", "label", "confidence", "visible", "face_present", "speech", "valence_score", "arousal_score"]
            + [f"p_{e}" for e in EMOTIONS] + [f"valence_{v}" for v in VALENCE]
            + [f"arousal_{a}" for a in AROUSAL] + [f"share_{m}" for m in MODALITIES])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_plots(rows: list[dict[str, Any]], highlights: list[dict[str, Any]]) -> dict[str, str]:
    """Base64 PNGs: emotions (stacked probabilities + label strip), valence, arousal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t"] for r in rows]) if rows else np.zeros(0)
    out: dict[str, str] = {}
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True,
                                    gridspec_kw={"height_ratios": [5, 1]})
    if rows:
        ys = [np.array([r[f"p_{e}"] for r in rows]) for e in EMOTIONS]
        ax.stackplot(t, *ys, labels=EMOTIONS, colors=[COLOURS[e] for e in EMOTIONS], alpha=0.85)
        for i, r in enumerate(rows):
            t1 = rows[i + 1]["t"] if i + 1 < len(rows) else r["t"] + 1 / 15
            strip.axvspan(r["t"], t1, color=COLOURS.get(r["label"], UNCERTAIN_COLOR), lw=0)
    for h in highlights:
        ax.axvline(h["t"], color="black", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.set_title("Emotions over time (smoothed) and the label shown")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    strip.set_yticks([])
    strip.set_xlabel("time (s)")
    out["emotions"] = _png(fig)
    plt.close(fig)
    for key, title, colour in (("valence_score", "Valence (negative -1 ... +1 positive)", "#43a047"),
                               ("arousal_score", "Arousal (low -1 ... +1 high)", "#e53935")):
        fig, ax = plt.subplots(figsize=(11, 2.4))
        if rows:
            ax.plot(t, [r[key] for r in rows], color=colour, lw=1.5)
            ax.fill_between(t, 0, [r[key] for r in rows], color=colour, alpha=0.2)
        for h in highlights:
            ax.axvline(h["t"], color="black", ls="--", lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-1, 1)
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        out[key] = _png(fig)
        plt.close(fig)
    return out


def _fmt_t(t: float) -> str:
    m, s = divmod(max(0.0, t), 60)
    h, m = divmod(int(m), 60)
    return f"{h:d}:{m:02d}:{s:04.1f}" if h else f"{m:d}:{s:04.1f}"


def write_html(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]],
               highlights: list[dict[str, Any]], plots: dict[str, str]) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    total = max(1, len(rows))
    summary = "".join(f"<tr><td><span class='sw' style='background:{COLOURS.get(k, UNCERTAIN_COLOR)}'></span>"
                      f"{html.escape(k)}</td><td>{100.0 * v / total:.1f}%</td></tr>"
                      for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    hl = "".join(f"<tr><td>{_fmt_t(h['t'])}</td><td>{h['t']:.2f}</td><td>{html.escape(h['kind'])}</td>"
                 f"<td>{html.escape(str(h['label']))}</td><td>{h['score']:.2f}</td></tr>" for h in highlights) \
        or "<tr><td colspan='5'>no highlights in this recording</td></tr>"
    warn = "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in meta.get("warnings", []))
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>MERLB report: {html.escape(meta['file_name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.4em; }} table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: left; }}
.sw {{ display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; vertical-align: middle; }}
img {{ max-width: 100%; }} .meta {{ color: #555; }} .warn {{ color: #b71c1c; }}
</style></head><body>
<h1>MERLB report: {html.escape(meta['file_name'])}</h1>
<p class="meta">{meta['duration_s']:.1f} s of video analysed at {meta['rate_hz']:g} Hz in {meta['wall_s']:.1f} s
({meta['realtime_factor']:.1f}x real time) with {html.escape(meta['backend'])};
model {html.escape(meta['model'])}; {html.escape(meta['created'])}.</p>
{warn}
<h2>Emotions</h2><img alt="emotions over time" src="data:image/png;base64,{plots['emotions']}">
<h2>Valence</h2><img alt="valence over time" src="data:image/png;base64,{plots['valence_score']}">
<h2>Arousal</h2><img alt="arousal over time" src="data:image/png;base64,{plots['arousal_score']}">
<h2>Highlights</h2>
<table><tr><th>time</th><th>seconds</th><th>kind</th><th>label</th><th>score</th></tr>{hl}</table>
<h2>Labels shown</h2><table>{summary}</table>
<p class="meta">Timeline: <a href="timeline.csv">timeline.csv</a>, <a href="timeline.json">timeline.json</a>.
Labels are "uncertain" where the model's smoothed confidence was below {meta['threshold']:.2f}.</p>
</body></html>
"""
    path.write_text(doc, encoding="utf-8")


def default_out_dir(file: Path) -> Path:
    """Reports go to the user data dir, beside the session logs: always writable,
    and never inside a read-only recordings share or the source checkout."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "reports" / file.stem


def analyze(file: str | Path, out_dir: str | Path | None = None, model: str | None = None, *,
            device: str = "cpu", rate: float = 15.0, body: bool = True, progress: bool = True) -> Path:
    """Analyse a file and write the timeline and the report; returns report.html's path."""
    file = Path(file)
    info = probe(file)  # a clear error before any model loads
    if not info.has_video:
        raise SystemExit(f"merlb analyze: {file} has no video track")
    out = Path(out_dir) if out_dir else default_out_dir(file)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(model)
    highlights: list[dict[str, Any]] = []
    errors: list[str] = []
    engine = Engine(model_dir, device=device, rate=rate, body=body)
    engine.add_sink(lambda ev: highlights.append(ev) if ev.get("type") == "highlight" else
                    (errors.append(ev["message"]) if ev.get("type") == "error" else None))
    duration = info.duration or 0.0
    if progress and sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("analysing"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total:.1f} s"),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("analyse", total=max(duration, 0.1))
            run = engine.run_file(str(file), on_tick=lambda ev, t: bar.update(task, completed=min(t, duration)))
    else:
        run = engine.run_file(str(file))
    rows = rows_from_events(run.events)
    meta = {"file": str(file.resolve()), "file_name": file.name, "duration_s": run.duration,
            "wall_s": run.wall_s, "realtime_factor": run.realtime_factor, "rate_hz": rate,
            "frames_analysed": run.frames, "backend": run.backend, "model": str(model_dir),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "threshold": engine.state_config.threshold,
            "cpu_ms_per_frame": run.clock.per_frame_ms(), "warnings": run.warnings,
            "errors": errors, "schema": 1}
    write_csv(rows, out / "timeline.csv")
    (out / "timeline.json").write_text(json.dumps({"meta": meta, "highlights": highlights, "timeline": rows}))
    write_html(out / "report.html", meta, rows, highlights, make_plots(rows, highlights))
    return out / "report.html"


def run(args: argparse.Namespace) -> int:
    try:
        report = analyze(args.file, args.out, args.model, device=args.device, rate=args.rate,
                         body=not args.no_body, progress=not args.no_progress)
    except MediaError as e:
        print(f"merlb analyze: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0
