"""Frames of an OBS source through obs-websocket v5 ``GetSourceScreenshot``.

OBS's Python scripting cannot hand raw frames to another process, and a
helper usually cannot open a webcam OBS already holds, so the worker asks
OBS for small JPEG screenshots of the camera (or game) source. Each costs
OBS a render and an encode: they are small (fit in 320x320) and at most 15 Hz.

Each ``OBSScreenshotSource`` owns its own `ObsLink` inside its own thread
(the connection, its errors and the reconnect backoff are
`obs_merlb.obs_client`'s), so a slow screenshot never waits on another
thread's request.
"""
from __future__ import annotations

import base64
import binascii
import logging
import threading
import time

import numpy as np

from obs_merlb.obs_client import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT_S, Backoff,
                                  ObsAuthError, ObsError, ObsLink, ObsRequestFailed,
                                  ObsSourceNotFound, ObsUnreachable)

from .base import LatestSlot, VideoFrame

log = logging.getLogger(__name__)

MAX_RATE_HZ = 15.0


def decode_data_uri(data: str) -> np.ndarray:
    """OBS's ``imageData`` (``data:image/jpg;base64,...``) -> RGB uint8 (H, W, 3)."""
    import cv2

    if not isinstance(data, str) or not data:
        raise ObsError("OBS returned an empty screenshot")
    payload = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        raw = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as e:
        raise ObsError(f"OBS returned a screenshot that is not valid base64 ({e})") from e
    img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        raise ObsError("OBS returned a screenshot that is not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def screenshot(link: ObsLink, source: str, *, size: int = 320, quality: int = 70) -> np.ndarray:
    """One screenshot of ``source`` (fit within size x size, aspect kept) as RGB."""
    try:
        # Both width and height: OBS scales "to inner", so any aspect fits the box.
        resp = link.request("GetSourceScreenshot", {
            "sourceName": source, "imageFormat": "jpg", "imageWidth": int(size),
            "imageHeight": int(size), "imageCompressionQuality": int(quality)})
    except ObsSourceNotFound as e:
        raise ObsSourceNotFound(f"OBS at {link.url} has no source named {source!r}: check the name "
                                "(case matters) in OBS's Sources list", e.code) from None
    except ObsRequestFailed as e:
        raise ObsRequestFailed(f"OBS refused a screenshot of {source!r}: {e}", e.code) from None
    if "imageData" not in resp:
        raise ObsError(f"OBS at {link.url} answered a screenshot of {source!r} without image data")
    return decode_data_uri(resp["imageData"])


class OBSScreenshotSource:
    """Latest screenshot of one OBS source, polled at a capped rate in a thread.

    ``status`` is one of starting, running, reconnecting, auth_failed,
    source_missing, closed; ``last_error`` holds the latest message. All of
    these are retried with exponential backoff (OBS restarted, a source
    renamed back); ``wait_ready`` lets a caller fail fast at start instead.
    """

    def __init__(self, source: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 password: str = "", size: int = 320, rate_hz: float = 10.0,
                 quality: int = 70, timeout: float = DEFAULT_TIMEOUT_S,
                 max_backoff_s: float = 30.0) -> None:
        self.source = source
        self.size = size
        self.rate_hz = min(float(rate_hz), MAX_RATE_HZ)
        self.quality = quality
        self.timeout = timeout
        self.max_backoff_s = max_backoff_s
        # The link logs each connection problem once; _fail logs the rest.
        self.link = ObsLink(host, port, password, timeout, initial_backoff_s=0.5,
                            max_backoff_s=max_backoff_s)
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.status = "starting"
        self.last_error: str | None = None
        self.last_exception: ObsError | None = None
        self.reconnects = 0
        self.shot_ms: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"obs-shot:{source}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"OBSScreenshotSource({self.source!r}, {self.link.url}, status={self.status})"

    def set_rate(self, rate_hz: float) -> None:
        """Change the polling rate (the engine lowers it when OBS struggles)."""
        self.rate_hz = max(0.2, min(float(rate_hz), MAX_RATE_HZ))

    def _fail(self, e: ObsError, status: str) -> None:
        if self.last_error != str(e) and str(e) != self.link.last_error:
            log.warning("%s", e)
        self.status = status
        self.last_error = str(e)
        self.last_exception = e
        self._ready.set()

    def _run(self) -> None:
        # Request failures (a missing source) back off too; connection
        # failures wait at least as long as the link's own backoff.
        backoff = Backoff(0.5, max(0.5, self.max_backoff_s))
        while not self._stop.is_set():
            try:
                t0 = time.monotonic()
                img = screenshot(self.link, self.source, size=self.size, quality=self.quality)
                self.shot_ms = (time.monotonic() - t0) * 1000
                self._slot.put(VideoFrame(t0, img))
                if self.status != "running":
                    if self.status != "starting":
                        self.reconnects += 1
                    self.status = "running"
                    self.last_error = None
                    self.last_exception = None
                self._ready.set()
                backoff.succeeded()
                self._stop.wait(max(0.0, 1.0 / self.rate_hz - (time.monotonic() - t0)))
                continue
            except ObsAuthError as e:
                self._fail(e, "auth_failed")
            except ObsSourceNotFound as e:
                self._fail(e, "source_missing")
            except ObsError as e:
                self._fail(e, "reconnecting")
            except Exception as e:  # a library bug must not kill the capture thread silently
                self._fail(ObsError(f"OBS screenshot failed: {type(e).__name__}: {e}"), "reconnecting")
                self.link.close()
            if self._stop.wait(max(backoff.failed(), self.link.retry_in())):
                break
        self.link.close()
        self.status = "closed"

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the first screenshot or the first error; raise that error."""
        if not self._ready.wait(timeout):
            raise ObsUnreachable(f"no answer from OBS at {self.link.url} within {timeout:.0f} s")
        if self.last_exception is not None and self.status != "running":
            raise self.last_exception

    def read_latest(self) -> VideoFrame | None:
        return self._slot.get()

    @property
    def frame_seq(self) -> int:
        return self._slot.seq

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 2.0)

    def __enter__(self) -> "OBSScreenshotSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
