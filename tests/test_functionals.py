"""Voice functionals (perception/functionals.py) from cached steps, and the probe's z-scores
(train/recipes/person_functionals.py)."""
from __future__ import annotations

import numpy as np

from obs_merlb.labels import VOICE
from obs_merlb.perception.functionals import functionals, speech_frames
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
    assert record_functionals(clip, 0.25).shape == (205,)
    assert record_functionals(_clip(3, [False] * 3), 0.25) is None
    assert record_functionals({"mask": np.zeros((2, 4), np.uint8)}, 0.25) is None     # no voice track
    short = _clip(1, [True])
    assert speech_frames(short["voice"], [True], step_s=0.05) is None                # 5 frames: too few


def test_functionals_read_level_and_movement() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 64)).astype(np.float32)
    f = functionals(base)
    assert f.shape == (205,) and np.isfinite(f).all()
    louder = functionals(base + 1.0)
    # A level shift moves the first MFCC's and the energy's mean, not the spreads.
    assert louder[0] > f[0] + 1.0 and louder[40] > f[40] + 0.5
    assert np.allclose(louder[41:82], f[41:82], atol=1e-4)


def test_zscore_by_person_uses_each_persons_own_clips() -> None:
    x = np.array([[1.0], [3.0], [10.0], [30.0]], np.float32)
    z = zscore_by(x, np.array(["a", "a", "b", "b"]))
    assert np.allclose(z[:, 0], [-1, 1, -1, 1], atol=1e-4)
