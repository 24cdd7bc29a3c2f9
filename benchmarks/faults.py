"""Fault soak: `merlb live` for several minutes while faults are injected (issue 23's acceptance).

The worker runs as the OBS script runs it: `merlb live --video assets/demo.mp4 --loop`
with a status file, commands on stdin, the overlay server on a fixed port and
`--log-file`, and a recording in progress (a `session open` command). The
benchmark restarts the worker as the script's supervisor would, passing that
recording (`--recording`). A WebSocket client reads the overlay's events
throughout, and faults come one after another:

- disk_full: the sessions folder lives on a 16 MB tmpfs; a file fills it for
  `--hold` seconds, then is removed. Needs root for the mount; otherwise
  skipped, with the reason in the JSON (a full disk under an open file cannot
  be made without one).
- sessions_deleted: the sessions folder is deleted (rm -r) while it is written.
- obs_killed: real OBS under Xvfb (when `obs` and `Xvfb` are installed; else
  skipped), which the worker polls for stats (`--obs-port`), is killed with
  SIGKILL and started again `--hold` seconds later.
- corrupt_model: the active personalized model's sequence.onnx is cut in half,
  a tag is sent, and the worker is killed (SIGKILL) as soon as the tag is on
  the overlay; the restarted worker must run on the shipped model and continue
  the recording's session log.
- bad_requests: a burst of refused HTTP requests (foreign, repeated and
  userinfo Host headers, path traversal, a foreign Origin on /ws), malformed
  WebSocket commands (not JSON, deeply nested, too large, unknown) and idle
  connections.

Printed as JSON: events delivered, the longest gap between the overlay's
`state` events while a worker runs (restarts reported apart), restarts, lines
lost from the session log (lines on disk before a fault and missing at the
end; the deleted folder's lines are that fault's own doing and counted apart),
and how often the worker's log names each fault. Targets: no gap over 5 s,
nothing lost, each fault named once (each kind of refused request once).

    python benchmarks/faults.py [--minutes 4] [--hold 20] [--json] [--short] [--no-obs]

`--short` (about a minute, no OBS) is what tests/test_benchmarks.py runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FREEZE_S = 5.0          # the target: no longer gap between overlay events
TMPFS_MB = 16
SNAPSHOT_S = 2.0        # how often the session logs are read (lines on disk so far)
PROGRESS_S = 15.0
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) ")


def log(message: str) -> None:
    print(f"faults: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fault:
    name: str
    how: str
    pattern: str                      # what names it in the worker's log (a regex)
    run: Callable[[], None] | None = None
    skipped: str | None = None
    at: float = 0.0                   # seconds into the run (monotonic, relative)
    start_wall: float = 0.0
    end_wall: float = 0.0
    start: float = 0.0
    end: float = 0.0
    named: list[str] = field(default_factory=list)


class Events:
    """The overlay's WebSocket, read from a thread; reconnects while the worker restarts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.state_times: list[float] = []
        self.count = 0
        self.tags: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="faults-events", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from websockets.sync.client import connect

        while not self.stop.is_set():
            try:
                with connect(self.url, open_timeout=5, close_timeout=1) as ws:
                    while not self.stop.is_set():
                        try:
                            msg = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        ev = json.loads(msg)
                        self.count += 1
                        if ev.get("type") == "state":
                            self.state_times.append(time.monotonic())
                        elif ev.get("type") == "tag":
                            self.tags.append(str(ev.get("name")))
            except Exception:  # noqa: BLE001 - refused while the worker restarts, closed at its exit
                self.stop.wait(0.3)

    def wait_tag(self, name: str, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if name in self.tags:
                return True
            time.sleep(0.01)
        return False

    def first_state_after(self, t: float) -> float | None:
        return next((s for s in self.state_times if s > t), None)


class Worker:
    """`merlb live` as the OBS script runs it, restarted as its supervisor would."""

    def __init__(self, argv: list[str], env: dict[str, str], out: Path) -> None:
        self.argv, self.env, self.out = argv, env, out
        self.proc: subprocess.Popen[str] | None = None
        self.recording: str | None = None
        self.starts = 0
        self.unplanned_exits = 0
        self.down: list[float] = []       # monotonic times a worker went away
        self.lock = threading.Lock()
        self.stopping = False
        self.watch = threading.Thread(target=self._watch, name="faults-supervisor", daemon=True)

    def start(self) -> None:
        extra = ["--recording", self.recording] if self.recording else []
        with open(self.out, "a") as out:
            self.proc = subprocess.Popen([*self.argv, *extra], stdin=subprocess.PIPE, stdout=out,
                                         stderr=subprocess.STDOUT, text=True, env=self.env)
        self.starts += 1
        if not self.watch.is_alive():
            self.watch.start()

    def send(self, msg: dict[str, Any]) -> None:
        if msg.get("cmd") == "session" and msg.get("kind") == "recording":
            self.recording = msg.get("recording") if msg.get("event") == "open" else None
        try:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass   # between a crash and the restart: the watch thread restarts it

    def crash_and_restart(self) -> None:
        with self.lock:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
            self.down.append(time.monotonic())
            self.start()

    def _watch(self) -> None:
        while not self.stopping:
            time.sleep(0.5)
            with self.lock:
                if self.stopping or self.proc is None or self.proc.poll() is None:
                    continue
                self.unplanned_exits += 1
                self.down.append(time.monotonic())
                log(f"worker exited by itself ({self.proc.returncode}); restarting it")
                time.sleep(1.0)
                self.start()

    def stop(self) -> int | None:
        with self.lock:
            self.stopping = True
        if self.proc is None:
            return None
        self.send({"cmd": "stop"})
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class SessionLines:
    """Complete lines of the session logs seen on disk, to find any that vanish later."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.expected: set[tuple[str, str]] = set()
        self.lost: set[tuple[str, str]] = set()
        self.checked = 0
        self.deleted = 0
        self.lock = threading.Lock()

    def read(self) -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for p in sorted(self.folder.glob("*.merlb.jsonl")) if self.folder.is_dir() else []:
            try:
                data = p.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            complete = data[: data.rfind("\n") + 1]
            out.update((p.name, line) for line in complete.splitlines() if line.strip())
        return out

    def snapshot(self) -> None:
        with self.lock:
            self.expected |= self.read()

    def check(self) -> set[tuple[str, str]]:
        """Lines seen before and missing now join `lost`; returns what is on disk now."""
        now = self.read()
        self.lost |= self.expected - now
        self.checked += len(self.expected | now)
        self.expected.clear()
        return now

    def delete(self) -> None:
        """Delete the folder; its lines are the fault's doing, not a loss (no snapshot in between)."""
        with self.lock:
            self.deleted += len(self.check())
            shutil.rmtree(self.folder)


def make_registry(root: Path) -> Path:
    """A registry whose active version is a copy of the shipped model (a personalized model's files)."""
    from obs_merlb import registry

    tmp = registry.new_temp_dir(root)
    shutil.copytree(registry.default_model_dir() or registry.shipped_path("model"), tmp, dirs_exist_ok=True)
    version = registry.commit_temp_dir(tmp, root)
    registry.set_active(version.name, "faults benchmark", root)
    return version.path


def mount_tmpfs(folder: Path) -> str | None:
    """Mount a small tmpfs; returns why not, or None."""
    if os.geteuid() != 0:
        return "not root: a full disk needs a tmpfs mount"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount tmpfs failed: {r.stderr.strip()[:200]}"


def fill(folder: Path) -> Path:
    filler = folder / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError:
            pass
    return filler


def start_obs(base: Path, home: Any = None) -> tuple[Any, Any] | str:
    """Real OBS under Xvfb (tests/obs_harness.py) in a fresh home or `home` again; (home, OBS) or why not."""
    if not (shutil.which("obs") and shutil.which("Xvfb")):
        return "obs or Xvfb not installed"
    try:
        from tests.obs_harness import ObsProcess, obs_home
    except ImportError as e:
        return f"OBS harness unavailable: {e}"
    home = home or obs_home(base)
    try:
        obs = ObsProcess(home)
        obs.__enter__()
    except BaseException as e:  # noqa: BLE001 - the harness skips (pytest) or times out
        return f"OBS did not start: {type(e).__name__}: {str(e)[:200]}"
    return home, obs


def kill_obs(obs: Any) -> None:
    os.killpg(obs.proc.pid, signal.SIGKILL)
    obs.proc.wait()
    obs.stop()   # OBS is gone already; this ends its Xvfb


def http_status(port: int, request: bytes, timeout: float = 5.0) -> int | None:
    """Send raw request bytes; the response's status code, or None when none came."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            head = s.recv(64).decode("latin-1")
        return int(head.split()[1]) if head.startswith("HTTP/") else None
    except (OSError, ValueError, IndexError):
        return None


def bad_requests(port: int, rounds: int) -> dict[str, Any]:
    """The burst; counts answers by status code (None: no answer) and WebSocket errors."""
    from websockets.sync.client import connect

    ws_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    requests = [
        b"GET /overlay.html HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        f"GET /overlay.html HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n".encode(),
        f"GET /overlay.html HTTP/1.1\r\nHost: 127.0.0.1:{port}@evil.example\r\n\r\n".encode(),
        f"GET /../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
        f"GET /static/..%2f..%2f..%2fpyproject.toml HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(),
        (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Origin: https://evil.example\r\n{ws_key}\r\n").encode(),
    ]
    idle = []
    for _ in range(50):   # connections that say nothing while the rest goes on
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    codes: dict[str, int] = {}
    ws_errors = 0
    try:
        for _ in range(rounds):
            for req in requests:
                code = str(http_status(port, req))
                codes[code] = codes.get(code, 0) + 1
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, max_size=None) as ws:
            junk = ["not json", "[" * 5000 + "]" * 5000, json.dumps({"cmd": "nope"}),
                    json.dumps({"v": 1, "type": "command", "cmd": "set", "key": "threshold", "value": 7})]
            for _ in range(rounds):
                for msg in junk:
                    ws.send(msg)
            ws.send("x" * (128 * 1024))   # over the server's command limit: it closes this connection
            try:
                while True:
                    ev = json.loads(ws.recv(timeout=2))
                    ws_errors += ev.get("type") == "error"
            except Exception:  # noqa: BLE001 - the close after the oversized message, or quiet
                pass
    finally:
        for s in idle:
            s.close()
    return {"http": codes, "ws_error_events": ws_errors, "idle_connections": len(idle)}


def log_lines(path: Path) -> list[tuple[float, str]]:
    """(wall time, line) of the worker's log at WARNING and above."""
    out = []
    for p in sorted(path.parent.glob(path.name + "*"), reverse=True):   # rotated files first
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            m = LOG_TIME.match(line)
            if m and m.group(3) in ("WARNING", "ERROR", "CRITICAL"):
                wall = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
                out.append((wall, line[m.end():]))
    return out


def gaps(times: list[float], down: list[float], t0: float, t_end: float) -> tuple[float, float, list[float]]:
    """(longest gap while a worker ran, when, restart times): a gap that holds a restart is the restart's."""
    restarts = []
    for d in down:
        up = next((t for t in times if t > d), None)
        restarts.append(round((up if up is not None else t_end) - d, 1))
    longest, at = 0.0, 0.0
    for a, b in zip(times, times[1:]):
        if any(a <= d < b for d in down):
            continue
        if b - a > longest:
            longest, at = b - a, a - t0
    return longest, at, restarts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=None, help="length of the run (default 4; --short: 1)")
    p.add_argument("--hold", type=float, default=None, help="seconds a full disk or a dead OBS lasts "
                                                            "(default 20; --short: 4)")
    p.add_argument("--short", action="store_true", help="a one-minute run without OBS (the test's)")
    p.add_argument("--no-obs", action="store_true", help="skip the OBS fault")
    p.add_argument("--json", action="store_true", help="print only the JSON")
    p.add_argument("--keep", help="folder to keep the sessions, logs and status in (default: a temporary one)")
    args = p.parse_args(argv)
    minutes = args.minutes if args.minutes is not None else (1.0 if args.short else 4.0)
    hold = args.hold if args.hold is not None else (4.0 if args.short else 20.0)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="merlb-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    # Stopped from outside (a CI timeout): still stop the worker and OBS, unmount, clean up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return soak(args, work, minutes, hold)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def soak(args: argparse.Namespace, work: Path, minutes: float, hold: float) -> int:
    """The run itself, in `work`; the worker, OBS and the tmpfs are gone when it returns or raises."""
    import psutil

    from obs_merlb.model.config import ONNX_SEQUENCE
    from obs_merlb.registry import shipped_path
    from obs_merlb.train.personalize.windows import read_session_log

    disk, data = work / "disk", work / "data"
    for d in (disk, data):
        d.mkdir(exist_ok=True)
    disk_skip = mount_tmpfs(disk)
    sessions = disk / "sessions"
    sessions.mkdir()
    active = make_registry(work / "models")
    (work / "config.toml").write_text("")
    worker_log, status = data / "worker.log", data / "status.json"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MERLB_CONFIG": str(work / "config.toml"),
           "MERLB_MODELS": str(work / "models")}
    env.pop("MERLB_OBS_PASSWORD", None)
    cmd = [sys.executable, "-m", "obs_merlb", "--log-file", str(worker_log), "live",
           "--video", str(shipped_path("demo.mp4")), "--loop", "--port", str(port), "--status-file", str(status),
           "--sessions-dir", str(sessions), "--control", "stdin"]
    obs_skip: str | None = "--no-obs" if args.no_obs else ("--short: OBS takes ~20 s to start" if args.short else None)
    obs: Any = None
    home: Any = None
    if obs_skip is None:
        log("starting OBS under Xvfb")
        started = start_obs(work / "obs")
        if isinstance(started, str):
            obs_skip = started
        else:
            home, obs = started
            port_obs, password = home.websocket()
            cmd += ["--obs-port", str(port_obs)]
            env["MERLB_OBS_PASSWORD"] = password or ""
    worker = Worker(cmd, env, data / "worker.out")
    lines = SessionLines(sessions)
    recording = str(work / "recordings" / "soak.mkv")
    t0 = time.monotonic()
    end = t0 + minutes * 60.0
    try:
        worker.start()
        worker.send({"cmd": "session", "event": "open", "kind": "recording", "recording": recording,
                     "wall": time.time()})
        events = Events(f"ws://127.0.0.1:{port}/ws")
        while not events.state_times and time.monotonic() < t0 + 120:
            time.sleep(0.2)
        if not events.state_times:
            worker.stop()
            raise SystemExit(f"faults: the worker sent no event in 120 s; see {data / 'worker.out'}")
        warm = time.monotonic()
        log(f"worker running after {warm - t0:.1f} s; overlay on port {port}")
        status_age = [0.0]
        stop_monitor = threading.Event()

        def monitor() -> None:
            last_progress = last_snapshot = time.monotonic()
            while not stop_monitor.wait(0.5):
                now = time.monotonic()
                try:
                    doc = json.loads(status.read_text())
                    down_recently = any(now - d < 30 for d in worker.down)
                    if doc.get("running") and not down_recently:
                        status_age[0] = max(status_age[0], time.time() - float(doc["wall"]))
                except (OSError, ValueError, KeyError, TypeError):
                    pass
                if now - last_snapshot >= SNAPSHOT_S:
                    last_snapshot = now
                    lines.snapshot()
                if now - last_progress >= PROGRESS_S:
                    last_progress = now
                    longest, _, _ = gaps(events.state_times, worker.down, t0, now)
                    log(f"{now - t0:.0f}/{end - t0:.0f} s, {events.count} events, longest gap {longest:.1f} s, "
                        f"{worker.starts - 1} restarts")

        threading.Thread(target=monitor, name="faults-monitor", daemon=True).start()

        def disk_full() -> None:
            filler = fill(disk)
            time.sleep(hold)
            filler.unlink()

        def sessions_deleted() -> None:
            lines.delete()

        def obs_killed() -> None:
            nonlocal obs
            kill_obs(obs)
            time.sleep(hold)
            started = start_obs(work / "obs", home)   # the same home: the port and password the worker knows
            obs = None if isinstance(started, str) else started[1]
            if obs is None:
                log(f"OBS did not come back: {started}")

        def corrupt_model() -> None:
            seq = active / ONNX_SEQUENCE
            seq.write_bytes(seq.read_bytes()[: seq.stat().st_size // 2])
            worker.send({"cmd": "tag", "name": "before-crash", "source": "hotkey"})
            if not events.wait_tag("before-crash"):
                log("the tag never reached the overlay")
            worker.crash_and_restart()
            while events.first_state_after(worker.down[-1]) is None and time.monotonic() < end + 60:
                time.sleep(0.2)
            worker.send({"cmd": "tag", "name": "after-restart", "source": "hotkey"})

        burst: dict[str, Any] = {}

        def requests_burst() -> None:
            burst.update(bad_requests(port, rounds=20 if args.short else 80))

        faults = [
            Fault("bad_requests", "refused HTTP requests, malformed WebSocket commands, 50 idle connections",
                  r"overlay: refused", requests_burst),
            Fault("disk_full", f"a {TMPFS_MB} MB tmpfs under the sessions folder, filled for {hold:g} s",
                  r"No space left on device", disk_full, disk_skip),
            Fault("sessions_deleted", "rm -r of the sessions folder while it is written",
                  r"was deleted; starting it again", sessions_deleted),
            Fault("obs_killed", f"SIGKILL to real OBS under Xvfb, started again {hold:g} s later",
                  r"obs_merlb\.obs_client: ", obs_killed, obs_skip),
            Fault("corrupt_model", "the active personalized model's sequence.onnx cut in half, a tag, SIGKILL "
                                   "to the worker and a restart into the same recording", r"cannot be used",
                  corrupt_model),
        ]
        todo = [f for f in faults if f.skipped is None]
        span = max(1.0, end - 20.0 - hold - (warm + 5.0))
        for i, f in enumerate(todo):
            f.at = warm + 5.0 + span * i / max(1, len(todo) - 1) if len(todo) > 1 else warm + 5.0
        for f in todo:
            while time.monotonic() < f.at:
                time.sleep(0.1)
            lines.snapshot()
            log(f"fault {f.name}: {f.how}")
            f.start, f.start_wall = time.monotonic(), time.time()
            assert f.run is not None
            f.run()
            f.end, f.end_wall = time.monotonic(), time.time()
        while time.monotonic() < end:
            time.sleep(0.2)
        rc = worker.stop()
        stop_monitor.set()
        events.stop.set()
        t_end = time.monotonic()
        final = lines.check()
        lost = lines.lost
        if args.keep:
            shutil.copytree(sessions, data / "sessions", dirs_exist_ok=True)   # the tmpfs goes below
        tags_paired: list[str] = []
        markers: dict[str, dict[str, int]] = {}
        worker_lost = 0
        for name in sorted({n for n, _ in final}):
            evs = [json.loads(line) for n, line in final if n == name and line.startswith("{")]
            for ev in evs:
                if ev.get("type") == "session":
                    m = markers.setdefault(name, {})
                    m[ev.get("event")] = m.get(ev.get("event"), 0) + 1
                    worker_lost += int(ev.get("lost") or 0)
        rec_log = sessions / "soak.merlb.jsonl"
        if rec_log.is_file():
            tags_paired = [n for _, n in read_session_log(rec_log)[0]]
    finally:
        worker.stop()   # at once after a failure; a second call after the run's own stop does nothing
        if obs is not None:
            obs.stop()
        if disk_skip is None:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)

    wlog = log_lines(worker_log)
    for i, f in enumerate(faults):
        if f.skipped:
            continue
        until = next((g.start_wall for g in faults[i + 1:] if not g.skipped), float("inf"))
        f.named = [line for wall, line in wlog if f.start_wall - 1 <= wall < until and re.search(f.pattern, line)]
    longest, longest_at, restarts = gaps(events.state_times, worker.down, t0, t_end)
    per_fault = {}
    for f in todo:
        window = [t for t in events.state_times if f.start - 1 <= t <= f.end + 10]
        per_fault[f.name] = gaps(window, worker.down, t0, t_end)[0] if len(window) > 1 else None

    def named_once(f: Fault) -> bool:
        # Refused requests are named once per kind of refusal (Host, repeated header, Origin).
        if f.name != "bad_requests":
            return len(f.named) == 1
        kinds = [re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "_", line) for line in f.named]
        return bool(kinds) and len(set(kinds)) == len(kinds)

    doc = {
        "benchmark": "faults", "cpus": psutil.cpu_count(), "minutes": minutes, "hold_s": hold,
        "command": "python benchmarks/faults.py" + (" --short" if args.short else f" --minutes {minutes:g}"),
        "worker": "merlb live --video demo.mp4 --loop --status-file --control stdin --log-file"
                  + (" --obs-port" if obs_skip is None else ""),
        "worker_exit_code": rc,
        "events_delivered": events.count, "state_events": len(events.state_times),
        "longest_gap_s": round(longest, 2), "longest_gap_at_s": round(longest_at, 1),
        "restarts": worker.starts - 1, "unplanned_exits": worker.unplanned_exits, "restart_s": restarts,
        "longest_status_age_s": round(status_age[0], 2),
        # OBS's own load (software rendering on the same cores) makes the worker lower its rate.
        "rate_changes": sum("analysis rate" in line for line in worker_log.read_text(errors="replace").splitlines()),
        "session_log": {"lines_checked": lines.checked, "lines_lost": len(lost),
                        "lines_deleted_by_the_fault": lines.deleted, "worker_reported_lost": worker_lost,
                        "markers": markers, "tags_paired_with_the_recording": tags_paired},
        "bad_requests": burst,
        "faults": [{"name": f.name, "how": f.how, "skipped": f.skipped,
                    "at_s": None if f.skipped else round(f.start - t0, 1),
                    "longest_gap_s": None if f.skipped or per_fault.get(f.name) is None
                    else round(per_fault[f.name], 2),
                    "named": len(f.named), "log": [line[:160] for line in f.named[:4]]} for f in faults],
    }
    doc["targets"] = {
        "no_freeze_over_5s": longest <= FREEZE_S,
        "nothing_lost": not lost and worker_lost == 0 and "before-crash" in tags_paired,
        "each_fault_named_once": all(named_once(f) for f in todo),
    }
    if lost:
        doc["session_log"]["lost_examples"] = [line[:160] for _, line in sorted(lost)[:3]]
    print(json.dumps(doc, indent=1))
    if not args.json:
        for f in doc["faults"]:
            log(f"{f['name']:<17} " + (f"skipped: {f['skipped']}" if f["skipped"] else
                                        f"named {f['named']}x, longest gap {f['longest_gap_s']} s"))
        log(f"targets: {doc['targets']}")
    return 0 if all(doc["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
