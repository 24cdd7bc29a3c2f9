"""obs-merlb: the script OBS Studio loads (Tools > Scripts).

Standard library and ``obspython`` only, so it runs with whatever Python
OBS embeds. It never imports the rest of obs_merlb: all the work happens in
a worker process (``<python> -m obs_merlb live``) that the supervisor in
``obs_supervisor.py`` starts, watches, restarts with backoff and stops (the
worker's command line, stdin protocol and status file are described there).

Why two files, and how the second one is found
----------------------------------------------
OBS loads a Python script by path: it appends the script's folder to
``sys.path`` and imports the file as a top-level module named after it
(``obs_script``), so a sibling module is importable, but OBS's Python does
not have obs_merlb installed. This file keeps what only OBS can call (the
``script_*`` entry points, properties, hotkeys, frontend events); the
supervisor, which needs no OBS and is tested without it, lives beside it in
``obs_supervisor.py`` (stdlib only too). Inside OBS that sibling is executed
from this file's folder by path, not imported by name: a module of the same
name earlier on ``sys.path`` cannot shadow it, nothing of the obs_merlb
package (torch, numpy) is imported into OBS, and OBS's "reload script"
(which reloads only this module) runs the sibling's current code too, as it
did when everything was one file. Imported as ``obs_merlb.obs_script``
(tests, tools) it is a plain relative import.

Threads, and why
----------------
OBS calls a script on three threads: the UI thread (properties, buttons,
frontend events), the hotkey thread, and the graphics thread (``timer_add``
callbacks are OBS tick callbacks). A slow call on any of them freezes the
UI or drops rendered frames. So every callback here only posts to the
supervisor and returns; its own thread does everything that can take time.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from typing import Any, Callable, Iterable

try:
    import obspython as obs  # type: ignore[import-not-found]
except ImportError:  # imported outside OBS: the glue's pure parts, for tests
    obs = None


def _load_sibling(name: str) -> types.ModuleType:
    """Execute ``<this folder>/<name>.py`` as a fresh module (see the docstring for why)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = importlib.util.spec_from_file_location(f"obs_merlb_script_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"obs-merlb: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __package__:
    from . import obs_supervisor as supervision
else:
    supervision = _load_sibling("obs_supervisor")

Supervisor = supervision.Supervisor
WorkerConfig = supervision.WorkerConfig
TEXT_SOURCE = supervision.TEXT_SOURCE
IMAGE_SOURCE = supervision.IMAGE_SOURCE
DEFAULT_TAGS = ["hype", "funny", "frustrated", "calm"]
HOTKEY_PREFIX = "merlb.tag."
# The camera list's first entry: with none, OBS shows the list's first
# source as chosen and the worker analysed whatever that was.
CHOOSE = "(choose)"


# --------------------------------------------------------------------------
# OBS glue
# --------------------------------------------------------------------------
class _State:
    settings: Any = None
    supervisor: Supervisor | None = None
    hotkeys: dict[str, int] = {}
    hotkey_callbacks: dict[str, Callable[[bool], None]] = {}
    recording_path: str | None = None
    # source renames seen on any thread, written into the settings only on
    # the UI thread (obs_data is not safe to edit while the dialog reads it)
    renames: dict[str, str] = {}
    signals_connected: bool = False


G = _State()


def _log(msg: str) -> None:
    if obs is not None:
        # blog, not script_log: script_log from the supervisor thread has no
        # script context and shows as "[Unknown Script]".
        obs.blog(obs.LOG_INFO, f"[obs-merlb] {msg}")
    else:
        print(f"[obs-merlb] {msg}", file=sys.stderr)


def _obs_major() -> int:
    return int(obs.obs_get_version()) >> 24 if obs is not None else 0


def _apply_renames(settings: Any) -> None:
    """UI thread: write source renames seen since into the settings."""
    if not G.renames:
        return
    for key in ("camera_source", "game_source"):
        name = obs.obs_data_get_string(settings, key)
        seen = set()
        while name in G.renames and name not in seen:  # A->B->C in one go
            seen.add(name)
            name = G.renames[name]
        if seen:
            obs.obs_data_set_string(settings, key, name)
    G.renames.clear()


def _on_source_rename(cd: Any) -> None:
    """Follow the camera/game source when the streamer renames it."""
    prev = obs.calldata_string(cd, "prev_name")
    new = obs.calldata_string(cd, "new_name")
    if not prev or not new or G.supervisor is None:
        return
    G.renames[prev] = new
    cfg = G.supervisor.config
    if prev in (cfg.camera, cfg.game):
        changed = WorkerConfig(**{**cfg.__dict__})
        if cfg.camera == prev:
            changed.camera = new
        if cfg.game == prev:
            changed.game = new
        _log(f"source '{prev}' renamed to '{new}': following it")
        G.supervisor.configure(changed)


def _config_from(settings: Any) -> WorkerConfig:
    _apply_renames(settings)
    g = obs.obs_data_get_string
    kind = g(settings, "device_kind") or "cpu"
    device = "cpu" if kind == "cpu" else f"cuda:{obs.obs_data_get_int(settings, 'device_id')}"
    return WorkerConfig(
        python=g(settings, "worker_python"), camera=g(settings, "camera_source"),
        game=g(settings, "game_source"), mic=g(settings, "mic") or "default", device=device,
        rate=obs.obs_data_get_double(settings, "rate") or 8.0,
        overlay=g(settings, "overlay_mode") or "browser",
        text_source=g(settings, "overlay_text_source") or TEXT_SOURCE,
        data_dir=g(settings, "data_dir"), obs_config_dir=g(settings, "obs_config_dir"),
        merlb_config=g(settings, "merlb_config"), obs_major=_obs_major(),
        model=g(settings, "model_dir").strip(), head=g(settings, "overlay_head") or "emotion")


def _tags(settings: Any) -> list[str]:
    arr = obs.obs_data_get_array(settings, "tags")
    out: list[str] = []
    for i in range(obs.obs_data_array_count(arr)):
        item = obs.obs_data_array_item(arr, i)
        name = obs.obs_data_get_string(item, "value").strip()
        obs.obs_data_release(item)
        if name and name not in out:
            out.append(name)
    obs.obs_data_array_release(arr)
    return out


def _register_hotkeys(settings: Any) -> None:
    """One frontend hotkey per tag; bindings persist in the script's settings."""
    wanted = _tags(settings)
    for name in list(G.hotkeys):
        if name not in wanted:
            obs.obs_hotkey_unregister(G.hotkeys.pop(name))
            G.hotkey_callbacks.pop(name, None)
    for name in wanted:
        if name in G.hotkeys:
            continue

        def pressed(is_pressed: bool, tag: str = name) -> None:
            if is_pressed and G.supervisor is not None:
                G.supervisor.send({"cmd": "tag", "name": tag, "source": "hotkey",
                                   "wall": time.time()})

        G.hotkey_callbacks[name] = pressed  # keep the callable alive while OBS holds it
        hid = obs.obs_hotkey_register_frontend(HOTKEY_PREFIX + name, f"MERLB: tag '{name}'",
                                               pressed)
        G.hotkeys[name] = hid
        arr = obs.obs_data_get_array(settings, "hotkey." + name)
        obs.obs_hotkey_load(hid, arr)
        obs.obs_data_array_release(arr)


def _recording_path() -> str | None:
    out = obs.obs_frontend_get_recording_output()
    if out is None:
        return None
    s = obs.obs_output_get_settings(out)
    path = obs.obs_data_get_string(s, "path") or obs.obs_data_get_string(s, "url")
    obs.obs_data_release(s)
    obs.obs_output_release(out)
    return path or None


def _blank_overlay(settings: Any) -> None:
    """OBS saves a source's settings, and saves the collection before scripts
    unload: the last label would reappear at the next start. Blank it once the
    collection's sources exist (scripts load before them)."""
    text = obs.obs_data_get_string(settings, "overlay_text_source") or TEXT_SOURCE
    for name, key in ((text, "text"), (IMAGE_SOURCE, "file")):
        src = obs.obs_get_source_by_name(name)
        if src is None:
            continue
        data = obs.obs_data_create()
        obs.obs_data_set_string(data, key, "")
        obs.obs_source_update(src, data)
        obs.obs_data_release(data)
        obs.obs_source_release(src)


def _on_frontend_event(event: int) -> None:
    if event in (obs.OBS_FRONTEND_EVENT_FINISHED_LOADING,
                 obs.OBS_FRONTEND_EVENT_SCENE_COLLECTION_CHANGED) and G.settings is not None:
        _blank_overlay(G.settings)
    sup = G.supervisor
    if sup is None:
        return
    now = time.time()
    if event == obs.OBS_FRONTEND_EVENT_RECORDING_STARTED:
        G.recording_path = _recording_path()
        sup.send({"cmd": "session", "event": "open", "kind": "recording",
                  "recording": G.recording_path, "wall": now})
    elif event == obs.OBS_FRONTEND_EVENT_RECORDING_STOPPED:
        path = obs.obs_frontend_get_last_recording() or G.recording_path
        sup.send({"cmd": "session", "event": "close", "kind": "recording",
                  "recording": path, "wall": now})
        G.recording_path = None
    elif event == obs.OBS_FRONTEND_EVENT_STREAMING_STARTED:
        sup.send({"cmd": "session", "event": "open", "kind": "streaming",
                  "recording": G.recording_path, "wall": now})
    elif event == obs.OBS_FRONTEND_EVENT_STREAMING_STOPPED:
        sup.send({"cmd": "session", "event": "close", "kind": "streaming",
                  "recording": G.recording_path, "wall": now})
    elif event in (obs.OBS_FRONTEND_EVENT_EXIT, obs.OBS_FRONTEND_EVENT_SCRIPTING_SHUTDOWN):
        sup.shutdown()


def _refresh_status(props: Any = None, prop: Any = None) -> bool:
    """UI thread: copy the status into the settings the properties view reads."""
    if G.settings is not None and G.supervisor is not None:
        _apply_renames(G.settings)
        obs.obs_data_set_string(G.settings, "status_line", G.supervisor.status_line())
    return True


def _start_clicked(props: Any, prop: Any) -> bool:
    if G.supervisor is not None:
        G.supervisor.configure(_config_from(G.settings))
        G.supervisor.start()
    return _refresh_status()


def _stop_clicked(props: Any, prop: Any) -> bool:
    if G.supervisor is not None:
        G.supervisor.stop()
    return _refresh_status()


def source_choices(names: Iterable[str], text_source: str = TEXT_SOURCE) -> list[str]:
    """Video sources a streamer may pick as camera or gameplay: obs-merlb's own left out, sorted."""
    own = supervision.own_sources(text_source)
    return sorted({n for n in names if n and n not in own}, key=str.lower)


def _fill_sources(p_cam: Any, p_game: Any) -> None:
    obs.obs_property_list_clear(p_cam)
    obs.obs_property_list_clear(p_game)
    obs.obs_property_list_add_string(p_cam, CHOOSE, "")
    obs.obs_property_list_add_string(p_game, "(none)", "")
    names: list[str] = []
    sources = obs.obs_enum_sources()
    if sources:
        for s in sources:
            if obs.obs_source_get_output_flags(s) & obs.OBS_SOURCE_VIDEO:
                names.append(obs.obs_source_get_name(s))
        obs.source_list_release(sources)
    text_source = G.supervisor.config.text_source if G.supervisor is not None else TEXT_SOURCE
    for n in source_choices(names, text_source):
        obs.obs_property_list_add_string(p_cam, n, n)
        obs.obs_property_list_add_string(p_game, n, n)


def _refresh_lists(props: Any, prop: Any) -> bool:
    _fill_sources(obs.obs_properties_get(props, "camera_source"),
                  obs.obs_properties_get(props, "game_source"))
    if G.supervisor is not None and G.settings is not None:
        G.supervisor.request_mics(obs.obs_data_get_string(G.settings, "worker_python"))
    return _refresh_status()


# -- the script API OBS calls ---------------------------------------------
def script_description() -> str:
    return ("<b>obs-merlb</b>: recognises your emotions from your camera and microphone "
            "and shows them on stream.<br>Pick your camera, press <i>Start</i>. The analysis "
            "runs in a separate process, never inside OBS.")


def script_defaults(settings: Any) -> None:
    obs.obs_data_set_default_string(settings, "device_kind", "cpu")
    obs.obs_data_set_default_int(settings, "device_id", 0)
    obs.obs_data_set_default_double(settings, "rate", 8.0)
    obs.obs_data_set_default_string(settings, "overlay_mode", "browser")
    obs.obs_data_set_default_string(settings, "overlay_text_source", TEXT_SOURCE)
    obs.obs_data_set_default_string(settings, "overlay_head", "emotion")
    obs.obs_data_set_default_string(settings, "mic", "default")
    obs.obs_data_set_default_bool(settings, "autostart", True)
    obs.obs_data_set_default_string(settings, "status_line", "stopped")
    arr = obs.obs_data_array_create()
    for t in DEFAULT_TAGS:
        item = obs.obs_data_create()
        obs.obs_data_set_string(item, "value", t)
        obs.obs_data_array_push_back(arr, item)
        obs.obs_data_release(item)
    obs.obs_data_set_default_array(settings, "tags", arr)
    obs.obs_data_array_release(arr)


def script_properties() -> Any:
    props = obs.obs_properties_create()
    _refresh_status()
    obs.obs_properties_add_text(props, "status_line", "Status", obs.OBS_TEXT_INFO)
    obs.obs_properties_add_button(props, "start", "Start", _start_clicked)
    obs.obs_properties_add_button(props, "stop", "Stop", _stop_clicked)
    obs.obs_properties_add_button(props, "refresh", "Refresh status and lists", _refresh_lists)
    obs.obs_properties_add_bool(props, "autostart", "Start with OBS")

    p_cam = obs.obs_properties_add_list(props, "camera_source", "Camera source",
                                        obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
    p_game = obs.obs_properties_add_list(props, "game_source", "Gameplay source",
                                         obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
    _fill_sources(p_cam, p_game)

    p_mic = obs.obs_properties_add_list(props, "mic", "Microphone",
                                        obs.OBS_COMBO_TYPE_EDITABLE, obs.OBS_COMBO_FORMAT_STRING)
    obs.obs_property_list_add_string(p_mic, "default", "default")
    obs.obs_property_list_add_string(p_mic, "none (no voice)", "none")
    for m in (G.supervisor.mics if G.supervisor is not None else []):
        obs.obs_property_list_add_string(p_mic, m, m)

    p_dev = obs.obs_properties_add_list(props, "device_kind", "Run the model on",
                                        obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
    obs.obs_property_list_add_string(p_dev, "CPU", "cpu")
    obs.obs_property_list_add_string(p_dev, "GPU (CUDA, falls back to CPU)", "cuda")
    obs.obs_properties_add_int(props, "device_id", "GPU device id", 0, 15, 1)
    obs.obs_properties_add_float_slider(props, "rate", "Analyses per second", 1.0, 15.0, 0.5)

    p_ov = obs.obs_properties_add_list(props, "overlay_mode", "Overlay",
                                       obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
    obs.obs_property_list_add_string(p_ov, "Browser source (web overlay)", "browser")
    obs.obs_property_list_add_string(p_ov, "Native text source", "text")
    obs.obs_property_list_add_string(p_ov, "None", "none")
    obs.obs_properties_add_text(props, "overlay_text_source", "Text source name",
                                obs.OBS_TEXT_DEFAULT)
    # The browser overlay picks its head by URL (?head=user); this is for the text source.
    p_head = obs.obs_properties_add_list(props, "overlay_head", "Text source shows",
                                         obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
    obs.obs_property_list_add_string(p_head, "Emotion", "emotion")
    obs.obs_property_list_add_string(p_head, "Your own classes (personalized model)", "user")
    obs.obs_property_list_add_string(p_head, "Game behaviour (when trained)", "behaviour")

    obs.obs_properties_add_editable_list(props, "tags", "Tag hotkeys (set keys in Settings > "
                                         "Hotkeys)", obs.OBS_EDITABLE_LIST_TYPE_STRINGS, "", "")
    obs.obs_properties_add_path(props, "model_dir", "Model folder (blank: your active "
                                "personalized model, else the shipped one)",
                                obs.OBS_PATH_DIRECTORY, "", "")
    obs.obs_properties_add_path(props, "worker_python", "Worker Python", obs.OBS_PATH_FILE,
                                "", "")
    obs.obs_properties_add_path(props, "data_dir", "Status and log folder",
                                obs.OBS_PATH_DIRECTORY, "", supervision.default_data_dir())
    return props


def script_update(settings: Any) -> None:
    G.settings = settings
    if G.supervisor is None:
        return
    G.supervisor.configure(_config_from(settings))
    _register_hotkeys(settings)


def script_load(settings: Any) -> None:
    G.settings = settings
    G.supervisor = Supervisor(log=_log)
    G.supervisor.configure(_config_from(settings))
    _register_hotkeys(settings)
    obs.obs_frontend_add_event_callback(_on_frontend_event)
    if not G.signals_connected:
        obs.signal_handler_connect(obs.obs_get_signal_handler(), "source_rename", _on_source_rename)
        G.signals_connected = True
    G.supervisor.request_mics(obs.obs_data_get_string(settings, "worker_python"))
    _log(f"obs-merlb script loaded (OBS {obs.obs_get_version_string()}, "
         f"Python {sys.version.split()[0]})")
    if obs.obs_data_get_bool(settings, "autostart"):
        G.supervisor.start()


def script_save(settings: Any) -> None:
    _apply_renames(settings)
    for name, hid in G.hotkeys.items():
        arr = obs.obs_hotkey_save(hid)
        obs.obs_data_set_array(settings, "hotkey." + name, arr)
        obs.obs_data_array_release(arr)


def script_unload() -> None:
    if G.supervisor is not None:
        G.supervisor.shutdown()
        G.supervisor.thread.join(0.05)  # never long: the thread escalates on its own
    # Unregistering here would race OBS's own teardown; OBS drops script
    # hotkeys and event callbacks with the script.
    G.hotkeys.clear()
    G.hotkey_callbacks.clear()
    G.signals_connected = False
    _log("obs-merlb script unloaded")
