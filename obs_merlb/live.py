"""`merlb live`: the command line around the live engine.

Reads the flags (unset ones from config.toml [engine] and [sources], as the
panel saved them), opens the feeds (a file, a camera or OBS screenshots, a
microphone, a game source), starts the overlay server, the session log and
the optional OBS text overlay, and runs obs_merlb/engine.py's `Engine` until
a signal, a `stop` command or the end of stdin (the OBS script went away).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
import time
from typing import Any, Callable

from obs_merlb import __version__
from obs_merlb.capture.camera import CameraSource
from obs_merlb.capture.feeds import FileFeed, SourceFeed
from obs_merlb.capture.file import MediaError
from obs_merlb.capture.mic import MicError, MicSource
from obs_merlb.cli import device_type, port
from obs_merlb.capture.obs_screens import OBSScreenshotSource
from obs_merlb.config import load_config
from obs_merlb.engine import Engine, cap_threads
from obs_merlb.obs_client import (DEFAULT_HOST, DEFAULT_PORT, ObsLink, ObsRequestFailed, ObsUnavailable,
                                  obs_password)
from obs_merlb.overlay.native import IMAGE_SOURCE, OVERLAY_HEADS, TEXT_SOURCE, NativeTextOverlay
from obs_merlb.overlay.server import DEFAULT_PORT as OVERLAY_PORT
from obs_merlb.overlay.server import OverlayServer, OverlayServerError
from obs_merlb.model_check import load_checked
from obs_merlb.session import SessionLog
from obs_merlb.settings import DEFAULT_PROFILE, MAX_RATE_HZ, MIN_RATE_HZ, checked_live_config
from obs_merlb.state import StateConfig, session_event
from obs_merlb.triggers.runner import build_runner

log = logging.getLogger(__name__)

# Settings the panel saves to config.toml [engine]: (flag, config key, default).
# A flag on the command line wins; an unset flag takes the config's value,
# then the default, so a worker the OBS script starts behaves as the panel set it.
ENGINE_SETTINGS: tuple[tuple[str, str, float], ...] = (
    ("rate", "rate", 15.0),
    ("threshold", "threshold", StateConfig.threshold),
    ("smoothing", "smoothing", StateConfig.smoothing),
    ("min-dwell-s", "min_dwell_s", StateConfig.min_dwell_s),
    ("hide-after-s", "hide_after_s", StateConfig.hide_after_s),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--video", help="a video file played in real time as the camera (with its audio)")
    src.add_argument("--camera", type=int, help="camera device index (OpenCV), for use without OBS")
    src.add_argument("--obs-source", help="OBS source to watch as the camera (screenshots over obs-websocket); "
                                          "default: the config file's [sources] camera")
    parser.add_argument("--mic", help="microphone by name, as OBS shows it (sounddevice), 'default' or 'none'; "
                                      "default: the config file's [sources] mic (not with --video)")
    parser.add_argument("--game-source", "--obs-game-source", dest="game_source",
                        help="OBS source with the gameplay (screenshots, a few per second); "
                             "default: the config file's [sources] game (not with --video/--camera)")
    parser.add_argument("--model", help="saved model folder (default: the active personalized model, "
                                        "else assets/model)")
    parser.add_argument("--device", type=device_type(), default="cpu", help="cpu (onnxruntime) or cuda / cuda:N (torch, falls back to CPU)")
    parser.add_argument("--host", default="127.0.0.1", help="overlay server address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=OVERLAY_PORT,
                        help=f"overlay server port (default {OVERLAY_PORT}; 0 = any free port)")
    parser.add_argument("--obs-host", default=DEFAULT_HOST, help="obs-websocket host")
    parser.add_argument("--obs-port", type=port, default=None,
                        help=f"obs-websocket port (default {DEFAULT_PORT}; giving it enables OBS stats and highlights "
                             "with --video/--camera). Password: env MERLB_OBS_PASSWORD or the config file")
    parser.add_argument("--overlay", choices=["browser", "text", "none"], default="browser",
                        help="browser: the overlay page (always served); text: also show the emotion in "
                             "OBS text and image sources (created in the current scene when missing)")
    parser.add_argument("--overlay-text-source", default=TEXT_SOURCE,
                        help=f"OBS text source for --overlay text (default {TEXT_SOURCE!r})")
    parser.add_argument("--overlay-image-source", default=IMAGE_SOURCE,
                        help=f"OBS image source showing the emoji for --overlay text (default {IMAGE_SOURCE!r}); "
                             "'none': emoji in the text instead")
    parser.add_argument("--overlay-head", choices=list(OVERLAY_HEADS), default="emotion",
                        help="which head --overlay text shows: emotion (default), user (the classes of "
                             "a personalized model) or behaviour; emotion when the model has no such head")
    parser.add_argument("--control", choices=["stdin", "none", "auto"], default="auto",
                        help="stdin: read JSON-line commands on stdin, EOF = stop (the OBS script); "
                             "auto: only when stdin is a pipe")
    parser.add_argument("--status-file", help="write a status JSON here about once a second (for the OBS script)")
    parser.add_argument("--sessions-dir", help="where session logs go (default: the user data dir)")
    parser.add_argument("--no-session", action="store_true", help="do not write a session log")
    parser.add_argument("--recording", help="the OBS recording in progress (the OBS script passes it to a "
                                            "restarted worker): its session log is continued")
    parser.add_argument("--no-body", action="store_true", help="skip body pose (saves CPU)")
    parser.add_argument("--loop", action="store_true", help="with --video: replay the file forever")
    parser.add_argument("--no-triggers", action="store_true", help="ignore the config's [[triggers]] rules")
    parser.add_argument("--profile", default=None,
                        help="whose voice baseline to learn and keep (a model with a voice prior adapts to "
                             f"the person; default: config [engine] profile, else {DEFAULT_PROFILE!r})")
    parser.add_argument("--reset-baseline", action="store_true",
                        help="forget the profile's voice baseline and learn the voice afresh")
    for flag, key, default in ENGINE_SETTINGS:
        what = "analysis rate cap in Hz" if key == "rate" else "state setting"
        parser.add_argument(f"--{flag}", dest=key, type=float, default=None,
                            help=f"{what} (default: config [engine] {key}, else {default:g})")


def apply_config_defaults(args: argparse.Namespace, config: dict[str, Any] | None = None) -> list[str]:
    """Fill flags left unset from config.toml [engine] and [sources]; returns problems found.

    [sources] describes the streamer's OBS setup, so it only applies when the
    camera is an OBS source (given or from the config): a --video or --camera
    run is another setup, and a gameplay source or microphone from the
    config would not belong to it.
    """
    if config is None:
        config = load_config()
    problems: list[str] = []
    eng = config.get("engine") if isinstance(config.get("engine"), dict) else {}
    for _flag, key, default in ENGINE_SETTINGS:
        if getattr(args, key, None) is not None:
            continue
        value: float = default
        if key in eng:
            try:
                value = float(eng[key])
            except (TypeError, ValueError):
                problems.append(f"config [engine] {key} = {eng[key]!r} is not a number; using {default:g}")
            if key == "rate" and not MIN_RATE_HZ <= value <= MAX_RATE_HZ:
                # A hand-edited file must not stop the worker (the script would restart it forever).
                problems.append(f"config [engine] rate = {value:g} is outside {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz; "
                                f"using {default:g}")
                value = default
        setattr(args, key, value)
    if getattr(args, "profile", None) is None:
        args.profile = str(eng.get("profile") or DEFAULT_PROFILE)   # checked by checked_live_config
    srcs = config.get("sources") if isinstance(config.get("sources"), dict) else {}
    if args.video is None and args.camera is None:
        if not args.obs_source and srcs.get("camera"):
            args.obs_source = str(srcs["camera"])
        if args.obs_source:
            if args.game_source is None and srcs.get("game"):
                args.game_source = str(srcs["game"])
            if args.mic is None:
                # The panel saves "" for "(no microphone)".
                args.mic = str(srcs["mic"]) if srcs.get("mic") else ("none" if "mic" in srcs else None)
    return problems


def _stdin_is_pipe() -> bool:
    """Only a pipe (the OBS script) means 'EOF = parent gone'; /dev/null or a closed tty does not."""
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _open_feeds(args: argparse.Namespace, obs_kw: dict[str, Any], engine: Engine) -> tuple[Any, Any]:
    """The camera feed (video + audio ring) and the optional game feed."""
    audio = None
    if args.mic and args.mic.lower() != "none":
        try:
            # A missing or unplugged device is retried inside MicSource; only a
            # machine without PortAudio fails here, and then we run without voice.
            audio = MicSource(None if args.mic.lower() == "default" else args.mic)
        except MicError as e:
            engine.error(f"{e}; running without voice", "microphone")
    if args.video:
        feed: Any = FileFeed(args.video, paced=True, loop=args.loop)
        if audio is not None:
            feed.audio_ring = audio
    elif args.camera is not None:
        feed = SourceFeed(CameraSource(args.camera), audio)
    else:
        feed = SourceFeed(OBSScreenshotSource(args.obs_source, rate_hz=min(args.rate, 15.0), **obs_kw), audio)
    scene = None
    if args.game_source:
        # One thumbnail per step is all the model uses: 4 Hz, 160 px.
        scene = SourceFeed(OBSScreenshotSource(args.game_source, rate_hz=4.0, size=160, **obs_kw))
    return feed, scene


def run(args: argparse.Namespace) -> int:
    cap_threads(1)
    # Out-of-range settings (file or flags) stop here with one line: settings.RANGES.
    config = checked_live_config(args)
    config_problems = apply_config_defaults(args, config)
    if not (args.video or args.camera is not None or args.obs_source):
        raise SystemExit("merlb live: no camera: pass --video FILE, --camera N or --obs-source NAME, "
                         "or choose a camera source in the panel (saved as [sources] camera)")
    state_cfg = StateConfig(smoothing=args.smoothing, threshold=args.threshold,
                            min_dwell_s=args.min_dwell_s, hide_after_s=args.hide_after_s)
    pending_errors: list[tuple[str, str]] = []
    engine_ref: list[Engine] = []

    def report(where: str) -> Callable[[str], None]:
        def cb(message: str) -> None:
            if engine_ref:
                engine_ref[0].error(message, where)
            else:
                pending_errors.append((message, where))
        return cb

    use_obs = bool(args.obs_source or args.game_source or args.obs_port is not None)
    obs_port = DEFAULT_PORT if args.obs_port is None else args.obs_port
    password = obs_password()
    obs = ObsLink(args.obs_host, obs_port, password, on_error=report("obs")) if use_obs else None
    session = None if args.no_session else SessionLog(args.sessions_dir, on_error=report("session"))
    engine, model_problems = load_checked(
        lambda model_dir: Engine(model_dir, device=args.device, rate=args.rate, state_config=state_cfg,
                                 body=not args.no_body, obs=obs, status_file=args.status_file, session=session,
                                 profile=args.profile, reset_baseline=args.reset_baseline),
        args.model, "live")
    engine_ref.append(engine)
    pending_errors += [(m, "model") for m in model_problems]
    if session is not None:
        engine.add_sink(session.write)
    try:
        server = OverlayServer(args.host, args.port, version=__version__)
        server.start()
    except OverlayServerError as e:
        print(f"merlb live: {e}", file=sys.stderr)
        return 2
    engine.server = server
    engine.add_sink(server.publish)
    server.on_command(lambda msg: engine.command(msg, source="panel"))
    engine.publish(engine.hello())
    if session is not None:
        path = session.open(recording=args.recording, t=0.0, resume=bool(args.recording))
        engine.publish(session_event("open", None if path is None else str(path), args.recording, 0.0))
    for message, where in pending_errors + [(m, "config") for m in config_problems]:
        engine.error(message, where)
    try:
        feed, scene = _open_feeds(args, {"host": args.obs_host, "port": obs_port, "password": password}, engine)
    except (MediaError, OSError, RuntimeError, ValueError) as e:
        engine.error(f"cannot open the source: {e}", "capture")
        print(f"merlb live: {e}", file=sys.stderr)
        engine.shutdown()
        server.stop()
        return 2
    print(f"overlay: {server.url}  events: {server.ws_url}", flush=True)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        engine.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.overlay == "text":
        if obs is None:
            engine.error("--overlay text needs OBS: give --obs-source or --obs-port", "overlay")
        else:
            engine.text_overlay = _native_overlay(args, obs_port, password, report("overlay"))
            engine.add_sink(engine.text_overlay.publish)
    triggers = None if args.no_triggers else build_runner(
        config, obs=obs or ObsLink(args.obs_host, obs_port, password, on_error=report("obs")),
        publish=engine.publish, on_error=engine.error)
    if triggers is not None:
        engine.add_sink(triggers)
    read_stdin = args.control == "stdin" or (args.control == "auto" and _stdin_is_pipe())
    engine.start_threads(feed, scene, stdin=sys.stdin if read_stdin else None)
    if obs is not None:
        # Connect (or report why not) right away rather than at the first poll.
        threading.Thread(target=_probe_obs, args=(obs,), name="merlb-obs-probe", daemon=True).start()
    try:
        while not engine.stop_event.wait(0.2):
            pass
    finally:
        if triggers is not None:
            triggers.close()   # before the engine: its releases still reach OBS and the session log
        engine.shutdown()
        time.sleep(0.2)   # let the last events reach the clients
        server.stop()
    return 0


def _native_overlay(args: argparse.Namespace, obs_port: int, password: str,
                    report: Callable[[str], None]) -> Any:
    """The OBS text (+ emoji image) sources, fed with every event from its own thread."""
    image = args.overlay_image_source
    image = None if not image or image.lower() == "none" else image
    last: list[str] = []

    def once(message: str) -> None:
        # The overlay retries with backoff; the streamer needs each problem once.
        if not last or last[0] != message:
            last[:] = [message]
            report(message)

    return NativeTextOverlay(args.overlay_text_source, host=args.obs_host, port=obs_port,
                             password=password, image_source_name=image,
                             show_emoji=image is None, head=args.overlay_head, on_error=once).start()


def _probe_obs(obs: Any) -> None:
    try:
        version, ws = obs.version()
        log.info("OBS %s (obs-websocket %s)", ".".join(map(str, version)), ws)
    except (ObsUnavailable, ObsRequestFailed):
        pass

