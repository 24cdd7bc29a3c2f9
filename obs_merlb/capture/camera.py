"""A camera through OpenCV, for use without OBS (OBS usually holds the webcam).

A thread grabs continuously into a one-frame slot (latest-frame-wins): the
driver's own buffer never fills with stale frames, and a slow consumer
simply skips frames. A camera that stops delivering (unplugged, taken by
another program) is reported in ``status``/``last_error`` and reopened with
backoff; only a camera that cannot be opened at all at start is an error.
"""
from __future__ import annotations

import logging
import threading
import time

from .base import CaptureError, LatestSlot, VideoFrame

log = logging.getLogger(__name__)


class CameraError(CaptureError):
    """The camera could not be opened."""


class CameraSource:
    """OpenCV camera by index (or any path/URL OpenCV opens), frames as RGB."""

    def __init__(self, device: int | str = 0, *, width: int | None = 640, height: int | None = 480,
                 fps: float | None = 30, max_backoff_s: float = 10.0,
                 stall_s: float = 2.0) -> None:
        self.device = device
        self._want = (width, height, fps)
        self.max_backoff_s = max_backoff_s
        self.stall_s = stall_s
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self.status = "opening"
        self.last_error: str | None = None
        self.reconnects = 0
        self._cap = self._open()   # fail here, in the caller's thread, if it never opens
        self.status = "running"
        self._thread = threading.Thread(target=self._run, name=f"camera:{device}", daemon=True)
        self._thread.start()

    def _open(self):
        import cv2

        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise CameraError(
                f"camera {self.device!r} could not be opened: check the index (0 is the first "
                "camera), that no other program (OBS included) holds it, and its permissions")
        w, h, fps = self._want
        if isinstance(self.device, int):
            if w:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
            if h:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
            if fps:
                cap.set(cv2.CAP_PROP_FPS, fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    def _run(self) -> None:
        import cv2

        backoff = 0.5
        last_ok = time.monotonic()
        while not self._stop.is_set():
            cap = self._cap
            ok, bgr = (cap.read() if cap is not None else (False, None))
            if ok and bgr is not None:
                self._slot.put(VideoFrame(time.monotonic(), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
                last_ok = time.monotonic()
                backoff = 0.5
                if self.status != "running":
                    self.status = "running"
                continue
            if time.monotonic() - last_ok < self.stall_s and cap is not None:
                self._stop.wait(0.01)
                continue
            # No frame for stall_s: the device went away; reopen with backoff.
            self.status = "reconnecting"
            self.last_error = f"camera {self.device!r} stopped delivering frames; retrying"
            if cap is not None:
                cap.release()
                self._cap = None
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff_s)
            try:
                self._cap = self._open()
                self.reconnects += 1
                last_ok = time.monotonic()
                log.info("camera %r reopened", self.device)
            except CameraError as e:
                self.last_error = str(e)
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read_latest(self) -> VideoFrame | None:
        return self._slot.get()

    @property
    def frame_seq(self) -> int:
        return self._slot.seq

    @property
    def dropped(self) -> int:
        return self._slot.dropped

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.status = "closed"

    def __enter__(self) -> "CameraSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
