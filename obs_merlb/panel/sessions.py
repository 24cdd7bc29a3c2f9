"""Past sessions for the panel: list the session logs, summarise one, find its report.

A session log (obs_merlb/session.py) holds every event of a stream, ~15
`state` lines a second, so an evening is a few hundred thousand lines. The
list view only counts tags and highlights by substring (no JSON parsing);
the full parse happens for the one session the streamer opens, off the GUI
thread.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obs_merlb.session import SUFFIX, default_sessions_dir

REPORT_DIR_SUFFIX = ".report"


@dataclass
class SessionSummary:
    path: Path
    name: str
    mtime: float
    size: int
    tags: int
    highlights: int


@dataclass
class SessionDetail:
    path: Path
    recording: str | None = None
    start_wall: float | None = None
    duration_s: float = 0.0
    t: list[float] = field(default_factory=list)
    valence: list[float] = field(default_factory=list)
    arousal: list[float] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    highlights: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)


def list_sessions(directory: str | os.PathLike[str] | None = None) -> list[SessionSummary]:
    """Every session log in the folder, newest first."""
    d = Path(directory) if directory is not None else default_sessions_dir()
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("*" + SUFFIX):
        try:
            st = p.stat()
            tags = highlights = 0
            with open(p, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    # The writer uses compact separators, so the type key is exact.
                    if '"type":"tag"' in line:
                        tags += 1
                    elif '"type":"highlight"' in line:
                        highlights += 1
        except OSError:
            continue
        out.append(SessionSummary(p, p.name[: -len(SUFFIX)], st.st_mtime, st.st_size, tags, highlights))
    out.sort(key=lambda s: s.mtime, reverse=True)
    return out


def load_session(path: str | os.PathLike[str], max_points: int = 4000) -> SessionDetail:
    """Series for plotting (decimated to about max_points), tags, highlights."""
    p = Path(path)
    detail = SessionDetail(p)
    t0: float | None = None
    raw: list[tuple[float, float, float]] = []
    with open(p, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
            if not isinstance(ev, dict):
                continue
            kind = ev.get("type")
            if detail.start_wall is None and isinstance(ev.get("wall"), (int, float)):
                detail.start_wall = float(ev["wall"])
            if kind == "session" and ev.get("event") == "open" and ev.get("recording"):
                detail.recording = str(ev["recording"])
            elif kind == "state" and isinstance(ev.get("t"), (int, float)):
                t = float(ev["t"])
                t0 = t if t0 is None else t0
                raw.append((t, float(ev.get("valence_score") or 0.0), float(ev.get("arousal_score") or 0.0)))
                label = str(ev.get("label", "uncertain"))
                detail.labels[label] = detail.labels.get(label, 0) + 1
            elif kind == "tag":
                detail.tags.append(ev)
            elif kind == "highlight":
                detail.highlights.append(ev)
    if raw:
        step = max(1, len(raw) // max_points)
        for t, v, a in raw[::step]:
            detail.t.append(t)
            detail.valence.append(v)
            detail.arousal.append(a)
        detail.duration_s = raw[-1][0] - raw[0][0]
    return detail


def report_dir_for(session_path: str | os.PathLike[str]) -> Path:
    """Where the panel asks `merlb analyze` to write a session's report."""
    p = Path(session_path)
    return p.with_name(p.name[: -len(SUFFIX)] + REPORT_DIR_SUFFIX) if p.name.endswith(SUFFIX) \
        else p.with_suffix(REPORT_DIR_SUFFIX)


def find_report(session_path: str | os.PathLike[str], recording: str | None = None) -> Path | None:
    """The HTML report of a session, if `merlb analyze` wrote one where we look.

    Looks in the panel's own report folder beside the log first, then where
    `merlb analyze REC` puts it by default, then beside the recording.
    """
    p = Path(session_path)
    stem = p.name[: -len(SUFFIX)] if p.name.endswith(SUFFIX) else p.stem
    folders = [report_dir_for(p)]
    if recording:
        rec = Path(recording)
        # `merlb analyze REC` with no --out writes to the user data dir; check
        # there first. report.py imports the engine (OpenCV), which the panel
        # otherwise never loads: imported only when a session names a recording.
        from obs_merlb.report import default_out_dir

        folders += [default_out_dir(rec), rec.with_suffix(REPORT_DIR_SUFFIX),
                    rec.parent / (rec.stem + "_report"), rec.parent / rec.stem]
    names = ("report.html", "index.html", f"{stem}.html", f"{stem}.report.html")
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    for folder in folders[:1]:
        if folder.is_dir():
            htmls = sorted(folder.glob("*.html"))
            if htmls:
                return htmls[0]
    return None
