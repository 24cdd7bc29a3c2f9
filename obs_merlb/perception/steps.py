"""The one place where frames and audio become the model's per-step arrays.

``Perceiver`` computes one step's array per modality: ``face`` (the aligned
crop of a frame), ``voice_step`` (log-mel, speech probability and energy of
the audio ending at a step's end), ``body`` (pose) and ``scene`` (game
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
from typing import Sequence

import numpy as np

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
                  take(self.speech_prob), take(self.energy), take(self.face_box),
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
        face_box=np.full((T, 4), np.nan, np.float32),
        step_s=step_s, computed=tuple(computed))


@dataclass
class VoiceStep:
    feature: np.ndarray       # (1, 64, 100) log-mel (zeros when not speech)
    speech_prob: float
    energy: float
    present: bool


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
            feat = V.log_mel(row) if present else np.zeros((1, V.N_MELS, V.N_FRAMES), np.float32)
            out.append(VoiceStep(feat, float(p), V.rms(row), present))
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


def clip_steps(path: str | os.PathLike, *, step_s: float = STEP_S, face: bool = True,
               voice: bool = True, body: bool = False, scene: bool = False,
               perceiver: Perceiver | None = None, max_width: int | None = 640,
               key_segments: int | None = None, start: float = 0.0,
               end: float | None = None) -> Steps:
    """Steps over a whole media file, or its ``start``..``end`` segment
    (training, ``merlb analyze``); ``times`` are the file's.

    Decodes once, streaming: each step's frame (the one nearest its middle)
    is kept until the step is done, so memory does not grow with the video's
    length (only the 16 kHz audio is held). The first step's voice feature
    reads the second before ``start`` when the file has it, as live would.
    Modalities switched off, or absent from the file, are masked. Pass a
    ``Perceiver`` to reuse its models across files; make it with
    ``static=True`` so a step does not depend on the one before.
    ``key_segments`` here applies to the whole clip; per window, use
    ``Steps.window(..., key_segments=k)``. Raises
    :class:`obs_merlb.capture.MediaError` for an unreadable file.
    """
    from ..capture.base import VideoFrame
    from ..capture.file import assemble_audio, iter_media, probe

    info = probe(path)
    own = perceiver is None
    p = perceiver or Perceiver(face=face, voice=voice, body=body, scene=scene, static=True)
    face = face and p._face is not None
    body = body and p._body is not None
    voice = voice and p._vad is not None
    want_video = info.has_video and (face or body or scene)
    want_audio = info.has_audio and voice
    computed = tuple(m for m, on in zip(MODALITIES, (face, voice, body, scene)) if on)
    start = max(0.0, float(start))
    decode_from = max(0.0, start - VOICE_SECONDS) if want_audio else start
    try:
        best: dict[int, tuple[float, VideoFrame]] = {}
        results: dict[int, tuple] = {}
        chunks = []
        last_t = start

        def finish(i: int) -> None:
            _, fr = best.pop(i)
            img = fr.image
            results[i] = (p.face(img) if face else None, p.body(img) if body else None,
                          p.scene(img) if scene else None)

        if want_video or want_audio:
            for item in iter_media(path, video=want_video, audio=want_audio, max_width=max_width,
                                   start=decode_from, end=end):
                if isinstance(item, VideoFrame):
                    rel = item.t - start
                    if rel < -step_s:
                        continue
                    last_t = max(last_t, item.t)
                    k = int(np.floor(rel / step_s))
                    for i in (k - 1, k, k + 1):
                        if i < 0 or i in results:
                            continue
                        d = abs(rel - (i + 0.5) * step_s)
                        if d <= step_s and (i not in best or d < best[i][0]):
                            best[i] = (d, item)
                    # A step is final once frames are past its middle by a step.
                    for i in [i for i in best if rel > (i + 1.5) * step_s]:
                        finish(i)
                else:
                    chunks.append(item)
            for i in sorted(best):
                finish(i)
        audio = assemble_audio(chunks, decode_from)
        period = 1.0 / info.fps if info.fps else 0.0
        reached = max(last_t + period if want_video else 0.0,
                      decode_from + len(audio) / V.SAMPLE_RATE)
        if not (want_video or want_audio) and info.duration:
            reached = info.duration
        if end is not None:
            reached = min(reached, end)
        n = max(1, int(np.floor((reached - start) / step_s + 1e-6)))
        out = empty_steps(n, start, step_s, computed)
        for i, (fres, bres, sres) in results.items():
            if i >= n:
                continue
            if fres is not None:
                out.face[i, 0] = fres.crop
                out.face_box[i] = fres.box
                out.mask[i, FACE] = 1
            if bres is not None:
                out.body[i] = bres
                out.mask[i, BODY] = 1
            if sres is not None:
                out.scene[i] = sres
                out.mask[i, SCENE_I] = 1
        if want_audio and len(audio):
            p._fill_voice(out, audio, decode_from)
            if key_segments is not None:
                vm = V.key_segment_mask(out.speech_prob, out.energy,
                                        threshold=p.vad_threshold, k=key_segments)
                out.mask[:, VOICE] = vm
                out.voice[vm == 0] = 0
        return out
    finally:
        if own:
            p.close()


__all__ = ["STEP_S", "T_DEFAULT", "MODALITIES", "VOICE_SECONDS", "Steps", "VoiceStep",
           "Perceiver", "empty_steps", "clip_steps"]
