"""`merlb panel`: the PyQt control panel.

Two ways to run it:

* `merlb panel [--url ws://127.0.0.1:PORT/ws]` attaches to a worker that is
  already running (the one the OBS script started). Closing the panel leaves
  that worker alone: the stream must not lose its overlay because a window
  was closed.
* `merlb panel --start-worker --video FILE | --camera N | --obs-source NAME`
  starts `merlb live` as a child on a free port and stops it when the panel
  closes, because then nothing else owns it.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Mapping

import platformdirs

from obs_merlb import config as cfgmod
from obs_merlb.cli import port
from obs_merlb.overlay.server import DEFAULT_PORT

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"the worker's events WebSocket, e.g. ws://127.0.0.1:{DEFAULT_PORT}/ws "
                                      f"(default: the port in the config file, else {DEFAULT_PORT})")
    w = parser.add_argument_group("start a worker (stopped again when the panel closes)")
    w.add_argument("--start-worker", action="store_true", help="run `merlb live` as a child of the panel")
    src = w.add_mutually_exclusive_group()
    src.add_argument("--video", help="analyse a video file (played in real time)")
    src.add_argument("--camera", help="camera device index for OpenCV (without OBS)")
    src.add_argument("--obs-source", help="OBS camera source name (screenshots through obs-websocket)")
    w.add_argument("--mic", help="microphone device name")
    w.add_argument("--game-source", help="OBS gameplay source name")
    w.add_argument("--model", help="model folder (default: the active model)")
    w.add_argument("--port", type=port, default=0, help="worker port (default: a free one)")
    w.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                   help="extra argument passed to `merlb live` (repeatable)")
    parser.add_argument("--sessions-dir", help="where session logs are (default: the user data folder)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """A `merlb live` child process that belongs to the panel."""

    SOURCE_FLAGS = ("--video", "--camera", "--obs-source")

    def __init__(self, sources: Mapping[str, str], *, port: int, model: str | None = None,
                 extra: list[str] | None = None, log_path: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.sources = {k: str(v) for k, v in sources.items() if v not in (None, "")}
        self.port = port
        self.model = model
        self.extra = list(extra or [])
        self.log_path = log_path or _default_log_path()
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "obs_merlb", "live", "--port", str(self.port)]
        for flag, value in self.sources.items():
            args += [flag, value]
        if self.model:
            args += ["--model", self.model]
        return args + self.extra

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            log.info("starting worker: %s (log %s)", " ".join(self.argv()), self.log_path)
            # stdin stays open for the child's life: the worker reads tags and
            # `stop` there (the OBS script's channel) and may treat EOF as
            # "my parent is gone".
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=self.env)

    def poll(self) -> int | None:
        proc = self.proc
        return None if proc is None else proc.poll()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
            if proc is not None and proc.poll() is None:
                try:
                    # SIGTERM lets the worker close its session log cleanly
                    # (on Windows terminate() is the only portable stop).
                    proc.terminate()
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("worker did not stop within %.0f s; killing it", timeout)
                    proc.kill()
                    proc.wait(timeout)
                except OSError:
                    pass
            if proc is not None and proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            if self._log is not None:
                self._log.close()
                self._log = None

    def restart_with_sources(self, chosen: Mapping[str, str]) -> bool:
        """Apply sources picked in the panel and restart, off the GUI thread.

        A video file run stays a video file run (it is a test or a demo);
        otherwise a chosen OBS camera source replaces the camera.
        """
        sources = dict(self.sources)
        if chosen.get("camera") and "--video" not in sources:
            for flag in self.SOURCE_FLAGS:
                sources.pop(flag, None)
            sources["--obs-source"] = chosen["camera"]
        for key, flag in (("mic", "--mic"), ("game", "--game-source")):
            if chosen.get(key):
                sources[flag] = chosen[key]
            else:
                sources.pop(flag, None)
        self.sources = sources

        def work() -> None:
            self.stop()
            self.start()

        threading.Thread(target=work, name="merlb-panel-restart", daemon=True).start()
        return True


def _default_log_path() -> Path:
    return Path(platformdirs.user_log_dir(cfgmod.APP_NAME, appauthor=False)) / "panel-worker.log"


def build_worker(args: argparse.Namespace) -> WorkerProcess:
    sources: dict[str, str] = {}
    if args.video:
        if not Path(args.video).is_file():
            raise SystemExit(f"merlb panel: video file not found: {args.video}")
        sources["--video"] = str(Path(args.video).resolve())
    elif args.camera is not None:
        sources["--camera"] = str(args.camera)
    elif args.obs_source:
        sources["--obs-source"] = args.obs_source
    else:
        raise SystemExit("merlb panel: --start-worker needs --video FILE, --camera N or --obs-source NAME")
    if args.mic:
        sources["--mic"] = args.mic
    if args.game_source:
        sources["--game-source"] = args.game_source
    extra = list(args.worker_arg)
    if args.sessions_dir:
        # the panel lists the sessions its worker writes
        extra += ["--sessions-dir", str(args.sessions_dir)]
    return WorkerProcess(sources, port=args.port or free_port(), model=args.model, extra=extra)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from PyQt5.QtWidgets import QApplication

    from obs_merlb.panel.client import WorkerClient
    from obs_merlb.panel.main_window import MainWindow
    from obs_merlb.panel.protocol import worker_url

    worker: WorkerProcess | None = None
    if args.start_worker:
        worker = build_worker(args)
        url = worker.url
    else:
        url = args.url or worker_url(cfgmod.load_config())

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("obs-merlb panel")
    if worker is not None:
        try:
            worker.start()
        except OSError as e:
            print(f"merlb panel: cannot start the worker: {e}", file=sys.stderr)
            return 1
    client = WorkerClient(url, topics=["preview"])
    window = MainWindow(client, worker=worker, sessions_dir=args.sessions_dir)
    client.start()
    window.show()
    # Ctrl+C in the terminal closes the window properly (and so stops our worker).
    signal.signal(signal.SIGINT, lambda *_: window.close())
    from PyQt5.QtCore import QTimer

    tick = QTimer()
    tick.timeout.connect(lambda: None)  # lets Python run its signal handlers inside Qt's loop
    tick.start(500)
    try:
        return int(app.exec_())
    finally:
        client.stop()
        if worker is not None:
            worker.stop()
