"""Voice functionals (perception/functionals.py) from cached steps, and the probe's z-scores
(train/recipes/person_functionals.py)."""
from __future__ import annotations

import numpy as np
import pytest

from obs_merlb.labels import VOICE
from obs_merlb.perception.functionals import (MOD_BINS, MOD_FFT, N_FUNCTIONALS, N_LLD, FRAMES_PER_S, PersonStats,
                                              functionals, skew_and_kurtosis, speech_frames)
from obs_merlb.train.fit_reader import record_functionals
from obs_merlb.train.recipes.person_functionals import zscore_by


def _clip(steps: int, speech: list[bool]) -> dict[str, np.ndarray]:
    voice = np.zeros((steps, 1, 64, 100), np.float16)
    for i in range(steps):
        voice[i, 0, :, -25:] = i            # the newest 0.25 s of each step carries its index
    mask = np.zeros((steps, 4), np.uint8)
    mask[:, VOICE] = 1
    return {"voice": voice, "mask": mask, "speech_prob": np.array([0.9 if s else 0.1 for s in speech], np.float16)}


def test_speech_frames_are_each_speech_steps_newest_quarter_second() -> None:
    clip = _clip(4, [False, True, False, True])
    frames = speech_frames(clip["voice"], clip["speech_prob"] > 0.5, step_s=0.25)
    assert frames.shape == (50, 64)
    assert set(frames[:25, 0]) == {1.0} and set(frames[25:, 0]) == {3.0}
    assert record_functionals(clip, 0.25).shape == (N_FUNCTIONALS,)
    assert record_functionals(_clip(3, [False] * 3), 0.25) is None
    assert record_functionals({"mask": np.zeros((2, 4), np.uint8)}, 0.25) is None     # no voice track
    short = _clip(1, [True])
    assert speech_frames(short["voice"], [True], step_s=0.05) is None                # 5 frames: too few


def test_functionals_read_level_and_movement() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 64)).astype(np.float32)
    f = functionals(base)
    assert f.shape == (N_FUNCTIONALS,) and np.isfinite(f).all()
    louder = functionals(base + 1.0)
    # A level shift moves the first MFCC's and the energy's mean, not the spreads, nor the
    # spectrum's shape (centroid, spread, flux, band balance, flatness: lld columns 41-45).
    energy = 2 * 20
    assert louder[0] > f[0] + 1.0 and louder[energy] > f[energy] + 0.5
    assert np.allclose(louder[energy + 1:N_LLD], f[energy + 1:N_LLD], atol=1e-4)
    assert np.allclose(louder[N_LLD:2 * N_LLD], f[N_LLD:2 * N_LLD], atol=1e-4)


def test_functionals_hear_the_syllable_rate() -> None:
    """A voice whose loudness beats at 4 Hz (four syllables a second) against one at 2 Hz: the
    energy's modulation spectrum, the last MOD_BINS functionals, peaks in a different bin."""
    t = np.arange(300) / FRAMES_PER_S
    peaks = []
    for rate in (2.0, 4.0):
        frames = np.zeros((300, 64), np.float32) + 2.0 * np.sin(2 * np.pi * rate * t)[:, None]
        peaks.append(int(np.argmax(functionals(frames)[-MOD_BINS:])) + 1)
    assert [round(p * FRAMES_PER_S / MOD_FFT) for p in peaks] == [2, 4]


def test_functionals_of_digital_silence_are_finite() -> None:
    # A constant stretch has no skew or tail: zeros, not NaN, or the reader would answer NaN.
    f = functionals(np.full((40, 64), -23.0, np.float32))
    assert np.isfinite(f).all()


def test_skew_and_kurtosis_are_scipys() -> None:
    from scipy.stats import kurtosis, skew

    x = np.random.default_rng(1).gamma(2.0, size=(150, 5))
    s, k = skew_and_kurtosis(x)
    assert np.allclose(s, skew(x, axis=0)) and np.allclose(k, kurtosis(x, axis=0))


def test_statistics_of_another_readers_functionals_are_read_not_refused() -> None:
    """A profile keeps statistics an older release gathered for fewer functionals: they load (the
    store's population digest keeps them from being used), while damage is still refused."""
    old = PersonStats.of(np.random.default_rng(2).normal(size=(5, 205)))
    assert PersonStats.from_dict(old.to_dict()).mean.shape == (205,)
    bad = {**old.to_dict(), "m2": old.m2.tolist()[:-1]}
    with pytest.raises(ValueError):
        PersonStats.from_dict(bad)


def test_zscore_by_person_uses_each_persons_own_clips() -> None:
    x = np.array([[1.0], [3.0], [10.0], [30.0]], np.float32)
    z = zscore_by(x, np.array(["a", "a", "b", "b"]))
    assert np.allclose(z[:, 0], [-1, 1, -1, 1], atol=1e-4)


def test_the_grids_session15_columns_are_session15s_functionals() -> None:
    """train/recipes/reader_grid.py compares against session 15's reader by picking its 205 numbers
    out of today's: the mean, spread and percentiles of the MFCCs, deltas and log energy."""
    from scipy.fft import dct

    from obs_merlb.train.recipes.reader_grid import session15_columns

    frames = np.random.default_rng(4).normal(-8.0, 2.0, size=(120, 64)).astype(np.float32)
    mfcc = dct(frames, type=2, norm="ortho", axis=1)[:, :20]
    energy = np.log(np.exp(frames.astype(np.float64)).sum(axis=1, keepdims=True) + 1e-6)
    lld = np.hstack([mfcc, np.gradient(mfcc, axis=0), energy])
    old = np.concatenate([lld.mean(0), lld.std(0), *np.percentile(lld, (10, 50, 90), axis=0)])
    assert np.allclose(functionals(frames)[session15_columns()], old, atol=1e-4)


def test_the_grid_chooses_no_reader_that_costs_a_set() -> None:
    from obs_merlb.train.recipes.reader_grid import chosen

    def row(c: float, a: float, b: float) -> dict:
        return {"train": "six", "C": c, "weight": 0.5, "mean": (a + b) / 2,
                "per_set": {"x": {"0": 0.5, "0.5": a}, "y": {"0": 0.5, "0.5": b}}}

    rows = [row(0.1, 0.9, 0.49), row(0.03, 0.6, 0.6), row(0.01, 0.55, 0.5)]
    assert chosen(rows)["C"] == 0.03                 # the best mean (0.695) lowers set y
    assert chosen([rows[0]]) is None
