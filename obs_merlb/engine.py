"""The live engine (`merlb live`) and its core, usable as a library.

Data flow, per docs/ARCHITECTURE.md:

    capture thread --latest frame--> single slot --> analysis thread (<= rate Hz)
        perception on the frame (face mesh every analysed frame; pose and game
        thumbnail once per step) -> per-step embeddings in a ring of T steps
        voice: the audio ring -> per completed step: log-mel + VAD -> embedding
        each tick: only the sequence model runs on the cached embeddings
        -> StateTracker -> `state` event -> overlay server + session log

Why this shape: the encoders cost milliseconds, the sequence model well under
one, so encoding each step once and re-running only the sequence part keeps a
15 Hz overlay within a fraction of one core. A frame that arrives while the
analysis is busy replaces the waiting one (latest-frame-wins): a slow tick
skips frames, it never builds a queue, so latency stays bounded.

`Analyzer` is the single-threaded core (no threads, no I/O) shared by the
live engine, `merlb analyze`, the benchmarks and the soak test.
`Engine` adds sources, threads, OBS, commands, health and the session log.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import signal
import stat
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from obs_merlb import __version__
from obs_merlb.files import write_atomic
from obs_merlb.labels import MODALITIES
from obs_merlb.settings import MAX_RATE_HZ, MIN_RATE_HZ, check_setting, checked_live_config
from obs_merlb.state import (StateConfig, StateTracker, error_event, extra_heads, health_event,
                             hello_event, preview_event, session_event, tag_event)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "assets" / "model"
PREVIEW_HZ = 2.0
FACE, VOICE, BODY, SCENE = range(4)


def cap_threads(n: int = 1) -> None:
    """Keep the worker off the cores the game and the encoder need.

    Env vars first (libraries read them when they start their pools), then the
    libraries already imported.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)


def default_model_dir() -> Path | None:
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").is_file() else None


def resolve_model_dir(model: str | None) -> Path:
    if model:
        p = Path(model).expanduser()
        if not (p / "config.json").is_file():
            raise SystemExit(f"merlb: {p} is not a saved model folder (no config.json)")
        return p
    # The streamer's personalized model (`merlb personalize`) wins over the shipped one.
    from obs_merlb.registry import active_model_dir

    d = active_model_dir() or default_model_dir()
    if d is None:
        raise SystemExit("merlb: no model given and no default model in assets/model; "
                         "pass --model DIR (a folder written by `merlb train` or save_model)")
    return d


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
            from obs_merlb.perception.voice import key_segment_mask

            mask[:, VOICE] *= key_segment_mask(sp, en, threshold=0.0, k=voice_k)
        return embs, mask, sp


# ---------------------------------------------------------------- perception

class Perception:
    """The shared perception code (obs_merlb.perception), one instance per thread.

    mediapipe graphs are not thread-safe, so the analysis thread owns these;
    a restarted analysis thread builds its own.
    """

    def __init__(self, modalities: list[str], body: bool = True, static: bool = False) -> None:
        from obs_merlb.perception.face import FaceCropper

        self.face = FaceCropper(static=static) if "face" in modalities else None
        self.pose = None
        if body and "body" in modalities:
            from obs_merlb.perception.body import BodyPose

            self.pose = BodyPose(static=static)
        self.vad = None
        if "voice" in modalities:
            from obs_merlb.perception.voice import VAD

            self.vad = VAD(threads=1)

    def voice(self, window: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Samples (1.0 s + lead-in) -> (log-mel (1, 64, 100), speech prob, rms)."""
        from obs_merlb.perception.voice import log_mel, rms

        assert self.vad is not None
        return log_mel(window), self.vad.speech_prob(window), rms(window)

    def close(self) -> None:
        for p in (self.face, self.pose, self.vad):
            if p is not None:
                try:
                    p.close()
                except Exception:
                    pass


# ---------------------------------------------------------------- analyzer

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
            lag = int(round((t_end - end_s) * 16000))
            cap = getattr(self.ring, "capacity", 10 * 16000)
            if lag + n > cap:
                return None
            x = self.ring.read((lag + n) / 16000)
            if self.t_end() == t_end:
                return x[:n] if len(x) >= n else None
        return None


@dataclass
class TickResult:
    event: dict[str, Any]
    face_box: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None


class Analyzer:
    """Frames + audio on one clock in, `state` events out. Single-threaded."""

    def __init__(self, backend: Any, state: StateTracker | None = None, *, body: bool = True,
                 contributions: bool = True, clock: StageClock | None = None,
                 static_perception: bool = False) -> None:
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
        self.perception = Perception(self.modalities, body=body, static=static_perception)
        self.ring = StepRing(self.T, {m: d for m, d in cfg.embed_dims.items()})
        self._last_thumb: np.ndarray | None = None
        self._last_face: Any = None
        self._last_face_emb: np.ndarray | None = None
        self._next_voice_k: int | None = None
        self.last_speech = False
        self.unchanged_skips = 0
        self.rate_hint = 15.0

    def swap_backend(self, backend: Any) -> None:
        """A reloaded model: cached embeddings came from the old encoders, so drop them."""
        self.backend = backend
        self.ring = StepRing(self.T, {m: d for m, d in backend.cfg.embed_dims.items()})
        self._last_face_emb = None
        # A personalized model may add, drop or rename `user` classes.
        self.state.set_extra_heads(backend.labels)

    def close(self) -> None:
        self.perception.close()

    def _unchanged(self, image: np.ndarray) -> bool:
        """Cheap 'nothing moved' test on a tiny grey thumbnail (a paused or static source)."""
        import cv2

        small = cv2.resize(image, (24, 16), interpolation=cv2.INTER_AREA).astype(np.int16)
        same = self._last_thumb is not None and float(np.abs(small - self._last_thumb).mean()) < 0.5
        self._last_thumb = small
        return same

    def _voice_steps(self, audio: AudioView | None, k_now: int) -> None:
        if audio is None or self.perception.vad is None:
            return
        from obs_merlb.perception.voice import NEEDED

        t_end = audio.t_end()
        if t_end is None:
            return
        last_done = int(math.floor(t_end / self.step_s + 1e-9)) - 1   # last step whose end has audio
        first = max(k_now - self.T + 1, last_done - self.T + 1)
        if self._next_voice_k is not None:
            first = max(first, self._next_voice_k)
        for k in range(first, last_done + 1):
            window = audio.window_ending((k + 1) * self.step_s, NEEDED)
            if window is None:
                self.ring.put("voice", k, None)
                continue
            mel, p, e = self.perception.voice(window)
            i = k % self.T
            self.ring.speech_prob[i], self.ring.energy[i] = p, e
            from obs_merlb.perception.voice import SPEECH_THRESHOLD

            speech = p >= SPEECH_THRESHOLD
            emb = self.backend.encode("voice", mel[None])[0] if speech else None
            self.ring.put("voice", k, emb)
            self.last_speech = bool(speech)
        self._next_voice_k = max(self._next_voice_k or -10**9, last_done + 1)

    def tick(self, image: np.ndarray | None, t: float, *, capture_mono: float | None = None,
             audio: AudioView | None = None, scene_image: np.ndarray | None = None,
             t_event: float | None = None) -> TickResult:
        """Analyse one frame at source time t; returns the state event."""
        clock = self.clock
        k = int(math.floor(t / self.step_s + 1e-9))
        mid = (k + 0.5) * self.step_s
        i = k % self.T
        face_res = None
        if image is not None and self.perception.face is not None:
            with _Timed(clock, "face"):
                if self._unchanged(image) and self._last_face_emb is not None:
                    # Same picture as last tick: reuse its face instead of re-running the mesh.
                    self.unchanged_skips += 1
                    face_res = self._last_face
                    if not self.ring.has("face", k):
                        self.ring.put("face", k, self._last_face_emb)
                        self.ring.face_dist[i] = abs(t - mid)
                else:
                    face_res = self.perception.face(image)
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
                            emb = self.backend.encode("face", face_res.crop[None, None])[0]
                        self._last_face_emb = emb
                        self.ring.put("face", k, emb)
                        self.ring.face_dist[i] = dist
                    elif self._last_face_emb is None:
                        with _Timed(clock, "inference"):
                            self._last_face_emb = self.backend.encode("face", face_res.crop[None, None])[0]
        with _Timed(clock, "inference"):
            embs, mask, _ = self.ring.window(k, self.voice_k)
            probs = contrib = None
            if mask.any():
                present = [j for j in range(4) if mask[:, j].any()]
                if self.contributions and len(present) > 1:
                    # One batched call: the full window plus one copy per present
                    # modality with that modality masked out (occlusion).
                    masks = np.repeat(mask[None], 1 + len(present), axis=0)
                    for n, j in enumerate(present, start=1):
                        masks[n, :, j] = 0.0
                    batch = {m: np.repeat(e[None], len(masks), axis=0) for m, e in embs.items()}
                    out = self.backend.sequence(batch, masks)
                    probs = {h: v[0] for h, v in out.items()}
                    deltas = {MODALITIES[j]: 0.5 * float(np.abs(out["emotion"][n] - out["emotion"][0]).sum())
                              for n, j in enumerate(present, start=1)}
                else:
                    probs = self.backend.sequence(embs, mask)
                    deltas = {MODALITIES[j]: 1.0 for j in present}
                from obs_merlb.state import contributions_from_deltas

                contrib = contributions_from_deltas(deltas, {MODALITIES[j]: True for j in present})
        with _Timed(clock, "state"):
            latency = None if capture_mono is None else 1000.0 * (time.monotonic() - capture_mono)
            speech = bool(mask[:, VOICE].any()) and self.last_speech
            ev = self.state.update(t if t_event is None else t_event, probs, face_present=face_res is not None,
                                   speech=speech, contributions=contrib, latency_ms=latency)
        if clock is not None:
            clock.frames += 1
        return TickResult(ev, None if face_res is None else face_res.box,
                          None if face_res is None else face_res.landmarks)


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
        if image is not None and self.perception.pose is not None and not self.ring.has("body", k) and late_enough:
            with _Timed(clock, "body"):
                pose = self.perception.pose(image)
                emb = None if pose is None else self.backend.encode("body", pose[None])[0]
            self.ring.put("body", k, emb)
        if scene_image is not None and "scene" in self.modalities and not self.ring.has("scene", k) and late_enough:
            from obs_merlb.perception.scene import thumbnail

            with _Timed(clock, "scene"):
                emb = self.backend.encode("scene", thumbnail(scene_image)[None])[0]
            self.ring.put("scene", k, emb)
        with _Timed(clock, "voice"):
            self._voice_steps(audio, k)


# ---------------------------------------------------------------- file feed

class FileFeed:
    """A file played in real time (capture.file.FileSource) adapted to the feed API.

    Stream time is the file's own media time; frames carry the monotonic time
    they were released, so the engine can measure frame-to-event latency.
    `loop` replays forever with ever-increasing times (soak tests).
    """

    def __init__(self, path: str, *, paced: bool = True, loop: bool = False, speed: float = 1.0,
                 max_width: int | None = 640) -> None:
        from obs_merlb.capture.file import FileSource

        # FileSource probes the file now: a clear MediaError in the caller's thread.
        self.source = FileSource(path, paced=paced, loop=loop, speed=speed, max_width=max_width,
                                 autostart=False)
        self.path = path
        self.info = self.source.info
        self.clock_origin = 0.0
        self.audio_ring = self.source.audio if self.source.has_audio else None
        self.done = self.source.done

    def start(self) -> "FileFeed":
        self.source.start()
        return self

    @property
    def seq(self) -> int:
        return self.source.frame_seq

    @property
    def dropped(self) -> int:
        return self.source.dropped

    @property
    def last_error(self) -> str | None:
        return self.source.last_error

    def latest(self) -> tuple[Any, float, int]:
        """(frame or None, capture monotonic time, seq)."""
        return self.source.read_latest_timed()

    def close(self) -> None:
        self.source.close()


class SourceFeed:
    """Adapts a capture source with `read_latest()` (camera, OBS screenshots) to the feed API.

    Live sources stamp frames with time.monotonic(), so the frame's own time is
    its capture time.
    """

    def __init__(self, source: Any, audio_source: Any = None) -> None:
        self.source = source
        self.audio_ring = audio_source
        self.done = threading.Event()
        self.dropped = 0
        self._last_t: float | None = None
        self.seq = 0

    def start(self) -> "SourceFeed":
        return self

    @property
    def last_error(self) -> str | None:
        return getattr(self.source, "last_error", None)

    def latest(self) -> tuple[Any, float, int]:
        try:
            frame = self.source.read_latest()
        except Exception as e:  # a source error is reported by health, never fatal
            log.debug("source read failed: %s", e)
            frame = None
        if frame is not None and frame.t != self._last_t:
            self._last_t = frame.t
            self.seq += 1
        self.dropped = int(getattr(self.source, "dropped", 0) or 0)
        return frame, (frame.t if frame is not None else 0.0), self.seq

    def close(self) -> None:
        try:
            self.source.close()
        except Exception:
            pass


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
    import warnings

    from obs_merlb.capture.base import AudioRing, VideoFrame
    from obs_merlb.capture.file import iter_media

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


# ---------------------------------------------------------------- the engine

def obs_password(explicit: str | None = None) -> str:
    """From MERLB_OBS_PASSWORD, else the project config's [obs] password; never logged."""
    if explicit:
        return explicit
    env = os.environ.get("MERLB_OBS_PASSWORD")
    if env:
        return env
    try:
        from obs_merlb.config import get_section

        return str(get_section("obs").get("password", "") or "")
    except Exception:
        return ""


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    # Rewritten every second: the next write repairs a lost one, so no fsync.
    write_atomic(path, json.dumps(data), durable=False)


class Engine:
    """The live engine: sources -> Analyzer -> events to sinks, plus control.

    `publish` sinks receive every event (the overlay server, the session log,
    a test's collector). Commands arrive through `command(msg, source)` from
    stdin, the WebSocket or a caller.
    """

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", rate: float = 15.0,
                 state_config: StateConfig | None = None, body: bool = True,
                 contributions: bool = True, highlights: bool = True,
                 obs: Any = None, status_file: str | Path | None = None,
                 session: Any = None, stall_s: float = 3.0) -> None:
        cap_threads(1)
        from obs_merlb.inference import load_backend

        self.model_dir = Path(model_dir)
        self.device = device
        self.target_rate = float(rate)
        self.rate = float(rate)
        self.state_config = state_config or StateConfig()
        self.body = body
        self.contributions = contributions
        self.stall_s = stall_s
        self.backend = load_backend(self.model_dir, device=device, threads=1)
        self.obs = obs
        self.status_file = Path(status_file) if status_file else None
        self.session = session
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        self.server: Any = None
        self.stop_event = threading.Event()
        self.paused = False
        self.last_error: str | None = None
        self.latencies: deque[float] = deque(maxlen=300)
        self.tick_times: deque[float] = deque(maxlen=64)
        self.ticks = 0
        self.last_state: dict[str, Any] | None = None
        self.obs_stats: dict[str, Any] | None = None
        self._generation = 0
        self._last_tick_mono = time.monotonic()
        self._analysis: threading.Thread | None = None
        self._analyzer: Analyzer | None = None
        self._feed: Any = None
        self._scene_feed: Any = None
        self._t0_mono: float | None = None
        self._lock = threading.Lock()
        self._stream_t = 0.0
        self._hl = None
        self._detector = None
        if highlights:
            from obs_merlb.highlights import HighlightActor, PeakDetector

            self._detector = PeakDetector()
            self._hl = HighlightActor(self.publish, obs=obs)
        self._last_preview = 0.0
        self._health_prev_ticks = 0
        self._health_prev_mono = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._ready_analyzer: Analyzer | None = None
        self._last_frame_mono = 0.0
        self.text_overlay: Any = None   # a NativeTextOverlay (--overlay text); it is also a sink

    # -- events
    def add_sink(self, sink: Callable[[dict[str, Any]], None]) -> None:
        self.sinks.append(sink)

    def publish(self, event: dict[str, Any]) -> None:
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception:  # one broken sink must not silence the others
                log.exception("event sink failed")

    def error(self, message: str, where: str) -> None:
        self.last_error = message
        self.publish(error_event(message, where))

    def config_dict(self) -> dict[str, Any]:
        return {**self.state_config.__dict__, "rate": self.target_rate, "effective_rate": self.rate,
                "device": self.device, "backend": self.backend.name, "model": str(self.model_dir),
                "paused": self.paused, "steps": self.backend.cfg.steps, "step_s": self.backend.cfg.step_s,
                "modalities": self.backend.modalities,
                # Which extra heads `state` events carry, so clients can offer them before the first one.
                "heads": {name: list(classes) for name, classes in extra_heads(self.backend.labels).items()}}

    def hello(self) -> dict[str, Any]:
        return hello_event("obs-merlb", __version__, self.config_dict())

    def stream_time(self) -> float:
        return self._stream_t

    # -- commands
    def command(self, msg: dict[str, Any], source: str = "api") -> None:
        """Apply one client command (see docs/ARCHITECTURE.md); bad ones become error events."""
        if not isinstance(msg, dict):
            return
        cmd = msg.get("cmd") or msg.get("type")
        try:
            if cmd == "tag":
                name = str(msg.get("name") or "tag")[:200]
                self.publish(tag_event(self.stream_time(), name, str(msg.get("source") or source)))
            elif cmd == "set":
                key, value = str(msg.get("key")), msg.get("value")
                if key == "rate":
                    self.target_rate = self.rate = check_setting("rate", value)
                else:
                    self.state_config.set(key, value)
                self.publish(self.hello())
            elif cmd == "pause":
                self.paused = True
                if self.last_state is not None:
                    self.publish({**self.last_state, "visible": False, "wall": time.time()})
                self.publish(self.hello())
            elif cmd == "resume":
                self.paused = False
                self.publish(self.hello())
            elif cmd == "reload_model":
                path = msg.get("path") or str(self.model_dir)
                threading.Thread(target=self._reload, args=(str(path),), name="merlb-reload", daemon=True).start()
            elif cmd == "session":
                event = msg.get("event")
                recording = msg.get("recording") or msg.get("path")
                self.rotate_session(recording if event == "open" else None)
            elif cmd in ("stop", "quit", "shutdown"):
                self.stop_event.set()
            elif cmd in ("subscribe", "unsubscribe", "ping"):
                pass  # topics are handled by the overlay server
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except (TypeError, ValueError) as e:
            self.error(f"command {cmd!r} rejected: {e}", "command")

    def _reload(self, path: str) -> None:
        from obs_merlb.inference import load_backend

        try:
            if not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(f"{path} is not a saved model folder (no config.json)")
            backend = load_backend(path, device=self.device, threads=1)
        except Exception as e:
            self.error(f"reload_model failed, keeping the current model: {e}", "reload_model")
            return
        with self._lock:
            self.backend = backend
            self.model_dir = Path(path)
            if self._analyzer is not None:
                self._analyzer.swap_backend(backend)
        log.info("model reloaded from %s (%s)", path, backend.name)
        self.publish(self.hello())

    def rotate_session(self, recording: str | None) -> None:
        if self.session is None:
            return
        t = self.stream_time()
        old = self.session.close(t=t)
        if old is not None:
            self.publish(session_event("close", str(old), self.session.recording, t))
        path = self.session.open(recording=recording, t=t)
        self.publish(session_event("open", None if path is None else str(path), recording, t))

    # -- live run
    def _analysis_loop(self, generation: int) -> None:
        """Latest-frame-wins at <= rate Hz; exits when superseded (stall restart) or stopped."""
        feed = self._feed
        analyzer = self._ready_analyzer
        self._ready_analyzer = None
        if analyzer is None:
            try:
                analyzer = self._new_analyzer()
            except Exception as e:
                self.error(f"cannot start perception: {e}", "perception")
                self.stop_event.set()
                return
        self._analyzer = analyzer
        audio = AudioView(feed.audio_ring) if getattr(feed, "audio_ring", None) is not None else None
        last_seq = 0
        next_due = time.monotonic()
        try:
            while not self.stop_event.is_set() and generation == self._generation:
                now = time.monotonic()
                self._last_tick_mono = now if (self.paused or feed.seq == last_seq) else self._last_tick_mono
                if self.paused:
                    self.stop_event.wait(0.05)
                    continue
                if now < next_due:
                    self.stop_event.wait(min(0.05, next_due - now))
                    continue
                frame, cap_mono, seq = feed.latest()
                if frame is None or seq == last_seq:
                    if feed.done.is_set() and seq == last_seq:
                        break
                    self.stop_event.wait(0.002)
                    continue
                last_seq = seq
                self._last_frame_mono = time.monotonic()
                analyzer.rate_hint = self.rate
                if self._t0_mono is None:
                    # A file runs on its own media clock (stream time = media time);
                    # live sources on time.monotonic(), counted from the first frame.
                    self._t0_mono = getattr(feed, "clock_origin", None)
                    if self._t0_mono is None:
                        self._t0_mono = frame.t
                scene = None
                if self._scene_feed is not None:
                    sf, _, _ = self._scene_feed.latest()
                    scene = None if sf is None else sf.image
                with self._lock:
                    res = analyzer.tick(frame.image, frame.t, capture_mono=cap_mono, audio=audio,
                                        scene_image=scene, t_event=frame.t - self._t0_mono)
                if generation != self._generation:
                    return   # a stall restart took over while we were stuck: drop this result
                self._after_tick(res, frame)
                with self._lock:
                    analyzer.after_event(frame.image, frame.t, audio=audio, scene_image=scene)
                next_due = max(next_due + 1.0 / self.rate, time.monotonic() - 0.5 / self.rate)
        except Exception as e:
            log.exception("analysis failed")
            self.error(f"analysis failed: {type(e).__name__}: {e}", "analysis")
            self.stop_event.set()
        finally:
            if generation == self._generation and feed.done.is_set():
                self.stop_event.set()

    def _after_tick(self, res: TickResult, frame: Any = None) -> None:
        ev = res.event
        self._stream_t = ev["t"]
        self._last_tick_mono = time.monotonic()
        self.ticks += 1
        self.tick_times.append(self._last_tick_mono)
        if ev.get("latency_ms") is not None:
            self.latencies.append(ev["latency_ms"])
        self.last_state = ev
        self.publish(ev)
        if self._detector is not None and self._hl is not None:
            conf = ev["confidence"]
            for h in self._detector.update(ev["t"], ev["arousal_score"], ev["label"], conf):
                self._hl.fire(h)
        if frame is not None and self.server is not None and self.server.has_subscribers("preview"):
            now = time.monotonic()
            if now - self._last_preview >= 1.0 / PREVIEW_HZ:
                self._last_preview = now
                self.publish(make_preview(frame.image, res.face_box, res.landmarks))

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        dt = max(1e-3, now - self._health_prev_mono)
        fps = (self.ticks - self._health_prev_ticks) / dt
        self._health_prev_ticks, self._health_prev_mono = self.ticks, now
        lat = np.asarray(self.latencies, dtype=np.float64)
        p50 = float(np.percentile(lat, 50)) if lat.size else None
        p95 = float(np.percentile(lat, 95)) if lat.size else None
        cpu = self._proc.cpu_percent(None) if getattr(self, "_proc", None) is not None else 0.0
        dropped = int(getattr(self._feed, "dropped", 0) or 0) if self._feed is not None else 0
        return health_event(fps=fps, target_fps=self.rate, latency_ms_p50=p50, latency_ms_p95=p95,
                            cpu_percent=cpu, backend=self.backend.name, dropped=dropped,
                            last_error=self.last_error, obs=self.obs_stats)

    def _control_loop(self) -> None:
        """~1 Hz: health event, status file, session flush, stall watch."""
        import psutil

        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        while not self.stop_event.wait(1.0):
            try:
                self.publish(self.health())
                if self.session is not None:
                    self.session.maybe_flush()
                self._write_status(running=True)
                self._watch_stall()
                feed_err = getattr(self._feed, "last_error", None)
                if feed_err and feed_err != getattr(self, "_reported_feed_err", None):
                    self._reported_feed_err = feed_err
                    self.error(feed_err, "capture")
                audio_err = getattr(getattr(self._feed, "audio_ring", None), "last_error", None)
                if audio_err and audio_err != getattr(self, "_reported_audio_err", None):
                    self._reported_audio_err = audio_err
                    self.error(audio_err, "microphone")
            except Exception:
                log.exception("control loop")

    def _watch_stall(self) -> None:
        """Stall detector: frames keep coming but no tick has finished for stall_s."""
        if self.paused or self._analysis is None:
            return
        stuck_for = time.monotonic() - self._last_tick_mono
        if stuck_for < self.stall_s or self._feed is None or self._feed.done.is_set():
            return
        self._generation += 1
        msg = (f"analysis stalled for {stuck_for:.1f} s (backend {self.backend.name}); "
               "restarting it on the CPU backend")
        log.error("%s", msg)
        self.error(msg, "inference")
        if self.device != "cpu":
            try:
                from obs_merlb.inference import load_backend

                self.backend = load_backend(self.model_dir, device="cpu", threads=1)
                self.device = "cpu"
            except Exception as e:
                self.error(f"cannot load the CPU backend: {e}", "inference")
        self._last_tick_mono = time.monotonic()
        self._analysis = threading.Thread(target=self._analysis_loop, args=(self._generation,),
                                          name=f"merlb-analysis-{self._generation}", daemon=True)
        self._analysis.start()

    def _obs_loop(self, period_s: float = 2.0) -> None:
        """Protect the stream: poll GetStats; lower the rate when OBS skips frames, raise it back."""
        from obs_merlb.highlights import ObsRequestFailed, ObsUnavailable

        prev: dict[str, Any] | None = None
        healthy_since = time.monotonic()
        while not self.stop_event.wait(period_s):
            try:
                s = self.obs.request("GetStats")
            except (ObsUnavailable, ObsRequestFailed):
                self.obs_stats = None
                prev = None
                continue
            stats = {"cpu": s.get("cpuUsage"), "active_fps": s.get("activeFps"),
                     "render_ms": s.get("averageFrameRenderTime"),
                     "render_skipped": s.get("renderSkippedFrames"), "render_total": s.get("renderTotalFrames"),
                     "output_skipped": s.get("outputSkippedFrames"), "output_total": s.get("outputTotalFrames")}
            struggling = False
            if prev is not None:
                for kind in ("render", "output"):
                    ds = (stats[f"{kind}_skipped"] or 0) - (prev[f"{kind}_skipped"] or 0)
                    dt = (stats[f"{kind}_total"] or 0) - (prev[f"{kind}_total"] or 0)
                    ratio = ds / dt if dt > 0 else 0.0
                    stats[f"{kind}_skipped_pct"] = round(100.0 * ratio, 2)
                    struggling |= ds > 0 and ratio > 0.005
            struggling |= (stats["cpu"] or 0.0) > 90.0
            prev = stats
            self.obs_stats = stats
            rate = rate_control(self.rate, self.target_rate, struggling,
                                time.monotonic() - healthy_since)
            if struggling:
                healthy_since = time.monotonic()
            if rate != self.rate:
                src = getattr(self._feed, "source", None)
                if hasattr(src, "set_rate"):
                    src.set_rate(min(rate, 15.0))   # fewer screenshots = less work for OBS too
                log.info("analysis rate %.1f -> %.1f Hz (%s)", self.rate, rate,
                         "OBS is skipping frames" if struggling else "OBS recovered")
                self.rate = rate

    def _write_status(self, running: bool) -> None:
        """The OBS script's view of us (fields per obs_script.py's docstring), replaced atomically."""
        if self.status_file is None:
            return
        st = self.last_state or {}
        fps = len([t for t in self.tick_times if time.monotonic() - t <= 2.0]) / 2.0
        camera_ok = self._feed is not None and (time.monotonic() - self._last_frame_mono) < 3.0
        state = "running" if running else "stopped"
        if running and (self.ticks == 0 or not camera_ok):
            state = "starting" if self.ticks == 0 and not self.last_error else "error"
        data = {"v": 1, "state": state, "pid": os.getpid(), "running": running, "wall": time.time(),
                "fps": round(fps, 2), "target_fps": self.rate, "backend": self.backend.name,
                "obs_connected": None if self.obs is None else bool(self.obs.connected),
                "camera_ok": camera_ok, "face_present": st.get("face_present"), "label": st.get("label"),
                "visible": st.get("visible"), "last_error": self.last_error,
                "events_url": getattr(self.server, "ws_url", None), "url": getattr(self.server, "url", None),
                "paused": self.paused,
                "session": None if self.session is None or self.session.path is None else str(self.session.path)}
        try:
            write_json_atomic(self.status_file, data)
        except OSError as e:
            log.warning("cannot write status file %s: %s", self.status_file, e)

    def _stdin_loop(self, stream: Any) -> None:
        """JSON lines from the OBS script; EOF means OBS (our parent) went away: shut down."""
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                self.error("stdin: a line that is not JSON was ignored", "stdin")
                continue
            if isinstance(msg, dict) and msg.get("type") == "tag" and "cmd" not in msg:
                msg = {"cmd": "tag", **msg}
            if isinstance(msg, dict) and msg.get("type") == "session" and "cmd" not in msg:
                msg = {"cmd": "session", **msg}
            self.command(msg, source=str(msg.get("source", "hotkey")) if isinstance(msg, dict) else "stdin")
        log.info("stdin closed: shutting down")
        self.stop_event.set()

    def _new_analyzer(self) -> Analyzer:
        analyzer = Analyzer(self.backend, StateTracker(self.state_config), body=self.body,
                            contributions=self.contributions)
        if self._analyzer is not None:
            analyzer.state = self._analyzer.state   # keep the smoothed state across a restart
            analyzer.state.set_extra_heads(self.backend.labels)
        return analyzer

    def start_threads(self, feed: Any, scene_feed: Any = None, stdin: Any = None) -> None:
        # Perception (mediapipe graphs) takes a second or two to build: do it
        # before the source starts, so a paced file does not run ahead unseen.
        self._ready_analyzer = self._new_analyzer()
        self._feed = feed.start()
        self._scene_feed = scene_feed.start() if scene_feed is not None else None
        self._last_tick_mono = time.monotonic()
        self._analysis = threading.Thread(target=self._analysis_loop, args=(self._generation,),
                                          name="merlb-analysis", daemon=True)
        self._analysis.start()
        targets: list[tuple[Callable[..., None], tuple[Any, ...], str]] = [(self._control_loop, (), "merlb-control")]
        if self.obs is not None:
            targets.append((self._obs_loop, (), "merlb-obs-stats"))
        if stdin is not None:
            targets.append((self._stdin_loop, (stdin,), "merlb-stdin"))
        for fn, args, name in targets:
            th = threading.Thread(target=fn, args=args, name=name, daemon=True)
            th.start()
            self._threads.append(th)

    def shutdown(self) -> None:
        self.stop_event.set()
        if self._analysis is not None:
            self._analysis.join(timeout=5.0)
        for feed in (self._feed, self._scene_feed):
            if feed is not None:
                feed.close()
        if self._hl is not None:
            self._hl.close()
        if self.text_overlay is not None:
            # Blank the OBS sources: a stopped worker must not leave a stale emotion on stream.
            self.text_overlay.stop(timeout=3.0, clear=True)
        if self._analyzer is not None:
            self._analyzer.close()
        if self.session is not None:
            path = self.session.close(t=self.stream_time())
            if path is not None:
                self.publish(session_event("close", str(path), self.session.recording, self.stream_time()))
        if self.obs is not None:
            self.obs.close()
        self._write_status(running=False)

    # -- offline
    def run_file(self, path: str, *, on_tick: Callable[[dict[str, Any], float], None] | None = None,
                 loop_until_s: float | None = None, max_width: int | None = 640) -> FileRun:
        """Analyse a file as fast as possible (analyze, benchmarks). Publishes events to the sinks."""
        from obs_merlb.capture.file import probe

        info = probe(path)
        run = FileRun(backend=self.backend.name)
        analyzer = Analyzer(self.backend, StateTracker(self.state_config), body=self.body,
                            contributions=self.contributions, clock=run.clock)
        self._analyzer = analyzer
        import warnings

        start = time.monotonic()
        last_t = 0.0
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for res, t in iter_file_ticks(analyzer, path, self.rate, max_width=max_width,
                                              loop_until_s=loop_until_s, clock=run.clock, stop=self.stop_event):
                    self._after_tick(res)
                    run.events.append(res.event) if loop_until_s is None else None
                    last_t = t
                    run.frames += 1
                    if on_tick is not None:
                        on_tick(res.event, t)
            run.warnings = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
            for w in run.warnings:
                self.error(w, "capture")
        finally:
            analyzer.close()
        run.wall_s = time.monotonic() - start
        run.duration = max(last_t, min(info.duration or last_t, last_t + 1.0 / self.rate))
        return run


def rate_control(rate: float, target: float, struggling: bool, healthy_for_s: float) -> float:
    """Back off fast (x0.6) when OBS skips frames; creep back (x1.25) after 10 s of health."""
    if struggling:
        return max(MIN_RATE_HZ * 2, round(rate * 0.6, 2))
    if rate < target and healthy_for_s >= 10.0:
        return min(target, round(rate * 1.25 + 0.25, 2))
    return rate


def make_preview(image: np.ndarray, box: Any, landmarks: Any, width: int = 320) -> dict[str, Any]:
    """A small JPEG for the panel's camera view, with the face box and landmarks scaled to it."""
    import cv2

    h, w = image.shape[:2]
    s = min(1.0, width / w)
    small = cv2.resize(image, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else image
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])
    jpeg = base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""
    b = None if box is None else [v * s for v in box]
    lm = None if landmarks is None else [[x * s, y * s] for x, y in np.asarray(landmarks)[::4]]
    return preview_event(jpeg, (small.shape[1], small.shape[0]), b, lm)


# ---------------------------------------------------------------- `merlb live`

# Settings the panel saves to config.toml [engine]: (flag, config key, default).
# A flag on the command line wins; an unset flag takes the config's value,
# then the default, so a worker the OBS script starts behaves as the panel set it.
ENGINE_SETTINGS: tuple[tuple[str, str, float], ...] = (
    ("rate", "rate", 15.0),
    ("threshold", "threshold", StateConfig.threshold),
    ("smoothing", "smoothing", StateConfig.smoothing),
    ("min-dwell-s", "min_dwell_s", StateConfig.min_dwell_s),
    ("hide-after-s", "hide_after_s", StateConfig.hide_after_s),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from obs_merlb.overlay.native import IMAGE_SOURCE, OVERLAY_HEADS, TEXT_SOURCE

    src = parser.add_mutually_exclusive_group()
    src.add_argument("--video", help="a video file played in real time as the camera (with its audio)")
    src.add_argument("--camera", type=int, help="camera device index (OpenCV), for use without OBS")
    src.add_argument("--obs-source", help="OBS source to watch as the camera (screenshots over obs-websocket); "
                                          "default: the config file's [sources] camera")
    parser.add_argument("--mic", help="microphone by name, as OBS shows it (sounddevice), 'default' or 'none'; "
                                      "default: the config file's [sources] mic (not with --video)")
    parser.add_argument("--game-source", "--obs-game-source", dest="game_source",
                        help="OBS source with the gameplay (screenshots, a few per second); "
                             "default: the config file's [sources] game (not with --video/--camera)")
    parser.add_argument("--model", help="saved model folder (default: the active personalized model, "
                                        "else assets/model)")
    parser.add_argument("--device", default="cpu", help="cpu (onnxruntime) or cuda / cuda:N (torch, falls back to CPU)")
    parser.add_argument("--host", default="127.0.0.1", help="overlay server address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="overlay server port (0 = any free port)")
    parser.add_argument("--obs-host", default="127.0.0.1", help="obs-websocket host")
    parser.add_argument("--obs-port", type=int, default=None,
                        help="obs-websocket port (default 4455; giving it enables OBS stats and highlights "
                             "with --video/--camera). Password: env MERLB_OBS_PASSWORD or the config file")
    parser.add_argument("--overlay", choices=["browser", "text", "none"], default="browser",
                        help="browser: the overlay page (always served); text: also show the emotion in "
                             "OBS text and image sources (created in the current scene when missing)")
    parser.add_argument("--overlay-text-source", default=TEXT_SOURCE,
                        help=f"OBS text source for --overlay text (default {TEXT_SOURCE!r})")
    parser.add_argument("--overlay-image-source", default=IMAGE_SOURCE,
                        help=f"OBS image source showing the emoji for --overlay text (default {IMAGE_SOURCE!r}); "
                             "'none': emoji in the text instead")
    parser.add_argument("--overlay-head", choices=list(OVERLAY_HEADS), default="emotion",
                        help="which head --overlay text shows: emotion (default), user (the classes of "
                             "a personalized model) or behaviour; emotion when the model has no such head")
    parser.add_argument("--control", choices=["stdin", "none", "auto"], default="auto",
                        help="stdin: read JSON-line commands on stdin, EOF = stop (the OBS script); "
                             "auto: only when stdin is a pipe")
    parser.add_argument("--status-file", help="write a status JSON here about once a second (for the OBS script)")
    parser.add_argument("--sessions-dir", help="where session logs go (default: the user data dir)")
    parser.add_argument("--no-session", action="store_true", help="do not write a session log")
    parser.add_argument("--no-body", action="store_true", help="skip body pose (saves CPU)")
    parser.add_argument("--loop", action="store_true", help="with --video: replay the file forever")
    for flag, key, default in ENGINE_SETTINGS:
        what = "analysis rate cap in Hz" if key == "rate" else "state setting"
        parser.add_argument(f"--{flag}", dest=key, type=float, default=None,
                            help=f"{what} (default: config [engine] {key}, else {default:g})")


def apply_config_defaults(args: argparse.Namespace, config: dict[str, Any] | None = None) -> list[str]:
    """Fill flags left unset from config.toml [engine] and [sources]; returns problems found.

    [sources] describes the streamer's OBS setup, so it only applies when the
    camera is an OBS source (given or from the config): a --video or --camera
    run is another setup, and a gameplay source or microphone from the
    config would not belong to it.
    """
    if config is None:
        from obs_merlb.config import load_config

        config = load_config()
    problems: list[str] = []
    eng = config.get("engine") if isinstance(config.get("engine"), dict) else {}
    for _flag, key, default in ENGINE_SETTINGS:
        if getattr(args, key, None) is not None:
            continue
        value: float = default
        if key in eng:
            try:
                value = float(eng[key])
            except (TypeError, ValueError):
                problems.append(f"config [engine] {key} = {eng[key]!r} is not a number; using {default:g}")
            if key == "rate" and not MIN_RATE_HZ <= value <= MAX_RATE_HZ:
                # A hand-edited file must not stop the worker (the script would restart it forever).
                problems.append(f"config [engine] rate = {value:g} is outside {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz; "
                                f"using {default:g}")
                value = default
        setattr(args, key, value)
    srcs = config.get("sources") if isinstance(config.get("sources"), dict) else {}
    if args.video is None and args.camera is None:
        if not args.obs_source and srcs.get("camera"):
            args.obs_source = str(srcs["camera"])
        if args.obs_source:
            if args.game_source is None and srcs.get("game"):
                args.game_source = str(srcs["game"])
            if args.mic is None:
                # The panel saves "" for "(no microphone)".
                args.mic = str(srcs["mic"]) if srcs.get("mic") else ("none" if "mic" in srcs else None)
    return problems


def _stdin_is_pipe() -> bool:
    """Only a pipe (the OBS script) means 'EOF = parent gone'; /dev/null or a closed tty does not."""
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _open_feeds(args: argparse.Namespace, obs_kw: dict[str, Any], engine: Engine) -> tuple[Any, Any]:
    """The camera feed (video + audio ring) and the optional game feed."""
    audio = None
    if args.mic and args.mic.lower() != "none":
        from obs_merlb.capture.mic import MicError, MicSource

        try:
            # A missing or unplugged device is retried inside MicSource; only a
            # machine without PortAudio fails here, and then we run without voice.
            audio = MicSource(None if args.mic.lower() == "default" else args.mic)
        except MicError as e:
            engine.error(f"{e}; running without voice", "microphone")
    if args.video:
        feed: Any = FileFeed(args.video, paced=True, loop=args.loop)
        if audio is not None:
            feed.audio_ring = audio
    elif args.camera is not None:
        from obs_merlb.capture.camera import CameraSource

        feed = SourceFeed(CameraSource(args.camera), audio)
    else:
        from obs_merlb.capture.obs_screens import OBSScreenshotSource

        feed = SourceFeed(OBSScreenshotSource(args.obs_source, rate_hz=min(args.rate, 15.0), **obs_kw), audio)
    scene = None
    if args.game_source:
        from obs_merlb.capture.obs_screens import OBSScreenshotSource

        # One thumbnail per step is all the model uses: 4 Hz, 160 px.
        scene = SourceFeed(OBSScreenshotSource(args.game_source, rate_hz=4.0, size=160, **obs_kw))
    return feed, scene


def run(args: argparse.Namespace) -> int:
    cap_threads(1)
    from obs_merlb.capture.file import MediaError
    from obs_merlb.highlights import ObsLink
    from obs_merlb.overlay.server import OverlayServer, OverlayServerError
    from obs_merlb.session import SessionLog

    config_problems = apply_config_defaults(args, checked_live_config(args))
    if not (args.video or args.camera is not None or args.obs_source):
        raise SystemExit("merlb live: no camera: pass --video FILE, --camera N or --obs-source NAME, "
                         "or choose a camera source in the panel (saved as [sources] camera)")
    if not MIN_RATE_HZ <= args.rate <= MAX_RATE_HZ:
        raise SystemExit(f"merlb live: the rate must be {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz, not {args.rate:g}")
    model_dir = resolve_model_dir(args.model)
    state_cfg = StateConfig(smoothing=args.smoothing, threshold=args.threshold,
                            min_dwell_s=args.min_dwell_s, hide_after_s=args.hide_after_s)
    pending_errors: list[tuple[str, str]] = []
    engine_ref: list[Engine] = []

    def report(where: str) -> Callable[[str], None]:
        def cb(message: str) -> None:
            if engine_ref:
                engine_ref[0].error(message, where)
            else:
                pending_errors.append((message, where))
        return cb

    use_obs = bool(args.obs_source or args.game_source or args.obs_port is not None)
    obs_port = 4455 if args.obs_port is None else args.obs_port
    password = obs_password()
    obs = ObsLink(args.obs_host, obs_port, password, on_error=report("obs")) if use_obs else None
    session = None if args.no_session else SessionLog(args.sessions_dir, on_error=report("session"))
    engine = Engine(model_dir, device=args.device, rate=args.rate, state_config=state_cfg,
                    body=not args.no_body, obs=obs, status_file=args.status_file, session=session)
    engine_ref.append(engine)
    if session is not None:
        engine.add_sink(session.write)
    try:
        server = OverlayServer(args.host, args.port, version=__version__)
        server.start()
    except OverlayServerError as e:
        print(f"merlb live: {e}", file=sys.stderr)
        return 2
    engine.server = server
    engine.add_sink(server.publish)
    server.on_command(lambda msg: engine.command(msg, source="panel"))
    engine.publish(engine.hello())
    if session is not None:
        path = session.open(t=0.0)
        engine.publish(session_event("open", None if path is None else str(path), None, 0.0))
    for message, where in pending_errors + [(m, "config") for m in config_problems]:
        engine.error(message, where)
    try:
        feed, scene = _open_feeds(args, {"host": args.obs_host, "port": obs_port, "password": password}, engine)
    except (MediaError, OSError, RuntimeError, ValueError) as e:
        engine.error(f"cannot open the source: {e}", "capture")
        print(f"merlb live: {e}", file=sys.stderr)
        engine.shutdown()
        server.stop()
        return 2
    print(f"overlay: {server.url}  events: {server.ws_url}", flush=True)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        engine.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.overlay == "text":
        if obs is None:
            engine.error("--overlay text needs OBS: give --obs-source or --obs-port", "overlay")
        else:
            engine.text_overlay = _native_overlay(args, obs_port, password, report("overlay"))
            engine.add_sink(engine.text_overlay.publish)
    read_stdin = args.control == "stdin" or (args.control == "auto" and _stdin_is_pipe())
    engine.start_threads(feed, scene, stdin=sys.stdin if read_stdin else None)
    if obs is not None:
        # Connect (or report why not) right away rather than at the first poll.
        threading.Thread(target=_probe_obs, args=(obs,), name="merlb-obs-probe", daemon=True).start()
    try:
        while not engine.stop_event.wait(0.2):
            pass
    finally:
        engine.shutdown()
        time.sleep(0.2)   # let the last events reach the clients
        server.stop()
    return 0


def _native_overlay(args: argparse.Namespace, obs_port: int, password: str,
                    report: Callable[[str], None]) -> Any:
    """The OBS text (+ emoji image) sources, fed with every event from its own thread."""
    from obs_merlb.overlay.native import NativeTextOverlay

    image = args.overlay_image_source
    image = None if not image or image.lower() == "none" else image
    last: list[str] = []

    def once(message: str) -> None:
        # The overlay retries with backoff; the streamer needs each problem once.
        if not last or last[0] != message:
            last[:] = [message]
            report(message)

    return NativeTextOverlay(args.overlay_text_source, host=args.obs_host, port=obs_port,
                             password=password, image_source_name=image,
                             show_emoji=image is None, head=args.overlay_head, on_error=once).start()


def _probe_obs(obs: Any) -> None:
    from obs_merlb.highlights import ObsRequestFailed, ObsUnavailable

    try:
        version, ws = obs.version()
        log.info("OBS %s (obs-websocket %s)", ".".join(map(str, version)), ws)
    except (ObsUnavailable, ObsRequestFailed):
        pass
