"""Voice functionals: how a stretch of speech sounds as a whole, judged against the person.

Per 10 ms frame of a window's speech steps: 20 MFCCs (the DCT of the 64
log-mel bands the voice encoder reads, perception/voice.py), their deltas
and the log energy; per window, their mean, spread and 10th/50th/90th
percentiles: N_FUNCTIONALS numbers. Each voice step holds a 1 s log-mel
window and steps are `step_s` apart, so a window's speech frames are the
newest `step_s` of each speech step's window, every frame once.

A person's statistics of these numbers (`PersonStats`, gathered with no
labels) z-score each window: loud, high or fast *for this person*, which is
what per-speaker z-scoring of acoustic functionals measured as worth +0.09
on RAVDESS (issue 22). The estimate starts at the population's
(`Population`, measured on the training speakers) and moves to the person's
as their speech comes in, `PRIOR_WINDOWS` windows of pseudo-evidence
behind it, so a stranger is judged against everyone at first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_MFCC = 20
PERCENTILES = (10, 50, 90)
N_LLD = 2 * N_MFCC + 1                         # MFCCs, deltas, log energy
N_FUNCTIONALS = N_LLD * (2 + len(PERCENTILES))  # 205
FRAMES_PER_S = 100                             # the log-mel hop (perception/voice.py HOP at 16 kHz)
MIN_FRAMES = 10                                # 0.1 s of speech: fewer say nothing about a window
PRIOR_WINDOWS = 10.0                           # pseudo-windows of the population behind a person's estimate
LEARNED_WINDOWS = 3 * PRIOR_WINDOWS            # the person's own windows then carry 3/4 of the estimate
MIN_SPREAD = 1e-3


def speech_frames(voice: np.ndarray, speech: np.ndarray, step_s: float) -> np.ndarray | None:
    """(n, bands) log-mel frames of the speech steps, each 10 ms frame once; None under MIN_FRAMES.

    `voice`: (T, [1,] bands, frames) the steps' log-mel windows; `speech`: (T,) bool.
    """
    v = np.asarray(voice, np.float32)
    v = v.reshape(len(v), -1, v.shape[-1])
    speech = np.asarray(speech, bool)
    if not speech.any():
        return None
    newest = max(1, min(v.shape[-1], int(round(step_s * FRAMES_PER_S))))
    frames = np.concatenate([w[:, -newest:] for w in v[speech]], axis=1).T
    return frames if len(frames) >= MIN_FRAMES else None


def functionals(frames: np.ndarray) -> np.ndarray:
    """(N_FUNCTIONALS,) float32 from (n, bands) log-mel frames."""
    from scipy.fft import dct

    frames = np.asarray(frames, np.float32)
    mfcc = dct(frames, type=2, norm="ortho", axis=1)[:, :N_MFCC]
    delta = np.gradient(mfcc, axis=0) if len(mfcc) > 2 else np.zeros_like(mfcc)
    energy = np.log(np.exp(frames.astype(np.float64)).sum(axis=1, keepdims=True) + 1e-6)
    lld = np.hstack([mfcc, delta, energy])
    return np.concatenate([lld.mean(0), lld.std(0), *np.percentile(lld, PERCENTILES, axis=0)]).astype(np.float32)


@dataclass(frozen=True)
class Population:
    """The training speakers' mean and spread of each functional: a stranger's starting point."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> "Population":
        x = np.asarray(x, np.float64)
        return cls(x.mean(0), np.maximum(x.std(0), MIN_SPREAD))


@dataclass
class PersonStats:
    """Running count, mean and squared deviations (Welford) of one person's window functionals."""

    n: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(N_FUNCTIONALS))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(N_FUNCTIONALS))

    @classmethod
    def of(cls, x: np.ndarray) -> "PersonStats":
        s = cls()
        for row in np.asarray(x, np.float64):
            s.add(row)
        return s

    def add(self, f: np.ndarray) -> None:
        self.n += 1
        d = np.asarray(f, np.float64) - self.mean
        self.mean = self.mean + d / self.n
        self.m2 = self.m2 + d * (np.asarray(f, np.float64) - self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PersonStats":
        """The statistics `to_dict` wrote; ValueError for any that `add` could not have made (a hand
        edit or damage would otherwise skew every window read against them without a word)."""
        n = d["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the window count must be a whole number, not {n!r}")
        mean, m2 = np.asarray(d["mean"], np.float64), np.asarray(d["m2"], np.float64)
        if mean.shape != (N_FUNCTIONALS,) or m2.shape != (N_FUNCTIONALS,) or not np.isfinite([*mean, *m2]).all():
            raise ValueError(f"person statistics need {N_FUNCTIONALS} finite means and squared deviations")
        if (m2 < 0).any() or (n == 0 and (mean.any() or m2.any())):
            raise ValueError("person statistics that no set of windows has (a negative spread, or values "
                             "without windows)")
        return cls(n, mean, m2)

    def zscore(self, f: np.ndarray, population: Population) -> np.ndarray:
        """`f` (one window or rows of them) against this person, shrunk toward the population."""
        k = PRIOR_WINDOWS
        mean = (self.n * self.mean + k * population.mean) / (self.n + k)
        var = (self.m2 + k * population.std ** 2) / (self.n + k)
        return ((np.asarray(f, np.float64) - mean) / np.sqrt(np.maximum(var, MIN_SPREAD ** 2))).astype(np.float32)
