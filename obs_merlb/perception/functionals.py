"""Voice functionals: how a stretch of speech sounds as a whole, judged against the person.

Per 10 ms frame of a window's speech steps: 20 MFCCs (the DCT of the 64
log-mel bands the voice encoder reads, perception/voice.py), their deltas,
the log energy and the spectrum's shape (centroid and spread over the mel
bands, flux, low-to-high band balance, flatness). Per window: the mean,
spread and 10th/50th/90th percentiles of each; the skew and tail of the
MFCCs and energy; how fast the MFCCs accelerate; each band's mean and
spread; the energy's slope, range and share of loud frames; and the energy's
modulation spectrum up to 7 Hz (the syllable rate). From the steps' pitch
tracks (perception/voice.py `pitch_track`): the share of voiced frames, how
aperiodic the frames are, and over voiced frames the pitch's level, spread,
percentiles, range, slope and frame-to-frame change: N_FUNCTIONALS numbers.
Each voice step holds a 1 s log-mel window and steps are `step_s` apart, so
a window's speech frames are the newest `step_s` of each speech step's
window, every frame once.

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

from obs_merlb.perception.voice import N_MELS

N_MFCC = 20
LOW_BANDS = 16                                 # mel bands under ~500 Hz: the voice's fundamental and first harmonics
PERCENTILES = (10, 50, 90)
N_SHAPE = 5                                    # centroid, spread, flux, low/high balance, flatness
N_LLD = 2 * N_MFCC + 1 + N_SHAPE               # MFCCs, deltas, log energy, spectral shape per frame
MOD_FFT = 256                                  # frames in the energy's modulation spectrum (2.56 s, zero-padded)
MOD_BINS = 19                                  # its bins 1-19: 0.4-7.4 Hz
VOICED = 0.25                                  # YIN aperiodicity under which a frame is voiced
MIN_VOICED = 5                                 # voiced frames a window needs for pitch statistics
# voiced share; aperiodicity mean, spread, percentiles; pitch mean, spread, percentiles, range, slope,
# mean and median change
N_PITCH = 1 + 2 + len(PERCENTILES) + 2 + len(PERCENTILES) + 4
N_FUNCTIONALS = (N_LLD * (2 + len(PERCENTILES)) + 2 * (N_MFCC + 1) + N_MFCC + 2 * N_MELS + 3
                 + MOD_BINS + N_PITCH)         # 457
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


def speech_pitch(pitch: np.ndarray, speech: np.ndarray) -> np.ndarray:
    """(n, 2) pitch-track frames (semitones, aperiodicity) of the speech steps, in step order.

    `pitch`: (T, 2, PITCH_FRAMES) the steps' tracks; `speech`: (T,) bool.
    """
    p = np.asarray(pitch, np.float32).reshape(len(pitch), 2, -1)[np.asarray(speech, bool)]
    return p.transpose(0, 2, 1).reshape(-1, 2)


def pitch_functionals(track: np.ndarray) -> np.ndarray:
    """(N_PITCH,) from (n, 2) pitch-track frames: voiced share; aperiodicity mean, spread and
    percentiles; over voiced frames the pitch's mean, spread, percentiles, range (90th - 10th),
    slope (semitones per s) and mean and median change between neighbouring voiced frames (zeros
    under MIN_VOICED voiced frames)."""
    track = np.asarray(track, np.float64).reshape(-1, 2)
    if not len(track):                     # no track at all reads as one silent frame
        track = np.array([[0.0, 1.0]])
    semitones, aper = track[:, 0], track[:, 1]
    voiced = aper < VOICED
    out = [[voiced.mean(), aper.mean(), aper.std()], np.percentile(aper, PERCENTILES)]
    at = np.flatnonzero(voiced)
    if len(at) >= MIN_VOICED:
        st = semitones[at]
        pct = np.percentile(st, PERCENTILES)
        nxt = np.diff(at) == 1
        change = np.abs(np.diff(st))[nxt]
        out += [[st.mean(), st.std()], pct,
                [pct[-1] - pct[0], np.polyfit(at / FRAMES_PER_S, st, 1)[0],
                 change.mean() if len(change) else 0.0, np.median(change) if len(change) else 0.0]]
    else:
        out += [np.zeros(N_PITCH - 1 - 2 - len(PERCENTILES))]
    return np.concatenate([np.ravel(o) for o in out])


def functionals(frames: np.ndarray, track: np.ndarray) -> np.ndarray:
    """(N_FUNCTIONALS,) float32 from (n, N_MELS) log-mel frames (n >= MIN_FRAMES) and the same
    steps' (m, 2) pitch-track frames (`speech_pitch`)."""
    from scipy.fft import dct

    frames = np.asarray(frames, np.float32)
    mfcc = dct(frames, type=2, norm="ortho", axis=1)[:, :N_MFCC]
    delta = np.gradient(mfcc, axis=0)
    power = np.exp(frames.astype(np.float64))
    energy = np.log(power.sum(axis=1) + 1e-6)
    lld = np.column_stack([mfcc, delta, energy, spectral_shape(frames, power)])
    level = np.column_stack([mfcc, energy])
    t = np.arange(len(frames)) / FRAMES_PER_S
    contour = [np.polyfit(t, energy, 1)[0], (energy > energy.mean()).mean(), np.ptp(energy)]
    modulation = np.abs(np.fft.rfft(energy - energy.mean(), n=MOD_FFT))[1:MOD_BINS + 1]
    parts = [lld.mean(0), lld.std(0), *np.percentile(lld, PERCENTILES, axis=0),
             *skew_and_kurtosis(level), np.gradient(delta, axis=0).std(0),
             frames.mean(0), frames.std(0), contour, np.log(modulation / (modulation.sum() + 1e-9) + 1e-6),
             pitch_functionals(track)]
    # A constant column (digital silence) has no skew: 0, not NaN, so the reader stays defined.
    return np.nan_to_num(np.concatenate([np.ravel(p) for p in parts]), nan=0.0, posinf=0.0,
                         neginf=0.0).astype(np.float32)


def skew_and_kurtosis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the skewness and excess kurtosis (scipy.stats' biased estimates, at a tenth of
    their cost here); NaN for a constant column."""
    c = x - x.mean(axis=0)
    c2 = c * c
    m2, m3, m4 = c2.mean(axis=0), (c2 * c).mean(axis=0), (c2 * c2).mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return m3 / m2 ** 1.5, m4 / m2 ** 2 - 3.0


def spectral_shape(frames: np.ndarray, power: np.ndarray) -> np.ndarray:
    """(n, N_SHAPE) per frame: centroid and spread over the mel bands (in bands), flux (RMS change
    of the log-mel from the frame before), log low/high band balance, log spectral flatness."""
    share = power / power.sum(axis=1, keepdims=True)
    bands = np.arange(frames.shape[1])
    centroid = share @ bands
    spread = np.sqrt((share * (bands - centroid[:, None]) ** 2).sum(axis=1))
    flux = np.r_[0.0, np.sqrt((np.diff(frames, axis=0) ** 2).mean(axis=1))]
    balance = np.log(power[:, :LOW_BANDS].sum(axis=1) + 1e-6) - np.log(power[:, LOW_BANDS:].sum(axis=1) + 1e-6)
    flatness = frames.mean(axis=1) - np.log(power.mean(axis=1))       # log(geometric / arithmetic mean)
    return np.column_stack([centroid, spread, flux, balance, flatness])


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
        x = np.asarray(x, np.float64)
        s = cls(0, np.zeros(x.shape[-1]), np.zeros(x.shape[-1]))
        for row in x:
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
        # Any length: statistics gathered for another reader's functionals (an older release) are
        # read and kept, and the store's population digest keeps them from being used.
        if mean.ndim != 1 or not len(mean) or m2.shape != mean.shape or not np.isfinite([*mean, *m2]).all():
            raise ValueError("person statistics need as many finite means as squared deviations")
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
