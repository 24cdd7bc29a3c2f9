"""A microphone through sounddevice (PortAudio), into a 16 kHz mono ring.

The device is chosen by a substring of its name, as OBS shows it in the Mic
source's device list (PortAudio's names carry extra host-API text, so an
exact match would miss). The PortAudio callback only down-mixes, resamples
and writes into a fixed ring: nothing in it can block or grow. A device that
is missing, or unplugged mid-stream, is not fatal: ``status`` and
``last_error`` say so and a monitor thread retries with backoff, rescanning
the device list, until it comes back or the source is closed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from .base import SAMPLE_RATE, AudioRing, CaptureError

log = logging.getLogger(__name__)


class MicError(CaptureError):
    """The microphone cannot be used at all on this machine (PortAudio missing)."""


def load_sounddevice():
    """Import sounddevice, turning a missing PortAudio into an actionable error."""
    try:
        import sounddevice
    except OSError as e:
        raise MicError(
            "the microphone needs the PortAudio library, which is not installed: on "
            "Debian/Ubuntu run `sudo apt install libportaudio2`; on Windows and macOS "
            f"reinstall the sounddevice package ({e})") from e
    except ImportError as e:
        raise MicError(f"the microphone needs the sounddevice package: pip install sounddevice ({e})") from e
    return sounddevice


def input_devices(backend) -> list[tuple[int, dict]]:
    return [(i, d) for i, d in enumerate(backend.query_devices())
            if d.get("max_input_channels", 0) > 0]


def find_device(backend, name: str | int | None) -> tuple[int | None, dict] | None:
    """(index, info) of the first input device whose name contains ``name``
    (case-insensitive); ``None`` name picks the system default input."""
    if name is None or name == "":
        try:
            info = backend.query_devices(kind="input")
        except Exception:  # PortAudio raises when the host has no default input
            return None
        return (None, info) if info else None
    devs = input_devices(backend)
    if isinstance(name, int):
        return next(((i, d) for i, d in devs if i == name), None)
    want = name.casefold().strip()
    return next(((i, d) for i, d in devs if want in str(d.get("name", "")).casefold()), None)


def missing_device_message(backend, name: str | int | None) -> str:
    """Why no microphone opened, the inputs there are, and what the streamer can do about it."""
    missing = "no default input device" if name is None or name == "" else f"no input device matching {name!r}"
    names = ", ".join(repr(d.get("name")) for _, d in input_devices(backend))
    if not names:
        return (f"{missing}, and no input devices at all: plug a microphone in (it is picked up when it "
                "appears), or --mic none to run without voice; retrying")
    return (f"{missing} (inputs found: {names}); choose one with --mic NAME (part of one of those names) or in "
            "the panel's Sources / the OBS script's Microphone list, or --mic none to run without voice; retrying")


class StreamResampler:
    """Continuous native-rate -> 16 kHz mono resampling that keeps filter state
    across blocks (resampling each block alone clicks at every boundary)."""

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        import av

        self.in_rate = int(in_rate)
        self.out_rate = out_rate
        self._av = av
        self._r = None if self.in_rate == out_rate else av.AudioResampler(
            format="flt", layout="mono", rate=out_rate)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, dtype=np.float32)
        if x.ndim == 2:
            x = x.mean(axis=1)   # down-mix: one voice, whichever channel it is on
        x = np.ascontiguousarray(x.reshape(-1))
        if self._r is None or len(x) == 0:
            return x
        f = self._av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        f.sample_rate = self.in_rate
        outs = self._r.resample(f)
        if not outs:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([o.to_ndarray().reshape(-1) for o in outs]).astype(np.float32, copy=False)


class MicSource:
    """Microphone by name substring -> ring of the last ``ring_seconds`` at 16 kHz.

    ``read(seconds)`` never blocks. ``backend`` is the sounddevice module
    (default); anything with ``query_devices`` and ``InputStream`` works.
    """

    def __init__(self, device: str | int | None = None, *, ring_seconds: float = 10.0,
                 backend: Any = None, stall_s: float = 1.5, max_backoff_s: float = 10.0,
                 block_s: float = 0.02, poll_s: float = 0.25) -> None:
        self.device = device
        self.backend = backend if backend is not None else load_sounddevice()
        self.ring = AudioRing(ring_seconds)
        self.stall_s = stall_s
        self.max_backoff_s = max_backoff_s
        self.block_s = block_s
        self.poll_s = poll_s
        self.status = "starting"
        self.last_error: str | None = None
        self.device_name: str | None = None
        self.reconnects = 0
        self.overflows = 0
        self._stream = None
        self._resampler: StreamResampler | None = None
        self._last_cb = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._opened_once = False
        self._try_open()
        self._thread = threading.Thread(target=self._monitor, name=f"mic:{device}", daemon=True)
        self._thread.start()

    def _refresh_devices(self) -> None:
        # PortAudio caches its device list at initialisation: a re-plugged
        # device is only seen after re-initialising (sounddevice's private
        # helpers; absent in a test backend).
        term, init = getattr(self.backend, "_terminate", None), getattr(self.backend, "_initialize", None)
        if callable(term) and callable(init):
            try:
                term()
                init()
            except Exception as e:  # a failed refresh leaves the old list: retry later
                log.debug("PortAudio re-initialise failed: %s", e)

    def _callback(self, indata, frames, time_info, status) -> None:
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
        res = self._resampler
        if res is None:
            return
        x = res(indata)
        self.ring.write(x, time.monotonic() - len(x) / SAMPLE_RATE)
        self._last_cb = time.monotonic()

    def _try_open(self) -> bool:
        found = find_device(self.backend, self.device)
        if found is None:
            self._set_error("missing", missing_device_message(self.backend, self.device))
            return False
        idx, info = found
        rate = int(info.get("default_samplerate") or 48000)
        channels = max(1, min(int(info.get("max_input_channels", 1)), 2))
        try:
            stream = self.backend.InputStream(
                device=idx, samplerate=rate, channels=channels, dtype="float32",
                blocksize=max(1, int(rate * self.block_s)), callback=self._callback)
            with self._lock:
                self._resampler = StreamResampler(rate)
                self._stream = stream
            self._last_cb = time.monotonic()
            stream.start()
        except Exception as e:  # PortAudioError and friends: device busy, gone, bad rate
            self._close_stream()
            self._set_error("reconnecting", f"cannot open input device {info.get('name')!r}: {e}; retrying")
            return False
        if self._opened_once:
            self.reconnects += 1
        self._opened_once = True
        self.device_name = str(info.get("name"))
        self.status = "running"
        self.last_error = None
        log.info("microphone %r open at %d Hz", self.device_name, rate)
        return True

    def _set_error(self, status: str, msg: str) -> None:
        if msg != self.last_error:
            log.warning("%s", msg)
        self.status = status
        self.last_error = msg

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream, self._resampler = self._stream, None, None
        if stream is not None:
            try:
                stream.stop()
            except Exception:  # an unplugged device errors on stop; closing is what matters
                pass
            try:
                stream.close()
            except Exception:
                pass

    def _healthy(self) -> bool:
        s = self._stream
        if s is None:
            return False
        if not getattr(s, "active", True):
            return False
        return time.monotonic() - self._last_cb < self.stall_s

    def _monitor(self) -> None:
        backoff = 0.5
        while not self._stop.wait(self.poll_s if self.status == "running" else backoff):
            if self.status == "running":
                if self._healthy():
                    backoff = 0.5
                    continue
                self._close_stream()
                self.ring.clear()   # stale audio must not be analysed again as if new
                self._set_error("reconnecting", f"input device {self.device_name!r} stopped "
                                                "delivering audio (unplugged?); retrying")
                backoff = 0.5
            self._refresh_devices()
            if not self._try_open():
                backoff = min(backoff * 2, self.max_backoff_s)
        self._close_stream()

    def read(self, seconds: float) -> np.ndarray:
        """The last ``seconds`` of 16 kHz mono audio (zeros while the device is away)."""
        return self.ring.read(seconds)

    @property
    def t_end(self) -> float | None:
        return self.ring.t_end

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._close_stream()
        self.status = "closed"

    def __enter__(self) -> "MicSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
