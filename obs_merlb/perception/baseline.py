"""The person's voice baseline: what this streamer's speech sounds like on average.

A voice model trained on 130 speakers hears a deep voice as "sad" and a
bright one as "happy". Knowing the person's own spectrum, it can judge the
change instead. The baseline is the mean and spread of each mel band of the
person's speech frames, each 1 s window centred first (the voice encoder
removes a window's overall level, so the baseline must not hold loudness).
It is gathered without labels, from every step the VAD calls speech.

`normalise` maps a step's log-mel so that the person's band statistics
become the population's (the prior the model ships with). Until the person
has spoken for a while the estimate is pulled toward that prior
(`PRIOR_FRAMES` frames of pseudo-evidence), so a model with a baseline
starts out exactly as the same model without one and drifts toward the
person as they talk. Training (train/data.py), evaluation (`merlb eval
--adapt person`) and the live engine use this one class.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .voice import N_MELS, N_FRAMES, SPEECH_THRESHOLD

# Every voice step adds its whole 1 s window (N_FRAMES frames), and steps
# overlap: at the 0.25 s step one second of speech adds 4 windows.
PRIOR_FRAMES = 30 * N_FRAMES       # 30 speech steps (7.5 s of speech): how much the prior counts
LEARNED_FRAMES = 240 * N_FRAMES    # 240 speech steps (a minute of speech): the person's own from here
GAIN_LIMITS = (0.5, 2.0)   # a band's spread is never stretched or squeezed beyond this
MIN_STD = 1e-3
FORMAT = 1                 # the saved file's layout
MAX_FILE_BYTES = 2**20     # a saved baseline is about 3 KB; anything near this is not one
# Counts stay exact below 2**53: past it a step's frames no longer add to the
# float count, and learning would stop without a word. No one speaks that long.
MAX_FRAMES = 2.0 ** 53


@dataclass
class BandStats:
    """Sums over centred speech frames: count, per-band sum and sum of squares."""

    n: float = 0.0
    s1: np.ndarray = field(default_factory=lambda: np.zeros(N_MELS))
    s2: np.ndarray = field(default_factory=lambda: np.zeros(N_MELS))

    def __add__(self, other: "BandStats") -> "BandStats":
        return BandStats(self.n + other.n, self.s1 + other.s1, self.s2 + other.s2)

    def __sub__(self, other: "BandStats") -> "BandStats":
        return BandStats(self.n - other.n, self.s1 - other.s1, self.s2 - other.s2)

    @staticmethod
    def of(logmel: np.ndarray, speech: np.ndarray | None = None) -> "BandStats":
        """Statistics of steps' log-mels (steps, 1, n_mels, frames) or one (1, n_mels, frames).

        `speech` (steps,) speech probabilities: only steps at or above the
        VAD threshold count.
        """
        x = np.asarray(logmel, np.float64).reshape(-1, N_MELS, N_FRAMES)
        if speech is not None:
            x = x[np.asarray(speech).reshape(-1) >= SPEECH_THRESHOLD]
        if not len(x):
            return BandStats()
        x = x - x.mean(axis=(1, 2), keepdims=True)
        return BandStats(float(x.shape[0] * N_FRAMES), x.sum(axis=(0, 2)), (x * x).sum(axis=(0, 2)))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "s1": self.s1.tolist(), "s2": self.s2.tolist()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "BandStats":
        """The statistics `to_dict` wrote; ValueError for any that `of` and `+` could not have made
        (a hand edit or damage would otherwise skew every voice step without a word)."""
        s1, s2 = np.asarray(d["s1"], np.float64), np.asarray(d["s2"], np.float64)
        n = d["n"]
        if isinstance(n, bool) or not isinstance(n, (int, float)):
            raise ValueError(f"the frame count must be a number, not {n!r}")
        n = float(n)
        if s1.shape != (N_MELS,) or s2.shape != (N_MELS,) or not np.isfinite([n, *s1, *s2]).all() or n < 0:
            raise ValueError("band statistics of the wrong shape or not finite")
        if n >= MAX_FRAMES or n % N_FRAMES:
            raise ValueError(f"a frame count of {n:g} is not whole steps of {N_FRAMES} frames below 2**53")
        # Cauchy-Schwarz: each band's sum of squares is at least its squared sum over the count
        # (equal for a constant band; the margin is float rounding of the sums).
        if (s2 < 0).any() or (s1 * s1 > n * s2 * (1 + 1e-6) + 1e-9).any():
            raise ValueError("band sums that no set of frames has (a negative spread)")
        return BandStats(n, s1, s2)


@dataclass(frozen=True)
class Prior:
    """The population's band mean and spread (centred speech frames of the training data)."""

    mean: np.ndarray
    std: np.ndarray

    @staticmethod
    def of(stats: BandStats) -> "Prior":
        n = max(stats.n, 1.0)
        mean = stats.s1 / n
        return Prior(mean, np.sqrt(np.maximum(stats.s2 / n - mean ** 2, MIN_STD ** 2)))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": [round(float(v), 6) for v in self.mean], "std": [round(float(v), 6) for v in self.std]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Prior":
        mean, std = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
        if mean.shape != (N_MELS,) or std.shape != (N_MELS,) or not (np.isfinite(mean).all() and (std > 0).all()):
            raise ValueError(f"a voice baseline prior needs {N_MELS} finite means and positive spreads")
        return Prior(mean, std)


def transform(prior: Prior, stats: BandStats) -> tuple[np.ndarray, np.ndarray]:
    """(shift, gain) per band: normalised = centre + (x - centre - shift) * gain + prior.mean."""
    n = PRIOR_FRAMES + stats.n
    mean = (PRIOR_FRAMES * prior.mean + stats.s1) / n
    second = (PRIOR_FRAMES * (prior.std ** 2 + prior.mean ** 2) + stats.s2) / n
    std = np.sqrt(np.maximum(second - mean ** 2, MIN_STD ** 2))
    return mean, np.clip(prior.std / std, *GAIN_LIMITS)


def apply(logmel: np.ndarray, prior: Prior, stats: BandStats) -> np.ndarray:
    """Steps' log-mels (..., n_mels, frames) seen through the person's baseline, same shape and dtype."""
    if stats.n <= 0:
        return logmel
    shift, gain = transform(prior, stats)
    x = np.asarray(logmel, np.float32)
    centre = x.mean(axis=(-2, -1), keepdims=True)
    out = centre + (x - centre - shift.astype(np.float32)[:, None]) * gain.astype(np.float32)[:, None] \
        + prior.mean.astype(np.float32)[:, None]
    return out.astype(logmel.dtype, copy=False)


class VoiceBaseline:
    """A live person baseline: update with each voice step, normalise each step, save, reset."""

    def __init__(self, prior: Prior, stats: BandStats | None = None, step_s: float = 0.25) -> None:
        self.prior, self.step_s = prior, step_s
        self.stats = stats or BandStats()

    @property
    def seconds(self) -> float:
        """Speech heard so far, in seconds (one step's window adds `step_s` of new audio)."""
        return self.stats.n / N_FRAMES * self.step_s

    @property
    def learning(self) -> bool:
        return self.stats.n < LEARNED_FRAMES

    @property
    def progress(self) -> float:
        return min(1.0, self.stats.n / LEARNED_FRAMES)

    def update(self, logmel: np.ndarray, speech_prob: float) -> None:
        if speech_prob >= SPEECH_THRESHOLD and np.isfinite(logmel).all():
            self.stats = self.stats + BandStats.of(logmel)

    def normalise(self, logmel: np.ndarray) -> np.ndarray:
        return apply(logmel, self.prior, self.stats)

    def reset(self) -> None:
        self.stats = BandStats()

    def save(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        """Atomically: a crash mid-write leaves the previous file. `meta`: more top-level
        fields (the live engine's profile and model prior), read back by `read`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, **(meta or {}), "stats": self.stats.to_dict()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def read_stats(path: Path) -> BandStats:
        """The saved statistics; ValueError (with the reason) for a file that is not one."""
        return VoiceBaseline.read(path)[0]

    @staticmethod
    def read(path: Path) -> tuple[BandStats, dict[str, Any]]:
        """The saved statistics and the whole document (its `meta` fields); ValueError as `read_stats`."""
        try:
            # A FIFO or device would block or never end on open/read: only a regular file is read.
            if not path.is_file():
                raise ValueError("not a regular file")
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"over {MAX_FILE_BYTES // 2**20} MB, not a saved baseline")
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
            return BandStats.from_dict(doc["stats"]), doc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError,
                RecursionError) as e:      # RecursionError: JSON nested deeper than the parser goes
            raise ValueError(str(e) or type(e).__name__) from None
