"""Frames of an OBS source through obs-websocket v5 ``GetSourceScreenshot``.

OBS's Python scripting cannot hand raw frames to another process, and a
helper usually cannot open a webcam OBS already holds, so the worker asks
OBS for small JPEG screenshots of the camera (or game) source. Each costs
OBS a render and an encode: they are small (fit in 320x320) and at most 15 Hz.

obsws-python is synchronous and does not match request ids, so it is not
thread-safe: each ``OBSScreenshotSource`` owns its client inside its own
thread. It never reconnects by itself: the thread does, with exponential
backoff. It also logs the WebSocket password at INFO level, so its logger is
raised above that before any client is made.
"""
from __future__ import annotations

import base64
import binascii
import logging
import threading
import time

import numpy as np

from .base import CaptureError, LatestSlot, VideoFrame

log = logging.getLogger(__name__)

MAX_RATE_HZ = 15.0
# obsws-python logs "Connecting with parameters: ... password='...'" at INFO
# and repeats each failure with a traceback at ERROR; the errors are mapped
# to ours below and reported once, so only its CRITICAL records pass.
logging.getLogger("obsws_python").setLevel(logging.CRITICAL)


class OBSError(CaptureError):
    """Base of the OBS errors; the message says what to fix."""


class OBSUnreachable(OBSError):
    """Nothing answers at the address, or OBS closed the connection."""


class OBSAuthError(OBSError):
    """OBS asks for a password and the one given is missing or wrong."""


class OBSSourceNotFound(OBSError):
    """OBS has no source by that name."""


def decode_data_uri(data: str) -> np.ndarray:
    """OBS's ``imageData`` (``data:image/jpg;base64,...``) -> RGB uint8 (H, W, 3)."""
    import cv2

    if not isinstance(data, str) or not data:
        raise OBSError("OBS returned an empty screenshot")
    payload = data.split(",", 1)[1] if data.startswith("data:") and "," in data else data
    try:
        raw = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as e:
        raise OBSError(f"OBS returned a screenshot that is not valid base64 ({e})") from e
    img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR) if raw else None
    if img is None:
        raise OBSError("OBS returned a screenshot that is not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _where(host: str, port: int) -> str:
    return f"ws://{host}:{port}"


def connect(host: str = "127.0.0.1", port: int = 4455, password: str = "",
            timeout: float = 3.0):
    """An authenticated obsws-python ``ReqClient``, or a typed :class:`OBSError`."""
    import obsws_python as obs
    from obsws_python.error import OBSSDKError
    from websocket import WebSocketException

    where = _where(host, port)
    try:
        return obs.ReqClient(host=host, port=port, password=password or "", timeout=timeout)
    except (ConnectionRefusedError, TimeoutError) as e:
        raise OBSUnreachable(
            f"cannot reach OBS at {where} ({type(e).__name__}): is OBS running, with "
            "Tools > WebSocket Server Settings > Enable WebSocket server on, and this port?") from e
    except OBSSDKError as e:
        msg = str(e)
        if "no password" in msg:
            raise OBSAuthError(f"OBS at {where} asks for a WebSocket password and none was given: "
                               "copy it from Tools > WebSocket Server Settings") from e
        raise OBSAuthError(f"OBS at {where} rejected the WebSocket password: check it in "
                           "Tools > WebSocket Server Settings > Show Connect Info") from e
    except WebSocketException as e:
        # OBS closes the socket right after the identify message when the
        # password is wrong (close code 4009); any other close is a drop.
        if "4009" in str(e) or "closed" in str(e).lower():
            raise OBSAuthError(f"OBS at {where} closed the connection while identifying: the "
                               "WebSocket password is most likely wrong") from e
        raise OBSUnreachable(f"OBS at {where}: WebSocket error ({type(e).__name__}: {e})") from e
    except OSError as e:
        raise OBSUnreachable(f"cannot reach OBS at {where} ({e.strerror or e})") from e


def screenshot(client, source: str, *, size: int = 320, quality: int = 70,
               where: str = "OBS") -> np.ndarray:
    """One screenshot of ``source`` (fit within size x size, aspect kept) as RGB."""
    from obsws_python.error import OBSSDKError, OBSSDKRequestError
    from websocket import WebSocketException

    try:
        # Both width and height: OBS scales "to inner", so any aspect fits the box.
        resp = client.send("GetSourceScreenshot", {
            "sourceName": source, "imageFormat": "jpg", "imageWidth": int(size),
            "imageHeight": int(size), "imageCompressionQuality": int(quality)}, raw=True)
    except OBSSDKRequestError as e:
        if e.code == 600:
            raise OBSSourceNotFound(f"{where} has no source named {source!r}: check the name "
                                    "(case matters) in OBS's Sources list") from e
        raise OBSError(f"{where} refused a screenshot of {source!r}: {e}") from e
    except OBSSDKError as e:
        raise OBSUnreachable(f"{where} stopped answering ({e})") from e
    except (WebSocketException, OSError) as e:
        raise OBSUnreachable(f"{where} closed the connection ({type(e).__name__})") from e
    if not resp or "imageData" not in resp:
        raise OBSError(f"{where} answered a screenshot of {source!r} without image data")
    return decode_data_uri(resp["imageData"])


class OBSScreenshotSource:
    """Latest screenshot of one OBS source, polled at a capped rate in a thread.

    ``status`` is one of starting, running, reconnecting, auth_failed,
    source_missing, closed; ``last_error`` holds the latest message. All of
    these are retried with exponential backoff (OBS restarted, a source
    renamed back); ``wait_ready`` lets a caller fail fast at start instead.
    """

    def __init__(self, source: str, *, host: str = "127.0.0.1", port: int = 4455,
                 password: str = "", size: int = 320, rate_hz: float = 10.0,
                 quality: int = 70, timeout: float = 3.0, max_backoff_s: float = 30.0) -> None:
        self.source = source
        self.host, self.port = host, port
        self._password = password     # kept off repr/logs
        self.size = size
        self.rate_hz = min(float(rate_hz), MAX_RATE_HZ)
        self.quality = quality
        self.timeout = timeout
        self.max_backoff_s = max_backoff_s
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.status = "starting"
        self.last_error: str | None = None
        self.last_exception: OBSError | None = None
        self.reconnects = 0
        self.shot_ms: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"obs-shot:{source}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"OBSScreenshotSource({self.source!r}, {_where(self.host, self.port)}, status={self.status})"

    def set_rate(self, rate_hz: float) -> None:
        """Change the polling rate (the engine lowers it when OBS struggles)."""
        self.rate_hz = max(0.2, min(float(rate_hz), MAX_RATE_HZ))

    def _fail(self, e: OBSError, status: str) -> None:
        if self.last_error != str(e):
            log.warning("%s", e)
        self.status = status
        self.last_error = str(e)
        self.last_exception = e
        self._ready.set()

    def _run(self) -> None:
        backoff = 0.5
        client = None
        where = _where(self.host, self.port)
        while not self._stop.is_set():
            try:
                if client is None:
                    client = connect(self.host, self.port, self._password, self.timeout)
                t0 = time.monotonic()
                img = screenshot(client, self.source, size=self.size, quality=self.quality,
                                 where=f"OBS at {where}")
                self.shot_ms = (time.monotonic() - t0) * 1000
                self._slot.put(VideoFrame(t0, img))
                if self.status != "running":
                    if self.status != "starting":
                        self.reconnects += 1
                    self.status = "running"
                    self.last_error = None
                    self.last_exception = None
                self._ready.set()
                backoff = 0.5
                self._stop.wait(max(0.0, 1.0 / self.rate_hz - (time.monotonic() - t0)))
                continue
            except OBSAuthError as e:
                self._fail(e, "auth_failed")
            except OBSSourceNotFound as e:
                self._fail(e, "source_missing")
            except OBSError as e:
                self._fail(e, "reconnecting")
                client = _close(client)
            except Exception as e:  # a library bug must not kill the capture thread silently
                self._fail(OBSError(f"OBS screenshot failed: {type(e).__name__}: {e}"), "reconnecting")
                client = _close(client)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff_s)
        _close(client)
        self.status = "closed"

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the first screenshot or the first error; raise that error."""
        if not self._ready.wait(timeout):
            raise OBSUnreachable(f"no answer from OBS at {_where(self.host, self.port)} "
                                 f"within {timeout:.0f} s")
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


def _close(client) -> None:
    if client is not None:
        try:
            client.disconnect()
        except Exception:  # the socket is already gone; nothing to release
            pass
    return None
