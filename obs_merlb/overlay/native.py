"""Native overlay fallback: the current emotion in OBS text and image sources.

`head` shows another head of the `state` event instead (a personalized
model's "user" classes, or "behaviour"), with the class's initial where it
has no emoji ("Ⓗ hyped 74%").

For OBS builds without a browser source (Debian's, some Flatpaks), the worker
writes "😄 happy 82%" into a text source through obs-websocket
(`SetInputSettings`), and optionally points an image source at a PNG of the
emoji: OBS's FreeType text source on Linux draws no colour emoji, so with an
image source the text carries only the label, and the two are laid out side
by side. It runs in its own thread with its own `ObsLink` (obs_client.py), so
OBS being closed never stalls the analysis loop or the engine's other OBS
requests (a connect attempt can block for seconds).

Updates are throttled (at most `max_rate_hz`, 2 Hz by default) and sent only
when the shown value changes, because every SetInputSettings re-renders the
source inside OBS's video thread (an image source even re-reads its file).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import platformdirs

from obs_merlb.config import APP_NAME
from obs_merlb.files import write_atomic
from obs_merlb.obs_client import (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TIMEOUT_S, Backoff, ObsError,
                                  ObsLink, ObsSourceNotFound, notify)
from obs_merlb.palette import BEHAVIOUR_COLORS, BEHAVIOUR_EMOJI, EMOJI, EMOTION_COLORS, rgb

log = logging.getLogger(__name__)

# Default source names, shared by the worker, the installer and the panel
# (the OBS script, stdlib-only, spells TEXT_SOURCE out itself).
TEXT_SOURCE = "MERLB emotion"
IMAGE_SOURCE = "MERLB emoji"
IMAGE_KIND = "image_source"
IMAGE_SIZE = 128

GLYPHS = {**EMOJI, **BEHAVIOUR_EMOJI}

# Heads the overlay can show: emotion, or an extra head of the `state` event's `heads`.
OVERLAY_HEADS = ("emotion", "user", "behaviour")

# Badge colours when no colour-emoji font is installed.
BADGE_COLORS = {label: rgb(c) for label, c in {**EMOTION_COLORS, **BEHAVIOUR_COLORS}.items()}

# Colour-emoji fonts Pillow can draw, by platform; Noto Color Emoji is the
# Debian/Ubuntu package fonts-noto-color-emoji.
EMOJI_FONTS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/System/Library/Fonts/Apple Color Emoji.ttc",
    "C:/Windows/Fonts/seguiemj.ttf",
)

# Emoji and label side by side (see NativeTextOverlay._lay_out); OBS_ALIGN_* bits.
LAYOUT_MARGIN = 24
LAYOUT_GAP = 12
ALIGN_LEFT, ALIGN_RIGHT, ALIGN_TOP, ALIGN_BOTTOM = 1, 2, 4, 8
ALIGN_TOP_LEFT = ALIGN_TOP | ALIGN_LEFT


def default_text_kind(platform: str | None = None) -> str:
    """The text source OBS has on this platform (GDI+ on Windows, FreeType 2 elsewhere)."""
    platform = platform or sys.platform
    return "text_gdiplus_v2" if platform.startswith("win") else "text_ft2_source_v2"


def text_source_settings(kind: str, text: str = "", *, font_face: str | None = None,
                         font_size: int = 64) -> dict[str, Any]:
    """Initial settings of the native text source: white, bold, outlined.

    One definition for the worker (which creates a missing source), the
    installer and the panel, so the source looks the same whoever made it.
    """
    face = font_face or ("Segoe UI Emoji" if kind == "text_gdiplus_v2" else "Sans")
    font = {"face": face, "size": int(font_size), "style": "Bold", "flags": 1}
    if kind == "text_gdiplus_v2":
        return {"text": text, "font": font, "color": 0xFFFFFFFF, "outline": True,
                "outline_size": 4, "outline_color": 0xFF000000}
    return {"text": text, "font": font, "color1": 0xFFFFFFFF, "color2": 0xFFFFFFFF,
            "outline": True, "drop_shadow": True}


def item_box(transform: dict[str, Any]) -> tuple[float, float, float, float]:
    """(left, top, width, height) on the canvas of a scene item, from its
    GetSceneItemTransform (position is the point its alignment names; no rotation)."""
    x, y = float(transform.get("positionX", 0.0)), float(transform.get("positionY", 0.0))
    w, h = float(transform.get("width") or 0.0), float(transform.get("height") or 0.0)
    a = int(transform.get("alignment", ALIGN_TOP_LEFT))
    left = x if a & ALIGN_LEFT else x - w if a & ALIGN_RIGHT else x - w / 2
    top = y if a & ALIGN_TOP else y - h if a & ALIGN_BOTTOM else y - h / 2
    return left, top, w, h


def head_view(event: dict[str, Any], head: str = "emotion") -> tuple[Any, Any]:
    """(label, confidence) of `head` in a `state` event.

    An extra head comes from the event's `heads`; a model without that head
    (or a worker older than the field) falls back to the emotion, so a
    setting that asks for "user" never blanks the overlay.
    """
    if head != "emotion":
        heads = event.get("heads")
        view = heads.get(head) if isinstance(heads, dict) else None
        if isinstance(view, dict) and isinstance(view.get("label"), str):
            return view["label"], view.get("confidence")
    return event.get("label"), event.get("confidence")


def shown_label(event: dict[str, Any], head: str = "emotion") -> str:
    """The label the overlay shows for a `state` event; "" when hidden."""
    label, _ = head_view(event, head)
    if (event.get("visible") is False or event.get("face_present") is False
            or not isinstance(label, str) or label in ("", "uncertain")):
        return ""
    return label


def icon_for(label: str) -> str:
    """The label's emoji, else its initial in a circle (Ⓗ for "hyped"): a streamer's
    own class has no emoji, and a guessed one could say something they did not mean."""
    glyph = GLYPHS.get(label)
    if glyph is not None:
        return glyph
    first = label[:1].upper()
    if "A" <= first <= "Z":
        return chr(0x24B6 + ord(first) - ord("A"))   # CIRCLED LATIN CAPITAL LETTER A..Z
    return "●"


def emoji_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / "emoji"


def find_emoji_font() -> Path | None:
    for f in EMOJI_FONTS:
        if os.path.isfile(f):
            return Path(f)
    return None


def _load_emoji_font(path: Path) -> Any:
    """Bitmap colour fonts only load at their strike sizes (Noto 109, Apple 160)."""
    from PIL import ImageFont

    for size in (109, 160, 96, 64):
        try:
            return ImageFont.truetype(str(path), size)
        except OSError:
            continue
    return None


def _render_emoji(label: str, size: int, font: Any) -> Any:
    """The label's emoji scaled into a size x size transparent square, or None."""
    from PIL import Image, ImageDraw

    glyph = GLYPHS.get(label)
    if glyph is None or font is None:
        return None
    canvas = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    try:
        ImageDraw.Draw(canvas).text((128, 128), glyph, font=font, embedded_color=True, anchor="mm")
    except (OSError, ValueError):  # a font without colour glyphs (FreeType lacks CBDT/COLR)
        return None
    box = canvas.getbbox()
    if box is None:
        return None
    crop = canvas.crop(box)
    scale = size / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                       Image.LANCZOS)
    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    out.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2), crop)
    return out


def _render_badge(label: str, size: int) -> Any:
    """Without an emoji font: a round badge in the emotion's colour with its name."""
    from PIL import Image, ImageDraw, ImageFont

    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(out)
    d.ellipse((2, 2, size - 3, size - 3), fill=(*BADGE_COLORS.get(label, BADGE_COLORS["neutral"]), 255),
              outline=(0, 0, 0, 200), width=max(2, size // 32))
    text = label[:8]
    px = max(8, int(size * 1.5 / max(4, len(text))))
    try:
        font = ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    d.text((size / 2, size / 2), text, font=font, fill=(255, 255, 255, 255), anchor="mm",
           stroke_width=max(1, px // 12), stroke_fill=(0, 0, 0, 255))
    return out


def _render_initial(label: str, size: int) -> Any:
    """A class without an emoji (a streamer's own): its initial on a neutral grey disc."""
    from PIL import Image, ImageDraw, ImageFont

    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(out)
    d.ellipse((2, 2, size - 3, size - 3), fill=(*BADGE_COLORS["neutral"], 255),
              outline=(0, 0, 0, 200), width=max(2, size // 32))
    px = max(8, int(size * 0.55))
    try:
        font = ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    d.text((size / 2, size / 2), (label[:1] or "?").upper(), font=font, fill=(255, 255, 255, 255),
           anchor="mm", stroke_width=max(1, px // 16), stroke_fill=(0, 0, 0, 255))
    return out


def render_label_image(label: str, out_dir: str | os.PathLike[str] | None = None, *,
                       size: int = IMAGE_SIZE, font: str | os.PathLike[str] | None = None) -> Path:
    """PNG for one label of any head: its emoji (or badge) when it has one, else its initial.

    Names come from the streamer's tags, so the file name is a sanitised
    prefix plus a hash of the exact label: any text is safe and two labels
    that sanitise alike never share a file.
    """
    if label in GLYPHS:
        return render_emoji_images(out_dir, size=size, font=font, labels=[label])[label]
    d = Path(out_dir) if out_dir is not None else emoji_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", label)[:32] or "label"
    digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:10]
    path = d / f"{safe}-{digest}-initial-{size}.png"
    if not path.is_file():
        buf = io.BytesIO()
        _render_initial(label, size).save(buf, "PNG")
        write_atomic(path, buf.getvalue(), durable=False)
    return path


def render_emoji_images(out_dir: str | os.PathLike[str] | None = None, *, size: int = IMAGE_SIZE,
                        font: str | os.PathLike[str] | None = None,
                        labels: Sequence[str] | None = None) -> dict[str, Path]:
    """PNG per emotion ("" = transparent, for hidden) in `out_dir`; {label: path}.

    `labels` picks other labels with a glyph (behaviours) instead of the emotions.

    Colour emoji when a colour-emoji font is found (Pillow), else plain
    badges; the style is in the file name, so a font installed later gives
    new files rather than stale ones. Files are replaced atomically: OBS may
    be reading one while a second worker renders.
    """
    from PIL import Image

    d = Path(out_dir) if out_dir is not None else emoji_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    font_path = Path(font) if font is not None else find_emoji_font()
    emoji_font = _load_emoji_font(font_path) if font_path is not None else None
    paths: dict[str, Path] = {}
    for label in ["", *(EMOJI if labels is None else labels)]:
        if label:
            img = _render_emoji(label, size, emoji_font)
            style = "emoji" if img is not None else "badge"
            if img is None:
                img = _render_badge(label, size)
        else:
            img, style = Image.new("RGBA", (size, size), (0, 0, 0, 0)), "blank"
        path = d / f"{label or 'none'}-{style}-{size}.png"
        if not path.is_file():
            buf = io.BytesIO()
            img.save(buf, "PNG")
            write_atomic(path, buf.getvalue(), durable=False)
        paths[label] = path
    return paths


def format_state(event: dict[str, Any], *, show_emoji: bool = True, show_confidence: bool = True,
                 head: str = "emotion") -> str:
    """The text for one `state` event; "" when the overlay should be hidden.

    `head` picks what is shown (OVERLAY_HEADS); see `head_view` for the fallback.
    """
    if event.get("type", "state") != "state":
        raise ValueError(f"format_state takes a state event, got {event.get('type')!r}")
    label = shown_label(event, head)
    if not label:
        return ""
    parts = []
    if show_emoji:
        parts.append(icon_for(label))
    parts.append(label)
    _, conf = head_view(event, head)
    if show_confidence and isinstance(conf, (int, float)):
        parts.append(f"{round(max(0.0, min(1.0, float(conf))) * 100)}%")
    return " ".join(parts)


class NativeTextOverlay:
    """Keeps an OBS text source (and optionally an emoji image source) showing the latest emotion.

    `publish(event)` is thread-safe and never blocks: it stores the latest
    view; a background thread sends it to OBS when it changed and the rate
    limit allows. Connection problems are reported through `on_error` and
    `last_error` and retried with backoff, never raised to the engine.
    """

    def __init__(
        self,
        source_name: str = TEXT_SOURCE,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        password: str | None = None,
        scene_name: str | None = None,
        create: bool = True,
        input_kind: str | None = None,
        font_face: str | None = None,
        font_size: int = 64,
        show_emoji: bool = True,
        show_confidence: bool = True,
        head: str = "emotion",
        image_source_name: str | None = None,
        image_dir: str | os.PathLike[str] | None = None,
        image_size: int = IMAGE_SIZE,
        max_rate_hz: float = 2.0,
        timeout: float = DEFAULT_TIMEOUT_S,
        on_error: Callable[[str], None] | None = None,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        if max_rate_hz <= 0:
            raise ValueError("max_rate_hz must be > 0")
        if head not in OVERLAY_HEADS:
            raise ValueError(f"head must be one of {OVERLAY_HEADS}, got {head!r}")
        self.source_name = source_name
        self.host = host
        self.port = port
        self._password = password or ""
        self.scene_name = scene_name
        self.create = create
        self.input_kind = input_kind or default_text_kind()
        self.font_face = font_face
        self.font_size = font_size
        self.show_emoji = show_emoji
        self.show_confidence = show_confidence
        self.head = head
        self.image_source_name = image_source_name or None
        self.image_dir = image_dir
        self.image_size = image_size
        self.images: dict[str, Path] | None = None  # rendered on the overlay thread, first use
        self.min_interval = 1.0 / max_rate_hz
        self.timeout = timeout
        self.on_error = on_error
        # Its own link (own lock, own backoff): a closed OBS never stalls the engine's requests.
        factory = (lambda **_: client_factory()) if client_factory is not None else None
        self._link = ObsLink(host, port, self._password, timeout, client_factory=factory,
                             initial_backoff_s=0.5, max_backoff_s=10.0)
        self._session = 0           # the link's connection the sources were checked on
        self._cond = threading.Condition()
        self._wanted: tuple[str, str] | None = None  # latest (text, emoji label) asked for
        self._sent_text: str | None = None  # what OBS shows, as far as we know
        self._sent_image: str | None = None
        self._stop = False
        self._clear_on_stop = False
        self._thread: threading.Thread | None = None
        self._created_items: dict[str, tuple[str, Any]] = {}  # name -> (scene, scene item id)
        self.updates = 0          # SetInputSettings calls that succeeded (text and image)
        self.last_error: str | None = None

    def __repr__(self) -> str:  # never show the password
        return f"NativeTextOverlay(source={self.source_name!r}, obs={self.host}:{self.port})"

    @property
    def connected(self) -> bool:
        return self._link.connected

    # ------------------------------------------------------------------ public

    def start(self) -> "NativeTextOverlay":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="merlb-native-overlay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, *, clear: bool = False) -> None:
        """Stop the thread; `clear` first blanks the sources (one try), so a
        stopped worker leaves no stale emotion on stream."""
        with self._cond:
            self._stop = True
            self._clear_on_stop = clear and self._sent_text not in (None, "")
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._link.close()

    def publish(self, event: dict[str, Any]) -> None:
        """Take any engine event; only `state` changes what is shown."""
        if event.get("type") != "state":
            return
        text = format_state(event, show_emoji=self.show_emoji, show_confidence=self.show_confidence,
                            head=self.head)
        view = (text, shown_label(event, self.head))
        with self._cond:
            if view != self._wanted:
                self._wanted = view
                self._cond.notify_all()

    def __enter__(self) -> "NativeTextOverlay":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ worker

    def _image_on(self) -> bool:
        return self.image_source_name is not None

    def _changed(self) -> bool:
        """Under the lock: does OBS show something other than what is wanted?"""
        if self._wanted is None:
            return False
        text, label = self._wanted
        return text != self._sent_text or (self._image_on() and label != self._sent_image)

    def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        last_send = 0.0
        retry_at = 0.0
        while True:
            with self._cond:
                while not self._stop and not self._changed():
                    self._cond.wait()
                if self._stop:
                    clear = self._clear_on_stop
                    break
                now = time.monotonic()
                # Let rapid changes collapse into one update: whatever is wanted
                # when the interval (or a retry's backoff) ends is what gets sent.
                wait = max(self.min_interval - (now - last_send), retry_at - now)
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                view = self._wanted or ("", "")
            try:
                self._send(*view)
            except Exception as exc:  # OBS closed, source renamed, auth failed...
                self._report(exc)
                retry_at = time.monotonic() + max(backoff.failed(), self._link.retry_in())
                continue
            backoff.succeeded()
            last_send = time.monotonic()
        if clear:
            try:
                self._send("", "")
            except Exception as exc:  # OBS already gone: nothing left to blank
                log.debug("native overlay: not cleared on stop: %s", exc)

    def _send(self, text: str, label: str) -> None:
        session = self._link.connect()
        if session != self._session:
            # A new connection may find a restarted OBS: the sources must be checked again.
            self._sent_text = self._sent_image = None
            self._ensure_inputs(text, label)
            self._session = session
        if text != self._sent_text:
            self._set(self.source_name, {"text": text}, lambda: self._ensure_text(text))
            self._sent_text = text
        if self._image_on() and label != self._sent_image:
            settings = {"file": str(self._image_path(label))}
            self._set(str(self.image_source_name), settings, lambda: self._ensure_image(label))
            self._sent_image = label
        if self.last_error is not None:
            log.info("native overlay: updating %r again", self.source_name)
            self.last_error = None

    def _set(self, name: str, settings: dict[str, Any], ensure: Callable[[], bool]) -> None:
        def set_settings(c: Any) -> Any:
            return c.set_input_settings(name, settings, True)

        try:
            self._link.call(set_settings, f"SetInputSettings of {name!r}")
        except ObsSourceNotFound:
            if not self.create:
                raise
            # Renamed or deleted while we were running: make it again.
            ensure()
            self._link.call(set_settings, f"SetInputSettings of {name!r}")
        self.updates += 1

    def _image_path(self, label: str) -> Path:
        if self.images is None:
            # Pillow and the font load here, on the overlay thread, never the analysis loop.
            self.images = render_emoji_images(self.image_dir, size=self.image_size)
        if label and label not in self.images:
            # A behaviour or a streamer's own class: drawn the first time it is shown.
            self.images[label] = render_label_image(label, self.image_dir, size=self.image_size)
        return self.images.get(label) or self.images[""]

    def _ensure_inputs(self, text: str, label: str) -> None:
        made_image = self._ensure_image(label) if self._image_on() else False
        made_text = self._ensure_text(text)
        if made_text or made_image:
            try:
                self._lay_out(made_text, made_image)
            except ObsError as exc:  # cosmetic: the sources work wherever they are
                log.debug("native overlay: sources not laid out: %s", exc)

    def _ensure_text(self, text: str) -> bool:
        return self._ensure_input(self.source_name, self.input_kind,
                                  lambda: text_source_settings(self.input_kind, text,
                                                               font_face=self.font_face,
                                                               font_size=self.font_size))

    def _ensure_image(self, label: str) -> bool:
        return self._ensure_input(str(self.image_source_name), IMAGE_KIND,
                                  lambda: {"file": str(self._image_path(label)), "unload": False})

    def _ensure_input(self, name: str, kind: str, settings: Callable[[], dict[str, Any]]) -> bool:
        """Create `name` in the scene when OBS has no such input; True when created."""
        try:
            self._link.call(lambda c: c.get_input_settings(name), f"GetInputSettings of {name!r}")
            return False
        except ObsSourceNotFound as exc:
            if not self.create:
                raise RuntimeError(
                    f"OBS has no source named {name!r}; create a {kind} source with that "
                    "name or let merlb create it (create=True)") from exc
        scene = self.scene_name or self._current_scene()
        initial = settings()
        resp = self._link.call(lambda c: c.create_input(scene, name, kind, initial, True),
                               f"CreateInput {name!r}")
        self._created_items[name] = (scene, getattr(resp, "scene_item_id", None))
        log.info("native overlay: created %s source %r in scene %r", kind, name, scene)
        return True

    def _lay_out(self, made_text: bool, made_image: bool) -> None:
        """Emoji and label as one unit: the emoji, then the label to its right,
        vertically centred on it, so neither covers the other.

        A new emoji takes the label's place (or the top-left corner when both
        are new) and the label moves right by the emoji's width; a new label
        goes beside an existing emoji. Only these two sources are moved, and
        only when one of them was just made: later moves by the streamer stay.
        """
        if not self._image_on():
            return
        image, text = str(self.image_source_name), self.source_name
        scene = self._created_items[image if made_image else text][0]
        if made_image:
            if made_text:
                left, top = float(LAYOUT_MARGIN), float(LAYOUT_MARGIN)
            else:
                left, top, _, _ = item_box(self._transform(scene, text))
            size_w = size_h = float(self.image_size)
            self._move(scene, image, {"positionX": left, "positionY": top, "alignment": ALIGN_TOP_LEFT})
        else:
            left, top, size_w, size_h = item_box(self._transform(scene, image))
            size_w, size_h = size_w or self.image_size, size_h or self.image_size
        self._move(scene, text, {"positionX": left + size_w + LAYOUT_GAP,
                                 "positionY": top + size_h / 2, "alignment": ALIGN_LEFT})

    def _item_id(self, scene: str, name: str) -> Any:
        made = self._created_items.get(name)
        if made is not None and made[0] == scene and made[1] is not None:
            return made[1]
        return self._link.call(lambda c: c.get_scene_item_id(scene, name).scene_item_id,
                               f"GetSceneItemId of {name!r}")

    def _transform(self, scene: str, name: str) -> dict[str, Any]:
        item = self._item_id(scene, name)
        return self._link.call(lambda c: c.get_scene_item_transform(scene, item).scene_item_transform,
                               f"GetSceneItemTransform of {name!r}")

    def _move(self, scene: str, name: str, transform: dict[str, Any]) -> None:
        item = self._item_id(scene, name)
        self._link.call(lambda c: c.set_scene_item_transform(scene, item, transform),
                        f"SetSceneItemTransform of {name!r}")

    def _current_scene(self) -> str:
        resp = self._link.call(lambda c: c.get_current_program_scene(), "GetCurrentProgramScene")
        name = getattr(resp, "current_program_scene_name", None) or getattr(resp, "scene_name", None)
        if not name:
            raise RuntimeError("OBS reported no current program scene to add the overlay source to")
        return str(name)

    def _report(self, exc: Exception) -> None:
        message = f"native overlay: cannot update OBS source {self.source_name!r} " \
                  f"at {self.host}:{self.port}: {type(exc).__name__}: {exc}"
        if self._password:
            message = message.replace(self._password, "***")
        # once per distinct problem, not per retry; the link logs its own
        if message != self.last_error and str(exc) != self._link.last_error:
            log.warning("%s (retrying)", message)
        self.last_error = message
        notify(self.on_error, message)
