"""`merlb analyze FILE [--out DIR] [--model DIR]`: a past stream as a timeline and a report.

Runs the live analyzer (obs_merlb/offline.py: the same ticks, batched and
pipelined) over the file as fast as decoding and analysis go, in flat
memory whatever the recording's length, and writes into DIR:

* `timeline.csv` and `timeline.jsonl`: one row per analysed frame (time,
  label, confidence, face, speech, valence/arousal scores, every
  probability, modality shares), appended and flushed as the analysis goes
  (obs_merlb/timeline.py);
* `timeline.json`: the run's metadata and highlights (arousal peaks and
  emotion changes, found in the same pass), and the name of the rows' file;
* `report.html`: self-contained (plots inlined as PNG, downsampled to what a
  screen shows), with emotions, valence and arousal over time and the
  list of highlights, built from the written timeline;

and prints the report's path. A long run keeps a checkpoint in DIR: run
the same command again after an interruption and it continues where it
stopped (obs_merlb/resume.py). A recording cut off mid-file (OBS crashed) is
analysed up to the cut, with a warning on the terminal and in the report.

DIR is checked before any work. The rows grow under hidden partial names
and the four outputs take their names together at the end (a full disk
fails before any of them is replaced), so DIR holds one run's complete
outputs, never a mix of two runs or a timeline cut short.

Exit codes: 0 done; 2 the command cannot start (a file that is not usable
media, or has no video; an unusable DIR); 1 stopped while running (the disk
filled up: run the command again to continue from the checkpoint); 130
interrupted.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from obs_merlb import resume
from obs_merlb.capture.file import GREW, MediaError, MediaInfo, growing_note, probe, undeclared_length_note
from obs_merlb.cli import device_type, positive_float, refuse, setting_type
from obs_merlb.config import APP_NAME
from obs_merlb.files import check_writable
from obs_merlb.engine import cap_threads
from obs_merlb.highlights import PeakDetector
from obs_merlb.inference import load_backend
from obs_merlb.jobprogress import MediaProgress, clock
from obs_merlb.labels import EMOTIONS
from obs_merlb.offline import BatchedAnalyzer, iter_ticks
from obs_merlb.palette import EMOTION_COLORS, UNCERTAIN_COLOR
from obs_merlb.runlock import try_hold
from obs_merlb.model_check import load_checked
from obs_merlb.state import StateConfig, StateTracker, highlight_event
from obs_merlb.timeline import JSONL_NAME, PlotSeries, TimelineWriter, iter_rows, publish, row_from_event

log = logging.getLogger(__name__)

# Overlay-consistent colours per emotion, so a streamer reads the report like the overlay.
COLOURS = {**EMOTION_COLORS, "uncertain": UNCERTAIN_COLOR}
CHECKPOINT = ".analyze-checkpoint.json"
LOCK = ".analyze.lock"        # held while a run writes into the folder (obs_merlb/runlock.py)
CHECKPOINT_VERSION = 2       # 2: rows grow under partial names
# A resumed run restarts this much media before its checkpoint and drops the
# overlap: the ring's T steps (2 s) and their voice windows (1 s) refill.
WARMUP_S = 4.0
JSON_NAME = "timeline.json"
HTML_NAME = "report.html"


class OutputError(Exception):
    """An output folder that cannot take the results: one line, and the exit code to give."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a recording (any format FFmpeg reads)")
    parser.add_argument("--out", help="output folder (default: <user data dir>/obs-merlb/reports/<file stem>)")
    parser.add_argument("--model", help="saved model folder (default: assets/model)")
    parser.add_argument("--device", type=device_type(), default="cpu", help="cpu or cuda / cuda:N")
    parser.add_argument("--rate", type=setting_type("rate"), default=15.0, help="frames analysed per second of video (default 15)")
    parser.add_argument("--no-body", action="store_true", help="skip body pose (faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    parser.add_argument("--restart", action="store_true",
                        help="start from the beginning even if an interrupted run left a checkpoint")
    parser.add_argument("--checkpoint-every", type=positive_float, default=60.0, metavar="SECONDS",
                        help="media seconds between checkpoints of a resumable run (default 60)")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def make_plots(series: PlotSeries, highlights: list[dict[str, Any]], tail: float) -> dict[str, str]:
    """Base64 PNGs: emotions (stacked probabilities + label strip), valence, arousal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True,
                                    gridspec_kw={"height_ratios": [5, 1]})
    if series.rows:
        probs = series.probs()
        ax.stackplot(series.times(), *probs.T, labels=EMOTIONS, colors=[COLOURS[e] for e in EMOTIONS], alpha=0.85)
        for t0, t1, label in series.label_runs(tail):
            strip.axvspan(t0, t1, color=COLOURS.get(label, UNCERTAIN_COLOR), lw=0)
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
        if series.rows:
            t, v = series.line(key)
            ax.plot(t, v, color=colour, lw=1.5)
            ax.fill_between(t, 0, v, color=colour, alpha=0.2)
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


def render_html(meta: dict[str, Any], counts: dict[str, int],
                highlights: list[dict[str, Any]], plots: dict[str, str]) -> str:
    total = max(1, sum(counts.values()))
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
<p class="meta">Timeline: <a href="timeline.csv">timeline.csv</a>, <a href="timeline.jsonl">timeline.jsonl</a>
(one JSON object per line), <a href="timeline.json">timeline.json</a> (metadata and highlights).
Labels are "uncertain" where the model's smoothed confidence was below {meta['threshold']:.2f}.</p>
</body></html>
"""
    return doc


def default_out_dir(file: Path) -> Path:
    """Reports go to the user data dir, beside the session logs: always writable,
    and never inside a read-only recordings share or the source checkout."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "reports" / file.stem


def _job(file: Path, model_dir: Path, rate: float, body: bool) -> dict[str, Any]:
    """What a checkpoint must match to be continued: the same recording, model and settings."""
    model_files = {p.name: resume.file_identity(p) for p in sorted(model_dir.iterdir()) if p.is_file()}
    return {"kind": "analyze", "version": CHECKPOINT_VERSION, "file": resume.file_identity(file),
            "model": model_files, "rate": rate, "body": body, "state": StateConfig().__dict__}


def _tracker_classes() -> list[type]:
    from obs_merlb import state

    return [StateTracker, StateConfig, state._LabelledHead, PeakDetector]


def analyze(file: str | Path, out_dir: str | Path | None = None, model: str | None = None, *,
            device: str = "cpu", rate: float = 15.0, body: bool = True, progress: bool = True,
            restart: bool = False, checkpoint_every_s: float = 60.0,
            stop_after_s: float | None = None) -> Path | None:
    """Analyse a file and write the timeline and the report; returns report.html's path.

    An interrupted run (killed, or stopped by ``stop_after_s`` media seconds,
    then returning None) leaves a checkpoint every ``checkpoint_every_s``;
    the next call with the same file, model and settings continues from it
    unless ``restart``.
    """
    file = Path(file)
    info = probe(file)  # a clear error before any model loads
    if not info.has_video:
        raise MediaError(file, "has no video track (merlb analyze reads faces and voice from a video)")
    out = Path(out_dir) if out_dir else default_out_dir(file)
    check_writable(out, "--out")       # before any model loads
    out.mkdir(parents=True, exist_ok=True)
    try:
        held = try_hold(out / LOCK)
    except OSError as e:
        raise SystemExit(f"--out {out}: cannot write there ({e.strerror or e})") from None
    if held is None:
        # Both runs would write rows into the same partial timeline, and one would fail on the other's rename.
        raise SystemExit(f"--out {out}: another merlb analyze is writing there; "
                         "wait for it to finish or give this one another --out")
    try:
        return _analyze_into(out, file, info, model, device=device, rate=rate, body=body, progress=progress,
                             restart=restart, checkpoint_every_s=checkpoint_every_s, stop_after_s=stop_after_s)
    finally:
        held.close()


def _analyze_into(out: Path, file: Path, info: MediaInfo, model: str | None, *, device: str, rate: float, body: bool,
                  progress: bool, restart: bool, checkpoint_every_s: float,
                  stop_after_s: float | None) -> Path | None:
    """`analyze`, once this run holds `out`."""
    cap_threads(1)
    backend, model_problems = load_checked(lambda d: load_backend(d, device=device, threads=1), model, "analyze")
    for problem in model_problems:
        print(f"merlb analyze: {problem}", file=sys.stderr)
    model_dir = backend.model_dir
    job = _job(file, model_dir, rate, body)
    ckpt_path = out / CHECKPOINT
    ckpt = None if restart else resume.load(ckpt_path, job)
    if ckpt is not None and not _rows_kept(out, ckpt["offsets"]):
        ckpt = None          # its rows were overwritten (another recording's run began here): start afresh
    if ckpt is None:
        resume.remove(ckpt_path)      # this run's rows replace whatever partial rows it pointed to
    tracker, detector = StateTracker(StateConfig()), PeakDetector()
    highlights: list[dict[str, Any]] = []
    notes: list[str] = []
    start = next_t = wall_before = 0.0
    done_t = -np.inf
    if ckpt is not None:
        tracker = resume.restore(ckpt["tracker"], _tracker_classes())
        detector = resume.restore(ckpt["detector"], _tracker_classes())
        highlights, notes = ckpt["highlights"], ckpt["notes"]
        start, next_t = ckpt["warm_start"], ckpt["warm_next_t"]
        done_t, wall_before = ckpt["t"], ckpt["wall_s"]
    try:
        writer = TimelineWriter(out, resume=tuple(ckpt["offsets"]) if ckpt else None)
    except (OSError, ValueError) as e:
        raise OutputError(f"cannot write the timeline in {out} ({getattr(e, 'strerror', None) or e})", 2) from e
    analyzer = BatchedAnalyzer(backend, tracker, body=body)
    analyzer.quiet_until = done_t
    duration = info.duration or 0.0
    recent: deque[tuple[float, float]] = deque()      # (tick t, sampler's next_t before it), last WARMUP_S
    last_t = max(done_t, 0.0)
    next_ckpt = last_t + checkpoint_every_s
    wall0 = time.monotonic()
    stopped = False

    def written_up_to(e: OSError) -> OutputError:
        saved = resume.load(ckpt_path, job)
        again = (f"free some space and run the same command again: it continues from {clock(saved['t'])}"
                 if saved else "free some space and run the same command again")
        return OutputError(f"cannot write into {out} at {clock(last_t)} of the recording ({e.strerror or e}); "
                           f"{again}", 1)

    def checkpoint(state: StateTracker, person: dict[str, Any] | None) -> None:
        warm_t, warm_next = recent[0] if recent else (0.0, 0.0)
        resume.save(ckpt_path, {
            "job": job, "t": last_t, "offsets": list(writer.offsets()),
            "warm_start": max(0.0, warm_t - 1.5), "warm_next_t": warm_next,
            "tracker": resume.snapshot(state), "detector": resume.snapshot(detector), "person": person,
            "highlights": highlights, "notes": notes, "wall_s": wall_before + time.monotonic() - wall0})

    if ckpt is not None:
        print(f"merlb analyze: continuing {file.name} from {clock(done_t)} (checkpoint in {out})", file=sys.stderr)
        try:
            if ckpt.get("person") is not None:     # absent from a checkpoint written before it was kept
                analyzer.resume_person(ckpt["person"])
        except ValueError as e:
            # The rows already written stay valid; only voice-only windows after the resume point differ.
            print(f"merlb analyze: the checkpoint's record of the person's voice is damaged ({e}); "
                  f"their voice is learned afresh from {clock(done_t)}", file=sys.stderr)
    try:
        with MediaProgress(f"analysing {file.name}", duration, start_s=max(done_t, 0.0), enabled=progress) as bar:
            for tick in iter_ticks(analyzer, str(file), rate, start=start, next_t=next_t, on_note=notes.append):
                recent.append((tick.t, tick.next_t))
                while recent and recent[0][0] < tick.t - WARMUP_S:
                    recent.popleft()
                if tick.result is None:          # warm-up before the checkpoint: already written
                    continue
                ev = tick.result.event
                try:
                    writer.write(row_from_event(ev))
                except OSError as e:
                    raise written_up_to(e) from e
                for h in detector.update(ev["t"], ev["arousal_score"], ev["label"], ev["confidence"]):
                    highlights.append(highlight_event(h.t, h.kind, h.score, h.label, False, False))
                last_t = tick.t
                bar.update(last_t)
                stopping = stop_after_s is not None and last_t >= stop_after_s
                if tick.state is not None and (last_t >= next_ckpt or stopping):
                    try:
                        checkpoint(tick.state, tick.person)
                    except OSError as e:
                        raise written_up_to(e) from e
                    next_ckpt = last_t + checkpoint_every_s
                    if stopping:
                        stopped = True
                        break
            cut = growing_note(file, info.size, last_t) or undeclared_length_note(info, last_t)
            if cut is not None and not stopped and not any(GREW in n for n in notes):
                notes.append(cut)
            for note in notes:
                bar.note(f"merlb analyze: warning: {note}")
    except KeyboardInterrupt:
        _close(writer)
        print(f"merlb analyze: interrupted; run the same command again to continue from {clock(last_t)}",
              file=sys.stderr)
        raise
    except OutputError:
        _close(writer)
        raise
    finally:
        analyzer.close()
    try:
        writer.close()
    except OSError as e:
        raise written_up_to(e) from e
    if stopped:
        return None
    wall = wall_before + time.monotonic() - wall0
    # The last analysed frame stands for a tick, or for as long as the file shows it (1 fps slides).
    shown = max(1.0 / rate, 1.0 / info.fps if info.fps else 0.0)
    analysed = max(last_t, min(info.duration or last_t, last_t + shown))
    meta = {"file": str(file.resolve()), "file_name": file.name, "duration_s": analysed,
            "wall_s": wall, "realtime_factor": analysed / wall if wall > 0 else float("inf"), "rate_hz": rate,
            "frames_analysed": writer.rows, "backend": backend.name, "model": str(model_dir),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "threshold": tracker.config.threshold,
            "warnings": notes, "errors": notes, "rows": JSONL_NAME, "schema": 2}
    series = PlotSeries(analysed)
    for row in iter_rows(writer.jsonl_path):
        series.add(row)
    page = render_html(meta, series.label_counts, highlights, make_plots(series, highlights, 1.0 / rate))
    try:
        publish(list(zip((writer.csv_path, writer.jsonl_path), writer.final_paths)),
                [(out / JSON_NAME, json.dumps({"meta": meta, "highlights": highlights})), (out / HTML_NAME, page)])
    except OSError as e:
        raise written_up_to(e) from e
    resume.remove(ckpt_path)
    if info.duration and analysed < 0.9 * info.duration - 0.2 and not any(GREW in n for n in notes):
        print(f"merlb analyze: warning: only {clock(analysed)} of the {clock(info.duration)} the file declares "
              f"could be analysed ({100.0 * analysed / info.duration:.0f}%); the report covers that part",
              file=sys.stderr)
    return out / HTML_NAME


def _rows_kept(out: Path, offsets: list[int]) -> bool:
    """Whether the partial rows a checkpoint counts are still on disk."""
    return all(path.is_file() and path.stat().st_size >= size
               for path, size in zip(TimelineWriter.partial_paths(out), offsets[:2]))


def _close(writer: TimelineWriter) -> None:
    """Close after a failure: a full disk may refuse the last buffered bytes too."""
    try:
        writer.close()
    except OSError:
        pass


def run(args: argparse.Namespace) -> int:
    try:
        report = analyze(args.file, args.out, args.model, device=args.device, rate=args.rate,
                         body=not args.no_body, progress=not args.no_progress, restart=args.restart,
                         checkpoint_every_s=args.checkpoint_every)
    except MediaError as e:
        return refuse("analyze", str(e))
    except OutputError as e:
        print(f"merlb analyze: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    print(report)
    return 0
