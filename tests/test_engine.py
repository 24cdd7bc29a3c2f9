"""`merlb live` end to end: a subprocess serving events, read over the WebSocket.

Uses a freshly initialised, seeded model (tests/merlb_testmodel.py): no
trained weights ship yet, and what is tested here (events flow, hiding,
robustness, shutdown) does not depend on them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from merlb_testmodel import fresh_model_dir, make_clip

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    out = {
        "noface": make_clip(d / "noface.mp4", audio="tone"),
        "silent": make_clip(d / "silent.mp4", face_from=DEMO, audio="silence"),
        "noaudio": make_clip(d / "noaudio.mp4", face_from=DEMO, audio=None),
    }
    ts = make_clip(d / "clip.ts", face_from=DEMO, seconds=3.0, container="mpegts")
    data = ts.read_bytes()
    (d / "truncated.ts").write_bytes(data[: int(len(data) * 0.6)])
    out["truncated_ts"] = d / "truncated.ts"
    data = DEMO.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])   # moov atom lost
    out["truncated_mp4"] = d / "truncated.mp4"
    return out


class Live:
    """A `merlb live` subprocess and a WebSocket reader collecting its events."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MERLB_CONFIG": str(tmp / "config.toml"),
               "PYTHONUNBUFFERED": "1"}
        env.pop("MERLB_OBS_PASSWORD", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "obs_merlb", "live", "--port", "0", "--sessions-dir", str(tmp / "sessions"),
             "--status-file", str(tmp / "status.json"), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
        self.events: list[dict[str, Any]] = []
        self.ws_url: str | None = None
        self.stderr = ""
        for line in self.proc.stdout:
            if line.startswith("overlay:"):
                self.ws_url = line.split("events:")[1].strip()
                break
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        if self.ws_url:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
            assert self._ready.wait(15), "could not connect to the event WebSocket"

    def _read(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.ws_url, open_timeout=10) as ws:
                self.ws = ws
                self._ready.set()
                for msg in ws:
                    self.events.append(json.loads(msg))
        except Exception:
            self._ready.set()

    def send(self, msg: dict[str, Any]) -> None:
        self.ws.send(json.dumps(msg))

    def stdin(self, msg: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def wait_for(self, pred, timeout: float = 30.0) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for ev in list(self.events):
                if pred(ev):
                    return ev
            if self.proc.poll() is not None and not (self._reader and self._reader.is_alive()):
                break
            time.sleep(0.05)
        return None

    def finish(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.stderr = self.proc.stderr.read()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return rc

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_]


def test_live_demo_events_commands_and_sigterm(model_dir: Path, tmp_path: Path) -> None:
    live = Live(["--video", str(DEMO), "--model", str(model_dir)], tmp_path)
    assert live.ws_url, live.proc.stderr.read()
    hello = live.wait_for(lambda e: e["type"] == "hello")
    assert hello and hello["v"] == 1 and hello["config"]["rate"] == 15.0
    assert live.wait_for(lambda e: e["type"] == "state" and e["seq"] >= 20, timeout=40)
    live.send({"v": 1, "type": "command", "cmd": "tag", "name": "hype"})
    live.stdin({"cmd": "tag", "name": "from-hotkey", "source": "hotkey"})
    live.send({"v": 1, "type": "command", "cmd": "set", "key": "threshold", "value": 0.3})
    live.send({"v": 1, "type": "command", "cmd": "set", "key": "rate", "value": 500})   # rejected
    assert live.wait_for(lambda e: e["type"] == "tag" and e["name"] == "from-hotkey")
    assert live.wait_for(lambda e: e["type"] == "hello" and e["config"]["threshold"] == 0.3)
    assert live.wait_for(lambda e: e["type"] == "error" and "rate" in e["message"])
    assert live.wait_for(lambda e: e["type"] == "health", timeout=5)
    live.proc.send_signal(signal.SIGTERM)
    assert live.finish(30) == 0
    states = live.of("state")
    assert any(s["face_present"] for s in states)
    lat = [s["latency_ms"] for s in states if s["latency_ms"] is not None]
    assert np.percentile(lat, 95) < 500      # loose: 2 shared cores, other tests running
    ts = [s["t"] for s in states]
    assert ts == sorted(ts) and ts[0] < 1.0   # stream time is the media time
    health = live.of("health")[-1]
    assert health["backend"] == "onnxruntime-cpu" and health["target_fps"] == 15.0
    # The session log got every event and the tag, and was closed.
    logs = list((tmp_path / "sessions").glob("*.merlb.jsonl"))
    assert len(logs) == 1
    lines = [json.loads(x) for x in logs[0].read_text().splitlines()]
    assert any(e["type"] == "tag" and e["name"] == "hype" for e in lines)
    assert lines[-1]["type"] == "session" and lines[-1]["event"] == "close"
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["running"] is False and status["state"] == "stopped"


def test_user_head_reaches_state_events(tmp_path: Path) -> None:
    """A personalized model's `user` head (the streamer's own classes) is published under `heads`."""
    from obs_merlb.labels import AROUSAL, EMOTIONS, VALENCE

    # As `merlb personalize` builds it from the shipped model: no behaviour head, a user head.
    model = fresh_model_dir(tmp_path / "model", heads={
        "emotion": list(EMOTIONS), "valence": list(VALENCE), "arousal": list(AROUSAL),
        "behaviour": [], "user": ["hyped", "tilted"]})
    # A low threshold: this random model's two-class head sits near 0.5, under the
    # two-class threshold that the default 0.40 becomes (0.65, state.head_threshold).
    live = Live(["--video", str(DEMO), "--model", str(model), "--no-session", "--no-body", "--threshold", "0.1"],
                tmp_path)
    assert live.ws_url, live.proc.stderr.read()
    hello = live.wait_for(lambda e: e["type"] == "hello")
    assert hello and hello["config"]["heads"] == {"user": ["hyped", "tilted"]}
    # The default dwell is 1 s: wait until the user label has settled on a class.
    sure = live.wait_for(lambda e: e["type"] == "state" and e["heads"]["user"]["label"] != "uncertain",
                         timeout=60)
    live.proc.send_signal(signal.SIGTERM)
    assert live.finish(30) == 0, live.stderr
    assert sure, "no state event named a user class"
    states = live.of("state")
    assert states and all(set(s["heads"]) == {"user"} for s in states)   # empty behaviour: not published
    for s in states:
        user = s["heads"]["user"]
        assert user["label"] in ("hyped", "tilted", "uncertain")
        assert set(user["probs"]) == {"hyped", "tilted"}
        assert sum(user["probs"].values()) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= user["confidence"] <= 1.0
        assert set(s["probs"]) == set(EMOTIONS)                          # the emotion fields as before
    assert sure["heads"]["user"]["confidence"] == pytest.approx(
        sure["heads"]["user"]["probs"][sure["heads"]["user"]["label"]], abs=1e-3)


def test_config_file_gives_defaults_and_flags_win(model_dir: Path, tmp_path: Path) -> None:
    from obs_merlb import config as cfgmod

    # What the panel saves; [sources] is ignored for a --video run (another setup).
    cfgmod.update_section("engine", {"threshold": 0.07, "smoothing": 0.5, "rate": 6.0, "min_dwell_s": 0.25},
                          tmp_path / "config.toml")
    cfgmod.update_section("sources", {"camera": "Webcam", "game": "Game", "mic": ""}, tmp_path / "config.toml")
    live = Live(["--video", str(DEMO), "--model", str(model_dir), "--no-session", "--smoothing", "0.6"],
                tmp_path)
    assert live.ws_url, live.proc.stderr.read()
    hello = live.wait_for(lambda e: e["type"] == "hello")
    live.proc.send_signal(signal.SIGTERM)
    assert live.finish(30) == 0, live.stderr
    cfg = hello["config"]
    assert (cfg["threshold"], cfg["rate"], cfg["min_dwell_s"]) == (0.07, 6.0, 0.25)
    assert cfg["smoothing"] == 0.6                       # the flag wins over the file
    assert not any(e["type"] == "error" and e["where"] == "obs" for e in live.events)


def test_sources_from_config_apply_to_obs_runs_only() -> None:
    import argparse

    from obs_merlb.live import add_arguments, apply_config_defaults

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = {"engine": {"rate": "fast"}, "sources": {"camera": "Webcam", "game": "Game", "mic": ""}}
    a = parser.parse_args([])
    problems = apply_config_defaults(a, cfg)
    assert (a.obs_source, a.game_source, a.mic) == ("Webcam", "Game", "none")   # "" = no microphone
    assert a.rate == 15.0 and problems and "rate" in problems[0]
    a = parser.parse_args(["--obs-source", "Cam", "--mic", "USB", "--rate", "4"])
    apply_config_defaults(a, cfg)
    assert (a.obs_source, a.game_source, a.mic, a.rate) == ("Cam", "Game", "USB", 4.0)
    a = parser.parse_args(["--camera", "0"])
    apply_config_defaults(a, cfg)
    assert (a.obs_source, a.game_source, a.mic) == (None, None, None)


def test_no_camera_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "MERLB_CONFIG": str(tmp_path / "none.toml")}
    r = subprocess.run([sys.executable, "-m", "obs_merlb", "live"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode != 0 and "no camera" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_no_face_is_hidden(model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    live = Live(["--video", str(clips["noface"]), "--model", str(model_dir), "--no-session"], tmp_path)
    assert live.finish(60) == 0, live.stderr   # the file ends: the worker exits cleanly
    states = live.of("state")
    assert len(states) >= 10
    assert not any(s["face_present"] for s in states)
    assert not any(s["visible"] for s in states)
    assert all(s["contributions"]["face"] == 0.0 for s in states)


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["silent", "noaudio"])
def test_silent_or_missing_audio(model_dir: Path, clips: dict[str, Path], tmp_path: Path, clip: str) -> None:
    live = Live(["--video", str(clips[clip]), "--model", str(model_dir), "--no-session"], tmp_path)
    assert live.finish(60) == 0, live.stderr
    states = live.of("state")
    assert len(states) >= 10
    assert not any(s["speech"] for s in states)
    assert all(s["contributions"]["voice"] == 0.0 for s in states)
    assert any(s["face_present"] for s in states)
    assert not live.of("error")


@pytest.mark.slow
def test_truncated_stream_keeps_what_decoded(model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    live = Live(["--video", str(clips["truncated_ts"]), "--model", str(model_dir), "--no-session"], tmp_path)
    assert live.finish(60) == 0, live.stderr
    assert len(live.of("state")) >= 5


@pytest.mark.slow
def test_unreadable_file_is_a_clear_error(model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    live = Live(["--video", str(clips["truncated_mp4"]), "--model", str(model_dir), "--no-session"], tmp_path)
    rc = live.finish(60)
    assert rc == 2
    assert "truncated.mp4" in live.stderr and "Traceback" not in live.stderr


@pytest.mark.slow
def test_obs_unreachable_reports_and_retries(model_dir: Path, clips: dict[str, Path], tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env_pw = "hunter2-secret"
    os.environ["MERLB_OBS_PASSWORD"] = env_pw
    try:
        live = Live(["--video", str(DEMO), "--model", str(model_dir), "--no-session",
                     "--obs-port", str(port)], tmp_path)
    finally:
        os.environ.pop("MERLB_OBS_PASSWORD", None)
    first = live.wait_for(lambda e: e["type"] == "error" and e["where"] == "obs", timeout=30)
    assert first and "cannot reach OBS" in first["message"] and "retrying" in first["message"]
    # Backoff 1 s, 2 s...: a second attempt within a few seconds, and analysis goes on meanwhile.
    assert live.wait_for(lambda e: e["type"] == "error" and e["where"] == "obs" and e is not first
                         and e["message"] != "", timeout=15)
    assert live.wait_for(lambda e: e["type"] == "state", timeout=10)
    live.proc.stdin.close()    # EOF on stdin (OBS went away) shuts the worker down
    assert live.finish(30) == 0
    assert len([e for e in live.of("error") if e["where"] == "obs"]) >= 2
    assert env_pw not in live.stderr and all(env_pw not in json.dumps(e) for e in live.events)


class _VanishingMic:
    """Stands in for the sounddevice module: there is no audio device on this
    machine, so a mocked PortAudio stream delivers speech-like noise, then the
    device disappears (callbacks stop, the device leaves the list)."""

    def __init__(self) -> None:
        self.present = True
        self.streams: list[Any] = []

    def query_devices(self):
        return [{"name": "USB Mic", "max_input_channels": 1, "default_samplerate": 16000}] if self.present else []

    def InputStream(self, callback, samplerate, blocksize, **kw):
        mic = self

        class Stream:
            active = True

            def start(self_s):
                def pump():
                    rng = np.random.default_rng(0)
                    while self_s.active and mic.present:
                        callback((0.1 * rng.standard_normal((blocksize, 1))).astype(np.float32), blocksize, None, None)
                        time.sleep(blocksize / samplerate)
                    self_s.active = False
                threading.Thread(target=pump, daemon=True).start()

            def stop(self_s):
                self_s.active = False

            def close(self_s):
                self_s.active = False

        s = Stream()
        self.streams.append(s)
        return s


def test_mic_that_vanishes_mid_run(model_dir: Path) -> None:
    from obs_merlb.capture.base import VideoFrame
    from obs_merlb.capture.mic import MicSource
    from obs_merlb.capture.feeds import SourceFeed
    from obs_merlb.engine import Engine

    frames = []
    import av

    with av.open(str(DEMO)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 2 == 0:
                frames.append(f.to_ndarray(format="rgb24"))
            if len(frames) >= 20:
                break

    class Camera:
        """Live-clocked frames (time.monotonic), as a camera source gives them."""

        def __init__(self) -> None:
            self.i = 0

        def read_latest(self):
            self.i += 1
            return VideoFrame(time.monotonic(), frames[self.i % len(frames)])

        def close(self) -> None:
            pass

    backend = _VanishingMic()
    mic = MicSource("USB", backend=backend, stall_s=0.3, poll_s=0.1)
    events: list[dict[str, Any]] = []
    engine = Engine(model_dir, rate=10, highlights=False)
    engine.add_sink(events.append)
    engine.start_threads(SourceFeed(Camera(), mic))
    try:
        time.sleep(3.0)
        before = len([e for e in events if e["type"] == "state"])
        backend.present = False           # unplugged
        time.sleep(3.0)
        states = [e for e in events if e["type"] == "state"]
        assert before >= 5 and len(states) >= before + 10      # analysis kept going
        assert mic.status in ("reconnecting", "missing")
        errs = [e for e in events if e["type"] == "error" and e["where"] == "microphone"]
        assert errs and ("unplugged" in errs[0]["message"] or "no input device" in errs[0]["message"])
        assert not states[-1]["speech"]
        backend.present = True            # plugged back in: retried and running again
        deadline = time.monotonic() + 10
        while mic.status != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mic.status == "running"
    finally:
        engine.shutdown()
        mic.close()
