"""The panel's main window: the header, the four tabs, the tag bar and the status bar.

It owns the connection to the worker and hands each event to the tab that
shows it; the tabs are their own widgets (live_tab, controls_tab,
sessions_tab, training). Everything here runs on the GUI thread and only
reacts to signals: the WebSocket client, the source lister and the session
loader do their waiting on their own threads. State and preview events
arrive up to ~15 times a second.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyqtgraph as pg
from PyQt5.QtCore import QSize, Qt, QTimer
from PyQt5.QtGui import QKeySequence
from PyQt5.QtWidgets import (
    QApplication, QFrame, QHBoxLayout, QLabel, QMainWindow, QPushButton, QShortcut, QTabWidget, QVBoxLayout,
    QWidget,
)

from obs_merlb.panel import sessions as sessmod
from obs_merlb.panel.client import WorkerClient
from obs_merlb.panel.controls_tab import ControlsTab
from obs_merlb.panel.live_tab import LiveTab
from obs_merlb.panel.sessions_tab import SessionsTab
from obs_merlb.panel.store import ConfigStore
from obs_merlb.panel.training import TrainingTab
from obs_merlb.panel.triggers_tab import TriggersTab
from obs_merlb.panel.widgets import BAD, MUTED, OK, STYLESHEET, SURFACE, TEXT, WARN, Pill, clock, dark_palette, muted

log = logging.getLogger(__name__)

# The OBS script registers hotkeys with these tag names; the buttons match.
TAGS: tuple[tuple[str, str], ...] = (
    ("hype", "Ctrl+1"), ("funny", "Ctrl+2"), ("frustrated", "Ctrl+3"), ("calm", "Ctrl+4"),
)
NO_STATE_WARN_S = 3.0
WATCHDOG_MS = 1000


class MainWindow(QMainWindow):
    """Everything the streamer sees; `client` is a started or startable WorkerClient."""

    def __init__(self, client: WorkerClient, *, worker: Any = None,
                 sessions_dir: str | Path | None = None, config_path: str | Path | None = None) -> None:
        super().__init__()
        self.client = client
        self.worker = worker  # a WorkerProcess when the panel started the worker, else None
        self.sessions_dir = Path(sessions_dir) if sessions_dir else sessmod.default_sessions_dir()
        self.store = ConfigStore(config_path, self)
        self.paused = False
        self._ever_connected = False
        self.engine_config: dict[str, Any] = {}
        self.last_state: dict[str, Any] | None = None
        self.last_health: dict[str, Any] | None = None
        self.state_count = 0
        self.preview_count = 0
        self.last_state_at = 0.0
        self.tags_seen: list[dict[str, Any]] = []

        self.setWindowTitle("obs-merlb control panel")
        app = QApplication.instance()
        if isinstance(app, QApplication) and app.style().objectName().lower() != "fusion":
            # Fusion draws the same on every OS and takes the dark palette whole.
            app.setStyle("Fusion")
            app.setPalette(dark_palette())
        self.setStyleSheet(STYLESHEET)
        pg.setConfigOptions(antialias=True, background=SURFACE, foreground=MUTED)
        # A permanent status-bar line for values in the config file the panel
        # had to ignore: it stays until the panel closes, unlike messages.
        self.config_note = QLabel("")
        self.config_note.setStyleSheet(f"color: {WARN};")
        self.config_note.hide()
        self.statusBar().addPermanentWidget(self.config_note)
        self.store.save_failed.connect(lambda msg: self.statusBar().showMessage(msg, 8000))
        self.store.invalid.connect(self._show_config_problem)

        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(16, 12, 16, 12)
        root.setSpacing(10)
        root.addLayout(self._build_header())
        self.live = LiveTab(self.store)
        self.controls = ControlsTab(client, self.store, worker)
        self.sessions = SessionsTab(self.sessions_dir)
        # Personalization: retrain on past streams, switch models.
        self.training = TrainingTab(client, self.sessions_dir)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.live, "Live")
        self.tabs.addTab(self.controls, "Controls")
        self.tabs.addTab(self.sessions, "Sessions")
        self.tabs.addTab(self.training, "Training")
        self.triggers = TriggersTab(self.store)
        self.tabs.addTab(self.triggers, "Triggers")
        root.addWidget(self.tabs, 1)
        root.addWidget(self._build_tag_bar())
        self.setCentralWidget(central)
        self.resize(1280, 820)

        self.client.connection_changed.connect(self._on_connection)
        self.client.event_received.connect(self._on_event)
        self.live.baseline_reset_requested.connect(self.reset_baseline)
        self._watch = QTimer(self)
        self._watch.setInterval(WATCHDOG_MS)
        self._watch.timeout.connect(self._watchdog)
        self._watch.start()

        self.live.apply_saved()
        self.controls.apply_saved()
        self._set_connected(False, "connecting…")
        self.sessions.refresh()
        self.controls.refresh_sources()

    # ================================================================ layout

    def _build_header(self) -> QHBoxLayout:
        h = QHBoxLayout()
        title = QLabel("obs-merlb")
        title.setStyleSheet(f"font-size: 15pt; font-weight: 800; color: {TEXT};")
        h.addWidget(title)
        h.addSpacing(12)
        self.conn_pill = Pill("connecting…")
        self.obs_pill = Pill("OBS: unknown")
        self.backend_pill = Pill("backend: –")
        for w in (self.conn_pill, self.obs_pill, self.backend_pill):
            h.addWidget(w)
        h.addStretch(1)
        self.worker_note = muted("", wrap=False)
        h.addWidget(self.worker_note)
        self.pause_btn = QPushButton("Pause analysis")
        self.pause_btn.setObjectName("primary")
        self.pause_btn.setToolTip("Stop or restart the analysis (Ctrl+P); the worker keeps running")
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.pause_btn.setEnabled(False)
        QShortcut(QKeySequence("Ctrl+P"), self, activated=self.toggle_pause)
        h.addWidget(self.pause_btn)
        return h

    def _build_tag_bar(self) -> QWidget:
        bar = QFrame()
        bar.setObjectName("card")
        h = QHBoxLayout(bar)
        h.setContentsMargins(14, 8, 14, 8)
        lab = QLabel("TAG THIS MOMENT")
        lab.setObjectName("cardTitle")
        h.addWidget(lab)
        self.tag_buttons: dict[str, QPushButton] = {}
        for name, keys in TAGS:
            b = QPushButton(f"{name.capitalize()}   {keys}")
            b.setObjectName("tag")
            b.setToolTip(f"Tag '{name}' in the session log ({keys}); same as the OBS hotkey")
            b.clicked.connect(lambda _=False, n=name: self.send_tag(n))
            b.setEnabled(False)
            QShortcut(QKeySequence(keys), self, activated=lambda n=name: self.send_tag(n),
                      context=Qt.ApplicationShortcut)
            self.tag_buttons[name] = b
            h.addWidget(b)
        h.addSpacing(10)
        self.tag_status = muted("", wrap=False)
        h.addWidget(self.tag_status, 1)
        return bar

    def _show_config_problem(self, message: str) -> None:
        log.warning("%s", message)
        self.config_note.setText(message)
        self.config_note.setToolTip(message)
        self.config_note.show()

    # ================================================================ connection & events

    def _on_connection(self, ok: bool, detail: str) -> None:
        self._set_connected(ok, detail)

    def _set_connected(self, ok: bool, detail: str) -> None:
        if ok:
            self._ever_connected = True
            host = urlsplit(self.client.url).netloc
            self.conn_pill.set_state("ok", f"worker {host}")
            self.statusBar().showMessage(f"connected to {self.client.url}", 4000)
        elif self.worker is not None and not self._ever_connected and self.worker.poll() is None:
            # our own worker is still loading its model: not an error yet
            self.conn_pill.set_state("idle", "starting worker…")
        else:
            self.conn_pill.set_state("bad" if detail != "connecting…" else "idle",
                                     f"worker: {detail}" if detail else "worker: disconnected")
            self.live.preview.clear("Worker not connected — retrying…")
        self.pause_btn.setEnabled(ok)
        self.live.baseline_reset.setEnabled(ok)
        for b in self.tag_buttons.values():
            b.setEnabled(ok)
        self.controls.update_overlay_url()

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        handler = {
            "hello": self._on_hello, "state": self._on_state, "health": self._on_health,
            "preview": self._on_preview, "tag": self._on_tag, "highlight": self._on_highlight,
            "session": self._on_session_event, "error": self._on_error,
        }.get(str(kind))
        if handler is not None:
            try:
                handler(ev)
            except (KeyError, TypeError, ValueError) as e:
                # A newer worker may send fields this panel does not know; skip, do not crash.
                log.debug("bad %s event: %s", kind, e)

    def _on_hello(self, ev: dict[str, Any]) -> None:
        conf = ev.get("config") or {}
        self.engine_config = dict(conf) if isinstance(conf, dict) else {}
        self.controls.show_worker_config(self.engine_config)
        if isinstance(self.engine_config.get("paused"), bool):
            self._set_paused(self.engine_config["paused"])
        version = ev.get("version")
        self.worker_note.setText(f"{ev.get('server', 'worker')} {version}" if version else "")
        self.client.send_command("subscribe", topics=["preview"])

    def _on_state(self, ev: dict[str, Any]) -> None:
        self.last_state = ev
        self.state_count += 1
        self.last_state_at = time.monotonic()
        self.live.show_state(ev)
        self.controls.badge.set_state(str(ev.get("label", "uncertain")), float(ev.get("confidence") or 0.0),
                                      bool(ev.get("visible")))

    def _on_health(self, ev: dict[str, Any]) -> None:
        self.last_health = ev
        self.live.show_health(ev)
        backend = str(ev.get("backend") or "–")
        self.backend_pill.set_state("ok" if backend != "–" else "idle", backend)
        self._show_obs(ev.get("obs"))

    def _show_obs(self, obs: Any) -> None:
        if not isinstance(obs, dict) or not obs:
            self.obs_pill.set_state("idle", "OBS: not connected")
            return
        parts = ["OBS"]
        cpu = obs.get("cpu", obs.get("cpuUsage"))
        if isinstance(cpu, (int, float)):
            parts.append(f"CPU {cpu:.0f}%")
        fps = obs.get("active_fps", obs.get("activeFps"))
        if isinstance(fps, (int, float)):
            parts.append(f"{fps:.0f} fps")
        # The worker reports the share of frames OBS skipped since its last poll.
        pct = max((float(obs[k]) for k in ("render_skipped_pct", "output_skipped_pct")
                   if isinstance(obs.get(k), (int, float))), default=0.0)
        parts.append(f"{pct:.1f}% skipped" if pct else "no skipped frames")
        self.obs_pill.set_state("ok" if pct < 0.5 else "warn", " · ".join(parts))

    def _on_preview(self, ev: dict[str, Any]) -> None:
        self.preview_count += 1
        self.live.show_preview(ev)

    def _on_tag(self, ev: dict[str, Any]) -> None:
        self.tags_seen.append(ev)
        src = ev.get("source", "?")
        self.tag_status.setText(f"\u2713 {ev.get('name')} tagged at {clock(ev.get('t'))} (from {src})")
        self.tag_status.setStyleSheet(f"color: {OK};")

    def _on_highlight(self, ev: dict[str, Any]) -> None:
        extra = []
        if ev.get("replay_saved"):
            extra.append("replay saved")
        if ev.get("chapter_added"):
            extra.append("chapter added")
        self.statusBar().showMessage(
            f"highlight: {ev.get('kind')} ({ev.get('label')}) at {clock(ev.get('t'))}"
            + (f" — {', '.join(extra)}" if extra else ""), 10000)

    def _on_session_event(self, ev: dict[str, Any]) -> None:
        self.statusBar().showMessage(f"session {ev.get('event')}: {ev.get('path')}", 6000)
        if ev.get("event") == "close" and self.isVisible():
            self.sessions.refresh()

    def _on_error(self, ev: dict[str, Any]) -> None:
        msg = f"{ev.get('message')}"
        self.live.show_error(str(ev.get("where", "?")), msg)
        self.statusBar().showMessage(f"worker error: {msg}", 10000)

    def _watchdog(self) -> None:
        if self.worker is not None:
            code = self.worker.poll()
            if code is not None:
                self.worker_note.setText(f"worker exited ({code}); log: {self.worker.log_path}")
                self.worker_note.setStyleSheet(f"color: {BAD};")
        if self.client.connected and not self.paused and self.last_state_at \
                and time.monotonic() - self.last_state_at > NO_STATE_WARN_S:
            self.conn_pill.set_state("warn", f"worker {urlsplit(self.client.url).netloc}: no analysis for "
                                              f"{time.monotonic() - self.last_state_at:.0f} s")

    # ================================================================ actions

    def toggle_pause(self) -> None:
        if not self.client.connected:
            return
        cmd = "resume" if self.paused else "pause"
        if self.client.send_command(cmd):
            self._set_paused(not self.paused)

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.pause_btn.setText("Resume analysis" if paused else "Pause analysis")
        if paused:
            self.conn_pill.set_state("warn", f"worker {urlsplit(self.client.url).netloc}: paused")

    def reset_baseline(self) -> None:
        """Ask the worker to forget the learned voice; the next health event confirms it."""
        if self.client.send_command("reset_baseline"):
            self.live.show_baseline({"learning": True, "progress": 0.0, "seconds": 0.0})
            self.statusBar().showMessage("voice baseline reset: learning your voice afresh", 4000)
        else:
            self.statusBar().showMessage("not reset: worker not connected", 4000)

    def send_tag(self, name: str) -> None:
        if self.client.send_command("tag", name=name, source="panel"):
            self.tag_status.setText(f"tagging {name}…")
            self.tag_status.setStyleSheet(f"color: {MUTED};")
        else:
            self.tag_status.setText(f"not tagged: worker not connected ({name})")
            self.tag_status.setStyleSheet(f"color: {BAD};")

    # ================================================================ lifecycle

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.live.save_plot_window()
        self.client.stop()
        # Only a worker this panel started is ours to stop; one OBS started
        # keeps running for the stream.
        if self.worker is not None:
            self.worker.stop()
        super().closeEvent(event)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(1280, 820)
