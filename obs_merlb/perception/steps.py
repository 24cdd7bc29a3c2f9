"""The one place where frames and audio become the model's per-step arrays.

``Perceiver`` computes one step's array per modality: ``face`` (the aligned
crop of a frame), ``voice_step`` (log-mel, speech probability, energy and pitch
track of the audio ending at a step's end), ``body`` (pose) and ``scene`` (game
thumbnail). Training (``clip_steps`` on files, run by ``merlb preprocess``)
and the live analyzer (obs_merlb/analyzer.py, frame by frame) both call these
methods, so a feature is computed identically offline and live;
tests/test_perception.py's parity test holds the two to identical arrays.
Arrays and masks follow docs/ARCHITECTURE.md: step ``t`` covers
``[t0 + t*step_s, t0 + (t+1)*step_s)``; mask order face, voice, body, scene;
a missing step carries zeros.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from obs_merlb.capture.base import AudioRing
from obs_merlb.labels import BODY, FACE, MODALITIES, VOICE
from obs_merlb.labels import SCENE as SCENE_I

from . import voice as V
from .body import BODY_DIM
from .face import CROP, FaceResult
from .scene import SCENE, thumbnail

STEP_S = 0.25
T_DEFAULT = 8
# Audio the voice feature of one step reads: 1.0 s plus the first frame's lead-in.
VOICE_SECONDS = V.NEEDED / V.SAMPLE_RATE


@dataclass
class Steps:
    """Per-step arrays of one window or one whole clip (all float32)."""

    face: np.ndarray          # (T, 1, 64, 64)
    voice: np.ndarray         # (T, 1, 64, 100)
    body: np.ndarray          # (T, 132)
    scene: np.ndarray         # (T, 3, 128, 128)
    mask: np.ndarray          # (T, 4) face, voice, body, scene
    times: np.ndarray         # (T,) step start, seconds (the source's clock)
    speech_prob: np.ndarray   # (T,) silero-vad probability of the step's 1.0 s
    energy: np.ndarray        # (T,) RMS of the step's 1.0 s
    pitch: np.ndarray         # (T, 2, PITCH_FRAMES) voice.pitch_track of speech steps, zeros elsewhere
    face_box: np.ndarray      # (T, 4) x, y, w, h pixels; NaN where no face
    step_s: float = STEP_S
    computed: tuple[str, ...] = field(default=MODALITIES)   # modalities actually run

    def __len__(self) -> int:
        return len(self.times)

    def window(self, start: int, T: int = T_DEFAULT, *, key_segments: int | None = None,
               threshold: float = V.SPEECH_THRESHOLD) -> "Steps":
        """Steps ``start .. start+T`` as a copy; key-segment selection is per window.

        A window that runs past the end is padded with masked (zero) steps,
        so every window a caller cuts has exactly ``T`` steps.
        """
        n = len(self)
        idx = np.arange(start, start + T)
        valid = (idx >= 0) & (idx < n)
        src = np.clip(idx, 0, max(n - 1, 0))

        def take(a: np.ndarray) -> np.ndarray:
            out = a[src].copy() if n else np.zeros((T,) + a.shape[1:], a.dtype)
            out[~valid] = 0
            return out

        w = Steps(take(self.face), take(self.voice), take(self.body), take(self.scene),
                  take(self.mask),
                  self.times[0] + idx * self.step_s if n else idx * self.step_s,
                  take(self.speech_prob), take(self.energy), take(self.pitch), take(self.face_box),
                  self.step_s, self.computed)
        w.face_box[~valid] = np.nan
        if "voice" in self.computed:
            vm = V.key_segment_mask(w.speech_prob, w.energy, threshold=threshold, k=key_segments)
            vm[~valid] = 0
            w.mask[:, VOICE] = vm
            w.voice[vm == 0] = 0
        return w

    def windows(self, T: int = T_DEFAULT, hop: int | None = None, **kw) -> list["Steps"]:
        """Consecutive windows over the whole clip (the last one padded)."""
        hop = hop or T
        starts = range(0, max(len(self) - T, 0) + 1, hop) if len(self) >= T else [0]
        return [self.window(s, T, **kw) for s in starts]

    def arrays(self) -> dict[str, np.ndarray]:
        """The contract's arrays by name (what the model and the caches take)."""
        return {"face": self.face, "voice": self.voice, "body": self.body,
                "scene": self.scene, "mask": self.mask, "times": self.times}


def empty_steps(T: int, t0: float = 0.0, step_s: float = STEP_S,
                computed: tuple[str, ...] = MODALITIES) -> Steps:
    # np.zeros is lazily backed by the OS: a long clip's unused scene array
    # costs no memory until written.
    return Steps(
        face=np.zeros((T, 1, CROP, CROP), np.float32),
        voice=np.zeros((T, 1, V.N_MELS, V.N_FRAMES), np.float32),
        body=np.zeros((T, BODY_DIM), np.float32),
        scene=np.zeros((T, 3, SCENE, SCENE), np.float32),
        mask=np.zeros((T, 4), np.float32),
        times=t0 + np.arange(T) * step_s,
        speech_prob=np.zeros(T, np.float32),
        energy=np.zeros(T, np.float32),
        pitch=np.zeros((T, 2, V.PITCH_FRAMES), np.float32),
        face_box=np.full((T, 4), np.nan, np.float32),
        step_s=step_s, computed=tuple(computed))


@dataclass
class VoiceStep:
    feature: np.ndarray       # (1, 64, 100) log-mel (zeros when not speech)
    speech_prob: float
    energy: float
    present: bool
    pitch: np.ndarray = field(default_factory=lambda: np.zeros((2, V.PITCH_FRAMES), np.float32))


class Perceiver:
    """The perception models, created once and reused (and closed at the end).

    Per-step methods are what the live analyzer calls as frames and audio
    arrive and what ``clip_steps`` calls on a file; ``steps`` assembles a
    window from frames and audio in one go.
    ``static=True`` treats every frame as unrelated (offline steps, a step
    apart); ``False`` lets face mesh and pose track from frame to frame
    (live, cheaper). Models for modalities switched off are never loaded.
    """

    def __init__(self, *, face: bool = True, voice: bool = True, body: bool = False,
                 scene: bool = False, static: bool = False,
                 vad_threshold: float = V.SPEECH_THRESHOLD) -> None:
        from .body import BodyPose
        from .face import FaceCropper

        self.enabled = {"face": face, "voice": voice, "body": body, "scene": scene}
        self.vad_threshold = vad_threshold
        self._face = FaceCropper(static=static) if face else None
        self._body = BodyPose(static=static) if body else None
        self._vad = V.VAD() if voice else None

    @property
    def computed(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if self.enabled[m])

    def face(self, image: np.ndarray) -> FaceResult | None:
        if self._face is None:
            raise RuntimeError("this Perceiver was made with face=False")
        return self._face(image)

    def body(self, image: np.ndarray) -> np.ndarray | None:
        if self._body is None:
            raise RuntimeError("this Perceiver was made with body=False")
        return self._body(image)

    @staticmethod
    def scene(image: np.ndarray) -> np.ndarray:
        return thumbnail(image)

    def voice_step(self, audio: np.ndarray) -> VoiceStep:
        """The newest audio (at least ``VOICE_SECONDS``; shorter is zero-padded
        in front, as at a stream's start) -> the step ending now. The log-mel
        is computed only for speech: a masked step carries zeros anyway."""
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        return self.voice_steps(V.window_ending(x, len(x))[None])[0]

    def voice_steps(self, windows: np.ndarray) -> list[VoiceStep]:
        """``voice_step`` of each row of ``windows`` (B, NEEDED samples), the
        speech detector batched over them (offline: many steps per call)."""
        if self._vad is None:
            raise RuntimeError("this Perceiver was made with voice=False")
        x = np.asarray(windows, dtype=np.float32).reshape(len(windows), -1)
        probs = self._vad.speech_probs(x)
        out = []
        for row, p in zip(x, probs):
            present = bool(p >= self.vad_threshold)
            if present:
                out.append(VoiceStep(V.log_mel(row), float(p), V.rms(row), True, V.pitch_track(row)))
            else:
                out.append(VoiceStep(np.zeros((1, V.N_MELS, V.N_FRAMES), np.float32), float(p), V.rms(row),
                                     False))
        return out

    def steps(self, frames: Sequence[np.ndarray], frame_times: Sequence[float],
              audio: np.ndarray | None, *, t0: float = 0.0, T: int = T_DEFAULT,
              step_s: float = STEP_S, audio_t0: float = 0.0,
              scene_frames: Sequence[np.ndarray] | None = None,
              scene_times: Sequence[float] | None = None,
              key_segments: int | None = None) -> Steps:
        """Build the T-step arrays of the window starting at ``t0``.

        Face and body use the frame nearest each step's middle (none within
        one step of it: missing). Scene uses ``scene_frames`` (the game
        source) when given; without them the scene is masked unless this
        Perceiver was made with ``scene=True``, in which case the camera
        frames stand in (a recording of the whole stream). ``audio[0]`` is
        at ``audio_t0`` on the frames' clock.
        """
        out = empty_steps(T, t0, step_s, self.computed)
        ft = np.asarray(frame_times, dtype=np.float64)
        mids = t0 + (np.arange(T) + 0.5) * step_s
        if self.enabled["scene"] and scene_frames is None:
            scene_frames, scene_times = frames, frame_times
        for i, mid in enumerate(mids):
            j = _nearest(ft, mid, step_s)
            if j is not None:
                self._fill_visual(out, i, frames[j])
            if self.enabled["scene"] and scene_frames is not None and len(scene_frames):
                k = _nearest(np.asarray(scene_times, dtype=np.float64), mid, step_s)
                if k is not None:
                    out.scene[i] = self.scene(scene_frames[k])
                    out.mask[i, SCENE_I] = 1
        if self.enabled["voice"] and audio is not None and len(audio):
            self._fill_voice(out, np.asarray(audio, np.float32), audio_t0)
            if key_segments is not None:
                vm = V.key_segment_mask(out.speech_prob, out.energy,
                                        threshold=self.vad_threshold, k=key_segments)
                out.mask[:, VOICE] = vm
                out.voice[vm == 0] = 0
        return out

    def _fill_visual(self, out: Steps, i: int, image: np.ndarray) -> None:
        if self._face is not None:
            r = self.face(image)
            if r is not None:
                out.face[i, 0] = r.crop
                out.face_box[i] = r.box
                out.mask[i, FACE] = 1
        if self._body is not None:
            b = self.body(image)
            if b is not None:
                out.body[i] = b
                out.mask[i, BODY] = 1

    def _fill_voice(self, out: Steps, audio: np.ndarray, audio_t0: float) -> None:
        for i, t in enumerate(out.times):
            step = self.voice_step(V.step_window(audio, t + out.step_s, audio_t0))
            out.speech_prob[i] = step.speech_prob
            out.energy[i] = step.energy
            if step.present:
                out.voice[i] = step.feature
                out.pitch[i] = step.pitch
                out.mask[i, VOICE] = 1

    def close(self) -> None:
        for m in (self._face, self._body, self._vad):
            if m is not None:
                m.close()
        self._face = self._body = self._vad = None

    def __enter__(self) -> "Perceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _nearest(times: np.ndarray, t: float, tol: float) -> int | None:
    if len(times) == 0:
        return None
    j = int(np.argmin(np.abs(times - t)))
    return j if abs(times[j] - t) <= tol else None


STEP_BLOCK = 256              # steps per block `iter_clip_steps` yields (64 s at 0.25 s)
AUDIO_RING_S = 20.0          # audio kept: a voice window (1 s) behind the newest decoded chunk, and margin
VOICE_BATCH = 32             # voice steps per batched speech-detector call


def clip_steps(path: str | os.PathLike, *, step_s: float = STEP_S, face: bool = True,
               voice: bool = True, body: bool = False, scene: bool = False,
               perceiver: Perceiver | None = None, max_width: int | None = 640,
               key_segments: int | None = None, start: float = 0.0,
               end: float | None = None) -> Steps:
    """Steps over a whole media file, or its ``start``..``end`` segment
    (training, ``merlb analyze``); ``times`` are the file's.

    The blocks of :func:`iter_clip_steps` joined: fine for a clip, but a
    long recording's steps take ~40 KB each, so for hours of media iterate
    the blocks instead. ``key_segments`` here applies to the whole clip; per
    window, use ``Steps.window(..., key_segments=k)``. Raises
    :class:`obs_merlb.capture.MediaError` for an unreadable file.
    """
    blocks = list(iter_clip_steps(path, step_s=step_s, face=face, voice=voice, body=body, scene=scene,
                                  perceiver=perceiver, max_width=max_width, start=start, end=end))
    out = _join(blocks)
    if key_segments is not None and "voice" in out.computed:
        vm = V.key_segment_mask(out.speech_prob, out.energy, threshold=(perceiver.vad_threshold if perceiver
                                                                        else V.SPEECH_THRESHOLD), k=key_segments)
        out.mask[:, VOICE] = vm
        out.voice[vm == 0] = 0
    return out


def _join(blocks: list[Steps]) -> Steps:
    if len(blocks) == 1:
        return blocks[0]
    b0 = blocks[0]
    cat = {name: np.concatenate([getattr(b, name) for b in blocks])
           for name in ("face", "voice", "body", "scene", "mask", "times", "speech_prob", "energy", "pitch", "face_box")}
    return Steps(**cat, step_s=b0.step_s, computed=b0.computed)


def iter_clip_steps(path: str | os.PathLike, *, step_s: float = STEP_S, face: bool = True,
                    voice: bool = True, body: bool = False, scene: bool = False,
                    perceiver: Perceiver | None = None, max_width: int | None = 640,
                    start: float = 0.0, end: float | None = None, from_step: int = 0,
                    block: int = STEP_BLOCK, on_progress: Callable[[float], None] | None = None,
                    on_warning: Callable[[str], None] | None = None) -> Iterator[Steps]:
    """The steps of a media file (or its ``start``..``end`` segment), in
    consecutive blocks of at most ``block`` steps, in flat memory.

    Decodes once, streaming: each step's frame (the one nearest its middle)
    is kept until the step is done, and audio only as far back as the next
    step's voice window reads; voice steps run in batches. The first step's
    voice feature reads the second before ``start`` when the file has it, as
    live would. Modalities switched off, or absent from the file, are
    masked. Pass a ``Perceiver`` to reuse its models across files; make it
    with ``static=True`` so a step does not depend on the one before.
    ``from_step`` continues an interrupted run: blocks start at that step,
    equal to the uninterrupted run's (the file is decoded from the start;
    only the steps before it are not perceived). ``on_progress`` gets the
    media time reached; a truncated file's note goes to ``on_warning``
    (else a RuntimeWarning).
    """
    from ..capture.file import probe

    info = probe(path)
    own = perceiver is None
    p = perceiver or Perceiver(face=face, voice=voice, body=body, scene=scene, static=True)
    try:
        yield from _ClipStepper(p, info, step_s=step_s, face=face and p._face is not None,
                                voice=voice and p._vad is not None, body=body and p._body is not None,
                                scene=scene, max_width=max_width, start=start, end=end,
                                from_step=from_step, block=block).run(on_progress, on_warning)
    finally:
        if own:
            p.close()


class _ClipStepper:
    """The state of one `iter_clip_steps` pass: pending frames, the audio window, finished steps."""

    def __init__(self, p: Perceiver, info: Any, *, step_s: float, face: bool, voice: bool, body: bool,
                 scene: bool, max_width: int | None, start: float, end: float | None, from_step: int,
                 block: int) -> None:
        self.p, self.info, self.step_s = p, info, step_s
        self.face, self.voice, self.body, self.scene = face, voice, body, scene
        self.want_video = info.has_video and (face or body or scene)
        self.want_audio = info.has_audio and voice
        self.computed = tuple(m for m, on in zip(MODALITIES, (face, voice, body, scene)) if on)
        self.max_width, self.end, self.from_step, self.block = max_width, end, from_step, block
        self.start = max(0.0, float(start))
        self.decode_from = max(0.0, self.start - VOICE_SECONDS) if self.want_audio else self.start
        self.best: dict[int, tuple[float, Any]] = {}
        self.visual: dict[int, tuple] = {}            # step -> (face, body, scene) results, until emitted
        self.final_upto = 0                           # steps below this have their frame settled
        self.voiced: dict[int, VoiceStep] = {}
        self.voice_upto = from_step                   # next step whose voice is due
        self.emitted = from_step
        self.last_t = self.start
        # Audio, indexed from decode_from (assemble_audio's layout): the newest seconds in a ring.
        self.ring = AudioRing(AUDIO_RING_S)
        self.audio_n: int | None = None               # samples so far (None before the first chunk)
        self.drop = 0

    # -- video
    def _frame(self, item: Any) -> None:
        step_s = self.step_s
        rel = item.t - self.start
        if rel < -step_s:
            return
        self.last_t = max(self.last_t, item.t)
        k = int(np.floor(rel / step_s))
        for i in (k - 1, k, k + 1):
            if i < self.final_upto or i < self.from_step:
                continue
            d = abs(rel - (i + 0.5) * step_s)
            if d <= step_s and (i not in self.best or d < self.best[i][0]):
                self.best[i] = (d, item)
        # A step is final once frames are past its middle by a step.
        settled = int(np.floor(rel / step_s - 1.5 - 1e-12)) + 1 if rel > 1.5 * step_s else 0
        self._settle(max(self.final_upto, settled))

    def _settle(self, upto: int) -> None:
        for i in sorted(j for j in self.best if j < upto):
            _, fr = self.best.pop(i)
            img = fr.image
            self.visual[i] = (self.p.face(img) if self.face else None, self.p.body(img) if self.body else None,
                              self.p.scene(img) if self.scene else None)
        self.final_upto = max(self.final_upto, upto)

    # -- audio
    def _audio(self, chunk: Any) -> None:
        x = np.asarray(chunk.samples, np.float32).reshape(-1)
        if self.audio_n is None:
            lead = int(round((chunk.t - self.decode_from) * V.SAMPLE_RATE))
            if lead > 0:
                x = np.concatenate([np.zeros(lead, np.float32), x])
            self.drop = max(0, -lead)             # encoder priming before decode_from
            self.audio_n = 0
        if self.drop:
            cut = min(self.drop, len(x))
            x, self.drop = x[cut:], self.drop - cut
        self.ring.write(x)
        self.audio_n += len(x)

    def _end_index(self, i: int) -> int:
        return int(round((self.start + (i + 1) * self.step_s - self.decode_from) * V.SAMPLE_RATE))

    def _voice(self, upto: int | None) -> None:
        """Voice of the due steps whose window has arrived (all below ``upto`` at the end)."""
        while True:
            ks = []
            while len(ks) < VOICE_BATCH:
                i = self.voice_upto + len(ks)
                if (upto is not None and i >= upto) or (upto is None and
                                                        self._end_index(i) > (self.audio_n or 0)):
                    break
                ks.append(i)
            if not ks:
                break
            windows = np.stack([self._window(self._end_index(i)) for i in ks])
            for i, step in zip(ks, self.p.voice_steps(windows)):
                self.voiced[i] = step
            self.voice_upto = ks[-1] + 1

    def _window(self, end: int) -> np.ndarray:
        """`voice.window_ending` on the whole audio, read from the ring (zeros past either end)."""
        lag = (self.audio_n or 0) - end
        if lag >= 0:
            return self.ring.read((lag + V.NEEDED) / V.SAMPLE_RATE)[:V.NEEDED]
        out = np.zeros(V.NEEDED, np.float32)     # the clip's last steps: past its end
        if V.NEEDED + lag > 0:
            out[:V.NEEDED + lag] = self.ring.read((V.NEEDED + lag) / V.SAMPLE_RATE)
        return out

    # -- output
    def _ready(self, n: int | None) -> int:
        """Steps below this are complete (``n``: the clip's length, once known)."""
        upto = n if n is not None else min(self.final_upto if self.want_video else 10**12,
                                           self.voice_upto if self.want_audio else 10**12)
        if n is None and not (self.want_video or self.want_audio):
            return self.emitted
        return upto

    def _emit(self, upto: int, final: bool) -> Iterator[Steps]:
        while self.emitted < upto and (final or upto - self.emitted >= self.block):
            a = self.emitted
            b = min(upto, a + self.block)
            out = empty_steps(b - a, self.start + a * self.step_s, self.step_s, self.computed)
            for i in range(a, b):
                j = i - a
                fres, bres, sres = self.visual.pop(i, (None, None, None))
                if fres is not None:
                    out.face[j, 0] = fres.crop
                    out.face_box[j] = fres.box
                    out.mask[j, FACE] = 1
                if bres is not None:
                    out.body[j] = bres
                    out.mask[j, BODY] = 1
                if sres is not None:
                    out.scene[j] = sres
                    out.mask[j, SCENE_I] = 1
                step = self.voiced.pop(i, None)
                if step is not None:
                    out.speech_prob[j] = step.speech_prob
                    out.energy[j] = step.energy
                    if step.present:
                        out.voice[j] = step.feature
                        out.pitch[j] = step.pitch
                        out.mask[j, VOICE] = 1
            self.emitted = b
            yield out

    def run(self, on_progress: Callable[[float], None] | None,
            on_warning: Callable[[str], None] | None) -> Iterator[Steps]:
        from ..capture.base import VideoFrame
        from ..capture.file import iter_media_ahead

        if self.want_video or self.want_audio:
            for item in iter_media_ahead(self.info.path, video=self.want_video, audio=self.want_audio,
                                   max_width=self.max_width, start=self.decode_from, end=self.end,
                                   on_warning=on_warning):
                if isinstance(item, VideoFrame):
                    self._frame(item)
                else:
                    self._audio(item)
                    self._voice(None)
                if on_progress is not None:
                    on_progress(item.t)
                yield from self._emit(self._ready(None), final=False)
        period = 1.0 / self.info.fps if self.info.fps else 0.0
        reached = max(self.last_t + period if self.want_video else 0.0,
                      self.decode_from + (self.audio_n or 0) / V.SAMPLE_RATE)
        if not (self.want_video or self.want_audio) and self.info.duration:
            reached = self.info.duration
        if self.end is not None:
            reached = min(reached, self.end)
        n = max(1, int(np.floor((reached - self.start) / self.step_s + 1e-6)))
        self._settle(10**12)
        if self.want_audio and self.audio_n:
            self._voice(n)
        yield from self._emit(n, final=True)


__all__ = ["STEP_S", "T_DEFAULT", "MODALITIES", "VOICE_SECONDS", "Steps", "VoiceStep",
           "Perceiver", "empty_steps", "clip_steps", "iter_clip_steps"]
