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

The OBS requests go through `obs_merlb.obs_client.ObsLink`, the engine's one
shared link (locked, reconnecting with backoff).
"""
from __future__ import annotations

import logging
import math
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from obs_merlb.obs_client import ObsLink, ObsRequestFailed, ObsUnavailable
from obs_merlb.state import UNCERTAIN, highlight_event

log = logging.getLogger(__name__)

CHAPTERS_SINCE = (30, 2)


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
