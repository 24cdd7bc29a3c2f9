"""Highlights: arousal peaks and emotion changes, and what OBS does about them.

`PeakDetector` is pure (stream time in, highlights out) so analyze and tests
use it without OBS. `HighlightActor` runs the OBS side on its own thread so a
slow or absent OBS never delays the analysis loop:

* `SaveReplayBuffer` only when `GetReplayBufferStatus` says the replay buffer
  is running (asking otherwise is an error in OBS);
* `CreateRecordChapter` only when OBS >= 30.2 (from `GetVersion`) and a
  recording is active; OBS refuses it for formats other than Hybrid MP4, which
  is reported as `chapter_added: false`, never as a failure;
* always a `highlight` event, which the engine writes to the session log.

`ObsLink` is the one obs-websocket request client of the engine's control
thread(s). obsws-python is synchronous and does not match request ids, so
calls are serialised with a lock; it does not reconnect, so a broken
connection is dropped and re-opened with exponential backoff; and it logs the
password at INFO, so its logger is silenced here and our messages never carry
the password.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from obs_merlb.state import UNCERTAIN, highlight_event

log = logging.getLogger(__name__)
T = TypeVar("T")

# obsws-python logs connection parameters (password included) at INFO and
# full tracebacks for every refused request; neither belongs in our logs.
logging.getLogger("obsws_python").setLevel(logging.CRITICAL)

CHAPTERS_SINCE = (30, 2)


class ObsUnavailable(RuntimeError):
    """OBS cannot be reached right now (the link retries on its own)."""


class ObsRequestFailed(RuntimeError):
    """OBS answered, but refused the request (bad state, unsupported)."""


def parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for p in str(text).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class ObsLink:
    """A lock-protected, self-reconnecting obs-websocket v5 request client."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4455, password: str = "",
                 timeout_s: float = 3.0, on_error: Callable[[str], None] | None = None,
                 max_backoff_s: float = 30.0, client_factory: Callable[..., Any] | None = None) -> None:
        self.host, self.port = host, int(port)
        self._password = password or ""
        self.timeout_s = timeout_s
        self.on_error = on_error
        self.max_backoff_s = max_backoff_s
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self._backoff = 1.0
        self._next_try = 0.0
        self.attempts = 0
        self.connected = False
        self._version: tuple[tuple[int, ...], str] | None = None

    def __repr__(self) -> str:  # never show the password
        return f"ObsLink(ws://{self.host}:{self.port}, connected={self.connected})"

    def _connect_locked(self) -> Any:
        now = time.monotonic()
        if now < self._next_try:
            raise ObsUnavailable(f"OBS at ws://{self.host}:{self.port} not reachable; "
                                 f"next retry in {self._next_try - now:.0f} s")
        self.attempts += 1
        try:
            if self._factory is not None:
                client = self._factory(host=self.host, port=self.port, password=self._password,
                                       timeout=self.timeout_s)
            else:
                import obsws_python as obsws

                client = obsws.ReqClient(host=self.host, port=self.port, password=self._password,
                                         timeout=self.timeout_s)
        except Exception as e:  # refused, timeout, auth, protocol: all mean "not now"
            wait = self._backoff
            self._next_try = time.monotonic() + wait
            self._backoff = min(self.max_backoff_s, self._backoff * 2)
            self.connected = False
            reason = _describe(e)
            msg = (f"cannot reach OBS at ws://{self.host}:{self.port} ({reason}); is OBS running with "
                   f"Tools > WebSocket Server Settings enabled and the right password set? "
                   f"retrying in {wait:.0f} s")
            log.warning("%s", msg)
            if self.on_error is not None:
                self.on_error(msg)
            raise ObsUnavailable(msg) from None
        self._client = client
        self._backoff = 1.0
        self.connected = True
        log.info("connected to OBS at ws://%s:%s", self.host, self.port)
        return client

    def _drop_locked(self) -> None:
        client, self._client = self._client, None
        self.connected = False
        self._version = None
        if client is not None:
            try:
                client.disconnect()
            except Exception:
                pass

    def request(self, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; returns responseData (a dict, possibly empty).

        Raises ObsUnavailable when OBS cannot be reached (and schedules a
        reconnect), ObsRequestFailed when OBS refuses the request.
        """
        with self._lock:
            client = self._client or self._connect_locked()
            try:
                out = client.send(name, data, raw=True)
            except Exception as e:
                if type(e).__name__ == "OBSSDKRequestError":
                    raise ObsRequestFailed(f"OBS refused {name}: {_describe(e)}") from None
                # Socket-level trouble: drop the client; the next call reconnects.
                self._drop_locked()
                self._next_try = time.monotonic() + self._backoff
                msg = f"lost the connection to OBS during {name} ({_describe(e)}); reconnecting"
                log.warning("%s", msg)
                if self.on_error is not None:
                    self.on_error(msg)
                raise ObsUnavailable(msg) from None
            return out if isinstance(out, dict) else {}

    def version(self) -> tuple[tuple[int, ...], str]:
        """(OBS version tuple, obs-websocket version string), cached per connection."""
        if self._version is None:
            v = self.request("GetVersion")
            self._version = (parse_version(v.get("obsVersion", "0")), str(v.get("obsWebSocketVersion", "")))
        return self._version

    def close(self) -> None:
        with self._lock:
            self._drop_locked()


def _describe(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text[:200]


@dataclass
class Highlight:
    t: float
    kind: str          # "arousal_peak" | "emotion_change"
    score: float
    label: str


class PeakDetector:
    """Rising z-score of arousal over a rolling baseline, plus emotion changes.

    The baseline holds `baseline_s` of arousal sampled at `sample_hz`
    (independent of the analysis rate, so memory is flat and a rate change
    does not shift the statistics). A peak fires when the z-score crosses
    `z_threshold` upwards, the rise over the baseline mean is at least
    `min_rise` (so a tiny wobble on a very flat baseline is not a "peak"), and
    `refractory_s` have passed since the last peak. It re-arms only after z
    falls below half the threshold (hysteresis).
    """

    def __init__(self, baseline_s: float = 60.0, sample_hz: float = 4.0, z_threshold: float = 2.5,
                 min_rise: float = 0.2, min_std: float = 0.05, refractory_s: float = 20.0,
                 warmup_s: float = 10.0, change_refractory_s: float = 15.0,
                 change_min_confidence: float = 0.5) -> None:
        self.sample_dt = 1.0 / sample_hz
        self.z_threshold, self.min_rise, self.min_std = z_threshold, min_rise, min_std
        self.refractory_s, self.warmup_s = refractory_s, warmup_s
        self.change_refractory_s, self.change_min_confidence = change_refractory_s, change_min_confidence
        self._base: deque[float] = deque(maxlen=max(4, int(round(baseline_s * sample_hz))))
        self._next_sample_t: float | None = None
        self._t0: float | None = None
        self._armed = True
        self._last_peak_t = -math.inf
        self._last_change_t = -math.inf
        self._last_label: str | None = None
        self.last_z = 0.0

    def update(self, t: float, arousal_score: float, label: str, confidence: float = 1.0) -> list[Highlight]:
        out: list[Highlight] = []
        if self._t0 is None:
            self._t0 = t
        x = float(arousal_score)
        n = len(self._base)
        if n >= 4:
            mean = sum(self._base) / n
            var = sum((b - mean) ** 2 for b in self._base) / n
            z = (x - mean) / max(math.sqrt(var), self.min_std)
            self.last_z = z
            warm = t - self._t0 >= self.warmup_s
            if self._armed and warm and z >= self.z_threshold and x - mean >= self.min_rise \
                    and t - self._last_peak_t >= self.refractory_s:
                out.append(Highlight(t, "arousal_peak", z, label))
                self._last_peak_t = t
                self._armed = False
            elif z < 0.5 * self.z_threshold:
                self._armed = True
        if self._next_sample_t is None or t >= self._next_sample_t:
            self._base.append(x)
            self._next_sample_t = t + self.sample_dt

        # Emotion change: between two confident emotions, into a non-neutral one.
        if label != UNCERTAIN:
            prev = self._last_label
            if prev is not None and label != prev and label != "neutral" \
                    and confidence >= self.change_min_confidence \
                    and t - self._last_change_t >= self.change_refractory_s \
                    and t - self._t0 >= self.warmup_s:
                out.append(Highlight(t, "emotion_change", float(confidence), label))
                self._last_change_t = t
            self._last_label = label
        return out


class HighlightActor:
    """Acts on highlights: OBS replay buffer / chapter, then the `highlight` event.

    With an ObsLink the OBS calls run on a worker thread (bounded queue: if OBS
    is very slow, extra highlights still get their event but skip OBS); without
    one the event is published at once.
    """

    def __init__(self, publish: Callable[[dict[str, Any]], None], obs: ObsLink | None = None,
                 chapter_prefix: str = "MERLB") -> None:
        self.publish = publish
        self.obs = obs
        self.chapter_prefix = chapter_prefix
        self._q: queue.Queue[Highlight | None] = queue.Queue(maxsize=8)
        self._thread: threading.Thread | None = None
        if obs is not None:
            self._thread = threading.Thread(target=self._loop, name="merlb-highlights", daemon=True)
            self._thread.start()

    def fire(self, h: Highlight) -> None:
        if self.obs is None:
            self.publish(highlight_event(h.t, h.kind, h.score, h.label, False, False))
            return
        try:
            self._q.put_nowait(h)
        except queue.Full:
            self.publish(highlight_event(h.t, h.kind, h.score, h.label, False, False))

    def _loop(self) -> None:
        while True:
            h = self._q.get()
            if h is None:
                return
            replay, chapter = self.act(h)
            self.publish(highlight_event(h.t, h.kind, h.score, h.label, replay, chapter))

    def act(self, h: Highlight) -> tuple[bool, bool]:
        """Ask OBS to save the replay and add a chapter; returns (replay_saved, chapter_added)."""
        obs = self.obs
        if obs is None:
            return False, False
        replay = chapter = False
        try:
            if obs.request("GetReplayBufferStatus").get("outputActive"):
                obs.request("SaveReplayBuffer")
                replay = True
        except (ObsUnavailable, ObsRequestFailed) as e:
            log.info("replay buffer not saved: %s", e)
        try:
            version, _ = obs.version()
            if version >= CHAPTERS_SINCE and obs.request("GetRecordStatus").get("outputActive"):
                obs.request("CreateRecordChapter",
                            {"chapterName": f"{self.chapter_prefix} {h.kind.replace('_', ' ')}: {h.label}"})
                chapter = True
        except (ObsUnavailable, ObsRequestFailed) as e:
            # Formats other than Hybrid MP4 refuse chapters; that is normal.
            log.info("record chapter not added: %s", e)
        return replay, chapter

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._q.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout=2.0)
