"""Voice functionals (perception/functionals.py) from cached steps, and the probe's z-scores
(train/recipes/person_functionals.py)."""
from __future__ import annotations

import numpy as np
import pytest

from obs_merlb.labels import VOICE
from obs_merlb.perception.functionals import (MIN_VOICED, MOD_BINS, MOD_FFT, N_FUNCTIONALS, N_LLD, N_PITCH,
                                              FRAMES_PER_S, PersonStats, functionals, pitch_functionals,
                                              skew_and_kurtosis, speech_frames, speech_pitch)
from obs_merlb.perception.voice import NEEDED, PITCH_FRAMES, PITCH_REF_HZ, SAMPLE_RATE, pitch_track
from obs_merlb.train.fit_reader import record_functionals
from obs_merlb.train.recipes.person_functionals import zscore_by


def _clip(steps: int, speech: list[bool]) -> dict[str, np.ndarray]:
    voice = np.zeros((steps, 1, 64, 100), np.float16)
    for i in range(steps):
        voice[i, 0, :, -25:] = i            # the newest 0.25 s of each step carries its index
    mask = np.zeros((steps, 4), np.uint8)
    mask[:, VOICE] = 1
    pitch = np.zeros((steps, 2, PITCH_FRAMES), np.float16)
    pitch[:, 0] = np.arange(steps)[:, None]                  # each step's pitch carries its index too
    return {"voice": voice, "mask": mask, "speech_prob": np.array([0.9 if s else 0.1 for s in speech], np.float16),
            "pitch": pitch}


def _track(n: int, seed: int = 0) -> np.ndarray:
    """n voiced pitch-track frames wandering around 20 semitones."""
    rng = np.random.default_rng(seed)
    return np.column_stack([20.0 + rng.normal(size=n), np.full(n, 0.05)])


MODULATION = slice(N_FUNCTIONALS - N_PITCH - MOD_BINS, N_FUNCTIONALS - N_PITCH)


def test_speech_frames_are_each_speech_steps_newest_quarter_second() -> None:
    clip = _clip(4, [False, True, False, True])
    frames = speech_frames(clip["voice"], clip["speech_prob"] > 0.5, step_s=0.25)
    assert frames.shape == (50, 64)
    assert set(frames[:25, 0]) == {1.0} and set(frames[25:, 0]) == {3.0}
    track = speech_pitch(clip["pitch"], clip["speech_prob"] > 0.5)
    assert track.shape == (50, 2) and set(track[:25, 0]) == {1.0} and set(track[25:, 0]) == {3.0}
    assert record_functionals(clip, 0.25).shape == (N_FUNCTIONALS,)
    assert record_functionals(_clip(3, [False] * 3), 0.25) is None
    assert record_functionals({"mask": np.zeros((2, 4), np.uint8)}, 0.25) is None     # no voice track
    short = _clip(1, [True])
    assert speech_frames(short["voice"], [True], step_s=0.05) is None                # 5 frames: too few


def test_functionals_read_level_and_movement() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 64)).astype(np.float32)
    f = functionals(base, _track(200))
    assert f.shape == (N_FUNCTIONALS,) and np.isfinite(f).all()
    louder = functionals(base + 1.0, _track(200))
    # A level shift moves the first MFCC's and the energy's mean, not the spreads, nor the
    # spectrum's shape (centroid, spread, flux, band balance, flatness: lld columns 41-45).
    energy = 2 * 20
    assert louder[0] > f[0] + 1.0 and louder[energy] > f[energy] + 0.5
    assert np.allclose(louder[energy + 1:N_LLD], f[energy + 1:N_LLD], atol=1e-4)
    assert np.allclose(louder[N_LLD:2 * N_LLD], f[N_LLD:2 * N_LLD], atol=1e-4)


def test_functionals_hear_the_syllable_rate() -> None:
    """A voice whose loudness beats at 4 Hz (four syllables a second) against one at 2 Hz: the
    energy's modulation spectrum, MOD_BINS functionals before the pitch's, peaks in a different bin."""
    t = np.arange(300) / FRAMES_PER_S
    peaks = []
    for rate in (2.0, 4.0):
        frames = np.zeros((300, 64), np.float32) + 2.0 * np.sin(2 * np.pi * rate * t)[:, None]
        peaks.append(int(np.argmax(functionals(frames, _track(300))[MODULATION])) + 1)
    assert [round(p * FRAMES_PER_S / MOD_FFT) for p in peaks] == [2, 4]


def test_functionals_of_digital_silence_are_finite() -> None:
    # A constant stretch has no skew or tail: zeros, not NaN, or the reader would answer NaN.
    f = functionals(np.full((40, 64), -23.0, np.float32), np.column_stack([np.full(40, 34.0), np.ones(40)]))
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
    assert np.allclose(functionals(frames, _track(120))[session15_columns()], old, atol=1e-4)


def test_the_grid_chooses_no_reader_that_costs_a_set() -> None:
    from obs_merlb.train.recipes.reader_grid import chosen

    def row(c: float, a: float, b: float) -> dict:
        return {"train": "six", "C": c, "weight": 0.5, "mean": (a + b) / 2,
                "per_set": {"x": {"0": 0.5, "0.5": a}, "y": {"0": 0.5, "0.5": b}}}

    rows = [row(0.1, 0.9, 0.49), row(0.03, 0.6, 0.6), row(0.01, 0.55, 0.5)]
    assert chosen(rows)["C"] == 0.03                 # the best mean (0.695) lowers set y
    assert chosen([rows[0]]) is None


def _voice(f0_hz: np.ndarray, seed: int = 0) -> np.ndarray:
    """A voice-like tone (fundamental and four falling harmonics, a little noise) following f0_hz
    per sample."""
    phase = 2 * np.pi * np.cumsum(f0_hz) / SAMPLE_RATE
    x = sum(np.sin(h * phase) / h for h in range(1, 6))
    return (0.3 * x + 0.01 * np.random.default_rng(seed).normal(size=len(x))).astype(np.float32)


@pytest.mark.parametrize("hz", [60.0, 110.0, 220.0, 380.0])
def test_pitch_track_finds_the_fundamental(hz: float) -> None:
    """The range a speaking voice covers, low men to high children, each within 0.1 semitone and
    read as clean and periodic."""
    track = pitch_track(_voice(np.full(NEEDED, hz)))
    assert track.shape == (2, PITCH_FRAMES)
    assert np.abs(track[0] - 12 * np.log2(hz / PITCH_REF_HZ)).max() < 0.1
    assert track[1].max() < 0.1


def test_pitch_track_follows_a_glide_and_calls_noise_and_silence_aperiodic() -> None:
    """A voice gliding up an octave in the newest quarter second rises frame by frame; noise and
    digital silence are aperiodic (a silent step's pitch is never read as voiced)."""
    f0 = np.full(NEEDED, 150.0)
    f0[-SAMPLE_RATE // 4:] = np.geomspace(150.0, 300.0, SAMPLE_RATE // 4)
    semitones = pitch_track(_voice(f0))[0]
    assert np.all(np.diff(semitones[2:]) > 0) and semitones[-1] - semitones[0] > 9
    noise = pitch_track(np.random.default_rng(3).normal(size=NEEDED).astype(np.float32))
    assert noise[1].mean() > 0.5
    silence = pitch_track(np.zeros(NEEDED, np.float32))
    assert np.isfinite(silence).all() and (silence[1] == 1.0).all()


def test_pitch_functionals_read_level_spread_slope_and_voicing() -> None:
    """An octave up moves the pitch's level and percentiles by 12 semitones and nothing else; a
    rising voice has a positive slope; too few voiced frames give zeros, not noise."""
    track = _track(100)
    f = pitch_functionals(track)
    up = pitch_functionals(track + [12.0, 0.0])
    assert f.shape == (N_PITCH,) and f[0] == 1.0                          # every frame voiced
    level = slice(6, 11)                                                  # mean, spread, 10th/50th/90th
    assert np.allclose(up[level] - f[level], [12, 0, 12, 12, 12], atol=1e-6)
    assert np.allclose(np.delete(up, np.r_[6, 8, 9, 10]), np.delete(f, np.r_[6, 8, 9, 10]))
    rising = np.column_stack([np.linspace(10, 20, 100), np.full(100, 0.05)])
    assert pitch_functionals(rising)[12] == pytest.approx(10 / (99 / FRAMES_PER_S), rel=1e-6)
    half = np.column_stack([np.full(100, 20.0), np.r_[np.full(50, 0.05), np.full(50, 0.9)]])
    assert pitch_functionals(half)[0] == 0.5
    few = np.column_stack([np.full(40, 20.0), np.r_[np.full(MIN_VOICED - 1, 0.05), np.full(41 - MIN_VOICED, 0.9)]])
    assert np.all(pitch_functionals(few)[6:] == 0)
