"""The PyQt control panel, offscreen, against a real `merlb live` worker on a video file.

The worker runs the shipped model (assets/model) when there is one, so the
README's screenshot shows what a streamer sees; without it, a freshly
initialised, seeded model: its outputs are near-uniform but real, so they
move with the video, and a threshold change flips the label between an
emotion and "uncertain" exactly as with trained weights. A few tests run
against the real overlay server with events from obs_merlb.state instead,
to cover reconnecting without paying for a worker.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e '.[test]')")
pytest.importorskip("PyQt5.QtWidgets", reason="PyQt5 is not installed")

from PyQt5.QtCore import Qt  # noqa: E402

from obs_merlb import config as cfgmod  # noqa: E402
from obs_merlb.panel.app import WorkerProcess, free_port  # noqa: E402
from obs_merlb.panel.client import WorkerClient  # noqa: E402
from obs_merlb.panel.main_window import MainWindow  # noqa: E402
from tests.screenshots import screenshot_path  # noqa: E402

pytestmark = pytest.mark.qt

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"
HAVE_ENGINE = importlib.util.find_spec("obs_merlb.engine") is not None
needs_engine = pytest.mark.skipif(
    not HAVE_ENGINE or not DEMO.is_file(),
    reason="`merlb live` (obs_merlb/engine.py) or assets/demo.mp4 is not in this checkout yet")


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Private config and data folders, for the panel and the worker alike."""
    d = tmp_path_factory.mktemp("panel-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(d / "config"))
        mp.setenv("XDG_DATA_HOME", str(d / "data"))
        mp.setenv("XDG_CACHE_HOME", str(d / "cache"))
        mp.setenv("MERLB_CONFIG", str(d / "config" / "obs-merlb" / "config.toml"))
        yield d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model, else a seeded untrained one with its ONNX parts."""
    shipped = Path(__file__).resolve().parent.parent / "assets" / "model"
    if (shipped / "config.json").exists():
        return shipped
    torch = pytest.importorskip("torch")
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.export import export_onnx
    from obs_merlb.model.io import save_model
    from obs_merlb.model.merlb import MERLB

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = MERLB(MERLBConfig()).eval()
    save_model(model, d)
    export_onnx(model, d)
    return d


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"worker did not open port {port} within {timeout:.0f} s")


def _start_worker(model: Path, sessions: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = open(log_path, "ab")
    # stdin is a pipe held open, as the OBS script does: the worker treats
    # EOF as "my parent is gone", so it also dies with this test process.
    proc = subprocess.Popen(
        [sys.executable, "-m", "obs_merlb", "live", "--video", str(DEMO), "--loop", "--port", str(port),
         "--model", str(model), "--sessions-dir", str(sessions), "--no-body"],
        stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        _wait_port(port, proc, 90)
    except Exception:
        proc.kill()
        raise RuntimeError(f"worker failed to start; log:\n{log_path.read_text()[-3000:]}") from None
    return proc, port


@pytest.fixture(scope="module")
def engine(home: Path, model_dir: Path) -> Iterator[dict[str, Any]]:
    """A worker the panel did NOT start (stands in for the one OBS starts)."""
    if not HAVE_ENGINE or not DEMO.is_file():
        pytest.skip("`merlb live` is not in this checkout yet")
    sessions = home / "sessions"
    proc, port = _start_worker(model_dir, sessions, home / "worker.log")
    yield {"proc": proc, "port": port, "url": f"ws://127.0.0.1:{port}/ws", "sessions": sessions}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def panel(qtbot: Any, engine: dict[str, Any]) -> Iterator[MainWindow]:
    client = WorkerClient(engine["url"], topics=["preview"])
    window = MainWindow(client, sessions_dir=engine["sessions"])
    qtbot.addWidget(window)
    window.resize(1280, 820)
    window.show()
    client.start()
    qtbot.waitUntil(lambda: client.connected and window.state_count >= 3, timeout=60_000)
    yield window
    window.close()


# ------------------------------------------------------------------ against a real worker

@needs_engine
def test_panel_shows_live_values_that_change(qtbot: Any, panel: MainWindow, tmp_path: Path) -> None:
    first_seq = panel.last_state["seq"]
    first_t = panel.last_state["t"]
    first_probs = dict(panel.live.prob_bars.values)
    qtbot.waitUntil(lambda: panel.last_health is not None and panel.preview_count >= 2, timeout=20_000)
    qtbot.waitUntil(lambda: panel.last_state["t"] > first_t + 2.0, timeout=20_000)
    # what the streamer reads changed, not just a counter behind the scenes
    assert panel.last_state["seq"] > first_seq
    assert panel.live.prob_bars.values != first_probs
    assert abs(sum(panel.live.prob_bars.values.values()) - 1.0) < 0.02
    assert panel.live.label_text.text().lower() in {*panel.live.prob_bars.values, "uncertain"}
    assert "%" in panel.live.conf_text.text()
    assert len(panel.live.history) >= 10 and panel.live.val_curve.getData()[0] is not None
    assert "onnxruntime" in panel.backend_pill.text()
    assert panel.live.m_fps.value.text() != "–" and panel.live.m_lat.value.text() != "–"
    assert "not connected" in panel.obs_pill.text()  # this worker was started without OBS
    assert panel.live.preview.image is not None and panel.live.preview.box is not None  # the demo shows a face
    assert sum(panel.live.contrib_bars.values.values()) > 0.5
    port = panel.client.url.split(':')[2].split('/')[0]
    assert panel.controls.overlay_url.text() == f"http://127.0.0.1:{port}/overlay.html?theme=badge"

    qtbot.wait(1500)  # a little more curve for the screenshot
    # README pictures only when asked (`make screenshots`): a test run leaves the tree as it was.
    assert panel.grab().save(str(screenshot_path("panel.png", tmp_path)))
    panel.tabs.setCurrentWidget(panel.controls)
    qtbot.wait(100)
    assert panel.grab().save(str(screenshot_path("panel-controls.png", tmp_path)))
    panel.tabs.setCurrentWidget(panel.live)


def _session_tags(sessions: Path) -> list[dict[str, Any]]:
    out = []
    for p in sessions.glob("*.merlb.jsonl"):
        for line in p.read_text(encoding="utf-8").splitlines():
            if '"type":"tag"' in line:
                out.append(json.loads(line))
    return out


@needs_engine
def test_tag_buttons_and_shortcuts_write_tags_to_the_session_log(
        qtbot: Any, panel: MainWindow, engine: dict[str, Any]) -> None:
    qtbot.mouseClick(panel.tag_buttons["hype"], Qt.LeftButton)
    panel.activateWindow()
    qtbot.waitActive(panel, timeout=2000)
    qtbot.keyClick(panel, Qt.Key_2, Qt.ControlModifier)  # "funny", like the OBS hotkey
    qtbot.waitUntil(lambda: {t["name"] for t in panel.tags_seen} >= {"hype", "funny"}, timeout=10_000)
    assert "from panel" in panel.tag_status.text()
    # the worker flushes its log at least once a second
    qtbot.waitUntil(lambda: {t["name"] for t in _session_tags(engine["sessions"])} >= {"hype", "funny"},
                    timeout=10_000)
    tags = [t for t in _session_tags(engine["sessions"]) if t["name"] in ("hype", "funny")]
    assert all(t["source"] == "panel" and t["t"] >= 0 for t in tags)

    # the sessions tab lists that session with its markers
    panel.tabs.setCurrentWidget(panel.sessions)
    panel.sessions.refresh()
    qtbot.waitUntil(lambda: panel.sessions.session_list.topLevelItemCount() >= 1
                    and int(panel.sessions.session_list.topLevelItem(0).text(2)) >= 2, timeout=10_000)
    qtbot.waitUntil(lambda: panel.sessions.marker_list.topLevelItemCount() >= 2, timeout=10_000)
    markers = panel.sessions.marker_list
    kinds = {markers.topLevelItem(i).text(1) for i in range(markers.topLevelItemCount())}
    assert "tag" in kinds
    assert "2 tags" in panel.sessions.session_info.text() or "tags" in panel.sessions.session_info.text()


@needs_engine
def test_threshold_changes_the_engines_behaviour(qtbot: Any, panel: MainWindow) -> None:
    # No model is that sure of a 2 s window: with a low bar it names an emotion...
    panel.controls.set_threshold(0.05)
    qtbot.waitUntil(lambda: panel.engine_config.get("threshold") == 0.05, timeout=10_000)
    qtbot.waitUntil(lambda: panel.last_state["label"] != "uncertain", timeout=20_000)
    assert panel.live.label_text.text().lower() in panel.live.prob_bars.values
    # ...and with 0.99 the engine says "uncertain" (after its dwell time).
    panel.controls.set_threshold(0.99)
    qtbot.waitUntil(lambda: panel.engine_config.get("threshold") == 0.99, timeout=10_000)
    qtbot.waitUntil(lambda: panel.last_state["label"] == "uncertain", timeout=20_000)
    assert panel.live.label_text.text() == "Uncertain"
    # the setting persists in the project's config file, user-only
    assert cfgmod.get_section("engine")["threshold"] == 0.99
    assert stat.S_IMODE(os.stat(cfgmod.config_path()).st_mode) == 0o600
    panel.controls.set_threshold(0.40)
    qtbot.waitUntil(lambda: panel.engine_config.get("threshold") == 0.40, timeout=10_000)


@needs_engine
def test_pause_and_resume(qtbot: Any, panel: MainWindow) -> None:
    qtbot.mouseClick(panel.pause_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.engine_config.get("paused") is True, timeout=10_000)
    assert panel.pause_btn.text() == "Resume analysis"
    qtbot.wait(300)
    frozen = panel.state_count
    qtbot.wait(1000)
    assert panel.state_count <= frozen + 1
    qtbot.mouseClick(panel.pause_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.engine_config.get("paused") is False, timeout=10_000)
    qtbot.waitUntil(lambda: panel.state_count > frozen + 5, timeout=10_000)


@needs_engine
def test_closing_the_panel_leaves_a_worker_it_did_not_start_running(
        qtbot: Any, engine: dict[str, Any]) -> None:
    from websockets.sync.client import connect

    client = WorkerClient(engine["url"])
    window = MainWindow(client, sessions_dir=engine["sessions"])
    qtbot.addWidget(window)
    window.show()
    client.start()
    qtbot.waitUntil(lambda: window.state_count >= 1, timeout=30_000)
    window.close()
    time.sleep(1.0)
    assert engine["proc"].poll() is None
    with connect(engine["url"], open_timeout=5) as ws:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if json.loads(ws.recv(timeout=5)).get("type") == "state":
                break
        else:
            pytest.fail("the worker stopped sending state events after the panel closed")


@needs_engine
def test_closing_the_panel_stops_the_worker_it_started(
        qtbot: Any, home: Path, model_dir: Path) -> None:
    worker = WorkerProcess({"--video": str(DEMO)}, port=free_port(), model=str(model_dir),
                           extra=["--loop", "--no-body", "--sessions-dir", str(home / "own-sessions")],
                           log_path=home / "own-worker.log")
    worker.start()
    client = WorkerClient(worker.url)
    window = MainWindow(client, worker=worker, sessions_dir=home / "own-sessions")
    qtbot.addWidget(window)
    window.show()
    client.start()
    proc = worker.proc
    try:
        qtbot.waitUntil(lambda: window.state_count >= 1, timeout=90_000)
    finally:
        window.close()
    assert proc is not None and proc.poll() is not None


# ------------------------------------------------------------------ without a worker

def test_client_reconnects_to_a_restarted_server(qtbot: Any, home: Path) -> None:
    from obs_merlb.overlay.server import OverlayServer
    from obs_merlb.state import StateTracker

    port = free_port()
    client = WorkerClient(f"ws://127.0.0.1:{port}/ws")
    window = MainWindow(client, sessions_dir=home / "none")
    qtbot.addWidget(window)
    client.start()
    qtbot.waitUntil(lambda: "worker:" in window.conn_pill.text(), timeout=5000)  # refused, retrying
    assert not window.pause_btn.isEnabled()
    tracker = StateTracker()
    probs = {"emotion": [0.02, 0.02, 0.02, 0.85, 0.05, 0.02, 0.02], "valence": [0.1, 0.2, 0.7],
             "arousal": [0.1, 0.3, 0.6]}
    for round_ in range(2):
        srv = OverlayServer(port=port).start()
        try:
            # the buttons follow the connection signal, which Qt delivers after the
            # client thread has connected; events are published once the server has us
            qtbot.waitUntil(lambda: window.pause_btn.isEnabled() and srv.client_count == 1, timeout=10_000)
            assert client.connected and window.tag_buttons["calm"].isEnabled()
            before = window.state_count
            for i in range(5):
                srv.publish(tracker.update(round_ * 10 + i * 0.5, probs, face_present=True, speech=True))
            qtbot.waitUntil(lambda: window.state_count >= before + 5, timeout=5000)
            assert window.live.label_text.text() == "Happy"
            assert window.live.prob_bars.values["happy"] == pytest.approx(0.85, abs=0.01)
        finally:
            srv.stop()
        # tags sent now would be lost, so the buttons say so by greying out
        qtbot.waitUntil(lambda: not window.tag_buttons["calm"].isEnabled(), timeout=10_000)
        assert not client.connected
    window.close()


def test_extra_heads_card_shows_user_classes_and_hides_without_them(qtbot: Any, home: Path) -> None:
    from obs_merlb.overlay.server import OverlayServer
    from obs_merlb.state import StateConfig, StateTracker

    port = free_port()
    client = WorkerClient(f"ws://127.0.0.1:{port}/ws")
    window = MainWindow(client, sessions_dir=home / "none")
    qtbot.addWidget(window)
    window.show()
    srv = OverlayServer(port=port).start()
    try:
        client.start()
        qtbot.waitUntil(lambda: client.connected and srv.client_count == 1, timeout=10_000)
        probs = {"emotion": [0.02, 0.02, 0.02, 0.85, 0.05, 0.02, 0.02], "valence": [0.1, 0.2, 0.7],
                 "arousal": [0.1, 0.3, 0.6]}
        # A personalized model: the tracker smooths its `user` head like the emotion.
        tracker = StateTracker(StateConfig(min_dwell_s=0.0), extra={"user": ["hyped", "tilted"]})
        for i in range(5):
            srv.publish(tracker.update(i * 0.1, {**probs, "user": [0.2, 0.8]}, face_present=True, speech=True))
        qtbot.waitUntil(lambda: window.state_count >= 5, timeout=5000)
        assert window.live.heads_card.isVisible()
        title, bars = window.live.head_rows["user"]
        assert title.text() == "user: tilted  (80%)"
        assert bars.names == ["hyped", "tilted"] and bars.values["tilted"] == pytest.approx(0.8, abs=0.01)
        assert window.live.label_text.text() == "Happy"             # the emotion card is unchanged
        # A model without extra heads (the shipped one): the card goes away.
        plain = StateTracker()
        srv.publish(plain.update(1.0, probs, face_present=True, speech=True))
        qtbot.waitUntil(lambda: window.state_count >= 6, timeout=5000)
        assert not window.live.heads_card.isVisible() and window.live.head_rows == {}
    finally:
        window.close()
        srv.stop()


@pytest.mark.parametrize("value", ['"two"', "3", "true"])
def test_a_bad_plot_minutes_in_the_config_file_starts_with_the_default_and_says_so(
        qtbot: Any, home: Path, tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[panel]\nplot_minutes = {value}\n\n[obs]\nport = 4455\n', encoding="utf-8")
    window = MainWindow(WorkerClient(f"ws://127.0.0.1:{free_port()}/ws"), sessions_dir=home / "none",
                        config_path=path)
    qtbot.addWidget(window)
    window.show()
    assert window.live.plot_window.currentData() == 2
    note = window.config_note.text()
    assert window.config_note.isVisible()
    assert f"{path}: [panel] plot_minutes = " in note and "is not one of 1, 2, 5, 10 (minutes); using 2" in note
    window.close()
    # closing writes the value it showed, so the next start is clean
    assert cfgmod.load_config(path) == {"panel": {"plot_minutes": 2}, "obs": {"port": 4455}}
    again = MainWindow(WorkerClient(f"ws://127.0.0.1:{free_port()}/ws"), sessions_dir=home / "none",
                       config_path=path)
    qtbot.addWidget(again)
    assert again.config_note.text() == "" and again.live.plot_window.currentData() == 2
    again.close()


def test_sources_explain_what_is_missing(qtbot: Any, home: Path) -> None:
    from obs_merlb.panel.sources import SourceLister

    lister = SourceLister()
    with qtbot.waitSignal(lister.listed, timeout=20_000) as sig:
        lister.refresh({})
    lists = sig.args[0]
    assert "merlb install-obs" in lists.obs_error
    # PortAudio is optional: either devices come back or the error says what to install
    assert lists.mic_error is None or "PortAudio" in lists.mic_error or "microphone" in lists.mic_error
    with qtbot.waitSignal(lister.listed, timeout=20_000) as sig:
        lister.refresh({"host": "127.0.0.1", "port": free_port(), "password": "secret-pw"})
    assert "not reachable" in sig.args[0].obs_error and "secret-pw" not in sig.args[0].obs_error


def test_config_round_trip_is_private_and_keeps_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "config.toml"
    cfgmod.update_section("obs", {"password": "pw", "port": 4455}, path)
    cfgmod.update_section("engine", {"threshold": 0.5, "unset": None}, path)
    assert cfgmod.load_config(path) == {"obs": {"password": "pw", "port": 4455}, "engine": {"threshold": 0.5}}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_text("not = [valid")
    assert cfgmod.load_config(path) == {}


def test_sessions_are_listed_with_markers_and_reports_found(tmp_path: Path) -> None:
    from obs_merlb.panel import sessions as sessmod
    from obs_merlb.session import SessionLog
    from obs_merlb.state import StateTracker, highlight_event, tag_event

    log = SessionLog(tmp_path)
    log.open(recording=str(tmp_path / "stream.mkv"), t=0.0)
    tracker = StateTracker()
    probs = {"emotion": [0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1], "valence": [0.2, 0.3, 0.5],
             "arousal": [0.2, 0.3, 0.5]}
    for i in range(30):
        log.write(tracker.update(i / 15, probs, face_present=True, speech=False))
    log.write(tag_event(1.0, "hype", "panel"))
    log.write(highlight_event(1.5, "arousal_peak", 0.7, "happy", False, False))
    path = log.close(t=2.0)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"v":1,"type":"sta')  # a torn last line, as after a crash

    [summary] = sessmod.list_sessions(tmp_path)
    assert (summary.name, summary.tags, summary.highlights) == ("stream", 1, 1)
    detail = sessmod.load_session(path)
    assert detail.recording == str(tmp_path / "stream.mkv")
    assert len(detail.t) == 30 and detail.duration_s == pytest.approx(29 / 15, abs=0.01)
    assert [t["name"] for t in detail.tags] == ["hype"] and detail.highlights[0]["kind"] == "arousal_peak"
    assert sessmod.find_report(path, detail.recording) is None
    report = sessmod.report_dir_for(path) / "report.html"
    report.parent.mkdir()
    report.write_text("<html></html>")
    assert sessmod.find_report(path, detail.recording) == report


# A colour no text antialiasing lands on exactly: its pixels on a label mean an <img> rendered.
IMG_RGB = (12, 200, 34)


def _img_pixels(widget: Any) -> int:
    img = widget.grab().toImage()
    return sum(1 for y in range(0, img.height(), 2) for x in range(0, img.width(), 2)
               if img.pixelColor(x, y).getRgb()[:3] == IMG_RGB)


def test_errors_with_markup_show_as_plain_text(qtbot: Any, home: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A command error echoes what the client sent: markup in it must show as text, never render
    (an <img> would load a local file, an <a> would hide where it points)."""
    from PyQt5.QtGui import QColor, QImage

    from obs_merlb.overlay.server import OverlayServer
    from obs_merlb.panel.widgets import Pill

    picture = QImage(60, 60, QImage.Format_RGB32)
    picture.fill(QColor(*IMG_RGB))
    assert picture.save(str(tmp_path / "r.png"))
    monkeypatch.chdir(tmp_path)           # the server echoes 50 characters: a short, relative src
    markup = '<img src="r.png"><a href="http://x.example">ok</a>'
    port = free_port()
    client = WorkerClient(f"ws://127.0.0.1:{port}/ws")
    window = MainWindow(client, sessions_dir=home / "none")
    qtbot.addWidget(window)
    window.resize(1280, 820)
    window.show()
    srv = OverlayServer(port=port).start()
    try:
        client.start()
        qtbot.waitUntil(lambda: client.connected and srv.client_count == 1, timeout=10_000)
        assert client.send_command(markup)      # the real server rejects it, quoting the command
        label = window.live.error_text
        qtbot.waitUntil(lambda: "unknown command" in label.text(), timeout=5000)
        assert markup in label.text()
        assert _img_pixels(label) == 0
    finally:
        window.close()
        srv.stop()
    pill = Pill()
    qtbot.addWidget(pill)
    pill.set_state("bad", f"worker: {markup}")
    pill.show()
    assert _img_pixels(pill) == 0
