"""Real OBS Studio under Xvfb, for tests.

Reusable by any test that needs OBS (the script, the native text overlay,
the engine's obs-websocket capture):

    from tests.obs_harness import obs_home, running_obs

    with running_obs(tmp_path, media=CLIP) as obs:
        obs.client.get_version()          # an obsws_python.ReqClient
        obs.log_text()                    # OBS's own log so far

or in two steps when something (the installer) must edit the home in
between:

    home = obs_home(tmp_path, media=CLIP)           # fresh OBS config
    ... edit home.config_dir ...
    with ObsProcess(home) as obs: ...

What the home holds and why (found on Debian's OBS 29.0.2):
- ``global.ini`` [General] ``FirstRun=true`` and a named profile and scene
  collection: without them OBS opens the auto-configuration wizard, a modal
  dialog that stops the UI thread, so obs-websocket never answers.
- the profile's ``basic.ini`` sets a small canvas (640x360, 30 fps) and
  x264 ``ultrafast``: software GL on two cores cannot render 1080p.
- ``[OBSWebSocket] FirstLoad=false``: otherwise obs-websocket generates its
  own password on first load and ignores ours.
- ``--disable-missing-files-check``: the missing-files dialog is modal too.
- OBS 29 on Linux dies at once on SIGTERM (exit status -15) without saving,
  unloading scripts or sending the frontend EXIT event, and xdotool
  ``windowclose`` destroys the window without closing OBS. It is stopped
  the way a user stops it, File > Exit (Ctrl+Q) on the focused main window,
  which logs "==== Shutting down" and unloads scripts (about 5 s); SIGKILL
  only after a timeout.
"""
from __future__ import annotations

import configparser
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from obs_merlb.obs_client import open_client

REPO = Path(__file__).resolve().parent.parent
SHARED_CLIP = REPO.parent / "shared" / "data" / "crema_d_samples" / "1001_DFA_HAP_XX.flv"

SCENE = "Scene"
CAMERA = "Camera"
COLLECTION = "MERLB Test"
PROFILE = "MERLBTest"


def default_clip() -> Path | None:
    """The stand-in camera clip: the repo's demo clip, else a CREMA-D sample."""
    for p in (REPO / "assets" / "demo.mp4", SHARED_CLIP):
        if p.is_file():
            return p
    return None


def require_obs() -> tuple[str, str]:
    """Paths of `obs` and `Xvfb`, or skip the test with the reason."""
    obs = shutil.which("obs")
    xvfb = shutil.which("Xvfb")
    missing = [n for n, p in (("obs-studio (obs)", obs), ("xvfb (Xvfb)", xvfb)) if not p]
    if missing:
        pytest.skip("real OBS tests need " + " and ".join(missing)
                    + "; as root: apt-get install -y obs-studio xvfb xdotool")
    try:
        import obsws_python  # noqa: F401
    except ImportError:
        pytest.skip("obsws-python is not installed in this environment")
    return obs, xvfb  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_ini(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    cp = configparser.RawConfigParser()
    cp.optionxform = str  # type: ignore[assignment]  # OBS keys are case-sensitive
    if path.is_file():
        cp.read(path, encoding="utf-8-sig")
    for sec, kv in sections.items():
        if not cp.has_section(sec):
            cp.add_section(sec)
        for k, v in kv.items():
            cp.set(sec, k, str(v).lower() if isinstance(v, bool) else str(v))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        cp.write(f, space_around_delimiters=False)


@dataclass
class ObsHome:
    """A fresh OBS configuration under a temporary HOME."""

    home: Path
    port: int
    password: str | None  # None: obs-websocket not enabled by the harness
    collection: str = COLLECTION
    scene: str = SCENE
    camera: str | None = CAMERA
    recordings: Path = field(default_factory=Path)

    @property
    def config_dir(self) -> Path:
        return self.home / ".config" / "obs-studio"

    @property
    def log_dir(self) -> Path:
        return self.config_dir / "logs"

    @property
    def collection_file(self) -> Path:
        return self.config_dir / "basic" / "scenes" / f"{self.collection.replace(' ', '_')}.json"

    def collection_json(self) -> dict[str, Any]:
        return json.loads(self.collection_file.read_text(encoding="utf-8"))

    def websocket(self) -> tuple[int, str | None]:
        """Port and password as OBS will read them (the installer may have set them)."""
        cp = configparser.RawConfigParser()
        cp.optionxform = str  # type: ignore[assignment]
        cp.read(self.config_dir / "global.ini", encoding="utf-8-sig")
        if not cp.has_section("OBSWebSocket"):
            return self.port, self.password
        port = cp.getint("OBSWebSocket", "ServerPort", fallback=self.port)
        auth = cp.get("OBSWebSocket", "AuthRequired", fallback="false").lower() == "true"
        pw = cp.get("OBSWebSocket", "ServerPassword", fallback="") if auth else None
        return port, pw

    def env(self, display: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "QT_", "WAYLAND"))}
        env.update(HOME=str(self.home), DISPLAY=display, LIBGL_ALWAYS_SOFTWARE="1",
                   XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_DATA_HOME=str(self.home / ".local" / "share"),
                   XDG_STATE_HOME=str(self.home / ".local" / "state"),
                   XDG_RUNTIME_DIR=str(self.home / "run"),
                   QT_QPA_PLATFORM="xcb")
        # Never leak the developer's OBS password into OBS or the worker.
        env.pop("MERLB_OBS_PASSWORD", None)
        return env


def obs_home(base: Path, media: Path | None = None, *, websocket: bool = True,
             port: int | None = None, password: str | None = None,
             camera: str = CAMERA, scripts: list[dict[str, Any]] | None = None) -> ObsHome:
    """Write a fresh OBS home under `base`: profile, scene collection, global.ini.

    `media`: a file an `ffmpeg_source` named `camera` plays in a loop (the
    stand-in webcam). `websocket=False` leaves obs-websocket unconfigured, as
    on a streamer's machine before `merlb install-obs`.
    """
    home = Path(base) / "home"
    cfg = home / ".config" / "obs-studio"
    (home / "run").mkdir(parents=True, exist_ok=True)
    os.chmod(home / "run", 0o700)
    recordings = Path(base) / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    password = (password or secrets.token_urlsafe(12)) if websocket else None
    h = ObsHome(home=home, port=port, password=password,
                camera=camera if media else None, recordings=recordings)

    general = {"FirstRun": True, "LastVersion": 486539266, "EnableAutoUpdates": False,
               "ConfirmOnExit": False, "WarnBeforeStartingStream": False,
               "WarnBeforeStoppingStream": False, "WarnBeforeStoppingRecord": False,
               "InfoIncrement": -1, "MaxLogs": 3}
    basic = {"Profile": PROFILE, "ProfileDir": PROFILE, "SceneCollection": h.collection,
             "SceneCollectionFile": h.collection_file.stem, "ConfigOnNewProfile": False}
    sections: dict[str, dict[str, Any]] = {"General": general, "Basic": basic,
                                           "BasicWindow": {"geometry": "", "PreviewEnabled": False}}
    if websocket:
        sections["OBSWebSocket"] = {"FirstLoad": False, "ServerEnabled": True, "ServerPort": port,
                                    "AlertsEnabled": False, "AuthRequired": True,
                                    "ServerPassword": password}
    _write_ini(cfg / "global.ini", sections)

    _write_ini(cfg / "basic" / "profiles" / PROFILE / "basic.ini", {
        "General": {"Name": PROFILE},
        "Video": {"BaseCX": 640, "BaseCY": 360, "OutputCX": 640, "OutputCY": 360,
                  "FPSType": 0, "FPSCommon": 30, "ScaleType": "bilinear"},
        "Audio": {"SampleRate": 48000, "ChannelSetup": "Stereo"},
        "Output": {"Mode": "Simple"},
        "SimpleOutput": {"FilePath": str(recordings), "RecFormat": "mkv", "RecQuality": "Stream",
                         "StreamEncoder": "x264", "RecEncoder": "x264", "Preset": "ultrafast",
                         "VBitrate": 800, "ABitrate": 96, "FileNameWithoutSpace": True},
    })

    items = []
    sources: list[dict[str, Any]] = []
    if media:
        sources.append({
            "id": "ffmpeg_source", "versioned_id": "ffmpeg_source", "name": camera,
            "uuid": "", "enabled": True, "muted": True,
            "settings": {"local_file": str(Path(media).resolve()), "looping": True,
                         "is_local_file": True, "restart_on_activate": False,
                         "close_when_inactive": False, "hw_decode": False},
        })
        items.append({"name": camera, "id": 1, "visible": True, "locked": False,
                      "pos": {"x": 0.0, "y": 0.0}, "scale": {"x": 1.0, "y": 1.0}, "rot": 0.0,
                      "align": 5, "bounds_type": 0, "bounds": {"x": 0.0, "y": 0.0},
                      "crop_left": 0, "crop_top": 0, "crop_right": 0, "crop_bottom": 0})
    sources.append({"id": "scene", "versioned_id": "scene", "name": h.scene, "enabled": True,
                    "settings": {"items": items, "id_counter": len(items), "custom_size": False}})
    collection = {
        "name": h.collection, "current_scene": h.scene, "current_program_scene": h.scene,
        "scene_order": [{"name": h.scene}], "sources": sources, "groups": [],
        "transitions": [], "current_transition": "Fade", "transition_duration": 300,
        "quick_transitions": [], "saved_projectors": [], "preview_locked": False,
        "scaling_enabled": False, "modules": {"scripts-tool": scripts or []},
    }
    h.collection_file.parent.mkdir(parents=True, exist_ok=True)
    h.collection_file.write_text(json.dumps(collection, indent=2), encoding="utf-8")
    return h


class ObsProcess:
    """Xvfb + OBS for one ObsHome; a context manager.

    Attributes once entered: `client` (obsws_python.ReqClient, or None when
    the home has no websocket), `display`, `proc`.
    """

    def __init__(self, home: ObsHome, *, timeout: float = 90.0, screen: str = "1280x800x24",
                 extra_args: list[str] | None = None, connect: bool = True) -> None:
        self.obs_bin, self.xvfb_bin = require_obs()
        self.home = home
        self.timeout = timeout
        self.screen = screen
        self.extra_args = extra_args or []
        self.connect = connect
        self.xvfb: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.display = ""
        self._stdout = home.home / "obs-stdout.log"

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> "ObsProcess":
        try:
            self._start_xvfb()
            self._start_obs()
            if self.connect and self.home.websocket()[1] is not None:
                self.client = self.wait_client()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_xvfb(self) -> None:
        r, w = os.pipe()
        self.xvfb = subprocess.Popen([self.xvfb_bin, "-displayfd", str(w), "-screen", "0",
                                      self.screen, "-nolisten", "tcp", "-noreset"],
                                     pass_fds=(w,), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(w)
        buf = b""
        deadline = time.monotonic() + 20
        with os.fdopen(r, "rb", buffering=0) as f:
            while not buf.endswith(b"\n") and time.monotonic() < deadline:
                chunk = f.read(16)
                if not chunk:
                    break
                buf += chunk
        if not buf.strip():
            raise RuntimeError("Xvfb did not report a display")
        self.display = ":" + buf.decode().strip()

    def _start_obs(self) -> None:
        args = [self.obs_bin, "--multi", "--disable-missing-files-check",
                "--collection", self.home.collection, "--profile", PROFILE, *self.extra_args]
        self.started_at = time.time()
        out = self._stdout.open("ab")
        # OBS looks up its data (locale, themes) relative to its cwd on some
        # builds; the home is a safe cwd that does not hide anything.
        self.proc = subprocess.Popen(args, env=self.home.env(self.display), cwd=self.home.home,
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        out.close()

    def new_client(self, password: str | None = None, timeout: float = 5.0) -> Any:
        port, pw = self.home.websocket()
        return open_client("127.0.0.1", port, pw if password is None else password, timeout)

    def wait_client(self) -> Any:
        deadline = time.monotonic() + self.timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"OBS exited with {self.proc.returncode} before its websocket "
                                   f"answered; log:\n{self.log_text()[-3000:]}")
            try:
                c = self.new_client()
                c.get_version()
                return c
            except Exception as e:  # noqa: BLE001 - connection refused, auth in progress, ...
                last = e
                time.sleep(0.5)
        raise TimeoutError(f"obs-websocket did not answer in {self.timeout:.0f}s ({last!r}); "
                           f"log:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Close OBS like a user (main window close), then kill if it hangs."""
        rc = None
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.close_main_window()
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait(timeout=10)
        elif self.proc is not None:
            rc = self.proc.returncode
        if self.xvfb is not None and self.xvfb.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.xvfb.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.xvfb.wait(timeout=10)
        return rc

    # -- X helpers --------------------------------------------------------
    def xenv(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.display}

    def windows(self, name: str = "") -> list[str]:
        """X window ids of OBS's visible windows whose title matches `name` (regex)."""
        if not shutil.which("xdotool") or self.proc is None:
            return []
        # The X server is private to this OBS, so every window is OBS's own
        # (Qt does not always set _NET_WM_PID, so no --pid filter).
        r = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", name or "."],
                           env=self.xenv(), capture_output=True, text=True, timeout=10)
        return r.stdout.split()

    def close_main_window(self) -> None:
        wins = self.windows("^OBS [0-9]")
        if not wins:
            # No xdotool or no window yet: SIGINT is the next most orderly stop.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)  # type: ignore[union-attr]
            return
        # Modal dialogs (the Scripts window) would swallow the shortcut.
        for w in self.windows("^(Scripts|Properties)"):
            subprocess.run(["xdotool", "key", "--window", w, "Escape"], env=self.xenv(),
                           capture_output=True, timeout=10)
        subprocess.run(["xdotool", "windowfocus", "--sync", wins[0]], env=self.xenv(),
                       capture_output=True, timeout=10)
        subprocess.run(["xdotool", "key", "--clearmodifiers", "ctrl+q"], env=self.xenv(),
                       capture_output=True, timeout=10)

    def screenshot(self, path: Path, window: str | None = None) -> Path:
        """PNG of the whole screen or one X window (ImageMagick `import`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["import", "-window", window or "root", str(path)], env=self.xenv(),
                       check=True, capture_output=True, timeout=30)
        return path

    # -- logs -------------------------------------------------------------
    def log_path(self) -> Path | None:
        logs = sorted(self.home.log_dir.glob("*.txt"), key=lambda p: p.stat().st_mtime)
        return logs[-1] if logs else None

    def log_text(self) -> str:
        p = self.log_path()
        text = p.read_text(encoding="utf-8", errors="replace") if p else ""
        if self._stdout.is_file():
            text += "\n--- stdout ---\n" + self._stdout.read_text(errors="replace")[-4000:]
        return text

    def wait_log(self, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            time.sleep(0.5)
        raise TimeoutError(f"{needle!r} not in OBS's log after {timeout:.0f}s:\n"
                           f"{self.log_text()[-3000:]}")


@contextlib.contextmanager
def running_obs(base: Path, media: Path | None = None, **kw: Any) -> Iterator[ObsProcess]:
    """A fresh home plus a running OBS with a connected client."""
    home = obs_home(base, media=media, **{k: v for k, v in kw.items()
                                          if k in ("websocket", "port", "password", "camera",
                                                   "scripts")})
    with ObsProcess(home, **{k: v for k, v in kw.items()
                             if k in ("timeout", "screen", "extra_args", "connect")}) as obs:
        yield obs
