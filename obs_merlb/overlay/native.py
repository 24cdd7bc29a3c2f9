"""Native overlay fallback: the current emotion as text in an OBS text source.

For OBS builds without a browser source (Debian's, some Flatpaks), the worker
writes "😄 happy 82%" into a text source through obs-websocket
(`SetInputSettings`). It runs in its own thread with its own obsws-python
client: that client is synchronous and not thread-safe, and OBS being closed
must never stall the analysis loop (a connect attempt can block for seconds).

Updates are throttled (at most `max_rate_hz`, 2 Hz by default) and sent only
when the shown text changes, because every SetInputSettings re-renders the
text source inside OBS's video thread.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

EMOJI = {
    "angry": "😠", "disgust": "🤢", "fear": "😨", "happy": "😄",
    "neutral": "😐", "sad": "😢", "surprise": "😲",
}

# obs-websocket v5 RequestStatus.ResourceNotFound
_NOT_FOUND = 600


def default_text_kind(platform: str | None = None) -> str:
    """The text source OBS has on this platform (GDI+ on Windows, FreeType 2 elsewhere)."""
    platform = platform or sys.platform
    return "text_gdiplus_v2" if platform.startswith("win") else "text_ft2_source_v2"


def format_state(event: dict[str, Any], *, show_emoji: bool = True, show_confidence: bool = True) -> str:
    """The text for one `state` event; "" when the overlay should be hidden."""
    if event.get("type", "state") != "state":
        raise ValueError(f"format_state takes a state event, got {event.get('type')!r}")
    label = event.get("label")
    if (event.get("visible") is False or event.get("face_present") is False
            or not isinstance(label, str) or label in ("", "uncertain")):
        return ""
    parts = []
    if show_emoji:
        parts.append(EMOJI.get(label, "🙂"))
    parts.append(label)
    conf = event.get("confidence")
    if show_confidence and isinstance(conf, (int, float)):
        parts.append(f"{round(max(0.0, min(1.0, float(conf))) * 100)}%")
    return " ".join(parts)


class NativeTextOverlay:
    """Keeps an OBS text source showing the latest emotion.

    `publish(event)` is thread-safe and never blocks: it stores the latest
    text; a background thread sends it to OBS when it changed and the rate
    limit allows. Connection problems are reported through `on_error` and
    `last_error` and retried with backoff, never raised to the engine.
    """

    def __init__(
        self,
        source_name: str = "merlb emotion",
        *,
        host: str = "127.0.0.1",
        port: int = 4455,
        password: str | None = None,
        scene_name: str | None = None,
        create: bool = True,
        input_kind: str | None = None,
        font_face: str | None = None,
        font_size: int = 64,
        show_emoji: bool = True,
        show_confidence: bool = True,
        max_rate_hz: float = 2.0,
        timeout: float = 3.0,
        on_error: Callable[[str], None] | None = None,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        if max_rate_hz <= 0:
            raise ValueError("max_rate_hz must be > 0")
        self.source_name = source_name
        self.host = host
        self.port = port
        self._password = password or ""
        self.scene_name = scene_name
        self.create = create
        self.input_kind = input_kind or default_text_kind()
        self.font_face = font_face or ("Segoe UI Emoji" if self.input_kind == "text_gdiplus_v2" else "Sans")
        self.font_size = font_size
        self.show_emoji = show_emoji
        self.show_confidence = show_confidence
        self.min_interval = 1.0 / max_rate_hz
        self.timeout = timeout
        self.on_error = on_error
        self._client_factory = client_factory or self._default_client
        self._client: Any = None
        self._cond = threading.Condition()
        self._wanted: str | None = None  # latest text asked for
        self._sent: str | None = None    # text OBS shows (as far as we know)
        self._stop = False
        self._thread: threading.Thread | None = None
        self.updates = 0          # SetInputSettings calls that succeeded
        self.last_error: str | None = None
        self.connected = False

    def __repr__(self) -> str:  # never show the password
        return f"NativeTextOverlay(source={self.source_name!r}, obs={self.host}:{self.port})"

    # ------------------------------------------------------------------ public

    def start(self) -> "NativeTextOverlay":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="merlb-native-overlay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._disconnect()

    def publish(self, event: dict[str, Any]) -> None:
        """Take any engine event; only `state` changes the text."""
        if event.get("type") != "state":
            return
        text = format_state(event, show_emoji=self.show_emoji, show_confidence=self.show_confidence)
        with self._cond:
            if text != self._wanted:
                self._wanted = text
                self._cond.notify_all()

    def __enter__(self) -> "NativeTextOverlay":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ worker

    def _default_client(self) -> Any:
        import obsws_python as obs

        # obsws-python logs its connection parameters, password included, at INFO.
        logging.getLogger("obsws_python").setLevel(logging.WARNING)
        return obs.ReqClient(host=self.host, port=self.port, password=self._password, timeout=self.timeout)

    def _run(self) -> None:
        backoff = 0.5
        last_send = 0.0
        while True:
            with self._cond:
                while not self._stop and self._wanted == self._sent:
                    self._cond.wait()
                if self._stop:
                    return
                wait = self.min_interval - (time.monotonic() - last_send)
                if wait > 0:
                    # Let rapid changes collapse into one update: whatever is
                    # wanted when the interval ends is what gets sent.
                    self._cond.wait(wait)
                    continue
                text = self._wanted
            try:
                self._send(text or "")
            except Exception as exc:  # OBS closed, source renamed, auth failed...
                self._report(exc)
                self._disconnect()
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            last_send = time.monotonic()
            with self._cond:
                self._sent = text

    def _send(self, text: str) -> None:
        if self._client is None:
            self._client = self._client_factory()
            self.connected = True
            self._ensure_input(text)
        try:
            self._client.set_input_settings(self.source_name, {"text": text}, True)
        except Exception as exc:
            if getattr(exc, "code", None) == _NOT_FOUND and self.create:
                # Renamed or deleted while we were running: make it again.
                self._ensure_input(text)
                self._client.set_input_settings(self.source_name, {"text": text}, True)
            else:
                raise
        self.updates += 1
        if self.last_error is not None:
            log.info("native overlay: updating %r again", self.source_name)
            self.last_error = None

    def _ensure_input(self, text: str) -> None:
        try:
            self._client.get_input_settings(self.source_name)
            return
        except Exception as exc:
            if getattr(exc, "code", None) != _NOT_FOUND:
                raise
            if not self.create:
                raise RuntimeError(
                    f"OBS has no source named {self.source_name!r}; create a text source with that "
                    "name or let merlb create it (create=True)") from exc
        scene = self.scene_name or self._current_scene()
        self._client.create_input(scene, self.source_name, self.input_kind, self._initial_settings(text), True)
        log.info("native overlay: created text source %r in scene %r", self.source_name, scene)

    def _current_scene(self) -> str:
        resp = self._client.get_current_program_scene()
        name = getattr(resp, "current_program_scene_name", None) or getattr(resp, "scene_name", None)
        if not name:
            raise RuntimeError("OBS reported no current program scene to add the text source to")
        return str(name)

    def _initial_settings(self, text: str) -> dict[str, Any]:
        font = {"face": self.font_face, "size": int(self.font_size), "style": "Bold", "flags": 1}
        if self.input_kind == "text_gdiplus_v2":
            return {"text": text, "font": font, "color": 0xFFFFFFFF, "outline": True,
                    "outline_size": 4, "outline_color": 0xFF000000}
        return {"text": text, "font": font, "color1": 0xFFFFFFFF, "color2": 0xFFFFFFFF,
                "outline": True, "drop_shadow": True}

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        self.connected = False
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # already gone; nothing left to close
                pass

    def _report(self, exc: Exception) -> None:
        message = f"native overlay: cannot update OBS text source {self.source_name!r} " \
                  f"at {self.host}:{self.port}: {type(exc).__name__}: {exc}"
        if self._password:
            message = message.replace(self._password, "***")
        if message != self.last_error:  # once per distinct problem, not per retry
            log.warning("%s (retrying)", message)
        self.last_error = message
        if self.on_error is not None:
            try:
                self.on_error(message)
            except Exception:
                log.exception("native overlay: on_error callback failed")
