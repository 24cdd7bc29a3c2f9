"""The labelled windows of past streams: recordings paired with session logs, tags mapped to
heads, a labels CSV applied, rare tags set aside, and a time-disjoint train/validation split."""
from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from obs_merlb import labels as L
from obs_merlb.session import SUFFIX as SESSION_SUFFIX, read_session

log = logging.getLogger(__name__)

RECORDING_EXT = {".mkv", ".mp4", ".flv", ".mov"}
# Heads a personalized model may be trained on; "user" holds the streamer's own classes.
PHEADS: tuple[str, ...] = ("emotion", "valence", "arousal", "behaviour", "user")
USER = "user"
IGNORE_LABELS = {"ignore", "-", "none", "delete", "skip"}

# Streamer words for the usual moments; config.toml can add or override.
DEFAULT_TAG_MAP: dict[str, dict[str, str]] = {
    "hype": {"emotion": "happy", "valence": "positive", "arousal": "high"},
    "funny": {"emotion": "happy", "valence": "positive", "arousal": "high"},
    "frustrated": {"emotion": "angry", "valence": "negative", "arousal": "high"},
    "calm": {"emotion": "neutral", "valence": "neutral", "arousal": "low"},
}


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
    the recording file. After a `resume` line (a worker restarted during the
    recording, whose stream clock started again at zero) a tag's time is its
    wall time minus the recording's start, which the line carries as
    `recording_wall` (obs_merlb/session.py).
    """
    offset: float | None = None
    resumed = False                   # after a `resume` line tags are placed by wall time...
    start_wall: float | None = None   # ...from the recording's start (unknown: they cannot be placed)
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
        elif ev.get("type") == "session" and ev.get("event") == "resume":
            rw = ev.get("recording_wall")
            resumed, start_wall = True, float(rw) if isinstance(rw, (int, float)) else None
            recording = recording or ev.get("recording")
        elif ev.get("type") == "tag" and isinstance(ev.get("t"), (int, float)) and ev.get("name"):
            if not resumed:
                tags.append((float(ev["t"]) - (offset or 0.0), str(ev["name"])))
            elif start_wall is not None and isinstance(ev.get("wall"), (int, float)):
                tags.append((float(ev["wall"]) - start_wall, str(ev["name"])))
    return [(t, n) for t, n in tags if t >= 0], recording, wall


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
        missing = [p for p in (rec, logp) if not Path(p).expanduser().is_file()]
        if missing:
            raise SystemExit(f"merlb personalize: --pair {pair}: no such file: {', '.join(missing)}")
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
    stats = {"added": 0, "replaced": 0, "deleted": 0}
    by_path = {s.recording.resolve(): i for i, s in enumerate(sessions)}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"merlb personalize: --labels {csv_path}: cannot read "
                         f"({getattr(e, 'strerror', None) or e})") from None
    for line_no, row in enumerate(rows, start=2):
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
        try:
            si, a, b = by_path[p], float(row["start"]), float(row["end"])
        except ValueError:
            raise SystemExit(f"merlb personalize: {csv_path}:{line_no}: start and end are seconds, "
                             f"got {row['start']!r} and {row['end']!r}") from None
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
