"""`merlb install-obs`: put the obs-merlb script into OBS Studio.

What it changes, each shown first with --dry-run and undone by --uninstall:
1. obs-websocket (OBS's built-in remote control, which the worker uses to
   grab camera frames): enabled with a generated password in OBS's
   ``global.ini`` [OBSWebSocket] (OBS 28-29; OBS 30+ migrates it from there
   on first start, and its ``plugin_config/obs-websocket/config.json`` is
   updated too when it exists). An existing enabled, password-protected
   server is kept as it is: other tools may use it.
2. the project's config file (``[obs]`` host, port, password; mode 0600).
3. the scene collection: the script in ``modules.scripts-tool`` with the
   worker's Python and OBS's config folder as settings, and, when asked, the
   overlay (browser source or native text source) in a scene.

OBS rewrites its files from memory when it exits, so they are edited only
while OBS is closed; when it runs, this prints what to click instead.
Each OBS file is copied to ``<file>.bak-<timestamp>`` before it is changed.
What was there before is kept in ``install-manifest.json`` beside the
project's config, which is what --uninstall restores.

The password is printed once, when it is generated, and never logged.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from obs_merlb import config as merlb_config
from obs_merlb.cli import refuse, whole_number
from obs_merlb.obs_client import DEFAULT_HOST, DEFAULT_PORT
from obs_merlb.overlay.native import TEXT_SOURCE as OVERLAY_TEXT
from obs_merlb.overlay.server import DEFAULT_PORT as OVERLAY_PORT

SCRIPT_NAME = "obs_script.py"
SUPERVISOR_NAME = "obs_supervisor.py"   # OBS loads it from the script's own folder
OVERLAY_BROWSER = "MERLB overlay"
DEFAULT_OVERLAY_URL = f"http://127.0.0.1:{OVERLAY_PORT}/overlay.html"
MARK = "obs_merlb"  # key in a source's private_settings: we made it, uninstall may remove it
FLATPAK_ID = "com.obsproject.Studio"
CAMERA_KINDS = ("v4l2_input", "dshow_input", "av_capture_input", "av_capture_input_v2",
                "macos_avcapture", "pipewire-camera-source", "ffmpeg_source")


# --------------------------------------------------------------------------
# where things are
# --------------------------------------------------------------------------
# `--platform` names: check the folders another OS's OBS would use (CI, docs).
PLATFORMS = {"windows": "win32", "macos": "darwin", "linux": "linux"}
# Any of these in OBS's own folder switches it to portable mode: its config
# is then that folder's config/obs-studio, not the user's (OBS's obs-main.cpp).
PORTABLE_MARKERS = ("portable_mode", "obs_portable_mode", "portable_mode.txt",
                    "obs_portable_mode.txt")


def portable_config(obs_dir: Path) -> Path | None:
    """The config folder of a portable OBS whose own folder is `obs_dir`, else None.

    `obs_dir` may also be its bin/64bit, where obs64.exe is."""
    root = obs_dir.parent.parent if obs_dir.parent.name.lower() == "bin" else obs_dir
    if any((root / m).is_file() for m in PORTABLE_MARKERS):
        return root / "config" / "obs-studio"
    return None


def obs_config_candidates(platform: str | None = None, env: dict[str, str] | None = None,
                          home: Path | None = None) -> list[Path]:
    """OBS config folders for this platform, most likely first."""
    platform = platform or sys.platform
    env = dict(os.environ) if env is None else env
    home = home or Path.home()
    if platform.startswith("win"):
        appdata = env.get("APPDATA") or str(home / "AppData" / "Roaming")
        # The installer's OBS put into portable mode reads only its own folder.
        program_files = env.get("ProgramFiles") or env.get("PROGRAMFILES")
        portable = portable_config(Path(program_files) / "obs-studio") if program_files else None
        return ([portable] if portable else []) + [Path(appdata) / "obs-studio"]
    if platform == "darwin":
        return [home / "Library" / "Application Support" / "obs-studio"]
    xdg = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return [xdg / "obs-studio", home / ".var" / "app" / FLATPAK_ID / "config" / "obs-studio"]


def _is_obs_config(d: Path) -> bool:
    # global.ini from every OBS; user.ini from OBS 31 on; basic/ once it saved a scene.
    return (d / "global.ini").is_file() or (d / "user.ini").is_file() or (d / "basic").is_dir()


def find_obs_config(override: str | None = None, **kw: Any) -> Path:
    """The OBS config folder: --obs-config, else the first that exists, else the native one.

    --obs-config takes OBS's config folder or a portable OBS's own folder."""
    if override:
        given = Path(override).expanduser()
        if not _is_obs_config(given):
            found = portable_config(given)
            if found is not None:
                return found
            if _is_obs_config(given / "obs-studio"):   # a portable OBS's config/ folder
                return given / "obs-studio"
        return given
    cands = obs_config_candidates(**kw)
    for c in cands:
        if _is_obs_config(c):
            return c
    return cands[0]


def is_portable_config(path: Path) -> bool:
    """Whether `path` is a portable OBS's config folder (OBS_DIR/config/obs-studio)."""
    return path.parent.name == "config" and portable_config(path.parent.parent) is not None


def is_flatpak_config(path: Path) -> bool:
    return f"/.var/app/{FLATPAK_ID}/" in path.as_posix() + "/"


def obs_running() -> list[int]:
    """PIDs of running OBS Studio processes."""
    try:
        import psutil
    except ImportError:
        return []
    names = {"obs", "obs64.exe", "obs32.exe", "obs.exe", "OBS"}
    pids = []
    for p in psutil.process_iter(["name", "exe", "cmdline"]):
        try:
            name = p.info.get("name") or ""
            exe = os.path.basename(p.info.get("exe") or "")
            cmd = p.info.get("cmdline") or []
            if name in names or exe in names or (
                    cmd and os.path.basename(cmd[0]) in names) or FLATPAK_ID in " ".join(cmd):
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def script_source_path() -> Path:
    return Path(__file__).resolve().parent / SCRIPT_NAME


def obs_path(p: Path | str) -> str:
    """OBS stores paths with forward slashes on every platform."""
    return Path(p).as_posix()


# --------------------------------------------------------------------------
# a line-preserving INI editor (OBS's format: no spaces around '=')
# --------------------------------------------------------------------------
def ini_get(text: str, section: str, key: str) -> str | None:
    current = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            current = s[1:-1]
        elif current == section and "=" in s and s.split("=", 1)[0].strip() == key:
            return s.split("=", 1)[1].strip()
    return None


def ini_set(text: str, section: str, key: str, value: str | None) -> str:
    """Set (or with None, remove) one key, leaving every other line as it was."""
    lines = text.splitlines()
    start = end = None
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            if start is not None and end is None:
                end = i
            if s[1:-1] == section and start is None:
                start = i
    if start is not None and end is None:
        end = len(lines)
    if start is None:
        if value is None:
            return text
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{section}]", f"{key}={value}"]
        return "\n".join(lines) + "\n"
    assert end is not None
    for i in range(start + 1, end):
        s = lines[i].strip()
        if "=" in s and s.split("=", 1)[0].strip() == key:
            if value is None:
                del lines[i]
                end -= 1
                if not any(ln.strip() for ln in lines[start + 1:end]):
                    # the section is empty now: drop its header (and the blank
                    # line before it) so an undo gives back the original file
                    del lines[start:end]
                    if start > 0 and not lines[start - 1].strip():
                        del lines[start - 1]
                if not lines:
                    return ""
            else:
                lines[i] = f"{key}={value}"
            return "\n".join(lines) + "\n"
    if value is not None:
        # after the section's last key, not after its trailing blank lines
        j = end
        while j > start + 1 and not lines[j - 1].strip():
            j -= 1
        lines.insert(j, f"{key}={value}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# the plan: every change is computed first, shown, then applied
# --------------------------------------------------------------------------
@dataclass
class Change:
    path: Path
    before: str | None        # None: the file does not exist yet
    after: str | None         # None: delete the file
    what: list[str]
    secret: bool = False      # holds the password: never shown as a diff
    obs_file: bool = True     # OBS's own file: back it up first
    mode: int | None = None


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    password_shown: str | None = None  # a newly generated password, to show once

    def add(self, ch: Change) -> None:
        if ch.before != ch.after:
            self.changes.append(ch)


def _read(p: Path) -> str | None:
    try:
        return p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None


def _json_dump(d: Any) -> str:
    return json.dumps(d, indent=4, ensure_ascii=False) + "\n"


def _collections(cfg_dir: Path) -> dict[str, Path]:
    """Scene collection display name -> file."""
    out: dict[str, Path] = {}
    for p in sorted((cfg_dir / "basic" / "scenes").glob("*.json")):
        try:
            name = json.loads(p.read_text(encoding="utf-8-sig")).get("name") or p.stem
        except (OSError, ValueError):
            continue
        out[str(name)] = p
    return out


def choose_collection(cfg_dir: Path, wanted: str | None, global_ini: str) -> tuple[str, Path, bool]:
    """(name, file, is_new). --collection, else OBS's current one, else the only one."""
    cols = _collections(cfg_dir)
    if wanted:
        for name, p in cols.items():
            if wanted in (name, p.stem):
                return name, p, False
        raise SystemExit(f"no scene collection named {wanted!r} in {cfg_dir / 'basic' / 'scenes'}"
                         f" (found: {', '.join(cols) or 'none'})")
    cur_file = ini_get(global_ini, "Basic", "SceneCollectionFile")
    if cur_file and (cfg_dir / "basic" / "scenes" / f"{cur_file}.json").is_file():
        p = cfg_dir / "basic" / "scenes" / f"{cur_file}.json"
        for name, q in cols.items():
            if q == p:
                return name, p, False
    if len(cols) >= 1:
        name = next(iter(cols))
        return name, cols[name], False
    return "Untitled", cfg_dir / "basic" / "scenes" / "Untitled.json", True


def _new_collection(name: str) -> dict[str, Any]:
    return {"name": name, "current_scene": "Scene", "current_program_scene": "Scene",
            "scene_order": [{"name": "Scene"}], "groups": [], "quick_transitions": [],
            "transitions": [], "current_transition": "Fade", "transition_duration": 300,
            "sources": [{"id": "scene", "versioned_id": "scene", "name": "Scene",
                         "enabled": True, "settings": {"items": [], "id_counter": 0,
                                                       "custom_size": False}}],
            "modules": {"scripts-tool": []}}


def _is_our_script(entry: dict[str, Any]) -> bool:
    return os.path.basename(str(entry.get("path", ""))).lower() == SCRIPT_NAME


def _guess_camera(col: dict[str, Any]) -> str | None:
    for kind in CAMERA_KINDS:
        for s in col.get("sources", []):
            if s.get("id") == kind:
                return str(s.get("name"))
    return None


def text_source_kind(platform: str | None = None) -> str:
    from obs_merlb.overlay.native import default_text_kind

    return default_text_kind(platform)


def _overlay_source(mode: str, url: str, canvas: tuple[int, int],
                    platform: str | None = None) -> dict[str, Any]:
    if mode == "browser":
        return {"id": "browser_source", "versioned_id": "browser_source", "name": OVERLAY_BROWSER,
                "enabled": True, "private_settings": {MARK: True},
                "settings": {"url": url, "is_local_file": False, "width": canvas[0],
                             "height": canvas[1], "fps_custom": False, "reroute_audio": False,
                             "shutdown": False, "restart_when_active": False, "css":
                             "body { background-color: rgba(0, 0, 0, 0); margin: 0; }"}}
    from obs_merlb.overlay.native import text_source_settings

    kind = text_source_kind(platform)
    # The same look as the source the worker or the panel creates.
    return {"id": kind, "versioned_id": kind, "name": OVERLAY_TEXT, "enabled": True,
            "private_settings": {MARK: True}, "settings": text_source_settings(kind)}


def _scene_item(name: str, item_id: int, pos: tuple[float, float]) -> dict[str, Any]:
    return {"name": name, "id": item_id, "visible": True, "locked": False, "rot": 0.0,
            "pos": {"x": pos[0], "y": pos[1]}, "scale": {"x": 1.0, "y": 1.0}, "align": 5,
            "bounds_type": 0, "bounds_align": 0, "bounds": {"x": 0.0, "y": 0.0},
            "crop_left": 0, "crop_top": 0, "crop_right": 0, "crop_bottom": 0,
            "private_settings": {MARK: True}}


def _canvas(cfg_dir: Path, global_ini: str) -> tuple[int, int]:
    prof = ini_get(global_ini, "Basic", "ProfileDir")
    if prof:
        text = _read(cfg_dir / "basic" / "profiles" / prof / "basic.ini") or ""
        try:
            return int(ini_get(text, "Video", "BaseCX") or 1920), int(
                ini_get(text, "Video", "BaseCY") or 1080)
        except ValueError:
            pass
    return 1920, 1080


def _browser_plugin_present() -> bool | None:
    """Whether OBS here has a browser source (Debian's obs-studio does not); None: unknown."""
    if not sys.platform.startswith("linux"):
        return None
    roots = ["/usr/lib/obs-plugins", "/usr/lib/x86_64-linux-gnu/obs-plugins",
             "/usr/lib/aarch64-linux-gnu/obs-plugins", "/usr/local/lib/obs-plugins",
             "/usr/lib64/obs-plugins"]
    if not any(os.path.isdir(r) for r in roots):
        return None
    return any(os.path.exists(os.path.join(r, "obs-browser.so")) for r in roots)


def manifest_path(config_file: Path) -> Path:
    return config_file.parent / "install-manifest.json"


def plan_install(args: argparse.Namespace, cfg_dir: Path, config_file: Path,
                 gen_password: Callable[[], str] = lambda: secrets.token_urlsafe(18)) -> Plan:
    plan = Plan()
    manifest_file = manifest_path(config_file)
    old_manifest_text = _read(manifest_file)
    manifest: dict[str, Any] = json.loads(old_manifest_text) if old_manifest_text else {}
    manifest.setdefault("v", 1)
    manifest["obs_config"] = obs_path(cfg_dir)

    # 1. obs-websocket --------------------------------------------------
    gpath = cfg_dir / "global.ini"
    g_before = _read(gpath)
    g = g_before or ""
    keys = ("ServerEnabled", "ServerPort", "AuthRequired", "ServerPassword", "FirstLoad")
    current = {k: ini_get(g, "OBSWebSocket", k) for k in keys}
    enabled = (current["ServerEnabled"] or "").lower() == "true"
    auth = (current["AuthRequired"] or "").lower() == "true"
    if enabled and auth and current["ServerPassword"]:
        password = current["ServerPassword"]
        port = int(current["ServerPort"] or DEFAULT_PORT)
        plan.notes.append(f"obs-websocket is already enabled with a password (port {port}); kept")
    else:
        manifest.setdefault("websocket_before", current)
        password = current["ServerPassword"] if (current["ServerPassword"] and auth) else None
        password = password or gen_password()
        port = int(args.port or current["ServerPort"] or DEFAULT_PORT)
        for k, v in (("ServerEnabled", "true"), ("ServerPort", str(port)),
                     ("AuthRequired", "true"), ("ServerPassword", password),
                     ("FirstLoad", "false"), ("AlertsEnabled", None)):
            if v is not None:
                g = ini_set(g, "OBSWebSocket", k, v)
        plan.password_shown = password if password != current["ServerPassword"] else None
    # OBS 30+ keeps obs-websocket's settings in its own JSON once migrated.
    jpath = cfg_dir / "plugin_config" / "obs-websocket" / "config.json"
    j_before = _read(jpath)
    if j_before is not None:
        try:
            jd = json.loads(j_before)
        except ValueError:
            jd = {}
        manifest.setdefault("websocket_json_before", {k: jd.get(k) for k in (
            "server_enabled", "server_port", "auth_required", "server_password", "first_load")})
        jd2 = dict(jd, server_enabled=True, server_port=port, auth_required=True,
                   server_password=password, first_load=False)
        if jd2 != jd:
            plan.add(Change(jpath, j_before, _json_dump(jd2),
                            ["obs-websocket (OBS 30+): enable, password set"], secret=True))

    # 2. scene collection ------------------------------------------------
    name, cpath, is_new = choose_collection(cfg_dir, args.collection, g)
    c_before = _read(cpath)
    col = json.loads(c_before) if c_before else _new_collection(name)
    col_orig = copy.deepcopy(col)
    what: list[str] = []
    if is_new:
        what.append(f"create scene collection {name!r} (OBS has none yet)")
        g = ini_set(g, "Basic", "SceneCollection", name)
        g = ini_set(g, "Basic", "SceneCollectionFile", cpath.stem)
    scripts = col.setdefault("modules", {}).setdefault("scripts-tool", [])
    ours = [e for e in scripts if _is_our_script(e)]
    entry = ours[0] if ours else {"path": "", "settings": {}}
    for extra in ours[1:]:
        scripts.remove(extra)
    if not ours:
        scripts.append(entry)
        what.append(f"add the script {obs_path(args.script)}")
    entry["path"] = obs_path(args.script)
    st = entry.setdefault("settings", {})
    st["worker_python"] = obs_path(args.python)
    st["obs_config_dir"] = obs_path(cfg_dir)
    st["merlb_config"] = obs_path(config_file)
    if args.camera:
        st["camera_source"] = args.camera
    elif not st.get("camera_source"):
        cam = _guess_camera(col)
        if cam:
            st["camera_source"] = cam
            what.append(f"camera source: {cam!r} (change it in Tools > Scripts)")
    if args.add_overlay:
        st["overlay_mode"] = args.add_overlay
        if args.add_overlay == "text":
            st["overlay_text_source"] = OVERLAY_TEXT
        what += _plan_overlay(col, args, _canvas(cfg_dir, g), plan)
    if col != col_orig or is_new:
        what.append(f"script settings: worker Python {obs_path(args.python)}, OBS config folder, "
                    "config file")
        plan.add(Change(cpath, c_before, _json_dump(col), what))
    if g != (g_before or ""):
        gwhat = []
        if ini_get(g, "OBSWebSocket", "ServerPassword") != current["ServerPassword"] or not enabled:
            gwhat.append(f"obs-websocket: enable on port {port} with a password")
        if is_new:
            gwhat.append(f"make {name!r} the current scene collection")
        plan.add(Change(gpath, g_before, g, gwhat, secret=True))

    # 3. the project's config ---------------------------------------------
    cfg = merlb_config.read_config(config_file)
    obs_section = dict(cfg.get("obs", {})) if isinstance(cfg.get("obs"), dict) else {}
    new_obs = dict(obs_section, host=DEFAULT_HOST, port=port, password=password,
                   config_dir=obs_path(cfg_dir), collection=name)
    if new_obs != obs_section:
        cfg2 = dict(cfg, obs=new_obs)
        import tomli_w
        plan.add(Change(config_file, _read(config_file),
                        tomli_w.dumps(merlb_config._drop_none(cfg2)),
                        ["[obs] host, port, password (user-only file)"], secret=True,
                        obs_file=False, mode=0o600))

    manifest["collection_file"] = obs_path(cpath)
    manifest["collection_created"] = manifest.get("collection_created") or is_new
    manifest_text = _json_dump(manifest)
    if plan.changes and manifest_text != old_manifest_text:
        plan.add(Change(manifest_file, old_manifest_text, manifest_text,
                        ["what to undo on --uninstall"], obs_file=False, mode=0o600))
    return plan


def _plan_overlay(col: dict[str, Any], args: argparse.Namespace, canvas: tuple[int, int],
                  plan: Plan) -> list[str]:
    mode = args.add_overlay
    src_name = OVERLAY_BROWSER if mode == "browser" else OVERLAY_TEXT
    local = target_platform(args) == sys.platform   # the plugin check looks at this machine's OBS
    if mode == "browser" and local and _browser_plugin_present() is False:
        plan.notes.append("this OBS has no browser source (Debian's obs-studio ships none); "
                          "the overlay will show as missing: use --add-overlay text instead")
    scene_name = args.scene or col.get("current_scene") or "Scene"
    scenes = {s.get("name"): s for s in col.get("sources", []) if s.get("id") == "scene"}
    if scene_name not in scenes:
        raise SystemExit(f"no scene named {scene_name!r} in this collection "
                         f"(scenes: {', '.join(map(str, scenes)) or 'none'})")
    what = []
    names = {s.get("name") for s in col.get("sources", [])}
    if src_name not in names:
        col["sources"].append(_overlay_source(mode, args.overlay_url, canvas, target_platform(args)))
        what.append(f"add source {src_name!r}")
    elif mode == "browser":
        for s in col["sources"]:
            if s.get("name") == src_name and s.get("settings", {}).get("url") != args.overlay_url:
                s["settings"]["url"] = args.overlay_url
                what.append(f"set {src_name!r} URL to {args.overlay_url}")
    scene = scenes[scene_name]
    items = scene.setdefault("settings", {}).setdefault("items", [])
    if not any(i.get("name") == src_name for i in items):
        next_id = max([int(scene["settings"].get("id_counter", 0))]
                      + [int(i.get("id", 0)) for i in items]) + 1
        pos = (0.0, 0.0) if mode == "browser" else (24.0, 24.0)
        # OBS draws item 0 at the bottom: the overlay goes last, on top.
        items.append(_scene_item(src_name, next_id, pos))
        scene["settings"]["id_counter"] = next_id
        what.append(f"add {src_name!r} to scene {scene_name!r}")
    return what


def _made_by_us(source: dict[str, Any]) -> bool:
    """Marked by this installer, or one of the sources the worker or the panel
    make through obs-websocket (which cannot mark a source): known by its
    default name and the kind made under that name."""
    from obs_merlb.overlay.native import IMAGE_KIND, IMAGE_SOURCE, default_text_kind

    if (source.get("private_settings") or {}).get(MARK):
        return True
    text_kinds = {default_text_kind(p) for p in ("linux", "win32")}
    kinds = {OVERLAY_BROWSER: {"browser_source"}, IMAGE_SOURCE: {IMAGE_KIND},
             # OBS saves the unversioned id beside the versioned one
             OVERLAY_TEXT: text_kinds | {k.removesuffix("_v2") for k in text_kinds}}
    made = kinds.get(str(source.get("name")), set())
    return bool(made & {source.get("id"), source.get("versioned_id")})


def plan_uninstall(cfg_dir: Path, config_file: Path) -> Plan:
    plan = Plan()
    manifest_file = manifest_path(config_file)
    mtext = _read(manifest_file)
    manifest = json.loads(mtext) if mtext else {}
    gpath = cfg_dir / "global.ini"
    g_before = _read(gpath)
    g = g_before or ""

    # scene collections: every one of them may carry the script
    for name, cpath in _collections(cfg_dir).items():
        before = _read(cpath) or ""
        col = json.loads(before)
        orig = copy.deepcopy(col)
        what = []
        scripts = col.get("modules", {}).get("scripts-tool", [])
        kept = [e for e in scripts if not _is_our_script(e)]
        if len(kept) != len(scripts):
            col["modules"]["scripts-tool"] = kept
            what.append("remove the obs-merlb script")
        ours = {s.get("name") for s in col.get("sources", []) if _made_by_us(s)}
        if ours:
            col["sources"] = [s for s in col["sources"] if s.get("name") not in ours]
            for s in col["sources"] + col.get("groups", []):
                if s.get("id") in ("scene", "group"):
                    items = s.get("settings", {}).get("items", [])
                    s["settings"]["items"] = [i for i in items if i.get("name") not in ours]
            what.append("remove " + ", ".join(sorted(map(repr, ours))))
        if col != orig:
            plan.add(Change(cpath, before, _json_dump(col), what))

    before_ws = manifest.get("websocket_before")
    if before_ws is not None:
        for k in ("ServerEnabled", "ServerPort", "AuthRequired", "ServerPassword", "FirstLoad"):
            g = ini_set(g, "OBSWebSocket", k, before_ws.get(k))
        if g != (g_before or ""):
            plan.add(Change(gpath, g_before, g, ["obs-websocket: back to how it was"], secret=True))
    else:
        plan.notes.append("obs-websocket settings were not changed by the installer; left as they are")
    jbefore = manifest.get("websocket_json_before")
    jpath = cfg_dir / "plugin_config" / "obs-websocket" / "config.json"
    jtext = _read(jpath)
    if jbefore is not None and jtext is not None:
        jd = json.loads(jtext)
        jd2 = dict(jd, **{k: v for k, v in jbefore.items() if v is not None})
        if jd2 != jd:
            plan.add(Change(jpath, jtext, _json_dump(jd2), ["obs-websocket (OBS 30+): restored"],
                            secret=True))

    cfg = merlb_config.read_config(config_file)
    if "obs" in cfg:
        cfg2 = {k: v for k, v in cfg.items() if k != "obs"}
        import tomli_w
        plan.add(Change(config_file, _read(config_file),
                        tomli_w.dumps(merlb_config._drop_none(cfg2)) if cfg2 else None,
                        ["remove [obs] (the stored password)"], secret=True, obs_file=False,
                        mode=0o600))
    if mtext is not None:
        plan.add(Change(manifest_file, mtext, None, ["remove the install manifest"],
                        obs_file=False))
    return plan


# --------------------------------------------------------------------------
# showing and applying
# --------------------------------------------------------------------------
def describe(plan: Plan, out: Callable[[str], None] = print) -> None:
    if not plan.changes:
        out("Nothing to change: obs-merlb is already set up this way.")
    for ch in plan.changes:
        verb = "create" if ch.before is None else ("delete" if ch.after is None else "edit")
        out(f"- {verb} {ch.path}")
        for w in ch.what:
            out(f"    {w}")
        if ch.before is not None and ch.after is not None and ch.obs_file and not ch.secret:
            out(f"    (backup first: {ch.path.name}.bak-<timestamp>)")
        elif ch.before is not None and ch.obs_file:
            out(f"    (backup first: {ch.path.name}.bak-<timestamp>; contents not shown: "
                f"they hold the password)")
    for n in plan.notes:
        out(f"note: {n}")


def apply(plan: Plan, stamp: str | None = None) -> list[Path]:
    """Write every change (backups of OBS files first). Returns the backups made."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    backups = []
    for ch in plan.changes:
        if ch.obs_file and ch.path.exists():
            b = ch.path.with_name(f"{ch.path.name}.bak-{stamp}")
            shutil.copy2(ch.path, b)
            if ch.secret:
                os.chmod(b, 0o600)
            backups.append(b)
        if ch.after is None:
            ch.path.unlink(missing_ok=True)
            continue
        ch.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ch.path.with_name(ch.path.name + ".merlb-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ch.mode or 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(ch.after)
        if ch.mode is not None:
            os.chmod(tmp, ch.mode)
        elif ch.path.exists():
            shutil.copymode(ch.path, tmp)
        os.replace(tmp, ch.path)
    return backups


def running_instructions(args: argparse.Namespace, cfg_dir: Path) -> str:
    return "\n".join([
        "OBS Studio is running. It rewrites its settings when it closes, so this installer",
        "does not edit them now. Either close OBS and run this again, or do it by hand:",
        "  1. Tools > WebSocket Server Settings: tick 'Enable WebSocket server',",
        "     tick 'Enable Authentication', click 'Show Connect Info', copy the password,",
        "     then OK. Store it for the worker:  merlb install-obs --set-password",
        "  2. Tools > Scripts > '+' and choose:",
        f"       {args.script}",
        "  3. In the script's settings set 'Worker Python' to:",
        f"       {args.python}",
        "     pick your camera source, then press Start.",
        f"(OBS config folder: {cfg_dir})",
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--obs-config", help="OBS's config folder, or a portable OBS's own "
                        "folder (default: found for this platform: %%APPDATA%%/obs-studio or a "
                        "portable OBS in %%ProgramFiles%%/obs-studio, ~/Library/Application "
                        "Support/obs-studio, ~/.config/obs-studio or the Flatpak's)")
    parser.add_argument("--platform", choices=sorted(PLATFORMS),
                        help="look for OBS where it keeps its config on this OS (default: this "
                        "machine's; with --dry-run, to check another OS's layout)")
    parser.add_argument("--collection", help="scene collection to add the script to "
                        "(default: OBS's current one)")
    parser.add_argument("--python", default=sys.executable,
                        help="Python that runs the worker (default: this one)")
    parser.add_argument("--script", default=str(script_source_path()),
                        help="path of obs_script.py OBS should load")
    parser.add_argument("--camera", help="camera source name to preselect")
    parser.add_argument("--port", type=whole_number(1, 65535), help=f"obs-websocket port when enabling it "
                        f"(default: OBS's, else {DEFAULT_PORT})")
    parser.add_argument("--add-overlay", choices=["browser", "text"],
                        help="also add the overlay to a scene: browser source or native text")
    parser.add_argument("--scene", help="scene for --add-overlay (default: the current scene)")
    parser.add_argument("--overlay-url", default=DEFAULT_OVERLAY_URL,
                        help="URL of the overlay page for the browser source")
    parser.add_argument("--config", help="the project's config file (default: "
                        "platformdirs user_config_dir('obs-merlb')/config.toml)")
    parser.add_argument("--dry-run", action="store_true", help="show every change, make none")
    parser.add_argument("--uninstall", action="store_true", help="undo what install did")
    parser.add_argument("--set-password", action="store_true",
                        help="ask for the obs-websocket password and store it (for when OBS "
                        "was running and you enabled the server by hand)")
    parser.add_argument("--yes", "-y", action="store_true", help="no questions")
    parser.add_argument("--force", action="store_true",
                        help="edit OBS's files even though OBS seems to be running")


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes or args.dry_run:
        return True
    if not sys.stdin.isatty():
        print("not a terminal: re-run with --yes to apply", file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def target_platform(args: argparse.Namespace) -> str:
    """The sys.platform value of the OS whose OBS is being set up (--platform, else this one)."""
    name = getattr(args, "platform", None)
    return PLATFORMS[name] if name else sys.platform


def run(args: argparse.Namespace) -> int:
    cfg_dir = find_obs_config(args.obs_config, platform=target_platform(args))
    if cfg_dir.exists() and not cfg_dir.is_dir():
        where = f"--obs-config {args.obs_config}" if args.obs_config else f"OBS's config folder {cfg_dir}"
        return refuse("install-obs", f"{where}: is a file; give OBS's config folder "
                                     "(where global.ini or user.ini is) or a portable OBS's folder")
    config_file = Path(args.config).expanduser() if args.config else merlb_config.config_path()
    kind = " (Flatpak)" if is_flatpak_config(cfg_dir) else (
        " (portable OBS)" if is_portable_config(cfg_dir) else "")
    print(f"OBS config folder: {cfg_dir}{kind}")
    if is_flatpak_config(cfg_dir) and not args.uninstall:
        print("note: Flatpak OBS runs the worker through `flatpak-spawn --host`; allow it with\n"
              f"  flatpak override --user --talk-name=org.freedesktop.Flatpak {FLATPAK_ID}")

    try:
        merlb_config.read_config(config_file)   # every path below writes it: never over one it cannot read
    except merlb_config.ConfigError as e:
        return refuse("install-obs", str(e))
    if args.set_password:
        import getpass
        pw = getpass.getpass("obs-websocket password (Tools > WebSocket Server Settings > "
                             "Show Connect Info): ")
        port = input(f"port [{DEFAULT_PORT}]: ").strip() or str(DEFAULT_PORT)
        merlb_config.update_section("obs", {"host": DEFAULT_HOST, "port": int(port), "password": pw},
                                    config_file)
        print(f"stored in {config_file} (readable only by you)")
        return 0

    running = obs_running()
    if running and not args.force and not args.dry_run:
        print(running_instructions(args, cfg_dir))
        return 3
    if running and args.dry_run:
        print("note: OBS is running; a real run would refuse to edit its files until it is closed")

    if not args.uninstall and not Path(args.script).is_file():
        return refuse("install-obs", f"--script {args.script}: the script is not there")
    if not args.uninstall and not (Path(args.script).parent / SUPERVISOR_NAME).is_file():
        return refuse("install-obs", f"{SUPERVISOR_NAME} is not beside {args.script}; OBS loads it from the "
                                     "script's folder: pass --script inside an installed obs_merlb package")
    plan = plan_uninstall(cfg_dir, config_file) if args.uninstall else plan_install(
        args, cfg_dir, config_file)
    print("Dry run: nothing is written." if args.dry_run else "Changes:")
    describe(plan)
    if args.dry_run or not plan.changes:
        return 0
    if not _confirm(args, "Apply these changes?"):
        print("nothing changed")
        return 1
    backups = apply(plan)
    for b in backups:
        print(f"backup: {b}")
    if plan.password_shown:
        # Shown once so the streamer can give it to other tools; it is stored
        # (user-only) in the config file and OBS, and never logged.
        print(f"obs-websocket password (generated; stored in {config_file}): "
              f"{plan.password_shown}")
    if args.uninstall:
        print("obs-merlb removed from OBS.")
    else:
        print("Done. Start OBS: the script starts the worker (Tools > Scripts shows its status).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install_obs_script.py",
                                     description="install the obs-merlb script into OBS Studio")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
