"""`merlb personalize`: retrain on the streamer's own past streams, safely.

    merlb personalize                       # every session log whose recording is still on disk
    merlb personalize ~/Videos/*.mkv --labels fixes.csv
    merlb personalize review ~/Videos       # counts per label + contact sheet, no training
    merlb personalize list | rollback [VERSION] | activate VERSION [--force]

Data. An OBS recording and its session log (obs_merlb/session.py, named
`<recording stem>.merlb.jsonl`) pair up by name, or explicitly with
`--pair REC=LOG`. Each `tag` event at stream time t labels the window
[t - before, t + after] of the recording (streamers press the hotkey just
after the moment). Tag names map to emotion/valence/arousal through a table
(`[personalize.tags]` in config.toml over the defaults below; emotion names
and their aliases map to themselves, behaviour names to the behaviour head);
any other name becomes a class of a new `user` head, so "tilted" or "clutch"
are learnt as the streamer's own classes. A labels CSV (`path,start,end,label`)
adds windows or corrects tags it overlaps (`ignore` deletes them). Optionally,
confident predictions of the current model on untagged stretches become
pseudo-labels with a small weight. Tags seen fewer than `--min-examples`
times are listed as too rare and left out: a class learnt from two examples
would mostly add noise to the others.

Validation is time-disjoint: with three or more tagged sessions the latest
quarter of the sessions is held out whole, otherwise the last quarter of each
session's tagged windows (and training windows that overlap them are dropped).

Training. Recordings go through the same cached preprocessing as
`merlb train` (obs_merlb.perception, identical to live). By default the
encoders stay frozen: their per-step embeddings are computed once, and only
the Bi-LSTMs, fusion and heads are fine-tuned on them, which takes seconds to
minutes on a CPU. `--train-encoders` runs the full model instead.

Gate. Candidate and current (active, else the default) model are scored on
the held-out windows: macro-F1 on every head the streamer's labels cover,
averaged. The candidate becomes active only when it beats the current model
by `--margin` *and* its score is unlikely under shuffled labels (permutation
test, p <= `--alpha`): beating a model that is itself at chance proves
nothing. `--force` activates anyway. Everything goes into the registry
(obs_merlb.registry) through a temp folder renamed at the end, so a killed
run never touches the active model; the running worker is told to
`reload_model` over its WebSocket.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from obs_merlb import labels as L
from obs_merlb import registry
from obs_merlb.calibration import (MIN_SAMPLES, Calibration, ece, fit_temperature, load_calibration,
                                   modality_sets, save_calibration, scale)
from obs_merlb.session import SUFFIX as SESSION_SUFFIX

log = logging.getLogger(__name__)

RECORDING_EXT = {".mkv", ".mp4", ".flv", ".mov"}
ACTIONS = ("train", "review", "list", "rollback", "activate")
# Heads a personalized model may be trained on; "user" holds the streamer's own classes.
PHEADS: tuple[str, ...] = ("emotion", "valence", "arousal", "behaviour", "user")
USER = "user"
IGNORE = -100
IGNORE_LABELS = {"ignore", "-", "none", "delete", "skip"}

# Streamer words for the usual moments (BRIEF/issue 9); config.toml can add or override.
DEFAULT_TAG_MAP: dict[str, dict[str, str]] = {
    "hype": {"emotion": "happy", "valence": "positive", "arousal": "high"},
    "funny": {"emotion": "happy", "valence": "positive", "arousal": "high"},
    "frustrated": {"emotion": "angry", "valence": "negative", "arousal": "high"},
    "calm": {"emotion": "neutral", "valence": "neutral", "arousal": "low"},
}


# =========================================================================== progress


class Progress:
    """Rich progress on stderr for people, JSON lines on stdout for the panel (`--progress-json`)."""

    def __init__(self, json_lines: bool = False, quiet: bool = False) -> None:
        from rich.console import Console

        self.json_lines = json_lines
        self.console = Console(stderr=True, quiet=quiet)
        self._bar: Any = None
        self._task: Any = None
        self.stage = ""

    def emit(self, doc: dict[str, Any]) -> None:
        if self.json_lines:
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()

    def message(self, text: str) -> None:
        self.console.print(text)
        self.emit({"type": "message", "text": _plain(text)})

    def start(self, stage: str, total: int, description: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self.end()
        self.stage = stage
        self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, info="")
        self.emit({"type": "progress", "stage": stage, "done": 0, "total": total, "text": description})

    def advance(self, done: int, total: int, info: str = "", **extra: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
        self.emit({"type": "progress", "stage": self.stage, "done": done, "total": total, "text": info, **extra})

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _plain(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain


# =========================================================================== data


@dataclass
class Session:
    """One recording and what the streamer said about it."""

    recording: Path
    log: Path | None
    tags: list[tuple[float, str]] = field(default_factory=list)  # (recording seconds, tag name)
    start_wall: float = 0.0

    @property
    def name(self) -> str:
        return self.recording.stem


@dataclass
class Window:
    """A labelled stretch of one recording; `labels` maps head -> class name."""

    session: int
    start: float
    end: float
    tag: str
    labels: dict[str, str]
    source: str = "tag"        # tag | csv | pseudo
    weight: float = 1.0
    split: str = "train"

    @property
    def t(self) -> float:
        return 0.5 * (self.start + self.end)


def tag_table(config: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
    """Defaults overlaid with `[personalize.tags]`; a value is an emotion name, a
    {emotion, valence, arousal, behaviour} table, or "user" (a class of its own)."""
    table = {k: dict(v) for k, v in DEFAULT_TAG_MAP.items()}
    raw = ((config or {}).get("personalize") or {}).get("tags") or {}
    for name, value in raw.items():
        key = str(name).strip().lower()
        if isinstance(value, str):
            if value.strip().lower() == USER:
                table[key] = {USER: key}
                continue
            emo, val, aro = L.emotion_targets(value)
            if emo is None:
                raise ValueError(f"[personalize.tags] {name} = {value!r}: not an emotion "
                                 f"({', '.join(L.EMOTIONS)}) or 'user'")
            table[key] = {"emotion": emo, "valence": val, "arousal": aro}
        elif isinstance(value, dict):
            spec = {h: str(v).strip().lower() for h, v in value.items() if h in PHEADS and v}
            for h, c in spec.items():
                if h != USER and c not in _classes(h):
                    raise ValueError(f"[personalize.tags] {name}: {h} {c!r} is not one of {_classes(h)}")
            table[key] = spec
    return table


def _classes(head: str) -> tuple[str, ...]:
    return {"emotion": L.EMOTIONS, "valence": L.VALENCE, "arousal": L.AROUSAL,
            "behaviour": L.BEHAVIOURS}.get(head, ())


def resolve_tag(name: str, table: dict[str, dict[str, str]]) -> dict[str, str]:
    """Head labels of a tag name: the table, an emotion (alias), a behaviour, else a user class."""
    key = name.strip().lower()
    if key in table:
        return dict(table[key])
    emo, val, aro = L.emotion_targets(key)
    if emo is not None:
        return {"emotion": emo, "valence": val, "arousal": aro}
    if key in L.BEHAVIOURS:
        return {"behaviour": key}
    return {USER: key}


def read_session_log(path: Path) -> tuple[list[tuple[float, str]], str | None, float]:
    """(tags in recording seconds, the recording it names, its start wall time).

    Tag times are stream seconds; the session's `open` event carries the stream
    time at which the recording started, so subtracting it gives the time in
    the recording file.
    """
    from obs_merlb.session import read_session

    offset: float | None = None
    recording: str | None = None
    wall = 0.0
    tags: list[tuple[float, str]] = []
    for ev in read_session(path):
        if not isinstance(ev, dict):
            continue
        if not wall and isinstance(ev.get("wall"), (int, float)):
            wall = float(ev["wall"])
        if ev.get("type") == "session" and ev.get("event") == "open" and offset is None:
            offset = float(ev["t"]) if isinstance(ev.get("t"), (int, float)) else 0.0
            recording = ev.get("recording") or recording
        elif ev.get("type") == "tag" and isinstance(ev.get("t"), (int, float)) and ev.get("name"):
            tags.append((float(ev["t"]), str(ev["name"])))
    off = offset or 0.0
    return [(t - off, n) for t, n in tags if t - off >= 0], recording, wall


def _expand_recordings(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        q = Path(p).expanduser()
        if q.is_dir():
            out += sorted(f for f in q.iterdir() if f.suffix.lower() in RECORDING_EXT)
        elif q.is_file():
            out.append(q)
        else:
            raise SystemExit(f"merlb personalize: {q} does not exist")
    return out


def find_sessions(recordings: Sequence[str], sessions_dir: Path,
                  pairs: Sequence[str] = ()) -> tuple[list[Session], list[str]]:
    """Recordings paired with their logs; returns (sessions, warnings).

    Explicit `REC=LOG` pairs first; a recording alone looks for
    `<stem>.merlb.jsonl` in the sessions folder, then beside itself; with no
    recordings at all, every log in the sessions folder whose `open` event
    names a recording that still exists.
    """
    warnings: list[str] = []
    found: dict[Path, Path | None] = {}
    for pair in pairs:
        rec, sep, logp = pair.partition("=")
        if not sep:
            raise SystemExit(f"--pair wants REC=LOG, got {pair!r}")
        found[Path(rec).expanduser().resolve()] = Path(logp).expanduser().resolve()
    for rec in _expand_recordings(recordings):
        rec = rec.resolve()
        if rec in found:
            continue
        for cand in (sessions_dir / (rec.stem + SESSION_SUFFIX), rec.with_name(rec.stem + SESSION_SUFFIX)):
            if cand.is_file():
                found[rec] = cand
                break
        else:
            found[rec] = None
    if not recordings and not pairs and sessions_dir.is_dir():
        for logp in sorted(sessions_dir.glob("*" + SESSION_SUFFIX)):
            _, rec_name, _ = read_session_log(logp)
            if rec_name and Path(rec_name).is_file():
                found[Path(rec_name).resolve()] = logp
    sessions = []
    for rec, logp in found.items():
        if not rec.is_file():
            warnings.append(f"recording {rec} not found; its session is skipped")
            continue
        tags, _, wall = read_session_log(logp) if logp is not None else ([], None, 0.0)
        sessions.append(Session(rec, logp, tags, wall or rec.stat().st_mtime))
    sessions.sort(key=lambda s: (s.start_wall, s.name))
    return sessions, warnings


def tag_windows(sessions: Sequence[Session], table: dict[str, dict[str, str]],
                before: float, after: float) -> list[Window]:
    return [Window(i, max(0.0, t - before), t + after, name.strip().lower(), resolve_tag(name, table))
            for i, s in enumerate(sessions) for t, name in s.tags]


def apply_labels_csv(csv_path: Path, sessions: list[Session], windows: list[Window],
                     table: dict[str, dict[str, str]], window_s: float) -> tuple[list[Window], dict[str, int]]:
    """Add or correct labels from `path,start,end,label` rows (path relative to the CSV).

    A row replaces every tag window of its recording that it overlaps; label
    `ignore` only deletes them. A range longer than one window is cut into
    consecutive windows of `window_s`. A recording not seen yet becomes a
    session of its own.
    """
    import csv

    stats = {"added": 0, "replaced": 0, "deleted": 0}
    by_path = {s.recording.resolve(): i for i, s in enumerate(sessions)}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k}
        if not row.get("path") or not row.get("start") or not row.get("end"):
            continue
        p = Path(row["path"]).expanduser()
        p = (p if p.is_absolute() else csv_path.parent / p).resolve()
        if p not in by_path:
            if not p.is_file():
                log.warning("labels CSV: %s not found; row skipped", p)
                continue
            sessions.append(Session(p, None, [], p.stat().st_mtime))
            by_path[p] = len(sessions) - 1
        si, a, b = by_path[p], float(row["start"]), float(row["end"])
        label = row.get("label", "").lower()
        keep = []
        for w in windows:
            if w.session == si and w.source != "csv" and w.start < b and w.end > a:
                stats["deleted" if label in IGNORE_LABELS else "replaced"] += 1
                continue
            keep.append(w)
        windows[:] = keep
        if label in IGNORE_LABELS or not label:
            continue
        n = max(1, int(round((b - a) / window_s)))
        step = (b - a) / n
        for k in range(n):
            windows.append(Window(si, a + k * step, a + (k + 1) * step, label, resolve_tag(label, table), "csv"))
            stats["added"] += 1
    return windows, stats


def split_windows(windows: list[Window], sessions: Sequence[Session], val_fraction: float,
                  holdout: str = "auto") -> dict[str, Any]:
    """Mark windows train/val, time-disjoint; returns a description of the split."""
    tagged = sorted({w.session for w in windows}, key=lambda i: (sessions[i].start_wall, sessions[i].name))
    mode = holdout
    if mode == "auto":
        mode = "sessions" if len(tagged) >= 3 else "tail"
    info: dict[str, Any] = {"mode": mode, "val_fraction": val_fraction}
    if mode == "sessions":
        n_val = max(1, math.ceil(len(tagged) * val_fraction))
        held = set(tagged[-n_val:])
        for w in windows:
            w.split = "val" if w.session in held else "train"
        info["val_sessions"] = [sessions[i].name for i in sorted(held)]
        return info
    cut: dict[int, float] = {}
    for si in tagged:
        ws = sorted((w for w in windows if w.session == si), key=lambda w: w.t)
        n_val = math.ceil(len(ws) * val_fraction) if len(ws) >= 2 else 0
        if n_val == 0:
            continue
        split_t = ws[-n_val].start
        cut[si] = split_t
        for w in ws:
            # A training window reaching past the cut would share frames with validation.
            w.split = "val" if w.t >= ws[-n_val].t else ("train" if w.end <= split_t else "drop")
    windows[:] = [w for w in windows if w.split != "drop"]
    info["val_from_s"] = {sessions[i].name: round(t, 2) for i, t in cut.items()}
    return info


def rare_tags(windows: Sequence[Window], min_examples: int) -> dict[str, int]:
    counts = Counter(w.tag for w in windows if w.source != "pseudo")
    return {t: n for t, n in sorted(counts.items()) if n < min_examples}


# =========================================================================== features


@dataclass
class RecordingSteps:
    """All steps of one recording (storage dtypes) and, with frozen encoders, their embeddings."""

    arrays: dict[str, np.ndarray]
    embs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.arrays["mask"].shape[0])


def preprocess_sessions(sessions: Sequence[Session], cache: Path, settings: Any, progress: Progress,
                        needed: set[int] | None = None,
                        workers: int = 1) -> tuple[list[RecordingSteps | None], dict[str, str]]:
    """Per-step features of the `needed` recordings (cached: a rerun decodes nothing)."""
    from .data import load_records
    from .datasets import Item
    from .preprocess import prepare

    out: list[RecordingSteps | None] = []
    failed: dict[str, str] = {}
    progress.start("preprocess", len(sessions), "features")
    for i, s in enumerate(sessions):
        if needed is not None and i not in needed:
            out.append(None)
            progress.advance(i + 1, len(sessions), f"{s.name} (no labels, skipped)")
            continue
        item = Item(path=str(s.recording), group=f"stream:{s.name}", labels={}, dataset="personal")
        prep = prepare(s.recording.parent, cache, fmt="csv", settings=settings, items=[item],
                       workers=workers, quiet=True)
        if prep.items:
            out.append(RecordingSteps(load_records(prep).arrays[0]))
        else:
            out.append(None)
            failed[str(s.recording)] = next(iter(prep.failed.values()), "unreadable")
        progress.advance(i + 1, len(sessions), s.name)
    progress.end()
    return out, failed


def _to_float(modality: str, x: np.ndarray) -> np.ndarray:
    from .data import to_float
    return to_float(modality, x)


def compute_embeddings(model: Any, steps: Sequence[RecordingSteps | None], batch: int = 256) -> None:
    """Frozen encoders run once per step, not once per step per epoch."""
    import torch

    from obs_merlb.labels import MODALITIES

    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        for rs in steps:
            if rs is None:
                continue
            for m in model.cfg.modalities:
                dim = model.cfg.embed_dims[m]
                emb = np.zeros((rs.n, dim), np.float32)
                col = rs.arrays["mask"][:, MODALITIES.index(m)] > 0
                if m in rs.arrays and col.any():
                    idx = np.nonzero(col)[0]
                    for a in range(0, len(idx), batch):
                        sel = idx[a:a + batch]
                        x = torch.from_numpy(_to_float(m, rs.arrays[m][sel])).to(dev)
                        emb[sel] = model.encode(m, x).float().cpu().numpy()
                rs.embs[m] = emb


def step_range(w: Window, step_s: float, n: int) -> tuple[int, int]:
    a = max(0, int(math.floor(w.start / step_s + 1e-6)))
    b = min(n, int(math.ceil(w.end / step_s - 1e-6)))
    return a, max(a, b)


def gather(steps: Sequence[RecordingSteps | None], windows: Sequence[Window], idx: Sequence[int], T: int,
           step_s: float, modalities: Sequence[str], rng: np.random.Generator | None, use_emb: bool,
           augment: bool = False, emb_dims: dict[str, int] | None = None) -> dict[str, Any]:
    """A batch: a T-step crop of each window (random with `rng`, else centred), zero-padded."""
    import torch

    from obs_merlb.labels import MODALITIES

    from .data import augment_face, augment_voice
    from .preprocess import STEP_SHAPES

    b = len(idx)
    mask = np.zeros((b, T, len(MODALITIES)), np.float32)
    xs: dict[str, np.ndarray] = {}
    for m in modalities:
        shape = (emb_dims or {}).get(m) if use_emb else None
        xs[m] = np.zeros((b, T, shape) if use_emb else (b, T, *STEP_SHAPES[m]), np.float32)
    for j, i in enumerate(idx):
        w = windows[i]
        rs = steps[w.session]
        a, e = step_range(w, step_s, rs.n)
        n = e - a
        if n <= 0:
            continue
        off = int(rng.integers(0, n - T + 1)) if (rng is not None and n > T) else max(0, (n - T) // 2)
        s0, s1 = a + off, min(a + off + T, e)
        k = s1 - s0
        mask[j, :k] = rs.arrays["mask"][s0:s1]
        for m in modalities:
            if use_emb:
                xs[m][j, :k] = rs.embs[m][s0:s1]
            elif m in rs.arrays:
                x = _to_float(m, rs.arrays[m][s0:s1])
                if augment and rng is not None:
                    x = augment_face(x, rng) if m == "face" else augment_voice(x, rng) if m == "voice" else x
                xs[m][j, :k] = x
    out: dict[str, Any] = {"mask": torch.from_numpy(mask)}
    for m in MODALITIES:
        present = m in xs and mask[:, :, MODALITIES.index(m)].any()
        out[m] = torch.from_numpy(xs[m]) if present else None
    return out


def run_model(model: Any, batch: dict[str, Any], use_emb: bool) -> dict[str, Any]:
    dev = next(model.parameters()).device
    batch = {k: (v.to(dev, non_blocking=True) if v is not None else None) for k, v in batch.items()}
    if use_emb:
        return model.sequence(batch["face"], batch["voice"], batch["body"], batch["scene"], batch["mask"])
    return model(batch["face"], batch["voice"], batch["body"], batch["scene"], batch["mask"])


def window_logits(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
                  batch_size: int = 64) -> tuple[dict[str, np.ndarray], list[str]]:
    """Logits per head for the centred crop of each window (full model, eval mode), and each
    window's modality set ("face", "voice", "face+voice", ...)."""
    import torch

    model.eval()
    logits: dict[str, list[np.ndarray]] = {}
    sets: list[str] = []
    with torch.no_grad():
        for a in range(0, len(windows), batch_size):
            idx = list(range(a, min(a + batch_size, len(windows))))
            batch = gather(steps, windows, idx, model.cfg.steps, model.cfg.step_s, model.cfg.modalities,
                           None, use_emb=False)
            sets += modality_sets(batch["mask"].numpy(), model.cfg.modalities)
            for h, lg in run_model(model, batch, False).items():
                logits.setdefault(h, []).append(lg.float().cpu().numpy())
    return {h: np.concatenate(v) for h, v in logits.items()}, sets


def predict_windows(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
                    batch_size: int = 64, calibration: Calibration | None = None) -> dict[str, np.ndarray]:
    """Softmax per head for the centred crop of each window, temperature-scaled per
    window's modality set when a calibration is given."""
    calibration = calibration or Calibration()      # none: T = 1, the plain softmax
    logits, sets = window_logits(model, steps, windows, batch_size)
    return {h: calibration.probs(h, lg, sets) for h, lg in logits.items()}


def fit_calibration(logits: dict[str, np.ndarray], sets: Sequence[str], y: dict[str, np.ndarray],
                    inherited: Calibration) -> tuple[Calibration, list[dict[str, Any]]]:
    """Temperatures for a personalized model: fitted on its held-out windows for each
    (modality set, head) with at least MIN_SAMPLES labels, the base model's elsewhere.

    Fine-tuning a few hundred steps moves a head's confidence less than a
    temperature fitted on a dozen windows would swing, so a set with too few
    windows keeps the base's temperature rather than falling back to T = 1
    (a base can sit far from T = 1: session 9's model needed T 0.64 on voice-only emotion).
    Returns the calibration and one row per fitted temperature (in-sample ECE).
    """
    temps = {s: dict(heads) for s, heads in inherited.temperatures.items()}
    window_sets = np.asarray(list(sets))
    rows: list[dict[str, Any]] = []
    for mset in sorted(set(window_sets.tolist()) - {""}):
        for h, lg in logits.items():
            if h not in y:
                continue
            keep = (window_sets == mset) & (y[h] != IGNORE)
            if keep.sum() < MIN_SAMPLES:
                continue
            yk = y[h][keep]
            t = fit_temperature(lg[keep], yk)
            temps.setdefault(mset, {})[h] = t
            rows.append({"set": mset, "head": h, "n": int(keep.sum()), "temperature": round(t, 3),
                         "ece_raw": ece(scale(lg[keep], 1.0), yk), "ece_calibrated": ece(scale(lg[keep], t), yk)})
    fitted = [f"{r['set']}/{r['head']}" for r in rows]
    info = {"fitted_on": "personalize validation windows", "fitted": fitted,
            "inherited": [f"{s}/{h}" for s, heads in inherited.temperatures.items() for h in heads
                          if f"{s}/{h}" not in fitted]}
    return Calibration(temps, info), rows


def pseudo_windows(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
                   sessions: Sequence[Session], threshold: float, weight: float,
                   val_info: dict[str, Any], calibration: Calibration | None = None) -> list[Window]:
    """Confident emotion predictions of the current model on untagged stretches of training time.

    Confidence is the calibrated probability when the model has a calibration,
    the one the overlay shows: raw, the shipped model's voice-only windows sit
    lower than its face-only ones at the same accuracy, and a fixed
    threshold would take pseudo-labels almost only from faces.
    """
    T, step_s = model.cfg.steps, model.cfg.step_s
    held = set(val_info.get("val_sessions", []))
    cut = val_info.get("val_from_s", {})
    cands: list[Window] = []
    for si, rs in enumerate(steps):
        if rs is None or sessions[si].name in held:
            continue
        busy = np.zeros(rs.n, bool)
        for w in windows:
            if w.session == si:
                a, b = step_range(w, step_s, rs.n)
                busy[max(0, a - 4):b + 4] = True    # a second of margin around human labels
        limit = cut.get(sessions[si].name)
        for a in range(0, rs.n - T + 1, T):
            if busy[a:a + T].any() or (limit is not None and (a + T) * step_s > limit):
                continue
            if rs.arrays["mask"][a:a + T].sum() == 0:
                continue
            cands.append(Window(si, a * step_s, (a + T) * step_s, "", {}, "pseudo", weight))
    if not cands or "emotion" not in model.cfg.active_heads:
        return []
    probs = predict_windows(model, steps, cands, calibration=calibration)["emotion"]
    names = model.cfg.active_heads["emotion"]
    out = []
    for w, p in zip(cands, probs):
        if p.max() >= threshold:
            emo, val, aro = L.emotion_targets(names[int(p.argmax())])
            if emo is None:
                continue
            w.tag = f"~{emo}"
            w.labels = {"emotion": emo, "valence": val, "arousal": aro}
            out.append(w)
    return out


# =========================================================================== model


def build_candidate(base_dir: Path, user_classes: Sequence[str]) -> Any:
    """The base model with a `user` head for the streamer's classes (rows of classes it knew are kept)."""
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.io import load_model
    from obs_merlb.model.merlb import MERLB

    base = load_model(base_dir)
    cfg = MERLBConfig.from_dict(base.cfg.to_dict())
    heads = dict(base.cfg.active_heads)
    old_user = list(heads.get(USER, []))
    if user_classes:
        heads[USER] = list(user_classes)
    cfg.heads, cfg.task = heads, "multi"
    model = MERLB(cfg)
    old, new = base.state_dict(), model.state_dict()
    for k, v in new.items():
        if k in old and old[k].shape == v.shape and not (f"heads.{USER}." in k and old_user != list(user_classes)):
            new[k] = old[k].clone()
        elif k in old and f"heads.{USER}." in k:
            # Same class name, same output row: a rerun keeps what it learnt about "tilted".
            for r, name in enumerate(user_classes):
                if name in old_user:
                    new[k][r] = old[k][old_user.index(name)]
    model.load_state_dict(new)
    return model


def targets_for(windows: Sequence[Window], heads: dict[str, list[str]]) -> dict[str, np.ndarray]:
    out = {}
    for h, names in heads.items():
        out[h] = np.array([names.index(w.labels[h]) if w.labels.get(h) in names else IGNORE for w in windows],
                          np.int64)
    return out


class EmbeddingNorm:
    """Fine-tune in standardized embedding coordinates without changing the model's function.

    Frozen encoders can emit embeddings whose spread across a streamer's
    windows is tiny (1e-3) next to their offset; Adam moves each weight by
    about the learning rate, so weights on such inputs barely change the
    output and fine-tuning stalls. Standardizing the inputs fixes that, and
    the standardization folds exactly into the Bi-LSTM's input weights
    (input = [e * m, m], so the mask column absorbs the mean and masked steps
    stay zero): W_e' = W_e * sd, w_m' = w_m + W_e @ mu while training, and the
    inverse afterwards. The saved model has the usual architecture and
    computes exactly what was trained.
    """

    def __init__(self, model: Any, steps: Sequence[RecordingSteps | None], sessions: set[int]) -> None:
        from obs_merlb.labels import MODALITIES

        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        fusion = model.fusion
        # Only fusions whose temporal stage is the per-modality Bi-LSTMs (early fusion has one LSTM of its own).
        from obs_merlb.model.fusion import Fusion
        self.enabled = hasattr(fusion, "temporals") and type(fusion).temporal is Fusion.temporal
        if not self.enabled:
            return
        for m in model.cfg.modalities:
            rows = [steps[i].embs[m][steps[i].arrays["mask"][:, MODALITIES.index(m)] > 0]
                    for i in sessions if steps[i] is not None and m in steps[i].embs]
            x = np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)
            if len(x) < 2:
                continue
            mu = x.mean(axis=0)
            sd = np.maximum(x.std(axis=0), 1e-6)
            self.stats[m] = (mu.astype(np.float32), sd.astype(np.float32))

    def _lstm_weights(self, model: Any, m: str) -> list[Any]:
        lstm = model.fusion.temporals[model.cfg.modalities.index(m)].lstm
        return [getattr(lstm, n) for n in ("weight_ih_l0", "weight_ih_l0_reverse") if hasattr(lstm, n)]

    def fold_in(self, model: Any, steps: Sequence[RecordingSteps | None]) -> None:
        import torch

        with torch.no_grad():
            for m, (mu, sd) in self.stats.items():
                for w in self._lstm_weights(model, m):
                    mu_t, sd_t = torch.from_numpy(mu).to(w.device), torch.from_numpy(sd).to(w.device)
                    d = mu.shape[0]
                    w[:, d] += w[:, :d] @ mu_t
                    w[:, :d] *= sd_t
                for rs in steps:
                    if rs is not None and m in rs.embs:
                        rs.embs[m] = ((rs.embs[m] - mu) / sd).astype(np.float32)

    def fold_out(self, model: Any, steps: Sequence[RecordingSteps | None]) -> None:
        import torch

        with torch.no_grad():
            for m, (mu, sd) in self.stats.items():
                for w in self._lstm_weights(model, m):
                    mu_t, sd_t = torch.from_numpy(mu).to(w.device), torch.from_numpy(sd).to(w.device)
                    d = mu.shape[0]
                    w[:, :d] /= sd_t
                    w[:, d] -= w[:, :d] @ mu_t
                for rs in steps:
                    if rs is not None and m in rs.embs:
                        rs.embs[m] = (rs.embs[m] * sd + mu).astype(np.float32)


def fine_tune(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window], *,
              n_steps: int, lr: float, batch_size: int, seed: int, train_encoders: bool,
              progress: Progress, label_smoothing: float = 0.05) -> list[dict[str, Any]]:
    """AdamW with warmup + cosine for `n_steps` batches; returns the loss history (every 10 steps).

    Counted in optimizer steps, not epochs: a streamer's first run may have
    twenty tagged windows, which would be one step per epoch.
    """
    import torch
    import torch.nn.functional as F

    from . import balance
    from .loop import lr_at

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    heads = model.cfg.active_heads
    y = targets_for(windows, heads)
    dev = next(model.parameters()).device
    wts = torch.tensor([w.weight for w in windows], dtype=torch.float32, device=dev)
    train_heads = [h for h in heads if (y[h] >= 0).any()]
    cw = {h: torch.from_numpy(balance.class_weights(y[h], len(heads[h]), 0.5)).float().to(dev) for h in train_heads}
    for name, p in model.named_parameters():
        p.requires_grad_(train_encoders or not name.startswith("encoders."))
    use_emb = not train_encoders
    norm: EmbeddingNorm | None = None
    if use_emb:
        compute_embeddings(model, steps)
        norm = EmbeddingNorm(model, steps, {w.session for w in windows})
        norm.fold_in(model, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    n = len(windows)
    bs = min(batch_size, n)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    progress.start("train", n_steps, "fine-tune")
    model.train()
    if use_emb:
        model.encoders.eval()     # frozen: batch-norm statistics must not drift either
    for step in range(n_steps):
        idx = rng.choice(n, size=bs, replace=False).tolist()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, n_steps, max(1, n_steps // 20), lr, "cosine")
        batch = gather(steps, windows, idx, model.cfg.steps, model.cfg.step_s, model.cfg.modalities, rng,
                       use_emb, augment=True, emb_dims=model.cfg.embed_dims)
        logits = run_model(model, batch, use_emb)
        loss = sum(lg.sum() * 0.0 for lg in logits.values())
        bw = wts[idx]
        for h in train_heads:
            t = torch.from_numpy(y[h][idx]).to(dev)
            keep = t != IGNORE
            if not bool(keep.any()):
                continue
            ce = F.cross_entropy(logits[h][keep].float(), t[keep], weight=cw[h], reduction="none",
                                 label_smoothing=label_smoothing)
            loss = loss + (ce * bw[keep]).sum() / bw[keep].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0 or step + 1 == n_steps:
            rec = {"step": step + 1, "train_loss": float(np.mean(losses[-10:]))}
            history.append(rec)
            progress.advance(step + 1, n_steps, f"loss {rec['train_loss']:.3f}", loss=rec["train_loss"])
    progress.end()
    if norm is not None:
        norm.fold_out(model, steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history


# =========================================================================== scoring and the gate


def _macro_f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    """Macro-F1 over the classes present in y (as metrics.head_metrics), vectorised for permutations."""
    present = np.unique(y)
    f1s = []
    for c in present:
        tp = np.sum((y == c) & (p == c))
        fp = np.sum((y != c) & (p == c))
        fn = np.sum((y == c) & (p != c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def score_model(probs: dict[str, np.ndarray], model_heads: dict[str, list[str]], windows: Sequence[Window],
                eval_heads: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-head metrics by class *name* (the two models' heads may differ); (metrics, predictions)."""
    from .metrics import head_metrics

    y = targets_for(windows, eval_heads)
    metrics, preds = {}, {}
    for h, names in eval_heads.items():
        if h not in probs:
            continue
        own = model_heads[h]
        pred_names = [own[i] for i in probs[h].argmax(axis=1)]
        pred = np.array([names.index(n) if n in names else -1 for n in pred_names], np.int64)
        m = head_metrics(y[h], pred, names)
        if m is not None:
            metrics[h] = m
            preds[h] = pred
    return metrics, preds


def gate(cand: dict[str, Any], cand_pred: dict[str, np.ndarray], inc: dict[str, Any],
         y: dict[str, np.ndarray], eval_heads: dict[str, list[str]], margin: float, alpha: float,
         min_val: int, seed: int = 0, n_perm: int = 1000,
         inc_pred: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Accept when the candidate beats the current model by `margin`, is above chance, and
    beats the current model by more than the luck of which windows were held out.

    Chance: the candidate's own predictions against labels shuffled across
    validation windows (rows together, so heads stay consistent); a head the
    current model lacks (a new user head) counts at chance level for it, the
    null's mean. Better than the current model: a paired permutation test
    that swaps the two models' predictions window by window (heads both
    models have). A dozen held-out windows make a 0.15 gain easy to get by
    luck; both tests at `alpha` keep noise from replacing a good model.
    """
    heads = [h for h in eval_heads if h in cand]
    labelled = {h: y[h] != IGNORE for h in heads}
    n_val = int(max((int(k.sum()) for k in labelled.values()), default=0))
    cand_score = float(np.mean([cand[h]["macro_f1"] for h in heads])) if heads else 0.0
    rng = np.random.default_rng(seed)
    n = len(next(iter(y.values()))) if y else 0
    null = np.zeros(n_perm)
    null_head = {h: np.zeros(n_perm) for h in heads}
    for r in range(n_perm):
        perm = rng.permutation(n)
        vals = []
        for h in heads:
            yy = y[h][perm]
            keep = yy != IGNORE
            v = _macro_f1(yy[keep], cand_pred[h][keep], len(eval_heads[h])) if keep.any() else 0.0
            null_head[h][r] = v
            vals.append(v)
        null[r] = np.mean(vals) if vals else 0.0
    p_value = float((1 + np.sum(null >= cand_score - 1e-12)) / (1 + n_perm))
    inc_heads = {h: (inc[h]["macro_f1"] if h in inc else float(null_head[h].mean())) for h in heads}
    inc_score = float(np.mean(list(inc_heads.values()))) if heads else 0.0
    shared = [h for h in heads if inc_pred is not None and h in inc_pred and h in inc]
    p_better = None
    if shared:
        def diff(swap: np.ndarray) -> float:
            vals = []
            for h in shared:
                keep = y[h] != IGNORE
                c = np.where(swap, inc_pred[h], cand_pred[h])[keep]
                i = np.where(swap, cand_pred[h], inc_pred[h])[keep]
                vals.append(_macro_f1(y[h][keep], c, 0) - _macro_f1(y[h][keep], i, 0))
            return float(np.mean(vals))
        observed = diff(np.zeros(n, bool))
        null_d = np.array([diff(rng.random(n) < 0.5) for _ in range(n_perm // 2)])
        p_better = float((1 + np.sum(null_d >= observed - 1e-12)) / (1 + len(null_d)))
    reasons = []
    if n_val < min_val:
        reasons.append(f"only {n_val} validation windows (need {min_val})")
    if cand_score < inc_score + margin:
        reasons.append(f"macro-F1 {cand_score:.3f} does not beat the current {inc_score:.3f} by {margin:.3f}")
    if p_value > alpha:
        reasons.append(f"not above chance (permutation p = {p_value:.3f} > {alpha})")
    if p_better is not None and p_better > alpha and cand_score >= inc_score + margin:
        reasons.append(f"the gain over the current model could be luck (paired p = {p_better:.3f} > {alpha})")
    return {"heads": heads, "n_val": n_val, "candidate_score": cand_score, "active_score": inc_score,
            "active_per_head": inc_heads, "candidate_per_head": {h: cand[h]["macro_f1"] for h in heads},
            "chance_per_head": {h: float(null_head[h].mean()) for h in heads}, "p_value": p_value,
            "p_better": p_better,
            "margin": margin, "alpha": alpha, "passed": not reasons, "reasons": reasons}


# =========================================================================== review and report


def label_name(w: Window) -> str:
    main = w.labels.get(USER) or w.labels.get("emotion") or w.labels.get("behaviour") or "/".join(
        f"{h}:{c}" for h, c in w.labels.items())
    return main if (w.tag == main or not w.tag) else f"{w.tag} ({main})"


def review(sessions: Sequence[Session], steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
           out: Path, step_s: float, rare: dict[str, int], per_label: int = 8) -> dict[str, Any]:
    """Counts per label and split, and a contact sheet of face crops per label (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for w in windows:
        c = counts.setdefault(label_name(w), {"train": 0, "val": 0})
        c[w.split] = c.get(w.split, 0) + 1
    heads: dict[str, dict[str, int]] = {}
    for w in windows:
        for h, c in w.labels.items():
            heads.setdefault(h, Counter())[c] += 1  # type: ignore[arg-type]
    labels = sorted(counts)
    faces: dict[str, list[np.ndarray]] = {k: [] for k in labels}
    for w in windows:
        bucket = faces[label_name(w)]
        rs = steps[w.session]
        if len(bucket) >= per_label or rs is None or "face" not in rs.arrays:
            continue
        a, b = step_range(w, step_s, rs.n)
        present = [i for i in range(a, b) if rs.arrays["mask"][i, 0] > 0]
        if present:
            bucket.append(rs.arrays["face"][present[len(present) // 2]][0])
    rows = max(1, len(labels))
    fig, axes = plt.subplots(rows, per_label + 1, figsize=(1.1 * (per_label + 1) + 1.5, 1.15 * rows + 0.4),
                             squeeze=False)
    for r, lab in enumerate(labels):
        ax = axes[r][0]
        ax.axis("off")
        n = counts[lab]
        ax.text(1.0, 0.5, f"{lab}\n{n['train']} train / {n['val']} val",
                ha="right", va="center", fontsize=8, transform=ax.transAxes)
        for c in range(per_label):
            ax = axes[r][c + 1]
            ax.axis("off")
            if c < len(faces[lab]):
                ax.imshow(faces[lab][c], cmap="gray", vmin=0, vmax=255)
    fig.suptitle("face crops per label (middle of each window)", fontsize=10)
    fig.tight_layout()
    sheet = out / "contact_sheet.png"
    fig.savefig(sheet, dpi=90)
    plt.close(fig)
    doc = {"labels": counts, "heads": {h: dict(c) for h, c in heads.items()}, "rare_tags": rare,
           "sessions": [{"recording": str(s.recording), "log": str(s.log) if s.log else None, "tags": len(s.tags)}
                        for s in sessions],
           "contact_sheet": str(sheet)}
    (out / "review.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def print_review(progress: Progress, doc: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="labelled windows")
    for c in ("label", "train", "val"):
        t.add_column(c, justify="left" if c == "label" else "right")
    for lab, n in sorted(doc["labels"].items()):
        t.add_row(lab, str(n.get("train", 0)), str(n.get("val", 0)))
    progress.console.print(t)
    if doc["rare_tags"]:
        progress.message("too rare to learn (left out): " +
                         ", ".join(f"{k} ({v})" for k, v in doc["rare_tags"].items()))
    progress.message(f"contact sheet: {doc['contact_sheet']}")


def f1_bars_png(before: dict[str, Any], after: dict[str, Any], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(h, c) for h, m in after.items() for c, v in m["per_class_f1"].items() if v is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(cols) + 1.5), 3.2))
    x = np.arange(len(cols))
    b = [(before.get(h, {}).get("per_class_f1", {}).get(c) or 0.0) for h, c in cols]
    a = [after[h]["per_class_f1"][c] for h, c in cols]
    ax.bar(x - 0.2, b, 0.4, label="current model", color="#8a8f98")
    ax.bar(x + 0.2, a, 0.4, label="candidate", color="#4c9be8")
    ax.set_xticks(x, [f"{h[:3]}:{c}" for h, c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 on held-out windows")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_png(history: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], "o-", ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(d: Path, info: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> tuple[Path, Path]:
    """report.md and report.html: the gate, per-class F1 before/after, confusions, data, rare tags."""
    import html as H

    g = info["gate"]
    lines = [f"# Personalized model {info['version']}", "",
             f"Decision: **{info['status']}** ({'; '.join(g['reasons']) or 'beats the current model'})", "",
             f"Held-out windows: {info['data']['val']} ({info['split']['mode']} split). Mean macro-F1: candidate "
             f"{g['candidate_score']:.3f}, current model ({info['active_before']}) {g['active_score']:.3f}, "
             f"chance test p = {g['p_value']:.3f}"
             + (f", better-than-current test p = {g['p_better']:.3f}." if g.get("p_better") is not None else "."), "",
             "| head | class | current F1 | candidate F1 | support |", "|---|---|---|---|---|"]
    for h, m in after.items():
        for c, v in m["per_class_f1"].items():
            if v is None:
                continue
            b = before.get(h, {}).get("per_class_f1", {}).get(c)
            lines.append(f"| {h} | {c} | {'–' if b is None else f'{b:.3f}'} | {v:.3f} | {m['support'][c]} |")
    lines += ["", "| head | current macro-F1 | candidate macro-F1 |", "|---|---|---|"]
    for h in g["heads"]:
        lines.append(f"| {h} | {g['active_per_head'][h]:.3f} | {g['candidate_per_head'][h]:.3f} |")
    rare = info["data"]["rare_tags"]
    lines += ["", "## Data", "", f"Sessions: {len(info['data']['sessions'])}; windows: "
              f"{info['data']['windows']} ({info['data']['train']} train, {info['data']['val']} held out, "
              f"{info['data']['pseudo']} pseudo-labelled).", "",
              "Too rare to learn (fewer than %d examples, left out): %s" %
              (info["data"]["min_examples"], ", ".join(f"{k} ({v})" for k, v in rare.items()) or "none"), ""]
    imgs = ["f1_before_after.png", "training_loss.png", "contact_sheet.png"] + \
        sorted(p.name for p in d.glob("confusion_*.png"))
    lines += [f"![{i}]({i})" for i in imgs if (d / i).is_file()]
    md = d / "report.md"
    md.write_text("\n".join(lines) + "\n")
    body = []
    in_table = False
    for ln in lines:
        if ln.startswith("|"):
            cells = [c.strip() for c in ln.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{H.escape(c)}</th>" for c in cells) + "</tr>")
                continue
            body.append("<tr>" + "".join(f"<td>{H.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if ln.startswith("# "):
            body.append(f"<h1>{H.escape(ln[2:])}</h1>")
        elif ln.startswith("## "):
            body.append(f"<h2>{H.escape(ln[3:])}</h2>")
        elif ln.startswith("!["):
            src = ln[ln.index("(") + 1:-1]
            body.append(f'<img src="{H.escape(src)}" alt="{H.escape(src)}">')
        elif ln:
            body.append(f"<p>{H.escape(ln).replace('**', '')}</p>")
    if in_table:
        body.append("</table>")
    page = ("<!doctype html><meta charset='utf-8'><title>obs-merlb personalization</title>"
            "<style>body{font:14px system-ui;margin:2em;max-width:70em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%;margin:8px 0}</style>" + "\n".join(body))
    page_path = d / "report.html"
    page_path.write_text(page)
    return md, page_path


# =========================================================================== worker


def default_worker_url(config: dict[str, Any]) -> str:
    sec = config.get("personalize") or {}
    if isinstance(sec.get("worker_url"), str) and sec["worker_url"]:
        return sec["worker_url"]
    for name in ("overlay", "engine"):
        s = config.get(name)
        if isinstance(s, dict) and isinstance(s.get("port"), int) and s["port"] > 0:
            return f"ws://127.0.0.1:{s['port']}/ws"
    return "ws://127.0.0.1:8765/ws"


def notify_worker(url: str, model_dir: Path | None, timeout: float = 20.0) -> tuple[bool, str]:
    """Ask a running worker to `reload_model`; (confirmed, message). No worker is not an error:
    the engine loads the active model when it next starts."""
    from websockets.sync.client import connect

    target = str(model_dir) if model_dir is not None else None
    try:
        with connect(url, open_timeout=3, close_timeout=1) as ws:
            cmd: dict[str, Any] = {"v": 1, "type": "command", "cmd": "reload_model"}
            if target:
                cmd["path"] = target
            ws.send(json.dumps(cmd))
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                try:
                    ev = json.loads(ws.recv(timeout=max(0.1, end - time.monotonic())))
                except TimeoutError:
                    break
                if ev.get("type") == "hello" and (target is None or ev.get("config", {}).get("model") == target):
                    return True, f"the running worker switched to {target or 'its model'}"
                if ev.get("type") == "error" and ev.get("where") == "reload_model":
                    return False, f"the worker could not load it: {ev.get('message')}"
            return False, "reload sent; the worker did not confirm in time"
    except (OSError, TimeoutError) as e:
        return False, f"no worker at {url} ({e.__class__.__name__}); it loads the active model at its next start"
    except Exception as e:  # noqa: BLE001 - a refused handshake etc.; the registry is already right
        return False, f"could not reach the worker at {url}: {e}"


def default_model() -> Path | None:
    """What the worker runs when the registry has no active version: the shipped model."""
    from obs_merlb.registry import default_model_dir
    return default_model_dir()


def current_model(base: str | None) -> tuple[Path, str]:
    """(folder, name) of the model a candidate must beat."""
    active = registry.active_model_dir()
    if active is not None:
        return active, active.name
    if base:
        return Path(base), "base"
    d = default_model()
    if d is None:
        raise SystemExit("merlb personalize: no model to start from: no active personalized model and no "
                         "shipped model in assets/model; pass --base DIR (a saved model folder)")
    return d, registry.DEFAULT


# =========================================================================== the run


def build_data(args: argparse.Namespace, config: dict[str, Any], progress: Progress, step_s: float,
               model_for_pseudo: Any = None, calibration: Calibration | None = None) -> dict[str, Any]:
    from obs_merlb.session import default_sessions_dir

    from .preprocess import FeatureSettings, default_cache

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


def train_candidate(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import torch

    from obs_merlb import config as cfgmod
    from obs_merlb.model.config import load_config
    from obs_merlb.model.export import export_onnx
    from obs_merlb.model.io import load_model, save_model

    from .metrics import confusion_png

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

        progress.start("evaluate", 2, "score on held-out windows")
        heads = model.cfg.active_heads
        eval_heads = {h: names for h, names in heads.items() if (targets_for(val_w, {h: names})[h] >= 0).any()}
        cand_logits, val_sets = window_logits(model, steps, val_w)
        calibration, calib_rows = fit_calibration(cand_logits, val_sets, targets_for(val_w, heads),
                                                  load_calibration(base_dir))
        after, cand_pred = score_model({h: calibration.probs(h, lg, val_sets) for h, lg in cand_logits.items()},
                                       heads, val_w, eval_heads)
        progress.advance(1, 2, "candidate")
        before, inc_pred = score_model(predict_windows(incumbent, steps, val_w), incumbent.cfg.active_heads, val_w,
                                eval_heads)
        progress.advance(2, 2, "current model")
        progress.end()
        g = gate(after, cand_pred, before, targets_for(val_w, eval_heads), eval_heads, args.margin, args.alpha,
                 args.min_val, args.seed, inc_pred=inc_pred)
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
            _, notice = notify_worker(args.worker_url or default_worker_url(config), version.path,
                                      timeout=args.notify_timeout)
    result = {"type": "result", "version": version.name, "path": str(version.path), "status": status,
              "activated": activated, "candidate_score": g["candidate_score"], "active_score": g["active_score"],
              "p_value": g["p_value"], "reasons": g["reasons"], "report": str(version.path / "report.html"),
              "rare_tags": data["rare"], "seconds": round(time.perf_counter() - t_start, 1),
              "per_head": {h: {"candidate": g["candidate_per_head"][h], "current": g["active_per_head"][h]}
                           for h in g["heads"]},
              "worker": notice}
    _print_result(progress, result, after, before)
    progress.emit(result)
    return result


def _print_result(progress: Progress, result: dict[str, Any], after: dict[str, Any], before: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"held-out per-class F1: current vs {result['version']}")
    for c in ("head", "class", "current", "candidate", "n"):
        t.add_column(c, justify="left" if c in ("head", "class") else "right")
    for h, m in after.items():
        for c, v in m["per_class_f1"].items():
            if v is None:
                continue
            b = before.get(h, {}).get("per_class_f1", {}).get(c)
            t.add_row(h, c, "–" if b is None else f"{b:.2f}", f"{v:.2f}", str(m["support"][c]))
    progress.console.print(t)
    verdict = {"accepted": "[green]accepted[/]", "forced": "[yellow]forced[/]", "rejected": "[red]rejected[/]"}
    progress.message(f"{result['version']}: {verdict[result['status']]} - mean macro-F1 "
                     f"{result['candidate_score']:.3f} vs current {result['active_score']:.3f} "
                     f"(p = {result['p_value']:.3f}) {'; '.join(result['reasons'])}")
    if result["activated"]:
        progress.message(f"active model: {result['version']}. {result['worker']}")
    progress.message(f"report: {result['report']}")


# =========================================================================== registry commands


def cmd_list(args: argparse.Namespace, progress: Progress) -> int:
    from rich.table import Table

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
    from obs_merlb import config as cfgmod

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
        progress.message(f"[red]{e.args[0]}[/]")
        return 1
    registry.set_active(name, "rollback" if rollback else ("forced" if args.force else "activated by hand"), root)
    target = registry.active_model_dir(root) or default_model()
    msg = ""
    if not args.no_notify:
        _, msg = notify_worker(args.worker_url or default_worker_url(cfgmod.load_config()), target,
                               timeout=args.notify_timeout)
    progress.message(f"active model: {name}. {msg}")
    progress.emit({"type": "result", "active": name, "path": str(target) if target else None, "worker": msg})
    return 0


def cmd_review(args: argparse.Namespace, progress: Progress) -> int:
    from obs_merlb import config as cfgmod
    from obs_merlb.model.config import load_config

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


# =========================================================================== CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="[ACTION] RECORDING",
                        help="recordings or folders of them (default: every session log with its recording); "
                             "or an action first: review, list, rollback [VERSION], activate VERSION")
    g = parser.add_argument_group("data")
    g.add_argument("--pair", action="append", metavar="REC=LOG", help="pair a recording with a session log")
    g.add_argument("--sessions-dir", help="where session logs are (default: the user data folder)")
    g.add_argument("--labels", metavar="CSV", help="path,start,end,label rows adding or correcting labels "
                                                    "(label 'ignore' deletes the tags it overlaps)")
    g.add_argument("--before", type=float, default=2.0, help="seconds before a tag its window starts (2)")
    g.add_argument("--after", type=float, default=1.0, help="seconds after a tag its window ends (1)")
    g.add_argument("--min-examples", type=int, default=5, help="tags seen fewer times are too rare to learn (5)")
    g.add_argument("--pseudo-labels", action="store_true", help="add confident predictions on untagged stretches")
    g.add_argument("--pseudo-threshold", type=float, default=0.85)
    g.add_argument("--pseudo-weight", type=float, default=0.3)
    g.add_argument("--val-fraction", type=float, default=0.25, help="held-out share (0.25)")
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
    t.add_argument("--device", default="auto", help="auto (CUDA when there), cpu, cuda, cuda:N")
    t.add_argument("--steps", type=int, default=300, help="optimizer steps (300)")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--seed", type=int, default=0)
    a = parser.add_argument_group("gate and registry")
    a.add_argument("--margin", type=float, default=0.02, help="macro-F1 the candidate must gain (0.02)")
    a.add_argument("--alpha", type=float, default=0.05, help="permutation-test level against chance (0.05)")
    a.add_argument("--min-val", type=int, default=6, help="fewest held-out windows to decide on (6)")
    a.add_argument("--force", action="store_true", help="activate even if the gate says no")
    a.add_argument("--no-activate", action="store_true", help="register the candidate only")
    a.add_argument("--worker-url", help="the worker's WebSocket (default from config.toml, ws://127.0.0.1:8765/ws)")
    a.add_argument("--no-notify", action="store_true", help="do not tell a running worker")
    a.add_argument("--notify-timeout", type=float, default=20.0)
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
                progress.message("[red]activate needs a VERSION[/] (see `merlb personalize list`)")
                return 2
            return cmd_activate(args, progress, rest[0] if rest else None, rollback=action == "rollback")
        args.paths = rest
        if action == "review" or args.review:
            return cmd_review(args, progress)
        train_candidate(args, progress)
        # A rejected candidate is a finished run (the gate did its job), not a failure.
        return 0
    except SystemExit as e:
        if isinstance(e.code, str):
            progress.message(f"[red]{e.code}[/]")
            progress.emit({"type": "error", "message": e.code})
            return 2
        raise
