"""The analyzer: frames and audio on one clock in, `state` events out.

`Analyzer` is the single-threaded core (no threads, no I/O) shared by the
live engine (obs_merlb/engine.py), `merlb analyze`, the benchmarks and the
soak test. Per frame it runs the face crop and keeps, per step, the frame
nearest the step's middle; once per step, after the tick's event is out, it
runs pose, the game thumbnail and the finished voice steps. All of that is
`obs_merlb.perception.steps.Perceiver`, the code `merlb preprocess` runs on
training clips. Encoders run once per step into a ring of T embeddings; each
tick runs only the sequence model on the ring. A model that carries a voice
prior (`MERLBConfig.voice_prior`) hears each voice step through the person's
baseline (perception/baseline.py): the step first adds to it, then is
normalised by it, before the voice encoder; a model without one gets the
raw log-mel, as before. A model folder that carries a voice reader
(`backend.reader`) also reads each window's speech against the person's
voice functionals and mixes that into the emotion (obs_merlb/person_reader.py).

`iter_file_ticks` drives an Analyzer over a file as fast as it decodes
(`Engine.run_file`, benchmarks); `merlb analyze` gets the same ticks from
obs_merlb/offline.py, batched and pipelined.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import cv2
import numpy as np

from obs_merlb.capture.base import SAMPLE_RATE, AudioRing, VideoFrame
from obs_merlb.capture.file import iter_media
from obs_merlb.labels import MODALITIES, VOICE
from obs_merlb.perception.baseline import BandStats, Prior, VoiceBaseline, apply
from obs_merlb.perception.steps import Perceiver, VoiceStep
from obs_merlb.perception.voice import NEEDED, key_segment_mask
from obs_merlb.person_reader import ReaderStats, SpeechWindow, fused, reader_stats
from obs_merlb.state import StateTracker, contributions_from_deltas, modality_contributions

# Mean absolute difference (0-255 levels) of a 24x16 thumbnail below which a
# frame counts as the one the face mesh last saw. A talking face on the demo
# clip moves the thumbnail 0.08-0.30 levels between ticks at 15 Hz, so 0.1
# against the last analysed frame re-runs the mesh on 187 of 189 ticks there;
# a paused or frozen source repeats its pixels exactly and is skipped.
UNCHANGED_LEVELS = 0.1

def thumb(image: np.ndarray) -> np.ndarray:
    """The 24x16 thumbnail the 'unchanged frame' test compares."""
    return cv2.resize(image, (24, 16), interpolation=cv2.INTER_AREA).astype(np.int16)


# ---------------------------------------------------------------- stage timing

class StageClock:
    """CPU ms per stage (process time: mediapipe and onnxruntime threads count)."""

    STAGES = ("capture", "face", "voice", "body", "scene", "inference", "state")

    def __init__(self) -> None:
        self.total = {s: 0.0 for s in self.STAGES}
        self.frames = 0

    def add(self, stage: str, seconds: float) -> None:
        self.total[stage] = self.total.get(stage, 0.0) + seconds

    def per_frame_ms(self) -> dict[str, float]:
        n = max(1, self.frames)
        return {s: 1000.0 * v / n for s, v in self.total.items()}


class _Timed:
    __slots__ = ("clock", "stage", "t0")

    def __init__(self, clock: StageClock | None, stage: str) -> None:
        self.clock, self.stage = clock, stage

    def __enter__(self) -> None:
        self.t0 = time.process_time()

    def __exit__(self, *exc: object) -> None:
        if self.clock is not None:
            self.clock.add(self.stage, time.process_time() - self.t0)


# ---------------------------------------------------------------- step ring

class StepRing:
    """Per-step embeddings of the last T steps, indexed by absolute step number.

    Memory is fixed (T slots per modality); a slot whose step number is not
    the one asked for is treated as missing, so gaps (a stalled source, a
    lowered rate) simply mask out instead of reusing stale steps.
    """

    def __init__(self, steps: int, dims: dict[str, int]) -> None:
        self.T = steps
        self.dims = dict(dims)
        self.emb = {m: np.zeros((steps, d), np.float32) for m, d in dims.items()}
        self.step_id = {m: np.full(steps, -1, np.int64) for m in MODALITIES}
        self.present = {m: np.zeros(steps, bool) for m in MODALITIES}
        self.face_dist = np.full(steps, np.inf)        # |frame t - step middle| of the kept face
        self.speech_prob = np.zeros(steps, np.float32)
        self.energy = np.zeros(steps, np.float32)

    def clear(self) -> None:
        for m in MODALITIES:
            self.step_id[m][:] = -1
            self.present[m][:] = False
        self.face_dist[:] = np.inf

    def has(self, modality: str, k: int) -> bool:
        return bool(self.step_id[modality][k % self.T] == k)

    def put(self, modality: str, k: int, emb: np.ndarray | None) -> None:
        i = k % self.T
        self.step_id[modality][i] = k
        if emb is None or modality not in self.emb:
            self.present[modality][i] = False
        else:
            self.emb[modality][i] = emb.reshape(-1)
            self.present[modality][i] = True

    def window(self, k_last: int, voice_k: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Embeddings {m: (T, D)} and mask (T, 4) for steps k_last-T+1..k_last, plus speech probs."""
        ks = np.arange(k_last - self.T + 1, k_last + 1)
        idx = ks % self.T
        mask = np.zeros((self.T, 4), np.float32)
        for j, m in enumerate(MODALITIES):
            mask[:, j] = (self.step_id[m][idx] == ks) & self.present[m][idx]
        embs = {m: self.emb[m][idx] for m in self.emb}
        sp = np.where(self.step_id["voice"][idx] == ks, self.speech_prob[idx], 0.0).astype(np.float32)
        en = np.where(self.step_id["voice"][idx] == ks, self.energy[idx], 0.0).astype(np.float32)
        if voice_k is not None and mask[:, VOICE].any():
            mask[:, VOICE] *= key_segment_mask(sp, en, threshold=0.0, k=voice_k)
        return embs, mask, sp


class AudioView:
    """Reads step windows out of an audio ring whose clock matches the frames'."""

    def __init__(self, ring: Any) -> None:
        self.ring = ring

    def t_end(self) -> float | None:
        return getattr(self.ring, "t_end", None)

    def window_ending(self, end_s: float, n: int) -> np.ndarray | None:
        """The n samples ending at end_s, or None when the ring has moved on too far."""
        for _ in range(2):   # a writer may land between reading t_end and the samples: retry once
            t_end = self.t_end()
            if t_end is None or t_end < end_s:
                return None
            lag = int(round((t_end - end_s) * SAMPLE_RATE))
            cap = getattr(self.ring, "capacity", 10 * SAMPLE_RATE)
            if lag + n > cap:
                return None
            x = self.ring.read((lag + n) / SAMPLE_RATE)
            if self.t_end() == t_end:
                return x[:n] if len(x) >= n else None
        return None


@dataclass
class TickResult:
    event: dict[str, Any]
    face_box: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None


class Analyzer:
    """Frames + audio on one clock in, `state` events out. Single-threaded.

    Two shortcuts make live perception cheaper than training's, and both are
    on by default: the face mesh tracks from frame to frame instead of
    detecting afresh (``static_perception=False``), and a frame whose tiny
    thumbnail looks like the last one keeps the last face instead of running
    the mesh (``reuse_unchanged=True``). Turned off, every step's arrays are
    exactly what `merlb preprocess` computes (tests/test_perception.py).
    """

    def __init__(self, backend: Any, state: StateTracker | None = None, *, body: bool = True,
                 contributions: bool = True, clock: StageClock | None = None,
                 static_perception: bool = False, reuse_unchanged: bool = True,
                 baseline: VoiceBaseline | None = None, person: ReaderStats | None = None) -> None:
        """`baseline`: the person's voice baseline to continue (the live engine's, loaded from
        its profile); a model with a voice prior otherwise starts a fresh one, and a model
        without one ignores it. `person`: the same for the voice reader's statistics."""
        self.backend = backend
        cfg = backend.cfg
        self.T, self.step_s = int(cfg.steps), float(cfg.step_s)
        self.modalities = list(backend.modalities)
        self.voice_k = getattr(cfg, "voice_key_segments", None)
        self.state = state or StateTracker()
        # Heads beyond emotion/valence/arousal (a personalized model's `user`
        # classes, a trained `behaviour`) are smoothed and published under
        # `heads`; the tracker learns them from the model it is fed by.
        self.state.set_extra_heads(backend.labels)
        self.contributions = contributions
        self.clock = clock
        # mediapipe graphs are not thread-safe: the thread that ticks owns this
        # Perceiver, and a restarted analysis thread builds a new Analyzer.
        self.perceiver = Perceiver(face="face" in self.modalities, voice="voice" in self.modalities,
                                   body=body and "body" in self.modalities, scene="scene" in self.modalities,
                                   static=static_perception)
        self.ring = StepRing(self.T, {m: d for m, d in cfg.embed_dims.items()})
        self.baseline = person_baseline(backend, baseline)
        self.speech_window = self._speech_window(person)
        # (voice step, the baseline's statistics it was heard through) for the steps a window
        # may still hold: what a resumed run hears them through again (`person_state`).
        self._heard: deque[tuple[int, BandStats]] = deque()
        self._resumed_through: int | None = None     # steps the restored person has heard already
        self._last_thumb: np.ndarray | None = None
        self._last_face: Any = None
        self._last_face_emb: np.ndarray | None = None
        self._next_voice_k: int | None = None
        self.last_speech = False
        self.reuse_unchanged = reuse_unchanged
        self.unchanged_skips = 0
        self.rate_hint = 15.0

    def swap_backend(self, backend: Any, baseline: VoiceBaseline | None = None,
                     person: ReaderStats | None = None) -> None:
        """A reloaded model: cached embeddings came from the old encoders, so drop them.
        `baseline` and `person` as in the constructor, for the new model."""
        self.backend = backend
        self.baseline = person_baseline(backend, baseline)
        self.speech_window = self._speech_window(person)
        self._heard.clear()
        self.ring = StepRing(self.T, {m: d for m, d in backend.cfg.embed_dims.items()})
        self._last_face_emb = None
        # A personalized model may add, drop or rename `user` classes.
        self.state.set_extra_heads(backend.labels)

    def close(self) -> None:
        self.perceiver.close()

    def _speech_window(self, person: ReaderStats | None) -> SpeechWindow | None:
        stats = reader_stats(self.backend, person)
        return None if stats is None else SpeechWindow(self.backend.reader, stats, self.T, self.step_s)

    def person_state(self) -> dict[str, Any] | None:
        """The person's voice as heard up to now, as JSON (a `merlb analyze` checkpoint): the voice
        reader's speech window and statistics, the band baseline with the statistics each recent
        step was heard through, and the last voice step heard. None for a model that keeps
        nothing of the person."""
        if self.speech_window is None and self.baseline is None:
            return None
        heard = [k for k in (self._resumed_through, None if self._next_voice_k is None else self._next_voice_k - 1)
                 if k is not None]
        return {"heard_through": max(heard, default=None),
                "reader": None if self.speech_window is None else self.speech_window.to_dict(),
                "baseline": None if self.baseline is None else {
                    "stats": self.baseline.stats.to_dict(),
                    "heard": [[k, stats.to_dict()] for k, stats in self._heard]}}

    def resume_person(self, doc: Any) -> None:
        """Continue the person `person_state` saved, in a fresh analyzer about to replay the steps
        before it: the voice steps heard by then are heard again only for the step ring (through
        the baseline as it stood at each), never added to the person a second time. ValueError,
        with nothing changed, for a state that is damaged or is not this model's."""
        try:
            through = doc["heard_through"]
            if through is not None and (isinstance(through, bool) or not isinstance(through, int)):
                raise ValueError(f"the last voice step heard must be a whole number, not {through!r}")
            if (doc["reader"] is None) != (self.speech_window is None) or \
                    (doc["baseline"] is None) != (self.baseline is None):
                raise ValueError("they are not this model's (a voice reader or voice prior more or less)")
            if self.baseline is not None:
                stats = BandStats.from_dict(doc["baseline"]["stats"])
                heard = deque((_step_number(k), BandStats.from_dict(s)) for k, s in doc["baseline"]["heard"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a saved person ({type(e).__name__}: {e})") from None
        if self.speech_window is not None:
            self.speech_window.restore(doc["reader"])     # last: it checks before it changes anything
        if self.baseline is not None:
            self.baseline.stats, self._heard = stats, heard
        self._resumed_through = through

    @property
    def person(self) -> ReaderStats | None:
        """The person's statistics the voice reader reads with; None for a model without a reader."""
        return None if self.speech_window is None else self.speech_window.person

    def _reader_read(self, k: int, mask: np.ndarray) -> tuple[np.ndarray, float] | None:
        """What the voice reader says of the window ending at step k, read now (the person's
        statistics as they stand at this tick); None where it says nothing."""
        return None if self.speech_window is None else self.speech_window.read(k, mask)

    def _with_reader(self, probs: dict[str, np.ndarray] | None,
                     read: tuple[np.ndarray, float] | None) -> dict[str, np.ndarray] | None:
        return probs if self.speech_window is None else fused(self.speech_window.reader, probs, read)

    def _unchanged(self, image: np.ndarray) -> bool:
        """Cheap 'nothing moved' test on a tiny thumbnail (a paused or static source).

        Compared with the last frame the mesh actually saw, not the last tick:
        a face that changes slowly would otherwise never count as changed.
        """
        small = self._thumb(image)
        same = self._last_thumb is not None and float(np.abs(small - self._last_thumb).mean()) < UNCHANGED_LEVELS
        if not same:
            self._last_thumb = small
        return same

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        return thumb(image)

    def _voice_step(self, k: int, window: np.ndarray) -> tuple[VoiceStep, np.ndarray | None]:
        """Step k's voice features and embedding (None when not speech) from its audio window."""
        step = self.perceiver.voice_step(window)
        return step, self._voice_embedding(step, k)

    def _voice_embedding(self, step: VoiceStep, k: int) -> np.ndarray | None:
        """Voice step k's embedding, None when not speech. With a person baseline the step
        adds to it first (unlabelled, speech only), then is heard through it, in step order."""
        if not step.present:
            return None
        feature = step.feature
        if self.baseline is not None:
            if self._heard_before(k):
                # Only windows of the replayed ticks read a step older than `_heard`; none is written.
                stats = next((s for j, s in self._heard if j == k), self.baseline.stats)
                feature = apply(feature, self.baseline.prior, stats)
            else:
                self.baseline.update(feature, step.speech_prob)
                self._heard.append((k, self.baseline.stats))
                feature = self.baseline.normalise(feature)
        return self.backend.encode("voice", feature[None])[0]

    def _heard_before(self, k: int) -> bool:
        """Whether voice step k is one the restored person heard before a resumed run's checkpoint."""
        return self._resumed_through is not None and k <= self._resumed_through

    def _voice_steps(self, audio: AudioView | None, k_now: int) -> None:
        if audio is None or not self.perceiver.enabled["voice"]:
            return
        t_end = audio.t_end()
        if t_end is None:
            return
        last_done = int(math.floor(t_end / self.step_s + 1e-9)) - 1   # last step whose end has audio
        first = max(k_now - self.T + 1, last_done - self.T + 1)
        if self._next_voice_k is not None:
            first = max(first, self._next_voice_k)
        for k in range(first, last_done + 1):
            window = audio.window_ending((k + 1) * self.step_s, NEEDED)
            step, emb = (None, None) if window is None else self._voice_step(k, window)
            if self.speech_window is not None and not self._heard_before(k):
                self.speech_window.put(k, step)
            if step is not None:
                i = k % self.T
                self.ring.speech_prob[i], self.ring.energy[i] = step.speech_prob, step.energy
                self.last_speech = bool(step.present)
            self.ring.put("voice", k, emb)
        self._next_voice_k = max(self._next_voice_k or -10**9, last_done + 1)
        while self._heard and self._heard[0][0] < k_now - self.T + 1:
            self._heard.popleft()

    def tick(self, image: np.ndarray | None, t: float, *, capture_mono: float | None = None,
             audio: AudioView | None = None, t_event: float | None = None) -> TickResult:
        """Analyse one frame at source time t; returns the state event."""
        clock = self.clock
        k = int(math.floor(t / self.step_s + 1e-9))
        face_res = self._face_tick(image, t, k)
        with _Timed(clock, "inference"):
            embs, mask, _ = self.ring.window(k, self.voice_k)
            probs, contrib = self._infer(embs, mask)
            probs = self._with_reader(probs, self._reader_read(k, mask))
        ev = self._state_update(t if t_event is None else t_event, probs, contrib, self._speech(mask),
                                face_res is not None,
                                None if capture_mono is None else 1000.0 * (time.monotonic() - capture_mono))
        return TickResult(ev, None if face_res is None else face_res.box,
                          None if face_res is None else face_res.landmarks)

    def _face_tick(self, image: np.ndarray | None, t: float, k: int) -> Any:
        """The frame's face (mesh, or the last one for an unchanged frame), kept in the
        ring when it is the nearest yet to its step's middle."""
        clock = self.clock
        mid = (k + 0.5) * self.step_s
        i = k % self.T
        face_res = None
        if image is not None and self.perceiver.enabled["face"]:
            with _Timed(clock, "face"):
                if self.reuse_unchanged and self._unchanged(image) and self._last_face_emb is not None:
                    # Same picture as last tick: reuse its face instead of re-running the mesh.
                    self.unchanged_skips += 1
                    face_res = self._last_face
                    if not self.ring.has("face", k):
                        self.ring.put("face", k, self._last_face_emb)
                        self.ring.face_dist[i] = abs(t - mid)
                else:
                    face_res = self.perceiver.face(image)
                    self._last_face = face_res
                    dist = abs(t - mid)
                    nearer = not self.ring.has("face", k) or dist < self.ring.face_dist[i]
                    if face_res is None:
                        self._last_face_emb = None
                        if not self.ring.has("face", k) or nearer:
                            self.ring.put("face", k, None)
                            self.ring.face_dist[i] = dist
                    elif nearer:
                        # Training uses the frame nearest the step's middle; keep that one.
                        with _Timed(clock, "inference"):
                            emb = self._face_embedding(face_res)
                        self._last_face_emb = emb
                        self.ring.put("face", k, emb)
                        self.ring.face_dist[i] = dist
                    elif self._last_face_emb is None:
                        with _Timed(clock, "inference"):
                            self._last_face_emb = self._face_embedding(face_res)
        return face_res

    def _face_embedding(self, face_res: Any) -> Any:
        return self.backend.encode("face", face_res.crop[None, None])[0]

    def _infer(self, embs: dict[str, np.ndarray], mask: np.ndarray,
               sequence: Any = None) -> tuple[dict[str, np.ndarray] | None, dict[str, float] | None]:
        """The window's probabilities and modality shares; `sequence(embs, masks)` runs the
        sequence model on (N, T, 4) masks (default: the backend, one call per tick)."""
        if not mask.any():
            return None, None
        run = sequence or (lambda e, masks: self.backend.sequence(
            {m: np.repeat(x[None], len(masks), axis=0) for m, x in e.items()}, masks))
        present = [j for j in range(len(MODALITIES)) if mask[:, j].any()]
        if self.contributions and len(present) > 1:
            return modality_contributions(lambda masks: run(embs, masks), mask)
        probs = (self.backend.sequence(embs, mask) if sequence is None
                 else {h: v[0] for h, v in sequence(embs, mask[None]).items()})
        return probs, contributions_from_deltas({MODALITIES[j]: 1.0 for j in present},
                                                {MODALITIES[j]: True for j in present})

    def _speech(self, mask: np.ndarray) -> bool:
        """Speech now: a voice step in the window and the newest voice step was speech."""
        return bool(mask[:, VOICE].any()) and self.last_speech

    def _state_update(self, t: float, probs: dict[str, np.ndarray] | None, contrib: dict[str, float] | None,
                      speech: bool, face_present: bool, latency: float | None) -> dict[str, Any]:
        with _Timed(self.clock, "state"):
            ev = self.state.update(t, probs, face_present=face_present,
                                   speech=speech, contributions=contrib, latency_ms=latency)
        if self.clock is not None:
            self.clock.frames += 1
        return ev


    def after_event(self, image: np.ndarray | None, t: float, *, audio: AudioView | None = None,
                    scene_image: np.ndarray | None = None) -> None:
        """Per-step work that can wait until the tick's event is out: pose, game
        thumbnail, completed voice steps. Running it after publishing keeps
        these (the costliest parts, once per step) off the frame-to-event
        latency; the next tick sees their results.
        """
        clock = self.clock
        k = int(math.floor(t / self.step_s + 1e-9))
        mid = (k + 0.5) * self.step_s
        late_enough = t >= mid - 0.5 / max(self.rate_hint, 1e-3)
        if image is not None and self.perceiver.enabled["body"] and not self.ring.has("body", k) and late_enough:
            with _Timed(clock, "body"):
                pose = self.perceiver.body(image)
                emb = None if pose is None else self.backend.encode("body", pose[None])[0]
            self.ring.put("body", k, emb)
        if scene_image is not None and self.perceiver.enabled["scene"] and not self.ring.has("scene", k) and late_enough:
            with _Timed(clock, "scene"):
                emb = self.backend.encode("scene", self.perceiver.scene(scene_image)[None])[0]
            self.ring.put("scene", k, emb)
        with _Timed(clock, "voice"):
            self._voice_steps(audio, k)



def _step_number(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"a voice step number must be a whole number, not {k!r}")
    return k


def person_baseline(backend: Any, baseline: VoiceBaseline | None) -> VoiceBaseline | None:
    """The baseline a model's voice steps go through: `baseline`, or a fresh one, when the
    model carries a voice prior; None (raw log-mels) when it does not."""
    prior = getattr(backend.cfg, "voice_prior", None)
    if prior is None:
        return None
    return baseline if baseline is not None else VoiceBaseline(Prior.from_dict(prior))


# ---------------------------------------------------------------- offline runs

@dataclass
class FileRun:
    events: list[dict[str, Any]] = field(default_factory=list)
    highlights: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0
    wall_s: float = 0.0
    frames: int = 0
    clock: StageClock = field(default_factory=StageClock)
    warnings: list[str] = field(default_factory=list)
    backend: str = ""

    @property
    def realtime_factor(self) -> float:
        return self.duration / self.wall_s if self.wall_s > 0 else float("inf")


def iter_file_ticks(analyzer: Analyzer, path: str, rate: float, *, max_width: int | None = 640,
                    loop_until_s: float | None = None, clock: StageClock | None = None,
                    stop: threading.Event | None = None) -> Iterator[tuple[TickResult, float]]:
    """Run the analyzer over a file as fast as decoding goes, sampling frames at `rate` Hz of media time.

    Yields (tick, media time). Single-threaded, so process time per stage is exact.
    `loop_until_s` replays the file (with continuing timestamps) until that much
    media time has been analysed (soak).
    """
    ring = AudioRing(10.0)
    audio = AudioView(ring)
    analyzer.rate_hint = rate
    period = 1.0 / rate
    next_t = 0.0
    offset = 0.0
    while True:
        end = offset
        it = iter_media(path, paced=False, max_width=max_width)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            while True:
                t0 = time.process_time()
                try:
                    item = next(it)
                except StopIteration:
                    break
                if isinstance(item, VideoFrame):
                    t = item.t + offset
                    end = max(end, t)
                    if t + 1e-6 < next_t:
                        if clock is not None:
                            clock.add("capture", time.process_time() - t0)
                        continue
                    next_t = max(next_t + period, t + period * 0.5)
                    image = item.image
                    if clock is not None:
                        clock.add("capture", time.process_time() - t0)
                    yield analyzer.tick(image, t, audio=audio, capture_mono=time.monotonic()), t
                    analyzer.after_event(image, t, audio=audio)
                else:
                    ring.write(item.samples, item.t + offset)
                    end = max(end, item.t + offset + item.duration)
                    if clock is not None:
                        clock.add("capture", time.process_time() - t0)
                if stop is not None and stop.is_set():
                    return
        if loop_until_s is None or end >= loop_until_s:
            return
        offset = end + 1.0 / 30
