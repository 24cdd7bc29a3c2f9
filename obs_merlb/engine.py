"""The live engine: threads around the analyzer, commands, health and status.

Data flow, per docs/ARCHITECTURE.md:

    feed (capture thread) --latest frame--> analysis thread (<= rate Hz)
        Analyzer.tick -> `state` event -> sinks (overlay server, session log)
        Analyzer.after_event: pose, game thumbnail, finished voice steps

A frame that arrives while the analysis is busy replaces the waiting one
(latest-frame-wins): a slow tick skips frames, it never builds a queue, so
latency stays bounded. Beside the analysis thread run a control thread
(health events, status file, stall watch), an OBS stats thread (rate
control) and a stdin thread (the OBS script's commands). `merlb live`
(obs_merlb/live.py) wires this to its sources and servers;
`Engine.run_file` runs the same analyzer offline (`merlb analyze`).
A model with a voice prior or a voice reader adapts to the person it
hears: the engine keeps the profile's voice baseline and the reader's
statistics of the person (obs_merlb/baseline_store.py), hands them to each
analyzer it makes, saves them every 30 s of speech and at a clean stop,
and resets them on `reset_baseline`.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import psutil

from obs_merlb import __version__
from obs_merlb.analyzer import Analyzer, AudioView, FileRun, TickResult, iter_file_ticks
from obs_merlb.baseline_store import BaselineStore, prior_digest
from obs_merlb.capture.file import probe
from obs_merlb.files import write_atomic
from obs_merlb.highlights import HighlightActor, PeakDetector
from obs_merlb.inference import load_backend
from obs_merlb.perception.baseline import Prior
from obs_merlb.person_reader import population_digest
from obs_merlb.settings import DEFAULT_PROFILE, MIN_RATE_HZ, check_setting
from obs_merlb.model.config import CONFIG_FILE
from obs_merlb.obs_client import ObsRequestFailed, ObsUnavailable
from obs_merlb.state import (StateConfig, StateTracker, error_event, extra_heads, health_event,
                             hello_event, preview_event, session_event, tag_event)

log = logging.getLogger(__name__)

PREVIEW_HZ = 2.0


def cap_threads(n: int = 1) -> None:
    """Keep the worker off the cores the game and the encoder need.

    Env vars first (libraries read them when they start their pools), then the
    libraries already imported.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    cv2.setNumThreads(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)


class Engine:
    """The live engine: sources -> Analyzer -> events to sinks, plus control.

    `publish` sinks receive every event (the overlay server, the session log,
    a test's collector). Commands arrive through `command(msg, source)` from
    stdin, the WebSocket or a caller.
    """

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", rate: float = 15.0,
                 state_config: StateConfig | None = None, body: bool = True,
                 contributions: bool = True, highlights: bool = True,
                 obs: Any = None, status_file: str | Path | None = None,
                 session: Any = None, stall_s: float = 3.0, profile: str = DEFAULT_PROFILE,
                 reset_baseline: bool = False, baseline_dir: str | Path | None = None) -> None:
        """`profile`, `reset_baseline`, `baseline_dir`: whose voice baseline a model with a
        voice prior or a voice reader continues (settings.check_profile names), whether to
        forget it first, and where it is kept (default: beside the config file)."""
        cap_threads(1)
        self.model_dir = Path(model_dir)
        self.device = device
        self.target_rate = float(rate)
        self.rate = float(rate)
        self.state_config = state_config or StateConfig()
        self.body = body
        self.contributions = contributions
        self.stall_s = stall_s
        self.backend = load_backend(self.model_dir, device=device, threads=1)
        self.obs = obs
        self.status_file = Path(status_file) if status_file else None
        self.session = session
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        self.server: Any = None
        self.stop_event = threading.Event()
        self.paused = False
        self.last_error: str | None = None
        self.latencies: deque[float] = deque(maxlen=300)
        self.tick_times: deque[float] = deque(maxlen=64)
        self.ticks = 0
        self.last_state: dict[str, Any] | None = None
        self.obs_stats: dict[str, Any] | None = None
        self._generation = 0
        self._last_tick_mono = time.monotonic()
        self._analysis: threading.Thread | None = None
        self._analyzer: Analyzer | None = None
        self._feed: Any = None
        self._scene_feed: Any = None
        self._t0_mono: float | None = None
        self._lock = threading.Lock()
        self._stream_t = 0.0
        self._hl = None
        self._detector = None
        if highlights:
            self._detector = PeakDetector()
            self._hl = HighlightActor(self.publish, obs=obs)
        self._last_preview = 0.0
        self._health_prev_ticks = 0
        self._health_prev_mono = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._ready_analyzer: Analyzer | None = None
        self._last_frame_mono = 0.0
        self.text_overlay: Any = None   # a NativeTextOverlay (--overlay text); it is also a sink
        self.profile = profile
        self.baseline_dir = Path(baseline_dir) if baseline_dir is not None else None
        self._reset_baseline_at_start = reset_baseline
        # Opened at start_threads, when the model has a voice prior or a voice reader.
        self.baseline_store: BaselineStore | None = None

    # -- events
    def add_sink(self, sink: Callable[[dict[str, Any]], None]) -> None:
        self.sinks.append(sink)

    def publish(self, event: dict[str, Any]) -> None:
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception:  # one broken sink must not silence the others
                log.exception("event sink failed")

    def error(self, message: str, where: str) -> None:
        self.last_error = message
        self.publish(error_event(message, where))

    def config_dict(self) -> dict[str, Any]:
        return {**self.state_config.__dict__, "rate": self.target_rate, "effective_rate": self.rate,
                "device": self.device, "backend": self.backend.name, "model": str(self.model_dir),
                "paused": self.paused, "steps": self.backend.cfg.steps, "step_s": self.backend.cfg.step_s,
                "modalities": self.backend.modalities,
                # Which extra heads `state` events carry, so clients can offer them before the first one.
                "heads": {name: list(classes) for name, classes in extra_heads(self.backend.labels).items()}}

    def hello(self) -> dict[str, Any]:
        return hello_event("obs-merlb", __version__, self.config_dict())

    def stream_time(self) -> float:
        return self._stream_t

    # -- commands
    def command(self, msg: dict[str, Any], source: str = "api") -> None:
        """Apply one client command (see docs/ARCHITECTURE.md); bad ones become error events."""
        if not isinstance(msg, dict):
            return
        cmd = msg.get("cmd") or msg.get("type")
        try:
            if cmd == "tag":
                name = str(msg.get("name") or "tag")[:200]
                self.publish(tag_event(self.stream_time(), name, str(msg.get("source") or source)))
            elif cmd == "set":
                key, value = str(msg.get("key")), msg.get("value")
                if key == "rate":
                    self.target_rate = self.rate = check_setting("rate", value)
                else:
                    self.state_config.set(key, value)
                self.publish(self.hello())
            elif cmd == "pause":
                self.paused = True
                if self.last_state is not None:
                    self.publish({**self.last_state, "visible": False, "wall": time.time()})
                self.publish(self.hello())
            elif cmd == "resume":
                self.paused = False
                self.publish(self.hello())
            elif cmd == "reset_baseline":
                self.reset_baseline()
            elif cmd == "reload_model":
                path = msg.get("path") or str(self.model_dir)
                threading.Thread(target=self._reload, args=(str(path),), name="merlb-reload", daemon=True).start()
            elif cmd == "session":
                event = msg.get("event")
                recording = msg.get("recording") or msg.get("path")
                current = None if self.session is None else self.session.recording
                # Already this recording's log (a restarted worker got it at start, or the stream
                # started during the recording), or the stream stopped while the recording goes on.
                if not (recording and recording == current and
                        (event == "open" or msg.get("kind") == "streaming")):
                    self.rotate_session(recording if event == "open" else None)
            elif cmd in ("stop", "quit", "shutdown"):
                self.stop_event.set()
            elif cmd in ("subscribe", "unsubscribe", "ping"):
                pass  # topics are handled by the overlay server
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except (TypeError, ValueError) as e:
            self.error(f"command {cmd!r} rejected: {e}", "command")

    def _reload(self, path: str) -> None:
        try:
            if not (Path(path) / CONFIG_FILE).is_file():
                raise FileNotFoundError(f"{path} is not a saved model folder (no {CONFIG_FILE})")
            backend = load_backend(path, device=self.device, threads=1)
        except Exception as e:
            self.error(f"reload_model failed, keeping the current model: {e}", "reload_model")
            return
        self._save_baseline()
        store = self._baseline_for(backend)
        with self._lock:
            self.backend = backend
            self.model_dir = Path(path)
            self.baseline_store = store
            if self._analyzer is not None:
                self._analyzer.swap_backend(backend, *self._person_parts(store))
        log.info("model reloaded from %s (%s)", path, backend.name)
        self.publish(self.hello())

    # -- the person's voice baseline
    def _baseline_for(self, backend: Any, reset: bool = False) -> BaselineStore | None:
        """The profile's stored baseline for `backend`'s voice prior and statistics for its voice
        reader (the current store when both are the same); None for a model with neither, which
        takes raw voices. Reports what it had to do."""
        raw = getattr(backend.cfg, "voice_prior", None)
        reader = getattr(backend, "reader", None)
        if raw is None and reader is None:
            return None
        prior = None if raw is None else Prior.from_dict(raw)
        population = None if reader is None else reader.population
        current = self.baseline_store
        if (current is not None and not reset
                and current.digest == (None if prior is None else prior_digest(prior))
                and current.reader_digest == (None if population is None else population_digest(population))):
            return current
        store, problems, notes = BaselineStore.open(prior, self.profile, float(backend.cfg.step_s),
                                                    population=population, steps=int(backend.cfg.steps),
                                                    root=self.baseline_dir, reset=reset)
        for note in notes:
            log.warning("%s", note)
        for problem in problems:
            log.error("%s", problem)
            self.error(problem, "baseline")
        return store

    def open_baseline(self) -> BaselineStore | None:
        """Load (or, asked to, reset) the profile's voice baseline for the model; the live
        run does this at start, with its sinks in place to hear what went wrong."""
        reset = self._reset_baseline_at_start
        self.baseline_store = self._baseline_for(self.backend, reset=reset)
        if reset and self.baseline_store is None:
            log.info("--reset-baseline: this model takes raw voices and keeps no voice baseline")
        return self.baseline_store

    @staticmethod
    def _person_parts(store: BaselineStore | None) -> tuple[Any, Any]:
        """(voice baseline, reader statistics) an analyzer continues: the store's, else fresh ones."""
        return (None, None) if store is None else (store.baseline, store.person)

    def reset_baseline(self) -> None:
        """Forget the person's voice (the `reset_baseline` command); ValueError for a model that keeps
        nothing of it."""
        store = self.baseline_store
        if store is None:
            raise ValueError("this model takes raw voices: it keeps no voice baseline to reset")
        with self._lock:              # no voice step adds to it meanwhile
            problem = store.reset()
        log.info("voice baseline of profile %r reset: learning the voice afresh", self.profile)
        if problem:
            self.error(problem, "baseline")

    def _save_baseline(self, final: bool = True) -> None:
        """Save the baseline when changed (`final`) or after another 30 s of speech."""
        store = self.baseline_store
        if store is None or not (store.changed() if final else store.due()):
            return
        problem = store.save()
        if problem:
            log.error("%s", problem)
            self.error(problem, "baseline")

    def baseline_status(self) -> dict[str, Any] | None:
        return None if self.baseline_store is None else self.baseline_store.status()

    def rotate_session(self, recording: str | None) -> None:
        if self.session is None:
            return
        t = self.stream_time()
        old = self.session.close(t=t)
        if old is not None:
            self.publish(session_event("close", str(old), self.session.recording, t))
        path = self.session.open(recording=recording, t=t)
        self.publish(session_event("open", None if path is None else str(path), recording, t))

    # -- live run
    def _analysis_loop(self, generation: int) -> None:
        """Latest-frame-wins at <= rate Hz; exits when superseded (stall restart) or stopped."""
        feed = self._feed
        analyzer = self._ready_analyzer
        self._ready_analyzer = None
        if analyzer is None:
            try:
                analyzer = self._new_analyzer()
            except Exception as e:
                self.error(f"cannot start perception: {e}", "perception")
                self.stop_event.set()
                return
        self._analyzer = analyzer
        audio = AudioView(feed.audio_ring) if getattr(feed, "audio_ring", None) is not None else None
        last_seq = 0
        next_due = time.monotonic()
        try:
            while not self.stop_event.is_set() and generation == self._generation:
                now = time.monotonic()
                self._last_tick_mono = now if (self.paused or feed.seq == last_seq) else self._last_tick_mono
                if self.paused:
                    self.stop_event.wait(0.05)
                    continue
                if now < next_due:
                    self.stop_event.wait(min(0.05, next_due - now))
                    continue
                frame, cap_mono, seq = feed.latest()
                if frame is None or seq == last_seq:
                    if feed.done.is_set() and seq == last_seq:
                        break
                    self.stop_event.wait(0.002)
                    continue
                last_seq = seq
                self._last_frame_mono = time.monotonic()
                analyzer.rate_hint = self.rate
                if self._t0_mono is None:
                    # A file runs on its own media clock (stream time = media time);
                    # live sources on time.monotonic(), counted from the first frame.
                    self._t0_mono = getattr(feed, "clock_origin", None)
                    if self._t0_mono is None:
                        self._t0_mono = frame.t
                scene = None
                if self._scene_feed is not None:
                    sf, _, _ = self._scene_feed.latest()
                    scene = None if sf is None else sf.image
                with self._lock:
                    res = analyzer.tick(frame.image, frame.t, capture_mono=cap_mono, audio=audio,
                                        t_event=frame.t - self._t0_mono)
                if generation != self._generation:
                    return   # a stall restart took over while we were stuck: drop this result
                self._after_tick(res, frame)
                with self._lock:
                    analyzer.after_event(frame.image, frame.t, audio=audio, scene_image=scene)
                next_due = max(next_due + 1.0 / self.rate, time.monotonic() - 0.5 / self.rate)
        except Exception as e:
            log.exception("analysis failed")
            self.error(f"analysis failed: {type(e).__name__}: {e}", "analysis")
            self.stop_event.set()
        finally:
            if generation == self._generation and feed.done.is_set():
                self.stop_event.set()

    def _after_tick(self, res: TickResult, frame: Any = None) -> None:
        ev = res.event
        self._stream_t = ev["t"]
        self._last_tick_mono = time.monotonic()
        self.ticks += 1
        self.tick_times.append(self._last_tick_mono)
        if ev.get("latency_ms") is not None:
            self.latencies.append(ev["latency_ms"])
        self.last_state = ev
        self.publish(ev)
        if self._detector is not None and self._hl is not None:
            conf = ev["confidence"]
            for h in self._detector.update(ev["t"], ev["arousal_score"], ev["label"], conf):
                self._hl.fire(h)
        if frame is not None and self.server is not None and self.server.has_subscribers("preview"):
            now = time.monotonic()
            if now - self._last_preview >= 1.0 / PREVIEW_HZ:
                self._last_preview = now
                self.publish(make_preview(frame.image, res.face_box, res.landmarks))

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        dt = max(1e-3, now - self._health_prev_mono)
        fps = (self.ticks - self._health_prev_ticks) / dt
        self._health_prev_ticks, self._health_prev_mono = self.ticks, now
        lat = np.asarray(self.latencies, dtype=np.float64)
        p50 = float(np.percentile(lat, 50)) if lat.size else None
        p95 = float(np.percentile(lat, 95)) if lat.size else None
        cpu = self._proc.cpu_percent(None) if getattr(self, "_proc", None) is not None else 0.0
        dropped = int(getattr(self._feed, "dropped", 0) or 0) if self._feed is not None else 0
        return health_event(fps=fps, target_fps=self.rate, latency_ms_p50=p50, latency_ms_p95=p95,
                            cpu_percent=cpu, backend=self.backend.name, dropped=dropped,
                            last_error=self.last_error, obs=self.obs_stats, baseline=self.baseline_status())

    def _control_loop(self) -> None:
        """~1 Hz: health event, status file, session flush, stall watch."""
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        while not self.stop_event.wait(1.0):
            try:
                self.publish(self.health())
                if self.session is not None:
                    self.session.maybe_flush()
                self._save_baseline(final=False)
                self._write_status(running=True)
                self._watch_stall()
                feed_err = getattr(self._feed, "last_error", None)
                if feed_err and feed_err != getattr(self, "_reported_feed_err", None):
                    self._reported_feed_err = feed_err
                    self.error(feed_err, "capture")
                audio_err = getattr(getattr(self._feed, "audio_ring", None), "last_error", None)
                if audio_err and audio_err != getattr(self, "_reported_audio_err", None):
                    self._reported_audio_err = audio_err
                    self.error(audio_err, "microphone")
            except Exception:
                log.exception("control loop")

    def _watch_stall(self) -> None:
        """Stall detector: frames keep coming but no tick has finished for stall_s."""
        if self.paused or self._analysis is None:
            return
        stuck_for = time.monotonic() - self._last_tick_mono
        if stuck_for < self.stall_s or self._feed is None or self._feed.done.is_set():
            return
        self._generation += 1
        msg = (f"analysis stalled for {stuck_for:.1f} s (backend {self.backend.name}); "
               "restarting it on the CPU backend")
        log.error("%s", msg)
        self.error(msg, "inference")
        if self.device != "cpu":
            try:
                self.backend = load_backend(self.model_dir, device="cpu", threads=1)
                self.device = "cpu"
            except Exception as e:
                self.error(f"cannot load the CPU backend: {e}", "inference")
        self._last_tick_mono = time.monotonic()
        self._analysis = threading.Thread(target=self._analysis_loop, args=(self._generation,),
                                          name=f"merlb-analysis-{self._generation}", daemon=True)
        self._analysis.start()

    def _obs_loop(self, period_s: float = 2.0) -> None:
        """Protect the stream: poll GetStats; lower the rate when OBS skips frames, raise it back."""
        prev: dict[str, Any] | None = None
        healthy_since = time.monotonic()
        while not self.stop_event.wait(period_s):
            try:
                s = self.obs.request("GetStats")
            except (ObsUnavailable, ObsRequestFailed):
                self.obs_stats = None
                prev = None
                continue
            stats = {"cpu": s.get("cpuUsage"), "active_fps": s.get("activeFps"),
                     "render_ms": s.get("averageFrameRenderTime"),
                     "render_skipped": s.get("renderSkippedFrames"), "render_total": s.get("renderTotalFrames"),
                     "output_skipped": s.get("outputSkippedFrames"), "output_total": s.get("outputTotalFrames")}
            struggling = False
            if prev is not None:
                for kind in ("render", "output"):
                    ds = (stats[f"{kind}_skipped"] or 0) - (prev[f"{kind}_skipped"] or 0)
                    dt = (stats[f"{kind}_total"] or 0) - (prev[f"{kind}_total"] or 0)
                    ratio = ds / dt if dt > 0 else 0.0
                    stats[f"{kind}_skipped_pct"] = round(100.0 * ratio, 2)
                    struggling |= ds > 0 and ratio > 0.005
            struggling |= (stats["cpu"] or 0.0) > 90.0
            prev = stats
            self.obs_stats = stats
            rate = rate_control(self.rate, self.target_rate, struggling,
                                time.monotonic() - healthy_since)
            if struggling:
                healthy_since = time.monotonic()
            if rate != self.rate:
                src = getattr(self._feed, "source", None)
                if hasattr(src, "set_rate"):
                    src.set_rate(min(rate, 15.0))   # fewer screenshots = less work for OBS too
                log.info("analysis rate %.1f -> %.1f Hz (%s)", self.rate, rate,
                         "OBS is skipping frames" if struggling else "OBS recovered")
                self.rate = rate

    def _write_status(self, running: bool) -> None:
        """The OBS script's view of us (fields per obs_script.py's docstring), replaced atomically."""
        if self.status_file is None:
            return
        st = self.last_state or {}
        fps = len([t for t in self.tick_times if time.monotonic() - t <= 2.0]) / 2.0
        camera_ok = self._feed is not None and (time.monotonic() - self._last_frame_mono) < 3.0
        state = "running" if running else "stopped"
        if running and (self.ticks == 0 or not camera_ok):
            state = "starting" if self.ticks == 0 and not self.last_error else "error"
        data = {"v": 1, "state": state, "pid": os.getpid(), "running": running, "wall": time.time(),
                "fps": round(fps, 2), "target_fps": self.rate, "backend": self.backend.name,
                "obs_connected": None if self.obs is None else bool(self.obs.connected),
                "camera_ok": camera_ok, "face_present": st.get("face_present"), "label": st.get("label"),
                "visible": st.get("visible"), "last_error": self.last_error,
                "events_url": getattr(self.server, "ws_url", None), "url": getattr(self.server, "url", None),
                "paused": self.paused, "baseline": self.baseline_status(),
                "session": None if self.session is None or self.session.path is None else str(self.session.path)}
        try:
            # Rewritten every second: the next write repairs a lost one, so no fsync.
            write_atomic(self.status_file, json.dumps(data), durable=False)
        except OSError as e:
            log.warning("cannot write status file %s: %s", self.status_file, e)

    def _stdin_loop(self, stream: Any) -> None:
        """JSON lines from the OBS script; EOF means OBS (our parent) went away: shut down."""
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                self.error("stdin: a line that is not JSON was ignored", "stdin")
                continue
            if isinstance(msg, dict) and msg.get("type") == "tag" and "cmd" not in msg:
                msg = {"cmd": "tag", **msg}
            if isinstance(msg, dict) and msg.get("type") == "session" and "cmd" not in msg:
                msg = {"cmd": "session", **msg}
            self.command(msg, source=str(msg.get("source", "hotkey")) if isinstance(msg, dict) else "stdin")
        log.info("stdin closed: shutting down")
        self.stop_event.set()

    def _new_analyzer(self) -> Analyzer:
        baseline, person = self._person_parts(self.baseline_store)
        analyzer = Analyzer(self.backend, StateTracker(self.state_config), body=self.body,
                            contributions=self.contributions, baseline=baseline, person=person)
        if self._analyzer is not None:
            analyzer.state = self._analyzer.state   # keep the smoothed state across a restart
            analyzer.state.set_extra_heads(self.backend.labels)
        return analyzer

    def start_threads(self, feed: Any, scene_feed: Any = None, stdin: Any = None) -> None:
        self.open_baseline()
        # Perception (mediapipe graphs) takes a second or two to build: do it
        # before the source starts, so a paced file does not run ahead unseen.
        self._ready_analyzer = self._new_analyzer()
        self._feed = feed.start()
        self._scene_feed = scene_feed.start() if scene_feed is not None else None
        self._last_tick_mono = time.monotonic()
        self._analysis = threading.Thread(target=self._analysis_loop, args=(self._generation,),
                                          name="merlb-analysis", daemon=True)
        self._analysis.start()
        targets: list[tuple[Callable[..., None], tuple[Any, ...], str]] = [(self._control_loop, (), "merlb-control")]
        if self.obs is not None:
            targets.append((self._obs_loop, (), "merlb-obs-stats"))
        if stdin is not None:
            targets.append((self._stdin_loop, (stdin,), "merlb-stdin"))
        for fn, args, name in targets:
            th = threading.Thread(target=fn, args=args, name=name, daemon=True)
            th.start()
            self._threads.append(th)

    def shutdown(self) -> None:
        self.stop_event.set()
        if self._analysis is not None:
            self._analysis.join(timeout=5.0)
        for feed in (self._feed, self._scene_feed):
            if feed is not None:
                feed.close()
        if self._hl is not None:
            self._hl.close()
        if self.text_overlay is not None:
            # Blank the OBS sources: a stopped worker must not leave a stale emotion on stream.
            self.text_overlay.stop(timeout=3.0, clear=True)
        if self._analyzer is not None:
            self._analyzer.close()
        self._save_baseline()
        if self.session is not None:
            path = self.session.close(t=self.stream_time())
            if path is not None:
                self.publish(session_event("close", str(path), self.session.recording, self.stream_time()))
        if self.obs is not None:
            self.obs.close()
        self._write_status(running=False)

    # -- offline
    def run_file(self, path: str, *, on_tick: Callable[[dict[str, Any], float], None] | None = None,
                 loop_until_s: float | None = None, max_width: int | None = 640) -> FileRun:
        """Analyse a file as fast as possible (analyze, benchmarks). Publishes events to the sinks."""
        info = probe(path)
        run = FileRun(backend=self.backend.name)
        # A fresh voice baseline and reader statistics, unless the caller opened the profile's (open_baseline).
        baseline, person = self._person_parts(self.baseline_store)
        analyzer = Analyzer(self.backend, StateTracker(self.state_config), body=self.body,
                            contributions=self.contributions, clock=run.clock, baseline=baseline, person=person)
        self._analyzer = analyzer
        start = time.monotonic()
        last_t = 0.0
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for res, t in iter_file_ticks(analyzer, path, self.rate, max_width=max_width,
                                              loop_until_s=loop_until_s, clock=run.clock, stop=self.stop_event):
                    self._after_tick(res)
                    run.events.append(res.event) if loop_until_s is None else None
                    last_t = t
                    run.frames += 1
                    if on_tick is not None:
                        on_tick(res.event, t)
            run.warnings = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
            for w in run.warnings:
                self.error(w, "capture")
        finally:
            analyzer.close()
        run.wall_s = time.monotonic() - start
        run.duration = max(last_t, min(info.duration or last_t, last_t + 1.0 / self.rate))
        return run


def rate_control(rate: float, target: float, struggling: bool, healthy_for_s: float) -> float:
    """Back off fast (x0.6) when OBS skips frames; creep back (x1.25) after 10 s of health."""
    if struggling:
        return max(MIN_RATE_HZ * 2, round(rate * 0.6, 2))
    if rate < target and healthy_for_s >= 10.0:
        return min(target, round(rate * 1.25 + 0.25, 2))
    return rate


def make_preview(image: np.ndarray, box: Any, landmarks: Any, width: int = 320) -> dict[str, Any]:
    """A small JPEG for the panel's camera view, with the face box and landmarks scaled to it."""
    h, w = image.shape[:2]
    s = min(1.0, width / w)
    small = cv2.resize(image, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else image
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])
    jpeg = base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""
    b = None if box is None else [v * s for v in box]
    lm = None if landmarks is None else [[x * s, y * s] for x, y in np.asarray(landmarks)[::4]]
    return preview_event(jpeg, (small.shape[1], small.shape[0]), b, lm)
