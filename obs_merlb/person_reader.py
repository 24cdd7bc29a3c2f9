"""The voice reader as the live analyzer runs it: the person's statistics, the window's speech, the mix.

A model folder that carries a voice reader (model/voice_reader.py) is
adapted live as `merlb eval --adapt person` adapts it offline: each tick's
window of T steps gives the functionals of its speech steps' newest
`step_s` of log-mel and their pitch tracks (perception/functionals.py), z-scored with the
person's statistics as they stand at that tick, and the reader's emotion is
mixed into the model's calibrated one with `VoiceReader.fuse`.

The person's statistics grow from speech only, without labels: after every
T speech steps, the functionals of the window of T steps ending at that
step (the kind of window a tick reads) are added, in step order. Steady
speech so adds consecutive, non-overlapping windows, as `merlb eval`
builds them from a person's clips; and since voice steps run in step order
on the analysis thread, `merlb analyze`'s batched run (obs_merlb/offline.py)
grows the same statistics tick for tick.

Weight: with a face in the window the reader carries FACE_WEIGHT (0: the
model card's session 15 measured the demo actor losing 3 of 22 windows at
0.5 and still some at 0.25, so no weight with a face is chosen yet);
voice-only windows carry the reader's own weight.
"""
from __future__ import annotations

import base64
import binascii
import copy
import hashlib
from typing import Any

import numpy as np

from obs_merlb.labels import FACE
from obs_merlb.model.voice_reader import VoiceReader
from obs_merlb.perception.functionals import (FRAMES_PER_S, PersonStats, Population, functionals, speech_frames,
                                             speech_pitch)
from obs_merlb.perception.steps import VoiceStep
from obs_merlb.perception.voice import N_MELS, PITCH_FRAMES, SPEECH_THRESHOLD

FACE_WEIGHT = 0.0
_NO_STEP = np.iinfo(np.int64).min     # a slot holding no speech (step numbers start below 0: -1 is one)


def population_digest(population: Population) -> str:
    """What tells one reader's population from another's (a person's statistics belong to one)."""
    h = hashlib.sha256()
    for v in (population.mean, population.std):
        h.update(np.ascontiguousarray(v, np.float32).tobytes())
    return h.hexdigest()[:16]


class ReaderStats:
    """One person's statistics for readers of one population (a stranger's starting point); the
    statistics object is replaced, never changed in place, so another thread (the store's save)
    always reads a consistent one."""

    def __init__(self, population: Population, stats: PersonStats | None = None) -> None:
        self.population = population
        self.stats = stats or PersonStats()
        self.digest = population_digest(population)

    def add(self, f: np.ndarray) -> None:
        stats = copy.deepcopy(self.stats)
        stats.add(f)
        self.stats = stats

    def reset(self) -> None:
        self.stats = PersonStats()

    def zscore(self, f: np.ndarray) -> np.ndarray:
        return self.stats.zscore(f, self.population)


class SpeechWindow:
    """Per ring step, the newest `step_s` of log-mel of a speech voice step, and the person's
    statistics growing from them; a tick's read of its window (see the module docstring)."""

    def __init__(self, reader: VoiceReader, person: ReaderStats, steps: int, step_s: float) -> None:
        self.reader, self.person, self.T, self.step_s = reader, person, steps, step_s
        self.newest = max(1, int(round(step_s * FRAMES_PER_S)))
        self.frames = np.zeros((steps, N_MELS, self.newest), np.float32)
        self.pitch = np.zeros((steps, 2, PITCH_FRAMES), np.float32)
        self.step_id = np.full(steps, _NO_STEP, np.int64)   # the speech step a slot holds
        self.speech_steps = 0
        self._cached: tuple[bytes, np.ndarray | None] | None = None

    def put(self, k: int, step: VoiceStep | None) -> None:
        """Voice step k (None: its audio was missed), in step order; a speech step may add a window
        to the person's statistics."""
        i = k % self.T
        speech = step is not None and step.present and step.speech_prob > SPEECH_THRESHOLD
        self.step_id[i] = k if speech else _NO_STEP
        if not speech:
            return
        self.frames[i] = np.asarray(step.feature, np.float32).reshape(N_MELS, -1)[:, -self.newest:]
        self.pitch[i] = step.pitch
        self.speech_steps += 1
        if self.speech_steps % self.T == 0:
            f = self.functionals(k)
            if f is not None:
                self.person.add(f)

    def to_dict(self) -> dict[str, Any]:
        """Everything later reads and additions depend on, as JSON (a resumed `merlb analyze`
        continues from it): the ring of speech frames and pitch tracks (raw float32, exact), the
        speech step count and the person's statistics."""
        return {"population": self.person.digest, "stats": self.person.stats.to_dict(),
                "speech_steps": self.speech_steps, "step_id": self.step_id.tolist(),
                "frames": base64.b64encode(self.frames.tobytes()).decode("ascii"),
                "pitch": base64.b64encode(self.pitch.tobytes()).decode("ascii")}

    def restore(self, doc: dict[str, Any]) -> None:
        """Continue from what `to_dict` saved; ValueError, with nothing changed, for a state that
        is damaged or was gathered for another reader."""
        try:
            if doc["population"] != self.person.digest:
                raise ValueError("they were gathered for another voice reader")
            stats = PersonStats.from_dict(doc["stats"])
            steps = doc["speech_steps"]
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"the speech step count must be a whole number, not {steps!r}")
            step_id = np.asarray(doc["step_id"], np.int64)
            slots = np.arange(self.T)
            if step_id.shape != (self.T,) or not ((step_id == _NO_STEP) | (step_id % self.T == slots)).all():
                raise ValueError(f"the speech ring needs {self.T} step numbers, each in its own slot")
            frames = np.frombuffer(base64.b64decode(doc["frames"], validate=True), np.float32)
            if frames.size != self.frames.size or not np.isfinite(frames).all():
                raise ValueError(f"the speech ring needs {self.frames.size} finite log-mel values")
            pitch = np.frombuffer(base64.b64decode(doc["pitch"], validate=True), np.float32)
            if pitch.size != self.pitch.size or not np.isfinite(pitch).all():
                raise ValueError(f"the speech ring needs {self.pitch.size} finite pitch values")
        except (KeyError, TypeError, AttributeError, OverflowError, binascii.Error) as e:
            raise ValueError(f"not a saved speech window ({type(e).__name__}: {e})") from None
        self.person.stats = stats
        self.speech_steps, self.step_id = steps, step_id
        self.frames = frames.reshape(self.frames.shape).copy()
        self.pitch = pitch.reshape(self.pitch.shape).copy()
        self._cached = None

    def functionals(self, k_last: int) -> np.ndarray | None:
        """The functionals of the speech in steps k_last-T+1..k_last; None under MIN_FRAMES of it."""
        ks = np.arange(k_last - self.T + 1, k_last + 1)
        idx = ks % self.T
        sel = self.step_id[idx] == ks
        key = ks[sel].tobytes()
        if self._cached is None or self._cached[0] != key:    # a window changes once per step, ticks are faster
            frames = speech_frames(self.frames[idx], sel, self.step_s)
            self._cached = (key, None if frames is None else functionals(frames, speech_pitch(self.pitch[idx], sel)))
        return self._cached[1]

    def read(self, k_last: int, mask: np.ndarray) -> tuple[np.ndarray, float] | None:
        """(z-scored functionals, weight) for the window ending at step k_last with modality `mask`
        (T, 4); None where the reader does not speak (too little speech, or weight 0)."""
        weight = window_weight(self.reader, mask)
        if weight <= 0.0:
            return None
        f = self.functionals(k_last)
        return None if f is None else (self.person.zscore(f), weight)


def window_weight(reader: VoiceReader, mask: np.ndarray) -> float:
    """The reader's weight for a window with modality `mask` (T, 4): FACE_WEIGHT with a face in it."""
    return FACE_WEIGHT if np.asarray(mask)[:, FACE].any() else reader.weight


def fused(reader: VoiceReader, probs: dict[str, np.ndarray] | None,
          read: tuple[np.ndarray, float] | None) -> dict[str, np.ndarray] | None:
    """A window's calibrated probabilities with the reader's emotion mixed in per `read`; the other
    heads (valence, arousal, ...) as they are."""
    if probs is None or read is None or "emotion" not in probs:
        return probs
    z, weight = read
    return {**probs, "emotion": reader.fuse(probs["emotion"][None], z[None], weight)[0]}


def reader_stats(backend: object, person: ReaderStats | None) -> ReaderStats | None:
    """The person's statistics a model's reader reads with: `person` (the live engine's, from its
    profile) when they were gathered for the reader's population, else fresh ones; None for a
    model without a reader."""
    reader = getattr(backend, "reader", None)
    if reader is None:
        return None
    if person is not None and person.digest == population_digest(reader.population):
        return person
    return ReaderStats(reader.population)
