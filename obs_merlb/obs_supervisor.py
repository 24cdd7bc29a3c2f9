"""The OBS script's worker supervisor: OBS file paths, the worker contract, restarts.

Standard library only and no ``obspython``: ``obs_merlb/obs_script.py``
loads this file from its own folder inside OBS's embedded Python (whatever
version OBS ships), and the tests import it as ``obs_merlb.obs_supervisor``
without OBS. Importing it pulls in nothing of the rest of obs_merlb.

One daemon thread, the supervisor, does everything that can take time:
spawning, polling and stopping the worker, reading its status file, and
listing microphones; its public methods only set fields under a lock or
post to a queue, so OBS's UI, hotkey and graphics threads never wait on it.
Writes to the worker's stdin go through a queue and a writer thread, so a
worker that stops reading can never block OBS.

Worker command line (argv carries no secret)::

    <python> -m obs_merlb live --obs-host 127.0.0.1 --obs-port PORT
        --obs-source CAMERA [--obs-game-source GAME] --mic DEVICE
        --device cpu|cuda:N --rate HZ --overlay browser|text|none
        [--overlay-text-source NAME [--overlay-head user|behaviour]] [--model DIR] --status-file PATH --control stdin

``<python>`` is the script's 'Worker Python' setting, which ``merlb
install-obs`` sets to the Python it runs under; left blank, it is the Python
of the virtual environment this file is installed in (``installed_python``).

``--model`` only when the streamer set a model folder; without it the worker
uses the active personalized model, else the shipped one. The worker reads
the rest of its settings ([engine] threshold, smoothing, ...) from the
project's config.toml, the file named by ``MERLB_CONFIG`` in its
environment (the installer's ``--config``).

The obs-websocket password is passed in the environment variable
``MERLB_OBS_PASSWORD``, read from OBS's own websocket settings (or the
project's config.toml), and never put in argv or a log.

Worker stdin protocol (one JSON object per line, UTF-8)
--------------------------------------------------------
``{"cmd": "tag", "name": "hype", "source": "hotkey", "wall": 1712345678.9}``
    the streamer tagged a moment.
``{"cmd": "session", "event": "open"|"close", "kind": "recording"|"streaming",
"recording": "/path/to/file.mkv" or null, "wall": ...}``
    OBS started or stopped recording/streaming; ``recording`` is the output
    file (session files are named after it).
    A worker (re)started while OBS records gets ``--recording PATH`` too, so
    it continues that recording's session log instead of starting another.
``{"cmd": "set", "key": "rate", "value": 8.0}``
    a live setting changed (no restart needed).
``{"cmd": "stop"}``
    shut down cleanly (close session files, exit 0).
End of file on stdin means the same as ``stop``: when OBS exits or crashes
the pipe closes, so a worker is never left behind.

Worker status file (``--status-file``): one JSON object, replaced
atomically about once a second: ``{"v": 1, "state": "starting"|"running"|
"error", "pid", "wall", "fps", "target_fps", "backend", "obs_connected",
"camera_ok", "face_present", "label", "last_error", "events_url"}``. The
script shows ``state``, ``fps`` and ``last_error`` as its status line.

The script writes its own view to ``script-status.json`` in the same folder
(``state``: stopped|starting|running|restarting|error, ``pid``,
``restarts``, ``status_line``, ``worker``: the worker's last status).
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Callable

# The sources obs-merlb itself puts in OBS, spelled out here because this
# file may import nothing of the package: the worker's label and emoji
# (obs_merlb/overlay/native.py TEXT_SOURCE, IMAGE_SOURCE) and the installer's
# browser overlay (obs_merlb/install.py OVERLAY_BROWSER); a test keeps them equal.
TEXT_SOURCE = "MERLB emotion"
IMAGE_SOURCE = "MERLB emoji"
BROWSER_SOURCE = "MERLB overlay"
OWN_SOURCES = (TEXT_SOURCE, IMAGE_SOURCE, BROWSER_SOURCE)
# obs-websocket's address when neither OBS nor config.toml names one; mirrors
# obs_merlb/obs_client.py DEFAULT_HOST, DEFAULT_PORT (a test keeps them equal).
DEFAULT_OBS_HOST = "127.0.0.1"
DEFAULT_OBS_PORT = 4455
STATUS_STALE_S = 60.0       # a worker silent this long (after its first status) is restarted
# A worker that has written no status this long after it started is hung
# before its first one (loading a model and mediapipe takes seconds, not minutes).
STATUS_FIRST_S = 120.0
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
HEALTHY_AFTER_S = 60.0      # a run this long resets the backoff
STOP_GRACE_S = 4.0          # after {"cmd":"stop"}: then terminate, then kill
CONNECTION_CHECK_S = 2.0    # how often OBS's websocket settings are re-read while running

MIC_LIST_CODE = (
    "import json,sounddevice as sd\n"
    "print(json.dumps(sorted({d['name'] for d in sd.query_devices() "
    "if d['max_input_channels'] > 0})))"
)


# --------------------------------------------------------------------------
# paths and config (no OBS needed)
# --------------------------------------------------------------------------
def installed_python(here: str | None = None) -> str:
    """The Python of the virtual environment this package is installed in, or "".

    OBS loads the script from ``<venv>/lib/pythonX.Y/site-packages/obs_merlb``
    (``<venv>\\Lib\\site-packages\\obs_merlb`` on Windows); that environment's
    Python can import obs_merlb, so it runs the worker when the script was added
    by hand and 'Worker Python' left blank. A checkout or a system-wide install
    has no pyvenv.cfg above it: "" then, and the script asks for the setting.
    """
    d = here or os.path.dirname(os.path.abspath(__file__))
    for _ in range(4):   # site-packages, pythonX.Y or Lib, lib or the venv, the venv (POSIX)
        d = os.path.dirname(d)
        if os.path.isfile(os.path.join(d, "pyvenv.cfg")):
            for rel in (("Scripts", "python.exe"), ("bin", "python3"), ("bin", "python")):
                exe = os.path.join(d, *rel)
                if os.path.isfile(exe):
                    return exe
            return ""
    return ""


def default_obs_config_dir() -> str:
    """OBS's config folder for this platform (Flatpak sets XDG_CONFIG_HOME)."""
    if sys.platform == "win32":
        return os.path.join(os.environ.get("APPDATA", os.path.expanduser("~")), "obs-studio")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Application Support/obs-studio")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "obs-studio")


def default_data_dir() -> str:
    """Where the status files and the worker's log live."""
    if sys.platform == "win32":
        return os.path.join(os.environ.get("LOCALAPPDATA", os.path.expanduser("~")), "obs-merlb")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Logs/obs-merlb")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "obs-merlb")


def _read_ini_section(path: str, section: str) -> dict[str, str]:
    """A section of an OBS .ini, without configparser's interpolation surprises."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            current = None
            for raw in f:
                line = raw.strip()
                if line.startswith("[") and line.endswith("]"):
                    current = line[1:-1]
                elif current == section and "=" in line:
                    k, v = line.split("=", 1)
                    out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def _read_toml_obs(path: str) -> dict[str, Any]:
    """The [obs] table of the project's config.toml."""
    try:
        import tomllib  # Python 3.11+; OBS may embed an older Python
    except ImportError:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return {}
    section = data.get("obs")
    return section if isinstance(section, dict) else {}


def websocket_connection(obs_config_dir: str, merlb_config: str,
                         obs_major: int = 0) -> tuple[str, int, str | None, str]:
    """(host, port, password or None, where it came from).

    OBS's own settings come first: they are what the running server uses, even
    after the streamer changes the password in Tools > WebSocket Server
    Settings. OBS 30+ keeps them in plugin_config/obs-websocket/config.json,
    OBS 28-29 in global.ini [OBSWebSocket].
    """
    json_path = os.path.join(obs_config_dir, "plugin_config", "obs-websocket", "config.json")
    ini_path = os.path.join(obs_config_dir, "global.ini")

    def from_json() -> tuple[str, int, str | None, str] | None:
        try:
            with open(json_path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError):
            return None
        pw = d.get("server_password") if d.get("auth_required") else None
        return DEFAULT_OBS_HOST, int(d.get("server_port", DEFAULT_OBS_PORT)), pw, json_path

    def from_ini() -> tuple[str, int, str | None, str] | None:
        s = _read_ini_section(ini_path, "OBSWebSocket")
        if not s:
            return None
        auth = s.get("AuthRequired", "true").lower() == "true"
        try:
            port = int(s.get("ServerPort", DEFAULT_OBS_PORT))
        except ValueError:
            port = DEFAULT_OBS_PORT
        return DEFAULT_OBS_HOST, port, (s.get("ServerPassword") if auth else None), ini_path

    order = (from_json, from_ini) if obs_major >= 30 or obs_major == 0 else (from_ini, from_json)
    for fn in order:
        got = fn()
        if got is not None:
            return got
    t = _read_toml_obs(merlb_config) if merlb_config else {}
    if t:
        return (str(t.get("host", DEFAULT_OBS_HOST)), int(t.get("port", DEFAULT_OBS_PORT)),
                t.get("password") or None, merlb_config)
    return DEFAULT_OBS_HOST, DEFAULT_OBS_PORT, None, "defaults"


def own_sources(text_source: str = TEXT_SOURCE) -> set[str]:
    """Names of the sources obs-merlb made, which are never a camera or gameplay."""
    return {*OWN_SOURCES, text_source}


# --------------------------------------------------------------------------
# worker supervision (no OBS needed)
# --------------------------------------------------------------------------
class WorkerConfig:
    """Everything the worker is started with; equal configs need no restart."""

    def __init__(self, python: str = "", camera: str = "", game: str = "", mic: str = "default",
                 device: str = "cpu", rate: float = 8.0, overlay: str = "browser",
                 text_source: str = TEXT_SOURCE, data_dir: str = "",
                 obs_config_dir: str = "", merlb_config: str = "", obs_major: int = 0,
                 model: str = "", head: str = "emotion") -> None:
        self.python = python or installed_python()
        self.camera = camera
        self.game = game
        self.mic = mic
        self.device = device
        self.rate = rate
        self.overlay = overlay
        self.text_source = text_source
        self.data_dir = data_dir or default_data_dir()
        self.obs_config_dir = obs_config_dir or default_obs_config_dir()
        self.merlb_config = merlb_config
        self.obs_major = obs_major
        self.model = model
        self.head = head

    def key(self) -> tuple[Any, ...]:
        """What a restart depends on (the rate is sent live instead)."""
        return (self.python, self.camera, self.game, self.mic, self.device, self.overlay,
                self.text_source, self.data_dir, self.obs_config_dir, self.merlb_config,
                self.model, self.head)

    @property
    def status_file(self) -> str:
        return os.path.join(self.data_dir, "worker-status.json")

    def problem(self) -> str | None:
        """Why the worker cannot start, in words the streamer can act on."""
        if not self.python:
            return "set 'Worker Python' (run: merlb install-obs)"
        if not os.path.isfile(self.python):
            return f"worker Python not found: {self.python} (run: merlb install-obs)"
        if not self.camera:
            return "choose a camera source"
        if self.camera in own_sources(self.text_source):
            # settings saved while the list still offered these: the worker
            # would analyse its own label
            return f"choose a camera source: '{self.camera}' is obs-merlb's own overlay"
        if self.model and not os.path.isfile(os.path.join(self.model, "config.json")):
            return (f"model folder {self.model} has no config.json: choose a folder written by "
                    "merlb train or personalize, or leave it blank for the default")
        return None

    def argv(self, port: int, host: str) -> list[str]:
        args = [self.python, "-m", "obs_merlb", "live",
                "--obs-host", host, "--obs-port", str(port),
                "--obs-source", self.camera]
        if self.game:
            args += ["--obs-game-source", self.game]
        args += ["--mic", self.mic or "default", "--device", self.device,
                 "--rate", f"{self.rate:g}", "--overlay", self.overlay]
        if self.overlay == "text":
            args += ["--overlay-text-source", self.text_source]
            if self.head != "emotion":
                args += ["--overlay-head", self.head]
        if self.model:
            args += ["--model", self.model]
        args += ["--status-file", self.status_file, "--control", "stdin",
                 "--log-file", os.path.join(self.data_dir, "worker.log")]
        return args


class _Stdin:
    """Non-blocking line writer to a child's stdin (queue + daemon thread)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=1000)
        self.proc = proc
        threading.Thread(target=self._run, name="merlb-stdin", daemon=True).start()

    def send(self, obj: dict[str, Any]) -> bool:
        try:
            self.q.put_nowait((json.dumps(obj) + "\n").encode("utf-8"))
            return True
        except queue.Full:  # the worker stopped reading; drop rather than block
            return False

    def close(self) -> None:
        try:
            self.q.put_nowait(None)
        except queue.Full:
            pass

    def _run(self) -> None:
        pipe = self.proc.stdin
        if pipe is None:
            return
        while True:
            item = self.q.get()
            try:
                if item is None:
                    pipe.close()
                    return
                pipe.write(item)
                pipe.flush()
            except (OSError, ValueError):  # worker gone: nothing more to say to it
                return


class Supervisor:
    """Starts, watches, restarts and stops the worker, on its own thread.

    Public methods are safe to call from any OBS thread: they only set
    fields under a lock or post to a queue, and return at once.
    """

    def __init__(self, log: Callable[[str], None] = print, poll_s: float = 0.5) -> None:
        self.log = log
        self.poll_s = poll_s
        self.lock = threading.Lock()
        self.config = WorkerConfig()
        self.wanted = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdin: _Stdin | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.failures = 0
        self.next_start = 0.0
        self.state = "stopped"
        self.last_error = ""
        self.worker_status: dict[str, Any] = {}
        self._status_mtime = 0.0
        self._running_key: tuple[Any, ...] | None = None
        self._running_rate = 0.0
        # A digest of (host, port, password) the worker got: compared, never the secret itself.
        self._running_conn = ""
        self._conn_checked = 0.0
        self._pending: list[dict[str, Any]] = []
        self.recording: str | None = None   # the OBS recording in progress, for a (re)started worker
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._stopping: list[tuple[subprocess.Popen[bytes], float, bool]] = []
        self.mics: list[str] = []
        self._mic_python = ""
        self.thread = threading.Thread(target=self._loop, name="merlb-supervisor", daemon=True)
        self.thread.start()

    # -- called from OBS threads ------------------------------------------
    def configure(self, cfg: WorkerConfig) -> None:
        with self.lock:
            self.config = cfg
        self._wake.set()

    def start(self) -> None:
        with self.lock:
            self.wanted = True
            self.failures = 0
            self.next_start = 0.0
        self._wake.set()

    def stop(self) -> None:
        with self.lock:
            self.wanted = False
        self._wake.set()

    def send(self, obj: dict[str, Any]) -> None:
        """Post a command for the worker; held (bounded) while it is restarting."""
        with self.lock:
            if obj.get("cmd") == "session" and obj.get("kind") == "recording":
                self.recording = obj.get("recording") if obj.get("event") == "open" else None
            if self.stdin is not None and self.proc is not None and self.proc.poll() is None:
                self.stdin.send(obj)
            elif self.wanted:
                self._pending = (self._pending + [obj])[-100:]

    def shutdown(self) -> None:
        """OBS is unloading the script: stop the worker and the thread, never wait."""
        with self.lock:
            self.wanted = False
        self._quit.set()
        self._wake.set()

    def status_line(self) -> str:
        with self.lock:
            st, err, ws = self.state, self.last_error, dict(self.worker_status)
        parts = [st]
        if st == "running":
            fps = ws.get("fps")
            if isinstance(fps, (int, float)):
                parts.append(f"{fps:.1f} fps")
            if ws.get("label"):
                parts.append(str(ws["label"]))
            if ws.get("backend"):
                parts.append(str(ws["backend"]))
        werr = ws.get("last_error")
        if werr:
            parts.append(f"worker: {werr}")
        elif err:
            parts.append(err)
        return " | ".join(parts)

    def request_mics(self, python: str) -> None:
        with self.lock:
            self._mic_python = python or installed_python()   # the worker's, as WorkerConfig
        self._wake.set()

    # -- the supervisor thread -------------------------------------------
    def _set(self, state: str, error: str | None = None) -> None:
        changed = False
        with self.lock:
            if state != self.state or (error is not None and error != self.last_error):
                changed = True
            self.state = state
            if error is not None:
                self.last_error = error
        if changed:
            self.log(f"worker {state}" + (f": {error}" if error else ""))
        self._write_script_status()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - the supervisor must outlive any surprise
                self.log(f"supervisor error: {e!r}")
            if self._quit.is_set():
                self._stop_worker(final=True)
                return

    def _step(self) -> None:
        with self.lock:
            cfg, wanted = self.config, self.wanted
            mic_python, self._mic_python = self._mic_python, ""
        if mic_python:
            # its own thread: importing sounddevice can take seconds, and the
            # worker must not wait for a list only the properties dialog shows
            threading.Thread(target=self._list_mics, args=(mic_python,),
                             name="merlb-mics", daemon=True).start()
        self._reap_stopping()
        proc = self.proc
        alive = proc is not None and proc.poll() is None
        if alive:
            self._read_worker_status(cfg)
        if not wanted or self._quit.is_set():
            if proc is not None:
                self._stop_worker()
            if self.state not in ("stopped", "error"):
                self._set("stopped", "")
            return
        if alive:
            if self._running_key != cfg.key():
                self.log("settings changed: restarting the worker")
                self._stop_worker()
                self.next_start = 0.0
                return
            if cfg.rate != self._running_rate:
                self._running_rate = cfg.rate
                self.send({"cmd": "set", "key": "rate", "value": cfg.rate})
            if self._connection_changed(cfg):
                # The streamer fixed (or changed) the password or port in OBS's
                # WebSocket settings: the running worker still has the old one.
                self.log("obs-websocket settings changed: restarting the worker")
                self._stop_worker()
                self.next_start = 0.0
                return
            stale = self._status_stale()
            if stale:
                self._set("restarting", f"worker stopped answering ({stale:.0f}s without status)")
                self._stop_worker()
                self._schedule_restart()
            elif self._status_mtime and time.monotonic() - self.started_at > HEALTHY_AFTER_S:
                # Only a worker that reports counts as healthy: one that never
                # wrote a status must not reset the backoff.
                self.failures = 0
            return
        if proc is not None:  # it exited on its own
            rc = proc.returncode
            tail = self._log_tail(cfg)
            self.proc, self.stdin = None, None
            self._set("restarting", f"worker exited with code {rc}" + (f": {tail}" if tail else ""))
            self._schedule_restart()
            return
        if time.monotonic() < self.next_start:
            return
        problem = cfg.problem()
        if problem:
            self._set("error", problem)
            self.next_start = time.monotonic() + 2.0
            return
        self._spawn(cfg)

    @staticmethod
    def _conn_digest(host: str, port: int, password: str | None) -> str:
        return hashlib.sha256(f"{host}\0{port}\0{password or ''}".encode("utf-8")).hexdigest()

    def _connection_changed(self, cfg: WorkerConfig) -> bool:
        now = time.monotonic()
        if now - self._conn_checked < CONNECTION_CHECK_S or not self._running_conn:
            return False
        self._conn_checked = now
        host, port, password, _ = websocket_connection(cfg.obs_config_dir, cfg.merlb_config,
                                                       cfg.obs_major)
        return self._conn_digest(host, port, password) != self._running_conn

    def _schedule_restart(self) -> None:
        delay = BACKOFF_S[min(self.failures, len(BACKOFF_S) - 1)]
        self.failures += 1
        self.restarts += 1
        self.next_start = time.monotonic() + delay
        self.log(f"restarting the worker in {delay:.0f}s")

    def _spawn(self, cfg: WorkerConfig) -> None:
        host, port, password, source = websocket_connection(
            cfg.obs_config_dir, cfg.merlb_config, cfg.obs_major)
        os.makedirs(cfg.data_dir, exist_ok=True)
        # The worker logs to worker.log itself (size-capped and rotated:
        # `merlb --log-file`); what it prints outside logging (a fatal
        # `merlb live: ...` line, a crash) goes to worker.out.
        log_path = os.path.join(cfg.data_dir, "worker.out")
        if os.path.exists(log_path):
            os.replace(log_path, log_path + ".1")  # keep the previous run for bug reports
        env = dict(os.environ)
        env.pop("MERLB_OBS_PASSWORD", None)
        if password:
            env["MERLB_OBS_PASSWORD"] = password
        env["PYTHONUNBUFFERED"] = "1"
        if cfg.merlb_config:
            # The worker's [engine] and [sources] defaults come from the same
            # file the installer wrote the connection to.
            env["MERLB_CONFIG"] = cfg.merlb_config
        # OBS's embedded Python sets these for itself; the worker is another Python.
        for k in ("PYTHONHOME", "PYTHONPATH"):
            env.pop(k, None)
        argv = cfg.argv(port, host)
        with self.lock:
            recording = self.recording
        if recording:
            argv += ["--recording", recording]
        if os.path.exists("/.flatpak-info"):
            # OBS as a Flatpak: the worker's Python lives on the host. The
            # password cannot cross flatpak-spawn without showing in argv, so
            # the worker reads it from the project's config.toml instead.
            extra = [f"--env=MERLB_CONFIG={cfg.merlb_config}"] if cfg.merlb_config else []
            argv = ["flatpak-spawn", "--host", "--env=PYTHONUNBUFFERED=1", *extra, *argv]
        kw: dict[str, Any] = {}
        if sys.platform == "win32":
            kw["creationflags"] = 0x08000000  # CREATE_NO_WINDOW: no console flashing up
        else:
            kw["start_new_session"] = True  # OBS's Ctrl+C or job signals are not the worker's
        try:
            with open(log_path, "wb") as log_file:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log_file,
                                        stderr=subprocess.STDOUT, env=env, close_fds=True,
                                        cwd=cfg.data_dir, **kw)
        except OSError as e:
            self._set("error", f"cannot start worker: {e}")
            self._schedule_restart()
            return
        try:
            os.remove(cfg.status_file)  # a previous run's status must not look fresh
        except OSError:
            pass
        self._status_mtime = 0.0
        with self.lock:
            self.proc = proc
            self.stdin = _Stdin(proc)
            self.worker_status = {}
            pending, self._pending = self._pending, []
        self._running_key = cfg.key()
        self._running_rate = cfg.rate
        self._running_conn = self._conn_digest(host, port, password)
        self._conn_checked = time.monotonic()
        self.started_at = time.monotonic()
        for obj in pending:
            self.stdin.send(obj)
        self.log(f"worker started (pid {proc.pid}, camera '{cfg.camera}', "
                 f"obs-websocket port {port}, password from {os.path.basename(source)})")
        self._set("starting", "")

    def _read_worker_status(self, cfg: WorkerConfig) -> None:
        try:
            mtime = os.stat(cfg.status_file).st_mtime
        except OSError:
            return
        if mtime == self._status_mtime:
            return
        try:
            with open(cfg.status_file, encoding="utf-8") as f:
                ws = json.load(f)
        except (OSError, ValueError):  # mid-replace on Windows: next poll
            return
        if not isinstance(ws, dict):
            return
        self._status_mtime = mtime
        with self.lock:
            self.worker_status = ws
        state = str(ws.get("state", "running"))
        self._set("running" if state == "running" else state, "")

    def _status_stale(self) -> float:
        """Seconds without a status when that means a hung worker, else 0.

        Since its last status once it has written one; since its start while
        it has written none (a worker can hang before its first status)."""
        if not self._status_mtime:
            waited = time.monotonic() - self.started_at
            return waited if self.started_at and waited > STATUS_FIRST_S else 0.0
        age = time.time() - self._status_mtime
        return age if age > STATUS_STALE_S else 0.0

    def _log_tail(self, cfg: WorkerConfig) -> str:
        """The worker's last output line, usually the reason it died: worker.out, else worker.log."""
        for name in ("worker.out", "worker.log"):
            try:
                with open(os.path.join(cfg.data_dir, name), "rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - 4096))
                    lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
            except OSError:
                continue
            lines = [ln for ln in lines if ln]
            if lines:
                return lines[-1][:300]
        return ""

    def _stop_worker(self, final: bool = False) -> None:
        """Ask the worker to stop; escalation happens in _reap_stopping."""
        with self.lock:
            proc, stdin = self.proc, self.stdin
            self.proc, self.stdin = None, None
            self._running_key = None
        if proc is None:
            return
        if stdin is not None:
            stdin.send({"cmd": "stop"})
            stdin.close()
        self._stopping.append((proc, time.monotonic(), False))
        self.log(f"stopping worker (pid {proc.pid})")
        if final:
            # The script is going away: escalate here, bounded, since no
            # later poll will. A daemon thread, so OBS never waits on it.
            deadline = time.monotonic() + 2 * STOP_GRACE_S + 1
            while self._stopping and time.monotonic() < deadline:
                time.sleep(0.1)
                self._reap_stopping()

    def _reap_stopping(self) -> None:
        keep = []
        now = time.monotonic()
        for proc, since, terminated in self._stopping:
            if proc.poll() is not None:
                continue
            if now - since > 2 * STOP_GRACE_S:
                proc.kill()
                continue
            if not terminated and now - since > STOP_GRACE_S:
                proc.terminate()
                terminated = True
            keep.append((proc, since, terminated))
        self._stopping = keep

    def _list_mics(self, python: str) -> None:
        if not os.path.isfile(python):
            return
        kw: dict[str, Any] = {"creationflags": 0x08000000} if sys.platform == "win32" else {}
        try:
            out = subprocess.run([python, "-c", MIC_LIST_CODE], capture_output=True,
                                 timeout=20, text=True, **kw)
            names = json.loads(out.stdout) if out.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired, ValueError):
            names = []
        with self.lock:
            self.mics = [str(n) for n in names]

    def _write_script_status(self) -> None:
        with self.lock:
            data = {"v": 1, "state": self.state, "last_error": self.last_error,
                    "pid": self.proc.pid if self.proc is not None else None,
                    "restarts": self.restarts, "wall": time.time(),
                    "worker": self.worker_status}
            data_dir = self.config.data_dir
        data["status_line"] = self.status_line()
        try:
            os.makedirs(data_dir, exist_ok=True)
            path = os.path.join(data_dir, "script-status.json")
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except OSError:
            pass
