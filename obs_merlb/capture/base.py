"""What every capture source shares: frames, the audio ring, latest-frame slot.

Clocks: a file source stamps frames and audio with the media's own
timestamps (seconds from the file's start), so audio and video of one file
share one clock. Live sources (camera, OBS screenshots, microphone) stamp with
``time.monotonic()``, so a camera and a microphone opened side by side share
one clock too. Never mix a file clock with a live clock.
"""
from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

import numpy as np

SAMPLE_RATE = 16000


class CaptureError(RuntimeError):
    """Base class of every error a capture source raises."""


class VideoFrame:
    """One RGB frame and its timestamp in seconds.

    ``image`` is converted on first access: a paced or latest-frame-wins
    consumer skips most decoded frames, and the RGB conversion of a frame
    nobody looks at is the largest avoidable cost of decoding.
    """

    __slots__ = ("t", "_image", "_convert")

    def __init__(self, t: float, image: np.ndarray | None = None, convert=None) -> None:
        if image is None and convert is None:
            raise ValueError("VideoFrame needs an image or a converter")
        self.t = float(t)
        self._image = image
        self._convert = convert

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        if self._image is None:
            self._image = self._convert()
            self._convert = None
        return self._image

    def __repr__(self) -> str:
        shape = None if self._image is None else self._image.shape
        return f"VideoFrame(t={self.t:.3f}, shape={shape})"


class AudioChunk:
    """Mono float32 samples at 16 kHz; ``t`` is the time of the first sample."""

    __slots__ = ("t", "samples")

    def __init__(self, t: float, samples: np.ndarray) -> None:
        self.t = float(t)
        self.samples = samples

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def __repr__(self) -> str:
        return f"AudioChunk(t={self.t:.3f}, n={len(self.samples)})"


class LatestSlot:
    """Holds only the newest frame: a slow consumer skips frames, it never queues them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: VideoFrame | None = None
        self._put_mono = 0.0
        self._seq = 0
        self.dropped = 0
        self._taken_seq = 0

    def put(self, frame: VideoFrame) -> None:
        with self._lock:
            if self._frame is not None and self._seq != self._taken_seq:
                self.dropped += 1
            self._frame = frame
            self._put_mono = time.monotonic()
            self._seq += 1

    def get(self) -> VideoFrame | None:
        with self._lock:
            self._taken_seq = self._seq
            return self._frame

    def get_timed(self) -> tuple[VideoFrame | None, float, int]:
        """(frame, monotonic time it was put, seq): a file's frame times are media
        times, so latency must be measured from when the frame was released."""
        with self._lock:
            self._taken_seq = self._seq
            return self._frame, self._put_mono, self._seq

    @property
    def seq(self) -> int:
        """Increments on each new frame: lets a caller skip a frame it already saw."""
        return self._seq


class AudioRing:
    """Fixed-size ring of mono float32 samples at 16 kHz.

    Memory never grows whatever the stream length; a reader asks for the last
    N seconds and gets exactly N seconds (zeros before the first sample).
    ``t_end`` is the timestamp just after the newest sample, in the writer's
    clock, so a reader can align the audio with video frames.
    """

    def __init__(self, seconds: float = 10.0, sample_rate: int = SAMPLE_RATE) -> None:
        if seconds <= 0:
            raise ValueError("ring length must be positive")
        self.sample_rate = sample_rate
        self.capacity = int(round(seconds * sample_rate))
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._pos = 0            # next write index
        self._filled = 0
        self._lock = threading.Lock()
        self.total_written = 0
        self.t_end: float | None = None

    def write(self, samples: np.ndarray, t_start: float | None = None) -> None:
        """Append samples; ``t_start`` stamps the first of them (else continues the clock)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = len(x)
        if n == 0:
            return
        with self._lock:
            if n >= self.capacity:
                self._buf[:] = x[-self.capacity:]
                self._pos = 0
                self._filled = self.capacity
            else:
                first = min(n, self.capacity - self._pos)
                self._buf[self._pos:self._pos + first] = x[:first]
                if first < n:
                    self._buf[:n - first] = x[first:]
                self._pos = (self._pos + n) % self.capacity
                self._filled = min(self.capacity, self._filled + n)
            self.total_written += n
            if t_start is not None:
                self.t_end = float(t_start) + n / self.sample_rate
            elif self.t_end is not None:
                self.t_end += n / self.sample_rate

    def read(self, seconds: float) -> np.ndarray:
        """The newest ``seconds`` of audio, left-padded with zeros if fewer were written."""
        want = int(round(seconds * self.sample_rate))
        if want <= 0:
            return np.zeros(0, dtype=np.float32)
        if want > self.capacity:
            raise ValueError(f"asked for {seconds} s but the ring holds {self.capacity / self.sample_rate} s")
        out = np.zeros(want, dtype=np.float32)
        with self._lock:
            have = min(want, self._filled)
            start = (self._pos - have) % self.capacity
            if start + have <= self.capacity:
                out[want - have:] = self._buf[start:start + have]
            else:
                first = self.capacity - start
                out[want - have:want - have + first] = self._buf[start:]
                out[want - have + first:] = self._buf[:have - first]
        return out

    def clear(self) -> None:
        with self._lock:
            self._buf[:] = 0
            self._pos = 0
            self._filled = 0
            self.t_end = None


@runtime_checkable
class VideoSource(Protocol):
    """A video source: the newest frame or None before the first one."""

    def read_latest(self) -> VideoFrame | None: ...

    def close(self) -> None: ...


@runtime_checkable
class AudioSource(Protocol):
    """An audio source: the last ``seconds`` of 16 kHz mono float32."""

    def read(self, seconds: float) -> np.ndarray: ...

    def close(self) -> None: ...
