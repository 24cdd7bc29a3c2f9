"""The live Analyzer over a recording, batched and pipelined (`merlb analyze`).

Offline there is no latency to protect, so the work the live engine does one
tick at a time is grouped, with each tick's result unchanged:

* a decoder thread demuxes, decodes and converts the frames the analysis
  samples (the others are decoded, never converted) while the main thread
  runs the face mesh, so decoding and perception share the two cores;
* a voice thread computes every step's speech probability, log-mel and
  voice embedding ahead of the ticks, many steps per onnxruntime call; a
  tick uses a precomputed step only when its audio window is the very one
  the live path reads (compared sample for sample), else computes it itself;
* an answering thread encodes the faces the ticks kept (their ring holds
  references until then), runs the sequence model once per batch of ticks
  (consecutive identical windows once), mixes in what the voice reader said
  of each tick's window (read at the tick, against the person's statistics
  as they stood then), and feeds the state tracker in order.

Every tick's event equals the live Analyzer's (tests/test_perception.py,
tests/test_long_recording.py). Memory is flat: audio lives in AudioRings
(the live one, and the voice thread's 30 s), queues are bounded, and
results leave as they come.
"""
from __future__ import annotations

import copy
import logging
import math
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from obs_merlb.analyzer import Analyzer, AudioView, StepRing, TickResult, thumb
from obs_merlb.capture.base import SAMPLE_RATE, AudioRing, VideoFrame
from obs_merlb.capture.file import MediaError, iter_media
from obs_merlb.perception.steps import VoiceStep
from obs_merlb.perception.voice import NEEDED

log = logging.getLogger(__name__)

DECODE_AHEAD = 48          # decoded items queued ahead of the analysis (frames are ~0.5 MB each)
TICK_BATCH = 96            # ticks per batched sequence call
# Voice steps per speech-detector call: silero-vad's 31 calls per step then run
# once per 8 steps (2 min of media: 2.7 s CPU one by one, 1.2 s by 8, 1.0 s by
# 32), and its arena stays small (by 32 it held ~45 MB more for the run).
VOICE_BATCH = 8
VOICE_LEAD = 4 * VOICE_BATCH   # voice results kept ahead of the ticks (~70 KB each, with their window)
# Faces or voice windows per encoder call: the CNNs are compute-bound (a batch
# saves nothing per input), and onnxruntime's arena keeps the largest batch's
# activations for the whole run: 60 faces at once held ~200 MB more, 32 voice
# windows ~25 MB more.
ENCODER_BATCH = 8
VOICE_RING_S = 30.0        # audio the voice thread keeps: a batch's windows and its lead
_END = object()


class OfflineTick(NamedTuple):
    """A tick of `iter_ticks`: its result (None for a resumed run's warm-up), its media time, and
    where the frame sampler stood before taking it (what a checkpoint needs to sample the same frames)."""
    result: TickResult | None
    t: float
    next_t: float
    state: Any = None      # a copy of the state tracker after this tick (the last of each batch)
    person: Any = None     # with `state`: the analyzer's `person_state()` after this tick


@dataclass
class _Pending:
    """A tick whose model call waits: its window as the ring held it, face embeddings by reference."""
    t: float
    embs: dict[str, np.ndarray]
    mask: np.ndarray
    face_refs: np.ndarray
    speech: bool
    face: Any
    next_t: float = 0.0
    read: tuple[np.ndarray, float] | None = None    # the voice reader's word on the window, read at the tick


@dataclass
class _Batch:
    ticks: list[_Pending]
    first_id: int                 # reference number of crops[0]
    crops: list[np.ndarray]
    keep: set[int]                # references later ticks may still read
    person: Any = None            # `person_state()` after the last tick (perception runs ahead of answers)


class _Ref:
    """A face embedding not computed yet: the crop's number in the run."""
    __slots__ = ("id",)

    def __init__(self, id_: int) -> None:
        self.id = id_


class _RefRing(StepRing):
    """A StepRing whose face slots hold references, resolved when the batch is answered."""

    def __init__(self, steps: int, dims: dict[str, int]) -> None:
        super().__init__(steps, dims)
        self.ref = np.full(steps, -1, np.int64)

    def put(self, modality: str, k: int, emb: Any) -> None:
        if isinstance(emb, _Ref):
            i = k % self.T
            self.step_id[modality][i] = k
            self.present[modality][i] = True
            self.ref[i] = emb.id
        else:
            super().put(modality, k, emb)

    def refs(self, k_last: int) -> np.ndarray:
        return self.ref[np.arange(k_last - self.T + 1, k_last + 1) % self.T].copy()


class _Decoder:
    """Decodes in its own thread: sampled frames (converted) and audio, in file order."""

    def __init__(self, path: str, rate: float, *, max_width: int | None, start: float, next_t: float,
                 stop: threading.Event, thumbs: bool) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=DECODE_AHEAD)
        self.notes: list[str] = []
        self._args = (path, rate, max_width, start, next_t)
        self._stop = stop
        self._thumbs = thumbs            # the 'unchanged frame' thumbnails, made here off the mesh's thread
        self._thread = threading.Thread(target=self._run, name="merlb-decode", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        path, rate, max_width, start, next_t = self._args
        period = 1.0 / rate
        try:
            # Always from the file's start, even when resuming: audio decoded after a
            # seek lands a few samples off the first run's (container timestamps are
            # rounded), and every later voice step would differ. The part before
            # `start` is only decoded, never converted or analysed.
            for item in iter_media(path, max_width=max_width, stop=self._stop, on_warning=self.notes.append):
                if isinstance(item, VideoFrame):
                    if item.t < start or item.t + 1e-6 < next_t:
                        continue
                    before, next_t = next_t, max(next_t + period, item.t + period * 0.5)
                    image = item.image
                    ok = self._put(("v", item.t, (image, before, thumb(image) if self._thumbs else None)))
                else:
                    ok = self._put(("a", item.t, item.samples))
                if not ok:
                    return
            self._put((_END, None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(("error", None, e))

    def items(self) -> Iterator[tuple[str, float, Any]]:
        while True:
            kind, t, payload = self.q.get()
            if kind is _END:
                return
            if kind == "error":
                raise payload
            yield kind, t, payload

    def join(self) -> None:
        self._thread.join(timeout=5.0)


class _VoiceAhead:
    """Every step's voice result, computed in batches in its own thread, ahead of the ticks.

    It decodes the file's audio itself (an audio-only pass: the same chunks,
    times and samples as the analysis's decoder), so it can run up to
    VOICE_LEAD steps ahead of the ticks and give the speech detector full
    batches: a step's 32 detector calls then run once per VOICE_BATCH steps
    instead of once per step. Its AudioRing gets the same chunks as the live
    one, so a step's window is cut the way `AudioView.window_ending` cuts it.
    """

    def __init__(self, analyzer: Analyzer, first_step: int, path: str, stop: threading.Event) -> None:
        self.perceiver = analyzer.perceiver
        self.backend = analyzer.backend
        # A person baseline changes step by step with what the ticks heard: the tick encodes then.
        self.encode = analyzer.baseline is None
        self.step_s = analyzer.step_s
        self._path = path
        self._stop = stop
        self._cv = threading.Condition()
        self._results: dict[int, tuple[np.ndarray, VoiceStep, np.ndarray | None]] = {}
        self._next_k = first_step
        self._done = False
        self.ring = AudioRing(VOICE_RING_S)
        self.hits = self.misses = 0
        self._thread = threading.Thread(target=self._run, name="merlb-voice", daemon=True)
        self._thread.start()

    def _window_end(self, k: int) -> int | None:
        """Ring index just after step k's window, once the audio has reached it."""
        end_s = (k + 1) * self.step_s
        t_end = self.ring.t_end
        if t_end is None or t_end < end_s:
            return None
        return self.ring.total_written - int(round((t_end - end_s) * SAMPLE_RATE))

    def _window(self, end: int) -> np.ndarray | None:
        lag = self.ring.total_written - end
        if lag + NEEDED > self.ring.capacity:
            return None          # fell too far behind: the tick computes this step itself
        return self.ring.read((lag + NEEDED) / SAMPLE_RATE)[:NEEDED]

    def _run(self) -> None:
        try:
            for item in iter_media(self._path, video=False, stop=self._stop, on_warning=lambda _: None):
                self.ring.write(item.samples, item.t)
                if self._ready() >= VOICE_BATCH:
                    self._compute()
                    with self._cv:    # far enough ahead: wait for the ticks (bounded memory)
                        while len(self._results) >= VOICE_LEAD and not self._stop.is_set():
                            self._cv.wait(0.2)
                if self._stop.is_set():
                    return
            self._compute()
        except MediaError as e:     # no audio track, or none that decodes: the ticks find no audio either
            log.debug("no voice steps ahead: %s", e)
        except Exception:  # noqa: BLE001 - the ticks then compute their voice steps themselves
            log.exception("voice steps ahead failed; computing them per tick")
        finally:
            with self._cv:
                self._done = True
                self._cv.notify_all()

    def _ready(self) -> int:
        n = 0
        while n < VOICE_BATCH and self._window_end(self._next_k + n) is not None:
            n += 1
        return n

    def _compute(self) -> None:
        while True:
            ks, windows = [], []
            while len(ks) < VOICE_BATCH:
                k = self._next_k + len(ks)
                end = self._window_end(k)
                if end is None:
                    break
                w = self._window(end)
                ks.append(k)
                windows.append(w)
            if not ks:
                break
            kept = [j for j, w in enumerate(windows) if w is not None]
            steps = self.perceiver.voice_steps(np.stack([windows[j] for j in kept])) if kept else []
            speech = [n for n, s in enumerate(steps) if s.present and self.encode]
            embs: list[np.ndarray | None] = [None] * len(steps)
            if speech:
                feats = np.stack([steps[n].feature for n in speech])
                enc = _encode(self.backend, "voice", feats)
                for m, n in enumerate(speech):
                    embs[n] = enc[m]
            with self._cv:
                for n, j in enumerate(kept):
                    self._results[ks[j]] = (windows[j], steps[n], embs[n])
                self._next_k = ks[-1] + 1
                self._cv.notify_all()

    def forget_before(self, k: int) -> None:
        """Drop results no tick can ask for any more (the live path skips steps when the
        audio lags the video by more than a window)."""
        with self._cv:
            for old in [j for j in self._results if j < k]:
                del self._results[old]
            self._cv.notify_all()

    def get(self, k: int, window: np.ndarray) -> tuple[VoiceStep, np.ndarray | None] | None:
        """Step k's result if it was computed from exactly this window; older steps are dropped."""
        with self._cv:
            while k >= self._next_k and not self._done:
                self._cv.wait(0.5)
            self.forget_before(k)
            hit = self._results.pop(k, None)
            self._cv.notify_all()
        if hit is not None and np.array_equal(hit[0], window):
            self.hits += 1
            return hit[1], hit[2]
        self.misses += 1
        return None

    def close(self) -> None:
        self._thread.join(timeout=5.0)


class BatchedAnalyzer(Analyzer):
    """The live Analyzer, whose ticks are answered in batches (see the module docstring).

    Two sides, each on one thread: perception (`tick_later`, `after_event`,
    `take_batch`) runs the face mesh and the ring exactly as a live tick
    does, keeping each tick's window with its new face crops unencoded;
    answering (`answer`) encodes a batch's crops (ENCODER_BATCH at a time),
    runs the sequence model over its windows in one call and feeds the
    state tracker in order.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.ring = _RefRing(self.T, dict(self.backend.cfg.embed_dims))
        self._pending: list[_Pending] = []
        self._crops: list[np.ndarray] = []
        self._first_id = 0
        self._faces: dict[int, np.ndarray] = {}       # answering side: embeddings still referenced
        self.voice_ahead: _VoiceAhead | None = None
        # Ticks up to this media time only warm the ring up (a resumed run): no model call, no state.
        self.quiet_until = -math.inf
        self.next_thumb: np.ndarray | None = None    # the next frame's thumbnail, from the decoder

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _face_embedding(self, face_res: Any) -> _Ref:
        self._crops.append(face_res.crop)
        return _Ref(self._first_id + len(self._crops) - 1)

    def tick_later(self, image: np.ndarray | None, t: float, next_t: float = 0.0) -> None:
        k = int(math.floor(t / self.step_s + 1e-9))
        if self.voice_ahead is not None:
            self.voice_ahead.forget_before(k - self.T)      # older than any window a tick reads
        face = self._face_tick(image, t, k)
        embs, mask, _ = self.ring.window(k, self.voice_k)
        self._pending.append(_Pending(t, embs, mask, self.ring.refs(k), self._speech(mask), face, next_t,
                                      self._reader_read(k, mask)))

    def take_batch(self) -> _Batch:
        keep = {int(r) for r in self.ring.ref if r >= 0}
        if isinstance(self._last_face_emb, _Ref):
            keep.add(self._last_face_emb.id)
        batch = _Batch(self._pending, self._first_id, self._crops, keep, self.person_state())
        self._first_id += len(self._crops)
        self._pending, self._crops = [], []
        return batch

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        return self.next_thumb if self.next_thumb is not None else super()._thumb(image)

    def _voice_step(self, k: int, window: np.ndarray) -> tuple[VoiceStep, np.ndarray | None]:
        if self.voice_ahead is not None:
            hit = self.voice_ahead.get(k, window)
            if hit is not None:
                return hit if self.baseline is None else (hit[0], self._voice_embedding(hit[0], k))
        return super()._voice_step(k, window)

    def answer(self, batch: _Batch) -> list[OfflineTick]:
        if batch.crops:
            embs = _encode(self.backend, "face", np.stack(batch.crops)[:, None])
            self._faces.update({batch.first_id + j: e for j, e in enumerate(embs)})
        for p in batch.ticks:
            if "face" in p.embs:
                for j in np.flatnonzero(p.face_refs >= 0):
                    p.embs["face"][j] = self._faces[int(p.face_refs[j])]
        self._faces = {i: e for i, e in self._faces.items() if i in batch.keep}
        quiet = [OfflineTick(None, p.t, p.next_t) for p in batch.ticks if p.t <= self.quiet_until]
        pending = batch.ticks[len(quiet):]
        # Consecutive ticks with the same window (the ring moves once per step) share one answer.
        same = [i > 0 and _same_window(pending[i - 1], p) for i, p in enumerate(pending)]
        calls: list[tuple[dict[str, np.ndarray], np.ndarray]] = []

        def record(embs: dict[str, np.ndarray], masks: np.ndarray) -> dict[str, np.ndarray]:
            calls.append((embs, masks))
            return {h: np.full((len(masks), len(c)), 1.0 / len(c), np.float32) for h, c in self.backend.labels.items()}

        for p, dup in zip(pending, same):
            if not dup:
                self._infer(p.embs, p.mask, sequence=record)
        outputs = iter(self._run_calls(calls))
        results = quiet
        answer: tuple[Any, Any] = (None, None)
        for p, dup in zip(pending, same):
            if not dup:
                answer = self._infer(p.embs, p.mask, sequence=lambda e, masks: next(outputs))
            ev = self._state_update(p.t, self._with_reader(answer[0], p.read), answer[1], p.speech,
                                    p.face is not None, None)
            results.append(OfflineTick(TickResult(ev, None if p.face is None else p.face.box,
                                                  None if p.face is None else p.face.landmarks), p.t, p.next_t))
        if pending:
            # The tracker runs ahead of the consumer: a checkpoint takes its state from here.
            results[-1] = results[-1]._replace(state=copy.deepcopy(self.state), person=batch.person)
        return results

    def _run_calls(self, calls: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Many ticks' sequence calls as one backend call; each call's rows back in order."""
        if not calls:
            return []
        sizes = [len(m) for _, m in calls]
        masks = np.concatenate([m for _, m in calls])
        embs = {name: np.concatenate([np.repeat(e[name][None], n, axis=0) for (e, _), n in zip(calls, sizes)])
                for name in calls[0][0]}
        probs = self.backend.sequence(embs, masks)
        bounds = np.cumsum([0] + sizes)
        return [{h: v[a:b] for h, v in probs.items()} for a, b in zip(bounds[:-1], bounds[1:])]


class _Answerer:
    """Answers batches on its own thread, in order, while perception goes on."""

    def __init__(self, analyzer: BatchedAnalyzer) -> None:
        self.analyzer = analyzer
        self._jobs: queue.Queue = queue.Queue(maxsize=2)
        self._done: queue.Queue = queue.Queue()
        self.sent = self.received = 0
        self._thread = threading.Thread(target=self._run, name="merlb-answer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            try:
                self._done.put(self.analyzer.answer(batch))
            except BaseException as e:  # noqa: BLE001 - raised again in the consumer
                self._done.put(e)

    def send(self, batch: _Batch) -> None:
        self._jobs.put(batch)
        self.sent += 1

    def results(self, wait: bool) -> Iterator[OfflineTick]:
        while self.received < self.sent:
            try:
                out = self._done.get() if wait else self._done.get_nowait()
            except queue.Empty:
                return
            self.received += 1
            if isinstance(out, BaseException):
                raise out
            yield from out

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10.0)


def _encode(backend: Any, modality: str, x: np.ndarray) -> np.ndarray:
    """Embeddings of many inputs, ENCODER_BATCH per encoder call."""
    return np.concatenate([backend.encode(modality, x[a:a + ENCODER_BATCH]) for a in range(0, len(x), ENCODER_BATCH)])


def _same_window(a: _Pending, b: _Pending) -> bool:
    return np.array_equal(a.mask, b.mask) and all(np.array_equal(a.embs[m], b.embs[m]) for m in a.embs)


def iter_ticks(analyzer: BatchedAnalyzer, path: str, rate: float, *, max_width: int | None = 640,
               stop: threading.Event | None = None, on_note: Callable[[str], None] | None = None,
               start: float = 0.0, next_t: float = 0.0) -> Iterator[OfflineTick]:
    """The ticks `iter_file_ticks` gives on `path`, computed in batches, in order.

    ``start`` and ``next_t`` begin the analysis mid-file (a resumed run): the
    file is decoded from its start, and frames are analysed from ``start``,
    sampled from ``next_t`` on. A file cut off mid-way ends at the cut; its
    note goes to ``on_note``.
    """
    halt = threading.Event()      # ours: ends the helper threads whatever the caller's stop does
    analyzer.rate_hint = rate
    ring = AudioRing(10.0)
    audio = AudioView(ring)
    voice = None
    if analyzer.perceiver.enabled["voice"]:
        voice = _VoiceAhead(analyzer, int(math.floor(start / analyzer.step_s)) - analyzer.T, path, halt)
        analyzer.voice_ahead = voice
    decoder = _Decoder(path, rate, max_width=max_width, start=start, next_t=next_t, stop=halt,
                       thumbs=analyzer.reuse_unchanged and analyzer.perceiver.enabled["face"])
    answers = _Answerer(analyzer)
    try:
        for kind, t, payload in decoder.items():
            if kind == "a":
                ring.write(payload, t)
                continue
            image, sampled_from, analyzer.next_thumb = payload
            analyzer.tick_later(image, t, sampled_from)
            analyzer.after_event(image, t, audio=audio)
            if analyzer.pending >= TICK_BATCH:
                answers.send(analyzer.take_batch())
                yield from answers.results(wait=False)
            if stop is not None and stop.is_set():
                break
        if analyzer.pending:
            answers.send(analyzer.take_batch())
        yield from answers.results(wait=True)
    finally:
        halt.set()
        answers.close()
        decoder.join()
        if voice is not None:
            voice.close()
        analyzer.voice_ahead = None
    for note in decoder.notes:
        if on_note is not None:
            on_note(note)
