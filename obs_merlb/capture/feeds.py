"""Feeds: what the live engine's analysis thread reads frames (and audio) from.

Two kinds share one interface, `Feed`: a file played in real time
(`FileFeed`, capture/file.py) and a live source with `read_latest()`
(`SourceFeed`: a camera, or OBS screenshots from capture/obs_screens.py).
The analysis thread only ever asks for the newest frame (latest-frame-wins);
a feed counts the frames nobody asked for as `dropped`.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from obs_merlb.capture.file import FileSource

log = logging.getLogger(__name__)


class Feed(Protocol):
    """The engine's view of a frame source.

    `latest()` returns (frame or None, capture monotonic time, seq); `seq`
    grows by one per new frame, so an unchanged seq means nothing new.
    `audio_ring` (an AudioRing on the frames' clock, or None) carries the
    voice; `done` is set when a file ends.
    """

    audio_ring: Any
    done: threading.Event

    @property
    def seq(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...

    def start(self) -> "Feed": ...

    def latest(self) -> tuple[Any, float, int]: ...

    def close(self) -> None: ...


class FileFeed:
    """A file played in real time (capture.file.FileSource) adapted to the feed API.

    Stream time is the file's own media time; frames carry the monotonic time
    they were released, so the engine can measure frame-to-event latency.
    `loop` replays forever with ever-increasing times (soak tests).
    """

    def __init__(self, path: str, *, paced: bool = True, loop: bool = False, speed: float = 1.0,
                 max_width: int | None = 640) -> None:
        # FileSource probes the file now: a clear MediaError in the caller's thread.
        self.source = FileSource(path, paced=paced, loop=loop, speed=speed, max_width=max_width,
                                 autostart=False)
        self.path = path
        self.info = self.source.info
        self.clock_origin = 0.0
        self.audio_ring = self.source.audio if self.source.has_audio else None
        self.done = self.source.done

    def start(self) -> "FileFeed":
        self.source.start()
        return self

    @property
    def seq(self) -> int:
        return self.source.frame_seq

    @property
    def dropped(self) -> int:
        return self.source.dropped

    @property
    def last_error(self) -> str | None:
        return self.source.last_error

    def latest(self) -> tuple[Any, float, int]:
        """(frame or None, capture monotonic time, seq)."""
        return self.source.read_latest_timed()

    def close(self) -> None:
        self.source.close()


class SourceFeed:
    """Adapts a capture source with `read_latest()` (camera, OBS screenshots) to the feed API.

    Live sources stamp frames with time.monotonic(), so the frame's own time is
    its capture time.
    """

    def __init__(self, source: Any, audio_source: Any = None) -> None:
        self.source = source
        self.audio_ring = audio_source
        self.done = threading.Event()
        self.dropped = 0
        self._last_t: float | None = None
        self.seq = 0

    def start(self) -> "SourceFeed":
        return self

    @property
    def last_error(self) -> str | None:
        return getattr(self.source, "last_error", None)

    def latest(self) -> tuple[Any, float, int]:
        try:
            frame = self.source.read_latest()
        except Exception as e:  # a source error is reported by health, never fatal
            log.debug("source read failed: %s", e)
            frame = None
        if frame is not None and frame.t != self._last_t:
            self._last_t = frame.t
            self.seq += 1
        self.dropped = int(getattr(self.source, "dropped", 0) or 0)
        return frame, (frame.t if frame is not None else 0.0), self.seq

    def close(self) -> None:
        try:
            self.source.close()
        except Exception:
            pass
