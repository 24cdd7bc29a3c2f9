"""Video and audio files through PyAV (FFmpeg): any container FFmpeg reads.

Audio and video are decoded from one demux pass, so they come out in file
order with the file's own timestamps; audio is resampled to 16 kHz mono
float32. Times are seconds from the container's start (an MPEG-TS that starts
at 1.4 s still starts at 0 here).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .base import SAMPLE_RATE, AudioChunk, AudioRing, CaptureError, LatestSlot, VideoFrame

log = logging.getLogger(__name__)

# A hole in an audio track longer than this is filled with silence (shorter
# ones are timestamp rounding: Matroska keeps milliseconds).
AUDIO_GAP_S = 0.05


class MediaError(CaptureError):
    """A file that cannot be read as audio or video; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class MediaInfo:
    path: str
    has_video: bool
    has_audio: bool
    duration: float | None     # seconds, None when the container does not say
    fps: float | None
    width: int | None
    height: int | None
    size: int | None = None    # bytes when probed: a recording still being written grows past it


def _av():
    import av  # deferred: the OBS script and light tools import this package without PyAV
    return av


def _open(path: str | os.PathLike):
    av = _av()
    p = os.fspath(path)
    if not os.path.exists(p):
        raise MediaError(p, "file does not exist")
    if os.path.isdir(p):
        raise MediaError(p, "is a folder, not a media file")
    if os.path.getsize(p) == 0:
        raise MediaError(p, "file is empty (0 bytes)")
    try:
        container = av.open(p, mode="r")
    except av.FFmpegError as e:
        if _looks_like_mp4(p):
            raise MediaError(p, "an MP4/MOV whose index (moov) is missing: the recording was cut "
                                "off before it was finalised (truncated); record to MKV, which "
                                "stays readable when cut, or remux what is left") from e
        raise MediaError(p, f"not a media file FFmpeg can read ({_reason(e)})") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MediaError(p, f"cannot open ({e})") from e
    return container


def _looks_like_mp4(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    except OSError:
        return False


def _reason(e: Exception) -> str:
    # PyAV repeats the file name in str(e); the caller's message names it once.
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(":")[0].strip() if msg else type(e).__name__


def _streams(container, path: str, video: bool, audio: bool):
    v = next((s for s in container.streams.video), None) if video else None
    a = next((s for s in container.streams.audio), None) if audio else None
    if v is None and a is None:
        container.close()
        what = " or ".join(x for x, want in (("video", video), ("audio", audio)) if want)
        raise MediaError(path, f"has no {what} track")
    return v, a


def probe(path: str | os.PathLike) -> MediaInfo:
    """What a file holds, without decoding it."""
    size = file_size(path)
    container = _open(path)
    try:
        v = next(iter(container.streams.video), None)
        a = next(iter(container.streams.audio), None)
        if v is None and a is None:
            raise MediaError(path, "has neither a video nor an audio track")
        duration = container.duration / 1e6 if container.duration else None
        fps = float(v.average_rate) if v is not None and v.average_rate else None
        return MediaInfo(os.fspath(path), v is not None, a is not None, duration, fps,
                         v.codec_context.width if v is not None else None,
                         v.codec_context.height if v is not None else None, size)
    finally:
        container.close()


def undeclared_length_note(info: MediaInfo, reached_s: float) -> str | None:
    """The note for a file whose header gives no length (iter_media cannot tell such a file
    from a cut-off one: a Matroska recording that OBS never finalised looks just like it)."""
    if info.duration:
        return None
    return (f"{info.path}: the file does not say how long it lasts (a recording cut off before it was "
            f"finalised, as when OBS crashes?); kept the {reached_s:.2f} s that decoded")


def file_size(path: str | os.PathLike) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


GREW = "the file grew while it was read"


def growing_note(path: str | os.PathLike, size_at_start: int | None, reached_s: float) -> str | None:
    """The note for a file that grew while it was read (OBS still recording it): its end
    is not a cut, and the next run will see more."""
    now = file_size(path)
    if size_at_start is None or now is None or now <= size_at_start:
        return None
    return (f"{os.fspath(path)}: {GREW} (is it still being recorded?); analysed "
            f"the first {reached_s:.2f} s; run again when the recording has ended")


def _frame_converter(frame, max_width: int | None):
    def convert() -> np.ndarray:
        if max_width is not None and frame.width > max_width:
            h = int(round(frame.height * max_width / frame.width / 2) * 2)
            return frame.to_ndarray(format="rgb24", width=max_width, height=max(h, 2))
        return frame.to_ndarray(format="rgb24")
    return convert


def iter_media(path: str | os.PathLike, *, video: bool = True, audio: bool = True,
               paced: bool = False, speed: float = 1.0, max_width: int | None = None,
               start: float = 0.0, end: float | None = None,
               stop: threading.Event | None = None,
               on_warning: Callable[[str], None] | None = None) -> Iterator[VideoFrame | AudioChunk]:
    """Yield video frames and 16 kHz mono audio chunks in file order.

    ``paced`` releases each item when its timestamp is reached on the wall
    clock (live playback); otherwise as fast as decoding goes. ``start`` and
    ``end`` (seconds) cut a segment: the decoder seeks near ``start``, audio
    is trimmed to the sample, and times stay the file's. A file that ends
    early (truncated mid-stream) stops with a warning and keeps what decoded;
    a file that yields nothing at all raises :class:`MediaError`.
    ``max_width`` scales frames down on conversion (aspect kept).
    ``on_warning`` receives those warnings' text instead (a decoding thread,
    where ``warnings.catch_warnings`` is not safe to use).
    """
    av = _av()
    p = os.fspath(path)
    size0 = file_size(p)
    container = _open(p)
    try:
        v, a = _streams(container, p, video, audio)
        streams = [s for s in (v, a) if s is not None]
        for s in streams:
            s.thread_type = "AUTO"  # frame threading: decode faster, order unchanged
        origin = container.start_time / 1e6 if container.start_time not in (None, 0) else 0.0
        start = max(0.0, float(start))
        if start > 0:
            try:
                # seeks to the keyframe before start; frames before it are dropped below
                container.seek(int((start + origin) * 1_000_000), backward=True)
            except av.FFmpegError:
                container.seek(0)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if a is not None else None
        audio_t0: float | None = None
        audio_n = 0
        last_vt: float | None = None
        # The last frame is shown for a frame period: at 1 fps a complete 3 s file's
        # last frame starts at 2 s, which must not read as a file cut short.
        v_period = float(1 / v.average_rate) if v is not None and v.average_rate else 0.0
        yielded = 0
        v_done, a_done = v is None, a is None
        wall0 = time.monotonic()

        def warn(message: str) -> None:
            if on_warning is not None:
                on_warning(message)
            else:
                warnings.warn(message, RuntimeWarning, stacklevel=3)

        def pace(t: float) -> None:
            if paced:
                delay = wall0 + (t - start) / speed - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        time.sleep(delay)

        def audio_out(frames) -> Iterator[AudioChunk]:
            nonlocal audio_n, a_done
            for rf in frames:
                x = (rf if isinstance(rf, np.ndarray) else rf.to_ndarray()).reshape(-1).astype(np.float32, copy=False)
                if len(x) == 0:
                    continue
                t = audio_t0 + audio_n / SAMPLE_RATE
                audio_n += len(x)
                if t + len(x) / SAMPLE_RATE <= start:
                    continue
                if t < start:
                    cut = int(round((start - t) * SAMPLE_RATE))
                    x, t = x[cut:], t + cut / SAMPLE_RATE
                if end is not None:
                    if t >= end:
                        a_done = True
                        return
                    keep = int(round((end - t) * SAMPLE_RATE))
                    if keep < len(x):
                        x = x[:keep]
                        a_done = True
                if len(x):
                    yield AudioChunk(t, x)

        try:
            for packet in container.demux(*streams):
                if (stop is not None and stop.is_set()) or (v_done and a_done):
                    return
                for frame in packet.decode():
                    if packet.stream is v:
                        if v_done:
                            continue
                        prev = last_vt if last_vt is not None else start - 1 / 30
                        t = (frame.time - origin) if frame.time is not None else prev + 1 / 30
                        last_vt = t
                        if t < start - 1e-6:
                            continue
                        if end is not None and t >= end:
                            v_done = True
                            continue
                        pace(t)
                        yielded += 1
                        yield VideoFrame(t, convert=_frame_converter(frame, max_width))
                    elif not a_done:
                        if audio_t0 is None:
                            audio_t0 = (frame.time - origin) if frame.time is not None else start
                        elif frame.time is not None:
                            # Audio time counts samples; a hole in the track (a dropout, joined
                            # files) becomes silence, so later audio stays on the video's clock.
                            gap = frame.time - origin - (audio_t0 + audio_n / SAMPLE_RATE)
                            if gap > AUDIO_GAP_S:
                                for chunk in audio_out([np.zeros(int(round(gap * SAMPLE_RATE)), np.float32)]):
                                    yielded += 1
                                    yield chunk
                        for chunk in audio_out(resampler.resample(frame)):
                            pace(chunk.t)
                            yielded += 1
                            yield chunk
            if resampler is not None and audio_t0 is not None and not a_done:
                for chunk in audio_out(resampler.resample(None)):
                    yielded += 1
                    yield chunk
        except av.FFmpegError as e:
            if yielded == 0:
                raise MediaError(p, f"cannot decode ({_reason(e)})") from e
            reached = _reached(last_vt, audio_t0, audio_n)
            warn(growing_note(p, size0, reached) or
                 f"{p}: decoding stopped at {reached:.2f} s ({_reason(e)}); the file looks truncated or "
                 f"damaged, keeping what decoded")
            return
        if yielded == 0:
            where = "" if start == 0 and end is None else f" between {start:.2f} s and {end} s"
            raise MediaError(p, f"no audio or video could be decoded{where} (truncated or damaged file?)")
        # FFmpeg often reaches a cut-off stream's end without an error; the
        # header's duration is what tells a truncated file from a short one.
        declared = container.duration / 1e6 if container.duration else None
        got = _reached(None if last_vt is None else last_vt + v_period, audio_t0, audio_n)
        if declared and (end is None or end > got) and got < 0.9 * declared - 0.2:
            warn(growing_note(p, size0, got) or
                 f"{p}: decoding ended at {got:.2f} s but the file says it lasts "
                 f"{declared:.2f} s; it looks truncated, keeping what decoded")
    finally:
        container.close()


def iter_media_ahead(path: str | os.PathLike, *, ahead: int = 64, **kw) -> Iterator[VideoFrame | AudioChunk]:
    """`iter_media` decoding in its own thread, up to ``ahead`` items in front of the
    consumer: offline, decoding and perceiving then share the cores. Same items, same
    order, same errors; a truncation warning is issued in the consumer's thread."""
    import queue

    q: queue.Queue = queue.Queue(maxsize=ahead)
    halt = threading.Event()
    notes: list[str] = []
    done = object()
    on_warning = kw.pop("on_warning", None)

    def run() -> None:
        try:
            for item in iter_media(path, stop=halt, on_warning=notes.append, **kw):
                while not halt.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            q.put(e)

    thread = threading.Thread(target=run, name="merlb-decode-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()
        thread.join(timeout=5.0)
    for note in notes:
        if on_warning is not None:
            on_warning(note)
        else:
            warnings.warn(note, RuntimeWarning, stacklevel=2)


def _reached(last_vt: float | None, audio_t0: float | None, audio_n: int) -> float:
    return max(last_vt if last_vt is not None else 0.0,
               (audio_t0 or 0.0) + audio_n / SAMPLE_RATE)


class Media(NamedTuple):
    """A file (or segment) in memory: ``frames[i]`` is shown at ``times[i]``;
    ``audio[j]`` is the sample at ``start + j / 16000`` s (zeros where the
    audio track starts late; empty when there is no audio track)."""

    frames: list[np.ndarray]
    times: np.ndarray
    audio: np.ndarray
    duration: float
    start: float = 0.0


def load_media(path: str | os.PathLike, *, video: bool = True, audio: bool = True,
               fps: float | None = None, max_width: int | None = None,
               start: float = 0.0, end: float | None = None) -> Media:
    """Decode a whole file: frames (RGB uint8) with their times, and 16 kHz mono audio.

    ``fps`` keeps at most that many frames per second (the first frame of
    each 1/fps slot), which keeps memory small for long files. ``start`` /
    ``end`` cut a segment; then ``audio[0]`` is at ``start`` and ``times``
    stay the file's.
    """
    info = probe(path)
    frames: list[np.ndarray] = []
    times: list[float] = []
    chunks: list[AudioChunk] = []
    next_slot = -np.inf
    for item in iter_media(path, video=video, audio=audio, max_width=max_width,
                           start=start, end=end):
        if isinstance(item, VideoFrame):
            if fps is not None:
                if item.t + 1e-6 < next_slot:
                    continue
                next_slot = (np.floor(item.t * fps + 1e-6) + 1) / fps
            frames.append(item.image)
            times.append(item.t)
        else:
            chunks.append(item)
    audio_arr = assemble_audio(chunks, start)
    # What decoded decides the length (a truncated file is shorter than its
    # header says); the last frame lasts one frame period.
    period = 1.0 / info.fps if info.fps else 1.0 / 30
    decoded = max(times[-1] + period - start if times else 0.0, len(audio_arr) / SAMPLE_RATE)
    if end is not None:
        decoded = min(decoded, end - start)
    duration = min(decoded, info.duration - start) if info.duration else decoded
    return Media(frames, np.asarray(times, dtype=np.float64), audio_arr, float(duration), float(start))


def assemble_audio(chunks: list[AudioChunk], t0: float = 0.0) -> np.ndarray:
    """Chunks -> one array whose sample 0 is at ``t0`` (zeros before the first chunk)."""
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    x = np.concatenate([c.samples for c in chunks]).astype(np.float32, copy=False)
    lead = int(round((chunks[0].t - t0) * SAMPLE_RATE))
    if lead > 0:
        x = np.concatenate([np.zeros(lead, dtype=np.float32), x])
    elif lead < 0:
        x = x[-lead:]  # encoder priming before t=0
    return x


class FileSource:
    """A file played as a live source: a thread decodes, paced to real time.

    ``read_latest()`` gives the newest frame (latest-frame-wins), ``read(s)``
    the last ``s`` seconds of audio from the ring; both on the file's clock.
    ``loop`` replays the file forever with times that keep increasing (soak
    tests). ``done`` is set when a non-looping file has played out.
    """

    def __init__(self, path: str | os.PathLike, *, paced: bool = True, loop: bool = False,
                 speed: float = 1.0, max_width: int | None = 640, ring_seconds: float = 10.0,
                 video: bool = True, audio: bool = True, autostart: bool = True) -> None:
        self.path = os.fspath(path)
        self.info = probe(self.path)  # fail now, in the caller's thread, with a clear error
        self.paced = paced
        self.loop = loop
        self.speed = speed
        self.max_width = max_width
        self.has_video = self.info.has_video and video
        self.has_audio = self.info.has_audio and audio
        self.audio = AudioRing(ring_seconds)
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self.done = threading.Event()
        self.last_error: str | None = None
        self.status = "starting"
        self._thread = threading.Thread(target=self._run, name=f"file:{os.path.basename(self.path)}",
                                        daemon=True)
        if autostart:
            self._thread.start()

    def start(self) -> "FileSource":
        """Start playing (for a source made with ``autostart=False``)."""
        if not self._thread.is_alive() and not self.done.is_set():
            self._thread.start()
        return self

    def _run(self) -> None:
        offset = 0.0
        try:
            self.status = "playing"
            while not self._stop.is_set():
                end = offset
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    for item in iter_media(self.path, video=self.has_video, audio=self.has_audio,
                                           paced=self.paced, speed=self.speed,
                                           max_width=self.max_width, stop=self._stop):
                        if isinstance(item, VideoFrame):
                            item.t += offset
                            self._slot.put(item)
                            end = max(end, item.t + 1 / 30)
                        else:
                            self.audio.write(item.samples, item.t + offset)
                            end = max(end, item.t + offset + item.duration)
                for w in caught:
                    self.last_error = str(w.message)
                    log.warning("%s", w.message)
                if not self.loop:
                    break
                offset = max(end, offset + 1e-3)
            self.status = "stopped" if self._stop.is_set() else "ended"
        except MediaError as e:
            self.last_error = str(e)
            self.status = "error"
            log.error("%s", e)
        except Exception as e:  # a decoder crash ends this source, never its consumer
            self.last_error = f"{self.path}: {e}"
            self.status = "error"
            log.exception("decoding %s failed", self.path)
        finally:
            self.done.set()

    def read_latest(self) -> VideoFrame | None:
        return self._slot.get() if self.has_video else None

    def read_latest_timed(self) -> tuple[VideoFrame | None, float, int]:
        """(newest frame, monotonic time it was released, seq)."""
        return self._slot.get_timed() if self.has_video else (None, 0.0, 0)

    @property
    def frame_seq(self) -> int:
        return self._slot.seq

    @property
    def dropped(self) -> int:
        return self._slot.dropped

    def read(self, seconds: float) -> np.ndarray:
        return self.audio.read(seconds)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
