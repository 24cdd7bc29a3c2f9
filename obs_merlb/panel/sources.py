"""Lists the sources a streamer can pick: OBS inputs and microphones.

Both lookups can stall (obs-websocket waits for a timeout when OBS is not
running; PortAudio probes every device), so they run on a worker thread and
report back through a Qt signal.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from PyQt5.QtCore import QObject, pyqtSignal

from obs_merlb.obs_client import DEFAULT_TIMEOUT_S, ObsError, ObsLink, ObsSourceNotFound

# Input kinds that are cameras (per platform) and those that carry gameplay;
# the panel lists these first, then every other input, since a streamer may
# route a camera through any source.
CAMERA_KINDS = ("v4l2_input", "dshow_input", "av_capture_input", "av_capture_input_v2",
                "ffmpeg_source", "pipewire-camera-source")
GAME_KINDS = ("game_capture", "window_capture", "xcomposite_input", "monitor_capture",
              "display_capture", "screen_capture", "pipewire-screen-capture-source",
              "pipewire-desktop-capture-source", "xshm_input")


@dataclass
class SourceLists:
    cameras: list[str] = field(default_factory=list)
    games: list[str] = field(default_factory=list)
    mics: list[str] = field(default_factory=list)
    obs_error: str | None = None
    mic_error: str | None = None


NOT_CONFIGURED = ("OBS connection not configured: run `merlb install-obs` (it enables "
                  "obs-websocket and saves the [obs] settings)")
BROWSER_SIZE = (1920, 1080)
TRANSPARENT_CSS = "body { background-color: rgba(0, 0, 0, 0); margin: 0; overflow: hidden; }"


def obs_link(obs_cfg: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT_S) -> ObsLink:
    """A connected link for the config's [obs] table (one per panel action: the
    panel asks OBS a few times a session, so nothing is kept open between).

    Raises RuntimeError with a readable message (never the password) when
    OBS is not configured or cannot be reached.
    """
    if not obs_cfg:
        raise RuntimeError(NOT_CONFIGURED)
    link = ObsLink.from_config(obs_cfg, timeout)
    try:
        link.connect()
    except ObsError as e:
        raise RuntimeError(f"OBS not reachable at {link.host}:{link.port} ({e}); start OBS and "
                           "enable Tools > WebSocket Server Settings, or run `merlb install-obs`") from None
    return link


def list_obs_inputs(obs_cfg: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT_S) -> tuple[list[str], list[str]]:
    """(camera-like inputs, gameplay-like inputs) from obs-websocket's GetInputList.

    Raises RuntimeError with a readable message when OBS cannot be reached.
    """
    link = obs_link(obs_cfg, timeout)
    try:
        inputs = link.request("GetInputList").get("inputs", [])
    except ObsError as e:
        raise RuntimeError(f"OBS refused GetInputList ({_short(e)})") from None
    finally:
        link.close()
    cams, games, other = [], [], []
    for item in inputs:
        name, kind = str(item.get("inputName", "")), str(item.get("inputKind", ""))
        if not name:
            continue
        if kind in CAMERA_KINDS:
            cams.append(name)
        elif kind in GAME_KINDS:
            games.append(name)
        elif "audio" not in kind and "wasapi" not in kind and "pulse" not in kind \
                and "alsa" not in kind and "coreaudio" not in kind:
            other.append(name)
    return cams + other, games + other


def list_microphones() -> list[str]:
    """Input device names as PortAudio reports them (OBS shows the same names).

    Raises RuntimeError when PortAudio is missing, with what to install.
    """
    try:
        import sounddevice as sd
    except OSError as e:  # the wheel imports fine but cannot find libportaudio
        raise RuntimeError(f"microphones cannot be listed: the PortAudio library is missing ({e}); "
                           "install it (Debian/Ubuntu: sudo apt install libportaudio2)") from None
    except ImportError as e:
        raise RuntimeError(f"sounddevice is not installed ({e})") from None
    try:
        devices = sd.query_devices()
    except Exception as e:
        raise RuntimeError(f"microphones cannot be listed ({_short(e)})") from None
    names: list[str] = []
    for d in devices:
        if int(d.get("max_input_channels", 0)) > 0 and d.get("name") not in names:
            names.append(str(d["name"]))
    return names


def add_overlay_to_obs(obs_cfg: Mapping[str, Any], mode: str, url: str = "",
                       timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Put the overlay into OBS's current program scene; returns what was done.

    mode "browser": the browser source "MERLB overlay" showing `url`,
    1920x1080 with a transparent page; "text": the native text source
    "MERLB emotion" the worker fills (--overlay text). An existing source of
    that name is reused (a browser source gets the new URL) and added to the
    scene when it is not in it yet, so pressing the button twice is harmless.
    Raises RuntimeError with what to do when OBS cannot take it.
    """
    from obs_merlb.install import OVERLAY_BROWSER
    from obs_merlb.overlay.native import TEXT_SOURCE, default_text_kind, text_source_settings

    if mode not in ("browser", "text"):
        raise ValueError(f"mode must be 'browser' or 'text', not {mode!r}")
    link = obs_link(obs_cfg, timeout)
    try:
        scene = str(link.request("GetCurrentProgramScene").get("currentProgramSceneName"))
        if mode == "browser":
            if not url:
                raise RuntimeError("no overlay URL: connect the panel to a worker first")
            kinds = link.request("GetInputKindList", {"unversioned": False}).get("inputKinds", [])
            if "browser_source" not in kinds:
                raise RuntimeError("this OBS has no browser source (the obs-browser plugin is missing, "
                                   "as in Debian's OBS package): add the native text source instead")
            name, kind = OVERLAY_BROWSER, "browser_source"
            settings: dict[str, Any] = {"url": url, "is_local_file": False, "width": BROWSER_SIZE[0],
                                        "height": BROWSER_SIZE[1], "css": TRANSPARENT_CSS,
                                        "reroute_audio": False, "shutdown": False}
        else:
            name, kind = TEXT_SOURCE, default_text_kind()
            settings = text_source_settings(kind)
        existing = _input_kind(link, name)
        if existing is None:
            link.request("CreateInput", {"sceneName": scene, "inputName": name, "inputKind": kind,
                                         "inputSettings": settings, "sceneItemEnabled": True})
            return f"Added {name!r} to scene {scene!r}."
        if existing != kind:
            raise RuntimeError(f"OBS already has a source named {name!r} that is a {existing}, "
                               f"not a {kind}: rename or remove it, then try again")
        note = ""
        if mode == "browser":
            link.request("SetInputSettings", {"inputName": name, "inputSettings": {"url": url},
                                              "overlay": True})
            note = " (URL updated)"
        items = link.request("GetSceneItemList", {"sceneName": scene}).get("sceneItems", [])
        if any(i.get("sourceName") == name for i in items):
            return f"{name!r} is already in scene {scene!r}{note}."
        link.request("CreateSceneItem", {"sceneName": scene, "sourceName": name,
                                         "sceneItemEnabled": True})
        return f"Added the existing {name!r} to scene {scene!r}{note}."
    except ObsError as e:  # a request OBS refused: say which, in one line
        raise RuntimeError(f"OBS refused to add the overlay ({_short(e)})") from None
    finally:
        link.close()


def _input_kind(link: ObsLink, name: str) -> str | None:
    """The input's kind, or None when OBS has no input of that name."""
    try:
        return str(link.request("GetInputSettings", {"inputName": name}).get("inputKind"))
    except ObsSourceNotFound:
        return None


class OverlayAdder(QObject):
    """Runs add_overlay_to_obs off the GUI thread; `done` carries (ok, message)."""

    done = pyqtSignal(bool, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._busy = False

    def add(self, obs_cfg: Mapping[str, Any], mode: str, url: str) -> bool:
        if self._busy:
            return False
        self._busy = True
        threading.Thread(target=self._work, args=(dict(obs_cfg), mode, url),
                         name="merlb-panel-add-overlay", daemon=True).start()
        return True

    def _work(self, obs_cfg: dict[str, Any], mode: str, url: str) -> None:
        try:
            ok, msg = True, add_overlay_to_obs(obs_cfg, mode, url)
        except (RuntimeError, ValueError) as e:
            ok, msg = False, str(e)
        self._busy = False
        self.done.emit(ok, msg)


class SourceLister(QObject):
    """Runs both lookups off the GUI thread; `listed` carries a SourceLists."""

    listed = pyqtSignal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._busy = False

    def refresh(self, obs_cfg: Mapping[str, Any]) -> bool:
        if self._busy:
            return False
        self._busy = True
        threading.Thread(target=self._work, args=(dict(obs_cfg),), name="merlb-panel-sources",
                         daemon=True).start()
        return True

    def _work(self, obs_cfg: dict[str, Any]) -> None:
        out = SourceLists()
        if not obs_cfg:
            out.obs_error = NOT_CONFIGURED + ", then refresh"
        else:
            try:
                out.cameras, out.games = list_obs_inputs(obs_cfg)
            except RuntimeError as e:
                out.obs_error = str(e)
        try:
            out.mics = list_microphones()
        except RuntimeError as e:
            out.mic_error = str(e)
        self._busy = False
        self.listed.emit(out)


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."
