"""The timeline of `merlb analyze`, written as it is made and read back as a stream.

Two files grow row by row, one row per analysed frame: `timeline.csv` (for
spreadsheets) and `timeline.jsonl` (JSON lines: one object per line, so a
reader never loads the whole file and a crash leaves every complete line
readable). While a run goes on they grow under hidden partial names
(`PARTIAL_PREFIX`), and `publish` gives them their own names once the run
is complete, so a folder never shows a timeline that stops short.
`offsets()` gives both files' sizes at a row boundary, which a resumed run
truncates back to.

`PlotSeries` reduces the rows, in one pass, to what a screen shows: about
1,000 time buckets, each keeping its minimum and maximum (a spike survives
downsampling) and its mean probabilities, and runs of the label shown.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from obs_merlb.labels import AROUSAL, EMOTIONS, MODALITIES, VALENCE

CSV_NAME = "timeline.csv"
JSONL_NAME = "timeline.jsonl"
COLUMNS = (["t", "label", "confidence", "visible", "face_present", "speech", "valence_score", "arousal_score"]
           + [f"p_{e}" for e in EMOTIONS] + [f"valence_{v}" for v in VALENCE]
           + [f"arousal_{a}" for a in AROUSAL] + [f"share_{m}" for m in MODALITIES])
PARTIAL_PREFIX = ".partial-"   # a run's rows until it is complete
PLOT_BUCKETS = 1000            # x 2 points (min and max) per line: about a screen's width


def row_from_event(ev: dict[str, Any]) -> dict[str, Any]:
    """A `state` event as a timeline row."""
    row: dict[str, Any] = {"t": ev["t"], "label": ev["label"], "confidence": ev["confidence"],
                           "visible": ev["visible"], "face_present": ev["face_present"],
                           "speech": ev["speech"], "valence_score": ev["valence_score"],
                           "arousal_score": ev["arousal_score"]}
    row.update({f"p_{k}": v for k, v in ev["probs"].items()})
    row.update({f"valence_{k}": v for k, v in ev["valence"].items()})
    row.update({f"arousal_{k}": v for k, v in ev["arousal"].items()})
    row.update({f"share_{k}": v for k, v in ev["contributions"].items()})
    return row


class TimelineWriter:
    """Appends rows to the partial timeline.csv and timeline.jsonl in ``folder``.

    ``resume`` = (csv bytes, jsonl bytes, rows) from `offsets()` continues
    files an interrupted run left, cut back to that row; otherwise both
    files start empty. `final_paths` are the names `publish` gives them.
    """

    def __init__(self, folder: str | os.PathLike, resume: tuple[int, int, int] | None = None) -> None:
        folder = Path(folder)
        self.final_paths = (folder / CSV_NAME, folder / JSONL_NAME)
        self.csv_path, self.jsonl_path = self.partial_paths(folder)
        if resume is not None:
            for path, size in ((self.csv_path, resume[0]), (self.jsonl_path, resume[1])):
                if not path.is_file() or path.stat().st_size < size:
                    raise ValueError(f"{path} is shorter than its checkpoint says")
                os.truncate(path, size)
            self.rows = resume[2]
        else:
            self.rows = 0
        self._csv = open(self.csv_path, "ab" if resume else "wb")
        self._jsonl = open(self.jsonl_path, "ab" if resume else "wb")
        self._buf = io.StringIO()
        self._w = csv.DictWriter(self._buf, fieldnames=COLUMNS, extrasaction="ignore")
        if resume is None:
            self._w.writeheader()
            self._take_csv()

    @staticmethod
    def partial_paths(folder: str | os.PathLike) -> tuple[Path, Path]:
        """Where a run's rows grow (csv, jsonl) until `publish` names them."""
        return Path(folder) / (PARTIAL_PREFIX + CSV_NAME), Path(folder) / (PARTIAL_PREFIX + JSONL_NAME)

    def _take_csv(self) -> None:
        self._csv.write(self._buf.getvalue().encode("utf-8"))
        self._buf.seek(0)
        self._buf.truncate()

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow(row)
        self._take_csv()
        self._jsonl.write((json.dumps(row) + "\n").encode("utf-8"))
        self.rows += 1

    def flush(self) -> None:
        self._csv.flush()
        self._jsonl.flush()

    def offsets(self) -> tuple[int, int, int]:
        """(csv bytes, jsonl bytes, rows) after everything written so far."""
        self.flush()
        return self._csv.tell(), self._jsonl.tell(), self.rows

    def close(self) -> None:
        self._csv.close()
        self._jsonl.close()


def publish(moves: Sequence[tuple[Path, Path]], texts: Sequence[tuple[Path, str]]) -> None:
    """A run's outputs take their names together: files in ``moves`` (source, name) and
    ``texts`` (name, content), the texts written to hidden files first, so a full disk
    fails before any output of an earlier run is replaced."""
    written: list[tuple[Path, Path]] = []
    mask = os.umask(0)
    os.umask(mask)
    try:
        for final, text in texts:
            fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX + final.name + ".", dir=final.parent)
            written.append((Path(tmp), final))
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o666 & ~mask)      # a report, not a secret: the usual mode
                fh.write(text.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        for src, final in [*moves, *written]:
            os.replace(src, final)
    except BaseException:
        for tmp, _ in written:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def iter_rows(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The rows of a timeline.jsonl, one at a time."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


class PlotSeries:
    """One pass over the rows -> downsampled series for the report's plots.

    Rows go into ``buckets`` equal slices of [0, duration]. Lines (valence,
    arousal) keep each bucket's minimum and maximum at their own times; the
    stacked probabilities keep each bucket's mean (they must still sum to
    one); the label strip keeps each bucket's most frequent label, merged
    into runs. A recording with fewer rows than buckets plots every row.
    """

    LINES = ("valence_score", "arousal_score")

    def __init__(self, duration: float, buckets: int = PLOT_BUCKETS) -> None:
        self.width = max(float(duration), 1e-6) / buckets
        self.n = buckets
        self.count = np.zeros(buckets, np.int64)
        self.t_sum = np.zeros(buckets)
        self.p_sum = np.zeros((buckets, len(EMOTIONS)))
        self.lo = {k: np.full(buckets, np.inf) for k in self.LINES}
        self.hi = {k: np.full(buckets, -np.inf) for k in self.LINES}
        self.lo_t = {k: np.zeros(buckets) for k in self.LINES}
        self.hi_t = {k: np.zeros(buckets) for k in self.LINES}
        self.labels: list[dict[str, int]] = [{} for _ in range(buckets)]
        self.label_counts: dict[str, int] = {}
        self.rows = 0
        self.last_t = 0.0

    def add(self, row: dict[str, Any]) -> None:
        t = float(row["t"])
        b = min(self.n - 1, max(0, int(t / self.width)))
        self.rows += 1
        self.last_t = max(self.last_t, t)
        self.count[b] += 1
        self.t_sum[b] += t
        self.p_sum[b] += [float(row[f"p_{e}"]) for e in EMOTIONS]
        for k in self.LINES:
            v = float(row[k])
            if v < self.lo[k][b]:
                self.lo[k][b], self.lo_t[k][b] = v, t
            if v > self.hi[k][b]:
                self.hi[k][b], self.hi_t[k][b] = v, t
        label = str(row["label"])
        self.labels[b][label] = self.labels[b].get(label, 0) + 1
        self.label_counts[label] = self.label_counts.get(label, 0) + 1

    def times(self) -> np.ndarray:
        used = self.count > 0
        return self.t_sum[used] / self.count[used]

    def probs(self) -> np.ndarray:
        """(buckets used, emotions) mean probabilities."""
        used = self.count > 0
        return self.p_sum[used] / self.count[used, None]

    def line(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(times, values): each used bucket's minimum and maximum, in time order."""
        used = np.flatnonzero(self.count > 0)
        ts, vs = [], []
        for b in used:
            pts = sorted({(self.lo_t[key][b], self.lo[key][b]), (self.hi_t[key][b], self.hi[key][b])})
            for t, v in pts:
                ts.append(t)
                vs.append(v)
        return np.asarray(ts), np.asarray(vs)

    def label_runs(self, tail: float) -> list[tuple[float, float, str]]:
        """(start, end, label) spans of the most frequent label per bucket, merged."""
        runs: list[tuple[float, float, str]] = []
        starts = self.times()
        used = np.flatnonzero(self.count > 0)
        for n, b in enumerate(used):
            label = max(self.labels[b].items(), key=lambda kv: kv[1])[0]
            t0 = float(starts[n]) if n == 0 else runs[-1][1]
            t1 = float(starts[n + 1]) if n + 1 < len(used) else float(starts[n]) + tail
            if runs and runs[-1][2] == label:
                runs[-1] = (runs[-1][0], t1, label)
            else:
                runs.append((t0, t1, label))
        return runs
