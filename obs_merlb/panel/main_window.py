"""The panel's main window: live view, controls, sessions.

Everything here runs on the GUI thread and only reacts to signals: the
WebSocket client, the source lister and the session loader do their waiting
on their own threads. State and preview events arrive up to ~15 times a
second; labels and bars update per event (cheap paints), the pyqtgraph plot
redraws on a 4 Hz timer so a burst of events never queues redraws.
"""
from __future__ import annotations

import base64
import collections
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

import pyqtgraph as pg
from PyQt5.QtCore import QProcess, QSize, Qt, QTimer, QUrl, pyqtSignal
from PyQt5.QtGui import QDesktopServices, QGuiApplication, QImage, QKeySequence
from PyQt5.QtWidgets import (
    QAbstractItemView, QApplication, QComboBox, QDoubleSpinBox, QFrame, QGridLayout, QHBoxLayout, QHeaderView,
    QLabel, QLineEdit, QMainWindow, QPushButton, QShortcut, QSizePolicy, QSlider, QSplitter,
    QTabWidget, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget,
)

from obs_merlb import config as cfgmod
from obs_merlb.labels import EMOTIONS, MODALITIES
from obs_merlb.panel import sessions as sessmod
from obs_merlb.panel.client import WorkerClient
from obs_merlb.panel.sources import OverlayAdder, SourceLister, SourceLists
from obs_merlb.panel.widgets import (
    ACCENT, ACCENT2, BAD, EMOTION_COLORS, MODALITY_COLORS, MUTED, OK, STYLESHEET, SURFACE, TEXT,
    WARN, BadgePreview, BarList, Pill, PreviewView, dark_palette,
)

log = logging.getLogger(__name__)

# The OBS script registers hotkeys with these tag names; the buttons match.
TAGS: tuple[tuple[str, str], ...] = (
    ("hype", "Ctrl+1"), ("funny", "Ctrl+2"), ("frustrated", "Ctrl+3"), ("calm", "Ctrl+4"),
)
THEMES = ("badge", "meter", "timeline", "full")
POSITIONS = ("bottom-left", "bottom-center", "bottom-right", "top-left", "top-center",
             "top-right", "center-left", "center", "center-right")
PLOT_WINDOWS_MIN = (1, 2, 5, 10)
# At 15 Hz ten minutes is 9,000 points: bounded memory over a long stream.
HISTORY_MAX = 15 * 60 * max(PLOT_WINDOWS_MIN)
SETTINGS_DEBOUNCE_MS = 200
NO_STATE_WARN_S = 3.0


def card(title: str, body: QWidget | None = None) -> tuple[QFrame, QVBoxLayout]:
    frame = QFrame()
    frame.setObjectName("card")
    lay = QVBoxLayout(frame)
    lay.setContentsMargins(14, 12, 14, 14)
    lay.setSpacing(8)
    if title:
        t = QLabel(title.upper())
        t.setObjectName("cardTitle")
        lay.addWidget(t)
    if body is not None:
        lay.addWidget(body)
    return frame, lay


def muted(text: str = "", wrap: bool = True) -> QLabel:
    lab = QLabel(text)
    lab.setObjectName("muted")
    lab.setWordWrap(wrap)
    return lab


class Metric(QWidget):
    """A value over its name, for the health grid."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        self.value = QLabel("–")
        self.value.setObjectName("metric")
        self.name = QLabel(name)
        self.name.setObjectName("metricName")
        lay.addWidget(self.value)
        lay.addWidget(self.name)

    def set(self, text: str, color: str | None = None) -> None:
        self.value.setText(text)
        self.value.setStyleSheet(f"color: {color};" if color else "")


class MainWindow(QMainWindow):
    """Everything the streamer sees; `client` is a started or startable WorkerClient."""

    session_loaded = pyqtSignal(object)
    sessions_listed = pyqtSignal(object)

    def __init__(self, client: WorkerClient, *, worker: Any = None,
                 sessions_dir: str | Path | None = None, config_path: str | Path | None = None) -> None:
        super().__init__()
        self.client = client
        self.worker = worker  # a WorkerProcess when the panel started the worker, else None
        self.sessions_dir = Path(sessions_dir) if sessions_dir else sessmod.default_sessions_dir()
        self.config_path = Path(config_path) if config_path else None
        self.config = cfgmod.load_config(self.config_path)
        self.paused = False
        self._ever_connected = False
        self.engine_config: dict[str, Any] = {}
        self.last_state: dict[str, Any] | None = None
        self.last_health: dict[str, Any] | None = None
        self.state_count = 0
        self.preview_count = 0
        self.last_state_at = 0.0
        self.tags_seen: list[dict[str, Any]] = []
        self.history: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=HISTORY_MAX)
        self._plot_dirty = False
        self._pending: dict[str, float] = {}
        self._analyze: QProcess | None = None
        self._current_session: sessmod.SessionDetail | None = None

        self.setWindowTitle("obs-merlb control panel")
        app = QApplication.instance()
        if isinstance(app, QApplication) and app.style().objectName().lower() != "fusion":
            # Fusion draws the same on every OS and takes the dark palette whole.
            app.setStyle("Fusion")
            app.setPalette(dark_palette())
        self.setStyleSheet(STYLESHEET)
        pg.setConfigOptions(antialias=True, background=SURFACE, foreground=MUTED)

        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(16, 12, 16, 12)
        root.setSpacing(10)
        root.addLayout(self._build_header())
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_live_tab(), "Live")
        self.tabs.addTab(self._build_controls_tab(), "Controls")
        self.tabs.addTab(self._build_sessions_tab(), "Sessions")
        # Personalization (obs_merlb/panel/training.py): retrain on past streams, switch models.
        from obs_merlb.panel.training import TrainingTab

        self.training = TrainingTab(client, self.sessions_dir)
        self.tabs.addTab(self.training, "Training")
        root.addWidget(self.tabs, 1)
        root.addWidget(self._build_tag_bar())
        self.setCentralWidget(central)
        self.resize(1280, 820)

        self.client.connection_changed.connect(self._on_connection)
        self.client.event_received.connect(self._on_event)
        self.session_loaded.connect(self._show_session)
        self.sessions_listed.connect(self._fill_sessions)
        self.lister = SourceLister(self)
        self.lister.listed.connect(self._on_sources)
        self.adder = OverlayAdder(self)
        self.adder.done.connect(self._on_overlay_added)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(SETTINGS_DEBOUNCE_MS)
        self._debounce.timeout.connect(self._flush_settings)
        self._plot_timer = QTimer(self)
        self._plot_timer.setInterval(250)
        self._plot_timer.timeout.connect(self._redraw_plot)
        self._plot_timer.start()
        self._watch = QTimer(self)
        self._watch.setInterval(1000)
        self._watch.timeout.connect(self._watchdog)
        self._watch.start()

        self._apply_saved_settings()
        self._set_connected(False, "connecting…")
        self.refresh_sessions()
        self.refresh_sources()

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

    def _build_live_tab(self) -> QWidget:
        page = QWidget()
        grid = QGridLayout(page)
        grid.setContentsMargins(0, 8, 0, 0)
        grid.setSpacing(12)

        self.preview = PreviewView()
        self.preview.clear("Waiting for the worker's camera preview…")
        prev_card, prev_lay = card("Camera", self.preview)
        self.face_pill = Pill("face: –")
        self.speech_pill = Pill("speech: –")
        self.visible_pill = Pill("overlay: –")
        row = QHBoxLayout()
        for w in (self.face_pill, self.speech_pill, self.visible_pill):
            row.addWidget(w)
        row.addStretch(1)
        prev_lay.addLayout(row)

        emo_card, emo_lay = card("Emotion")
        top = QHBoxLayout()
        self.label_text = QLabel("–")
        self.label_text.setObjectName("bigLabel")
        self.conf_text = QLabel("")
        self.conf_text.setObjectName("metric")
        self.conf_text.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        top.addWidget(self.label_text)
        top.addStretch(1)
        top.addWidget(self.conf_text)
        emo_lay.addLayout(top)
        self.prob_bars = BarList(EMOTIONS, EMOTION_COLORS)
        emo_lay.addWidget(self.prob_bars)

        # The model's heads beyond emotion/valence/arousal (a personalized model's
        # own classes, a trained behaviour head): hidden until a state event has one.
        self.heads_card, heads_lay = card("Your model's heads")
        self.heads_box = QVBoxLayout()
        self.heads_box.setSpacing(6)
        heads_lay.addLayout(self.heads_box)
        self.head_rows: dict[str, tuple[QLabel, BarList]] = {}
        self.heads_card.hide()
        emo_col = QVBoxLayout()
        emo_col.setSpacing(12)
        emo_col.addWidget(emo_card, 3)
        emo_col.addWidget(self.heads_card, 2)

        contrib_card, _ = card("What it is looking at (modality share)")
        self.contrib_bars = BarList(MODALITIES, MODALITY_COLORS, highlight_top=False)
        contrib_card.layout().addWidget(self.contrib_bars)

        va_card, va_lay = card("")
        head = QHBoxLayout()
        t = QLabel("VALENCE AND AROUSAL")
        t.setObjectName("cardTitle")
        head.addWidget(t)
        head.addStretch(1)
        self.va_now = muted("", wrap=False)
        head.addWidget(self.va_now)
        self.plot_window = QComboBox()
        for m in PLOT_WINDOWS_MIN:
            self.plot_window.addItem(f"last {m} min", m)
        self.plot_window.currentIndexChanged.connect(self._on_plot_window)
        head.addWidget(self.plot_window)
        va_lay.addLayout(head)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setYRange(-1.05, 1.05, padding=0)
        self.plot.showGrid(x=True, y=True, alpha=0.12)
        self.plot.getAxis("bottom").setLabel("seconds ago")
        self.plot.addLegend(offset=(10, 6), labelTextColor=TEXT)
        self.plot.addItem(pg.InfiniteLine(0, angle=0, pen=pg.mkPen("#3a4152", width=1)))
        self.val_curve = self.plot.plot([], [], pen=pg.mkPen(ACCENT, width=2), name="valence")
        self.aro_curve = self.plot.plot([], [], pen=pg.mkPen(ACCENT2, width=2), name="arousal")
        self.plot.setMinimumHeight(170)
        va_lay.addWidget(self.plot)

        health_card, health_lay = card("Health")
        hg = QGridLayout()
        hg.setHorizontalSpacing(18)
        hg.setVerticalSpacing(10)
        self.m_fps = Metric("analysis fps / target")
        self.m_lat = Metric("latency p50 / p95 (ms)")
        self.m_cpu = Metric("worker CPU")
        self.m_dropped = Metric("dropped frames")
        for i, m in enumerate((self.m_fps, self.m_lat, self.m_cpu, self.m_dropped)):
            hg.addWidget(m, i // 2, i % 2)
        health_lay.addLayout(hg)
        self.backend_text = muted("backend: –")
        self.error_text = muted("last error: none")
        self.error_text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        health_lay.addWidget(self.backend_text)
        health_lay.addWidget(self.error_text)
        health_lay.addStretch(1)

        grid.addWidget(prev_card, 0, 0, 2, 1)
        grid.addLayout(emo_col, 0, 1)
        grid.addWidget(contrib_card, 1, 1)
        grid.addWidget(va_card, 2, 0, 1, 1)
        grid.addWidget(health_card, 2, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(2, 2)
        return page

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

    def _build_controls_tab(self) -> QWidget:
        page = QWidget()
        grid = QGridLayout(page)
        grid.setContentsMargins(0, 8, 0, 0)
        grid.setSpacing(12)

        # ---- analysis settings (applied live with the `set` command)
        an_card, an_lay = card("Analysis (applies live)")
        form = QGridLayout()
        form.setVerticalSpacing(12)
        self.rate_spin = QDoubleSpinBox()
        self.rate_spin.setRange(1.0, 30.0)
        self.rate_spin.setDecimals(1)
        self.rate_spin.setSingleStep(1.0)
        self.rate_spin.setSuffix(" Hz")
        self.rate_spin.setValue(15.0)
        self.rate_spin.valueChanged.connect(lambda v: self._queue_setting("rate", float(v)))
        self.threshold_slider, self.threshold_value = self._slider(0, 100, 40)
        self.threshold_slider.valueChanged.connect(
            lambda v: self._slider_changed("threshold", v / 100.0, self.threshold_value))
        self.smoothing_slider, self.smoothing_value = self._slider(0, 95, 75)
        self.smoothing_slider.valueChanged.connect(
            lambda v: self._slider_changed("smoothing", v / 100.0, self.smoothing_value))
        self.dwell_spin = QDoubleSpinBox()
        self.dwell_spin.setRange(0.0, 10.0)
        self.dwell_spin.setSingleStep(0.25)
        self.dwell_spin.setSuffix(" s")
        self.dwell_spin.setValue(1.0)
        self.dwell_spin.valueChanged.connect(lambda v: self._queue_setting("min_dwell_s", float(v)))
        rows = [
            ("Analysis rate", self.rate_spin, "Upper limit; the worker lowers it by itself when OBS drops frames."),
            ("Confidence threshold", self._pair(self.threshold_slider, self.threshold_value),
             "Below this the overlay shows \u201cuncertain\u201d instead of a guess "
             "(set for the 7 emotions; heads with fewer classes need proportionally more)."),
            ("Smoothing", self._pair(self.smoothing_slider, self.smoothing_value),
             "Higher is calmer but slower to follow you."),
            ("Minimum dwell", self.dwell_spin, "A new emotion must lead this long before it shows."),
        ]
        for i, (name, w, hint) in enumerate(rows):
            form.addWidget(QLabel(name), 2 * i, 0)
            form.addWidget(w, 2 * i, 1)
            form.addWidget(muted(hint), 2 * i + 1, 0, 1, 2)
        an_lay.addLayout(form)
        self.settings_note = muted("")
        an_lay.addWidget(self.settings_note)
        an_lay.addStretch(1)

        # ---- sources (saved to the config; the worker reads them when it starts)
        src_card, src_lay = card("Sources")
        sg = QGridLayout()
        sg.setVerticalSpacing(8)
        self.camera_combo = self._source_combo()
        self.game_combo = self._source_combo()
        self.mic_combo = self._source_combo()
        for i, (name, combo) in enumerate((("Camera (OBS source)", self.camera_combo),
                                           ("Gameplay (OBS source)", self.game_combo),
                                           ("Microphone", self.mic_combo))):
            sg.addWidget(QLabel(name), i, 0)
            sg.addWidget(combo, i, 1)
        src_lay.addLayout(sg)
        self.obs_sources_msg = muted("")
        self.mic_msg = muted("")
        src_lay.addWidget(self.obs_sources_msg)
        src_lay.addWidget(self.mic_msg)
        brow = QHBoxLayout()
        self.refresh_sources_btn = QPushButton("Refresh lists")
        self.refresh_sources_btn.clicked.connect(self.refresh_sources)
        self.apply_sources_btn = QPushButton("Save sources")
        self.apply_sources_btn.clicked.connect(self.save_sources)
        brow.addWidget(self.refresh_sources_btn)
        brow.addWidget(self.apply_sources_btn)
        brow.addStretch(1)
        src_lay.addLayout(brow)
        self.sources_note = muted("Saved to the config file; the worker uses them when it (re)starts: "
                                  "OBS restarts it when you reload the script"
                                  + (", or the panel restarts the worker it started." if self.worker else "."))
        src_lay.addWidget(self.sources_note)
        src_lay.addStretch(1)

        # ---- overlay
        ov_card, ov_lay = card("Overlay")
        og = QGridLayout()
        self.theme_combo = QComboBox()
        self.theme_combo.addItems(THEMES)
        self.position_combo = QComboBox()
        self.position_combo.addItems(POSITIONS)
        og.addWidget(QLabel("Theme"), 0, 0)
        og.addWidget(self.theme_combo, 0, 1)
        og.addWidget(QLabel("Position"), 1, 0)
        og.addWidget(self.position_combo, 1, 1)
        ov_lay.addLayout(og)
        ov_lay.addWidget(muted("Browser source URL (paste into OBS, 1920\u00d71080):"))
        url_row = QHBoxLayout()
        self.overlay_url = QLineEdit()
        self.overlay_url.setReadOnly(True)
        copy_btn = QPushButton("Copy")
        copy_btn.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.overlay_url.text()))
        url_row.addWidget(self.overlay_url, 1)
        url_row.addWidget(copy_btn)
        ov_lay.addLayout(url_row)
        self.badge = BadgePreview()
        ov_lay.addWidget(self.badge)
        ov_lay.addWidget(muted("Native preview of the badge with the live label. The exact page, with "
                               "every theme and colour, opens in your browser:"))
        self.open_overlay_btn = QPushButton("Open live preview in browser")
        self.open_overlay_btn.clicked.connect(self.open_overlay_preview)
        ov_lay.addWidget(self.open_overlay_btn, 0, Qt.AlignLeft)
        ov_lay.addWidget(muted("Add the overlay to OBS's current scene (through obs-websocket):"))
        add_row = QHBoxLayout()
        self.add_browser_btn = QPushButton("Add browser source")
        self.add_browser_btn.setToolTip("\u201cMERLB overlay\u201d: this URL, 1920\u00d71080, transparent")
        self.add_browser_btn.clicked.connect(lambda: self.add_overlay_to_obs("browser"))
        self.add_text_btn = QPushButton("Add native text source")
        self.add_text_btn.setToolTip("\u201cMERLB emotion\u201d, for OBS builds without a browser source; "
                                     "set the script's Overlay to \u201cNative text source\u201d")
        self.add_text_btn.clicked.connect(lambda: self.add_overlay_to_obs("text"))
        add_row.addWidget(self.add_browser_btn)
        add_row.addWidget(self.add_text_btn)
        add_row.addStretch(1)
        ov_lay.addLayout(add_row)
        self.add_overlay_msg = muted("")
        ov_lay.addWidget(self.add_overlay_msg)
        ov_lay.addStretch(1)
        self.theme_combo.currentTextChanged.connect(self._on_overlay_look)
        self.position_combo.currentTextChanged.connect(self._on_overlay_look)

        grid.addWidget(an_card, 0, 0)
        grid.addWidget(src_card, 0, 1)
        grid.addWidget(ov_card, 0, 2)
        for c in range(3):
            grid.setColumnStretch(c, 1)
        return page

    def _build_sessions_tab(self) -> QWidget:
        split = QSplitter(Qt.Horizontal)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 8, 0, 0)
        self.session_list = QTreeWidget()
        self.session_list.setHeaderLabels(["session", "date", "tags", "highlights"])
        self.session_list.setRootIsDecorated(False)
        self.session_list.setSelectionMode(QAbstractItemView.SingleSelection)
        self.session_list.header().setStretchLastSection(False)
        self.session_list.header().setSectionResizeMode(0, QHeaderView.Stretch)
        for col in (1, 2, 3):
            self.session_list.header().setSectionResizeMode(col, QHeaderView.ResizeToContents)
        self.session_list.itemSelectionChanged.connect(self._on_session_selected)
        ll.addWidget(self.session_list, 1)
        row = QHBoxLayout()
        rb = QPushButton("Refresh")
        rb.clicked.connect(self.refresh_sessions)
        fb = QPushButton("Open folder")
        fb.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.sessions_dir))))
        row.addWidget(rb)
        row.addWidget(fb)
        row.addStretch(1)
        ll.addLayout(row)
        ll.addWidget(muted(f"Session logs: {self.sessions_dir}"))

        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(8, 8, 0, 0)
        self.session_title = QLabel("Select a session")
        self.session_title.setObjectName("metric")
        self.session_info = muted("")
        rl.addWidget(self.session_title)
        rl.addWidget(self.session_info)
        self.session_plot = pg.PlotWidget()
        self.session_plot.setMenuEnabled(False)
        self.session_plot.setYRange(-1.05, 1.05, padding=0)
        self.session_plot.showGrid(x=True, y=True, alpha=0.12)
        self.session_plot.getAxis("bottom").setLabel("stream time (s)")
        self.session_plot.addLegend(offset=(10, 6), labelTextColor=TEXT)
        self.session_plot.setMinimumHeight(220)
        rl.addWidget(self.session_plot, 2)
        self.marker_list = QTreeWidget()
        self.marker_list.setHeaderLabels(["time", "marker", "detail"])
        self.marker_list.setRootIsDecorated(False)
        self.marker_list.header().setSectionResizeMode(2, QHeaderView.Stretch)
        rl.addWidget(self.marker_list, 1)
        brow = QHBoxLayout()
        self.open_report_btn = QPushButton("Open report")
        self.open_report_btn.clicked.connect(self.open_report)
        self.make_report_btn = QPushButton("Make report from recording")
        self.make_report_btn.clicked.connect(self.make_report)
        self.open_report_btn.setEnabled(False)
        self.make_report_btn.setEnabled(False)
        brow.addWidget(self.open_report_btn)
        brow.addWidget(self.make_report_btn)
        brow.addStretch(1)
        rl.addLayout(brow)
        self.report_msg = muted("")
        rl.addWidget(self.report_msg)
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([520, 760])
        return split

    def _slider(self, lo: int, hi: int, value: int) -> tuple[QSlider, QLabel]:
        s = QSlider(Qt.Horizontal)
        s.setRange(lo, hi)
        s.setValue(value)
        lab = QLabel(f"{value / 100:.2f}")
        lab.setMinimumWidth(40)
        return s, lab

    @staticmethod
    def _pair(a: QWidget, b: QWidget) -> QWidget:
        w = QWidget()
        # a plain QWidget would paint the window colour inside the lighter card
        w.setStyleSheet("background: transparent;")
        h = QHBoxLayout(w)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(a, 1)
        h.addWidget(b)
        return w

    @staticmethod
    def _source_combo() -> QComboBox:
        c = QComboBox()
        c.setEditable(False)
        c.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        c.setMinimumContentsLength(14)
        c.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        return c

    # ================================================================ settings

    def _apply_saved_settings(self) -> None:
        eng = self._section("engine")
        widgets: list[tuple[QWidget, Callable[[], None]]] = []
        if "threshold" in eng:
            widgets.append((self.threshold_slider, lambda: self.threshold_slider.setValue(round(float(eng["threshold"]) * 100))))
        if "smoothing" in eng:
            widgets.append((self.smoothing_slider, lambda: self.smoothing_slider.setValue(round(float(eng["smoothing"]) * 100))))
        if "rate" in eng:
            widgets.append((self.rate_spin, lambda: self.rate_spin.setValue(float(eng["rate"]))))
        if "min_dwell_s" in eng:
            widgets.append((self.dwell_spin, lambda: self.dwell_spin.setValue(float(eng["min_dwell_s"]))))
        self._silently(widgets)
        self.threshold_value.setText(f"{self.threshold_slider.value() / 100:.2f}")
        self.smoothing_value.setText(f"{self.smoothing_slider.value() / 100:.2f}")
        ov = self._section("overlay")
        self._silently([(self.theme_combo, lambda: self.theme_combo.setCurrentText(str(ov.get("theme", "badge")))),
                        (self.position_combo, lambda: self.position_combo.setCurrentText(
                            str(ov.get("position", "bottom-left"))))])
        panel = self._section("panel")
        minutes = int(panel.get("plot_minutes", 2) or 2)
        idx = self.plot_window.findData(minutes)
        self._silently([(self.plot_window, lambda: self.plot_window.setCurrentIndex(max(0, idx)))])
        self._update_overlay_url()

    def _section(self, name: str) -> dict[str, Any]:
        s = self.config.get(name, {})
        return dict(s) if isinstance(s, dict) else {}

    def _save_section(self, name: str, values: dict[str, Any]) -> None:
        try:
            cfgmod.update_section(name, values, self.config_path)
            self.config = cfgmod.load_config(self.config_path)
        except OSError as e:
            self.statusBar().showMessage(f"settings not saved: {e}", 8000)

    @staticmethod
    def _silently(items: list[tuple[QWidget, Callable[[], None]]]) -> None:
        """Set widgets without firing their change handlers (no echo to the worker)."""
        for w, fn in items:
            w.blockSignals(True)
            try:
                fn()
            except (TypeError, ValueError):
                pass
            finally:
                w.blockSignals(False)

    def _slider_changed(self, key: str, value: float, label: QLabel) -> None:
        label.setText(f"{value:.2f}")
        self._queue_setting(key, value)

    def _queue_setting(self, key: str, value: float) -> None:
        # Debounced: dragging a slider fires dozens of changes a second; the
        # worker and the config file need only where it stops.
        self._pending[key] = value
        self._debounce.start()

    def _flush_settings(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        sent = all(self.client.send_command("set", key=k, value=v) for k, v in pending.items())
        self._save_section("engine", pending)
        self.settings_note.setText("Applied to the worker and saved." if sent
                                   else "Saved; the worker is not connected, it will read them when it starts.")

    def set_threshold(self, value: float) -> None:
        """Programmatic equivalent of moving the slider (used by tests and shortcuts)."""
        self.threshold_slider.setValue(round(value * 100))

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
            self.preview.clear("Worker not connected — retrying…")
        self.pause_btn.setEnabled(ok)
        for b in self.tag_buttons.values():
            b.setEnabled(ok)
        self._update_overlay_url()

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
        c = self.engine_config
        # The running worker is the truth: show its settings, do not push ours.
        items: list[tuple[QWidget, Callable[[], None]]] = []
        if isinstance(c.get("threshold"), (int, float)):
            items.append((self.threshold_slider, lambda: self.threshold_slider.setValue(round(c["threshold"] * 100))))
        if isinstance(c.get("smoothing"), (int, float)):
            items.append((self.smoothing_slider, lambda: self.smoothing_slider.setValue(round(c["smoothing"] * 100))))
        if isinstance(c.get("rate"), (int, float)):
            items.append((self.rate_spin, lambda: self.rate_spin.setValue(float(c["rate"]))))
        if isinstance(c.get("min_dwell_s"), (int, float)):
            items.append((self.dwell_spin, lambda: self.dwell_spin.setValue(float(c["min_dwell_s"]))))
        self._silently(items)
        self.threshold_value.setText(f"{self.threshold_slider.value() / 100:.2f}")
        self.smoothing_value.setText(f"{self.smoothing_slider.value() / 100:.2f}")
        if isinstance(c.get("paused"), bool):
            self._set_paused(c["paused"])
        version = ev.get("version")
        self.worker_note.setText(f"{ev.get('server', 'worker')} {version}" if version else "")
        self.client.send_command("subscribe", topics=["preview"])

    def _on_state(self, ev: dict[str, Any]) -> None:
        self.last_state = ev
        self.state_count += 1
        self.last_state_at = time.monotonic()
        label = str(ev.get("label", "uncertain"))
        conf = float(ev.get("confidence") or 0.0)
        self.label_text.setText(label.capitalize())
        self.label_text.setStyleSheet(f"color: {EMOTION_COLORS.get(label, TEXT)};")
        self.conf_text.setText(f"{conf * 100:.0f}% sure" if label != "uncertain" else
                               f"top {max((ev.get('probs') or {'': 0}).values()) * 100:.0f}%")
        self.prob_bars.set_values(ev.get("probs") or {})
        self.contrib_bars.set_values(ev.get("contributions") or {})
        self._show_heads(ev.get("heads"))
        face, speech, visible = bool(ev.get("face_present")), bool(ev.get("speech")), bool(ev.get("visible"))
        self.face_pill.set_state("ok" if face else "warn", "face seen" if face else "no face")
        self.speech_pill.set_state("ok" if speech else "idle", "speech" if speech else "silent")
        self.visible_pill.set_state("ok" if visible else "idle", "overlay shown" if visible else "overlay hidden")
        self.badge.set_state(label, conf, visible)
        t = float(ev.get("t") or 0.0)
        if self.history and t < self.history[-1][0]:
            self.history.clear()  # the worker restarted: its stream clock starts again
        v, a = float(ev.get("valence_score") or 0.0), float(ev.get("arousal_score") or 0.0)
        self.history.append((t, v, a))
        self.va_now.setText(f"valence {v:+.2f}   arousal {a:+.2f}   ")
        self._plot_dirty = True

    def _show_heads(self, heads: Any) -> None:
        """One label and bar list per extra head; the card hides when the model has none."""
        heads = {str(name): h for name, h in heads.items()
                 if isinstance(h, dict) and isinstance(h.get("probs"), dict)} if isinstance(heads, dict) else {}
        layout = {name: tuple(h["probs"]) for name, h in heads.items()}
        if layout != {name: tuple(bars.names) for name, (_, bars) in self.head_rows.items()}:
            # A reloaded model may bring other heads or classes: rebuild (rare), never per event.
            for title, bars in self.head_rows.values():
                title.deleteLater()
                bars.deleteLater()
            self.head_rows = {}
            for name, classes in layout.items():
                title = QLabel()
                title.setObjectName("metricName")
                bars = BarList(classes, {c: EMOTION_COLORS[c] for c in classes if c in EMOTION_COLORS})
                self.heads_box.addWidget(title)
                self.heads_box.addWidget(bars)
                self.head_rows[name] = (title, bars)
        for name, h in heads.items():
            title, bars = self.head_rows[name]
            label = str(h.get("label", "uncertain"))
            conf = h.get("confidence")
            sure = label != "uncertain" and isinstance(conf, (int, float))
            title.setText(f"{name}: {label}" + (f"  ({conf * 100:.0f}%)" if sure else ""))
            bars.set_values(h["probs"])
        self.heads_card.setVisible(bool(self.head_rows))

    def _on_health(self, ev: dict[str, Any]) -> None:
        self.last_health = ev
        fps, target = ev.get("fps"), ev.get("target_fps")
        ok_fps = isinstance(fps, (int, float)) and isinstance(target, (int, float)) and fps >= 0.8 * target
        self.m_fps.set(f"{_num(fps, 1)} / {_num(target, 0)}", OK if ok_fps else WARN)
        p50, p95 = ev.get("latency_ms_p50"), ev.get("latency_ms_p95")
        self.m_lat.set(f"{_num(p50, 0)} / {_num(p95, 0)}",
                       OK if isinstance(p95, (int, float)) and p95 <= 100 else WARN)
        cpu = ev.get("cpu_percent")
        self.m_cpu.set(f"{_num(cpu, 0)}%", OK if isinstance(cpu, (int, float)) and cpu < 60 else WARN)
        dropped = ev.get("dropped")
        self.m_dropped.set(str(dropped if dropped is not None else "–"))
        backend = str(ev.get("backend") or "–")
        self.backend_text.setText(f"backend: {backend}")
        self.backend_pill.set_state("ok" if backend != "–" else "idle", backend)
        err = ev.get("last_error")
        self.error_text.setText(f"last error: {err}" if err else "last error: none")
        self.error_text.setStyleSheet(f"color: {BAD};" if err else "")
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
        data = base64.b64decode(ev.get("jpeg") or "", validate=False)
        img = QImage.fromData(data, "JPG")
        if img.isNull():
            return
        # box/landmarks are in the pixels of `size`; if the JPEG was scaled
        # differently, map them onto the decoded image.
        size = ev.get("size") or [img.width(), img.height()]
        sx = img.width() / float(size[0] or img.width())
        sy = img.height() / float(size[1] or img.height())
        box = ev.get("box")
        if box:
            box = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
        lms = [[p[0] * sx, p[1] * sy] for p in (ev.get("landmarks") or []) if len(p) >= 2]
        self.preview.set_frame(img, box, lms)

    def _on_tag(self, ev: dict[str, Any]) -> None:
        self.tags_seen.append(ev)
        src = ev.get("source", "?")
        self.tag_status.setText(f"\u2713 {ev.get('name')} tagged at {_clock(ev.get('t'))} (from {src})")
        self.tag_status.setStyleSheet(f"color: {OK};")

    def _on_highlight(self, ev: dict[str, Any]) -> None:
        extra = []
        if ev.get("replay_saved"):
            extra.append("replay saved")
        if ev.get("chapter_added"):
            extra.append("chapter added")
        self.statusBar().showMessage(
            f"highlight: {ev.get('kind')} ({ev.get('label')}) at {_clock(ev.get('t'))}"
            + (f" — {', '.join(extra)}" if extra else ""), 10000)

    def _on_session_event(self, ev: dict[str, Any]) -> None:
        self.statusBar().showMessage(f"session {ev.get('event')}: {ev.get('path')}", 6000)
        if ev.get("event") == "close" and self.isVisible():
            self.refresh_sessions()

    def _on_error(self, ev: dict[str, Any]) -> None:
        msg = f"{ev.get('message')}"
        self.error_text.setText(f"last error ({ev.get('where', '?')}): {msg}")
        self.error_text.setStyleSheet(f"color: {BAD};")
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

    # ================================================================ plot

    def _on_plot_window(self) -> None:
        self._save_section("panel", {"plot_minutes": int(self.plot_window.currentData())})
        self._plot_dirty = True

    def _redraw_plot(self) -> None:
        if not self._plot_dirty or not self.history:
            return
        self._plot_dirty = False
        span = 60.0 * float(self.plot_window.currentData() or 2)
        last = self.history[-1][0]
        xs, vs, as_ = [], [], []
        for t, v, a in self.history:
            if last - t <= span:
                xs.append(t - last)
                vs.append(v)
                as_.append(a)
        self.val_curve.setData(xs, vs)
        self.aro_curve.setData(xs, as_)
        # Early in a stream the chosen window would squeeze the curve into its
        # right edge; show at least 30 s and grow to the window as data comes.
        shown = min(span, max(30.0, -xs[0] if xs else 0.0))
        self.plot.setXRange(-shown, 0, padding=0.01)

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

    def send_tag(self, name: str) -> None:
        if self.client.send_command("tag", name=name, source="panel"):
            self.tag_status.setText(f"tagging {name}…")
            self.tag_status.setStyleSheet(f"color: {MUTED};")
        else:
            self.tag_status.setText(f"not tagged: worker not connected ({name})")
            self.tag_status.setStyleSheet(f"color: {BAD};")

    # ---- sources
    def refresh_sources(self) -> None:
        if self.lister.refresh(self._section("obs")):
            self.obs_sources_msg.setText("Asking OBS for its sources…")
            self.refresh_sources_btn.setEnabled(False)

    def _on_sources(self, lists: SourceLists) -> None:
        self.refresh_sources_btn.setEnabled(True)
        saved = self._section("sources")
        self._fill_combo(self.camera_combo, lists.cameras, saved.get("camera"), "(not set)")
        self._fill_combo(self.game_combo, lists.games, saved.get("game"), "(no gameplay)")
        self._fill_combo(self.mic_combo, lists.mics, saved.get("mic"), "(no microphone)")
        self.obs_sources_msg.setText(lists.obs_error or f"{len(lists.cameras)} OBS sources found.")
        self.obs_sources_msg.setStyleSheet(f"color: {WARN};" if lists.obs_error else "")
        self.mic_msg.setText(lists.mic_error or f"{len(lists.mics)} microphones found.")
        self.mic_msg.setStyleSheet(f"color: {WARN};" if lists.mic_error else "")

    @staticmethod
    def _fill_combo(combo: QComboBox, names: list[str], saved: Any, none_text: str) -> None:
        combo.clear()
        combo.addItem(none_text, "")
        for n in names:
            combo.addItem(n, n)
        if saved:
            if combo.findData(saved) < 0:
                combo.addItem(f"{saved} (not found now)", saved)
            combo.setCurrentIndex(combo.findData(saved))

    def save_sources(self) -> None:
        values = {"camera": self.camera_combo.currentData() or "",
                  "game": self.game_combo.currentData() or "",
                  "mic": self.mic_combo.currentData() or ""}
        self._save_section("sources", values)
        if self.worker is not None and self.worker.restart_with_sources(values):
            self.sources_note.setText("Saved; restarting the worker the panel started…")
        else:
            self.sources_note.setText("Saved. Reload the obs-merlb script in OBS (Tools > Scripts) to apply.")

    # ---- overlay
    def _on_overlay_look(self) -> None:
        self._save_section("overlay", {"theme": self.theme_combo.currentText(),
                                       "position": self.position_combo.currentText()})
        self._update_overlay_url()

    def overlay_base(self) -> str:
        parts = urlsplit(self.client.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}"

    def _update_overlay_url(self) -> None:
        params = {"theme": self.theme_combo.currentText()}
        if self.position_combo.currentText() != "bottom-left":
            params["position"] = self.position_combo.currentText()
        self.overlay_url.setText(f"{self.overlay_base()}/overlay.html?{urlencode(params)}")
        self.overlay_url.setCursorPosition(0)
        ov = self._section("overlay")
        self.badge.set_look(str(ov.get("accent", ACCENT)), str(ov.get("panel_color", "#0d0f1a")),
                            bool(ov.get("emotion_colors", True)), bool(ov.get("show_confidence", True)))

    def add_overlay_to_obs(self, mode: str) -> None:
        """Create the browser or native text source in OBS's current scene (off the GUI thread)."""
        if self.adder.add(self._section("obs"), mode, self.overlay_url.text()):
            self.add_browser_btn.setEnabled(False)
            self.add_text_btn.setEnabled(False)
            self.add_overlay_msg.setStyleSheet("")
            self.add_overlay_msg.setText("Asking OBS to add the overlay\u2026")

    def _on_overlay_added(self, ok: bool, message: str) -> None:
        self.add_browser_btn.setEnabled(True)
        self.add_text_btn.setEnabled(True)
        self.add_overlay_msg.setText(message)
        self.add_overlay_msg.setStyleSheet(f"color: {OK};" if ok else f"color: {BAD};")

    def open_overlay_preview(self) -> None:
        from obs_merlb.overlay.server import STATIC_DIR

        query = urlsplit(self.overlay_url.text()).query
        # settings.html previews every theme next to its fields; without it,
        # the overlay page itself is the preview (on the same live events).
        page = "settings.html" if (STATIC_DIR / "settings.html").is_file() else "overlay.html"
        QDesktopServices.openUrl(QUrl(f"{self.overlay_base()}/{page}?{query}"))

    # ---- sessions
    def refresh_sessions(self) -> None:
        directory = self.sessions_dir
        self._read_in_background(lambda: sessmod.list_sessions(directory), self.sessions_listed,
                                 "merlb-panel-sessions")

    @staticmethod
    def _read_in_background(read: Any, signal: Any, name: str) -> None:
        """Run a disk read off the GUI thread; its result, or the OSError, arrives by `signal`."""
        def work() -> None:
            try:
                result: Any = read()
            except OSError as e:
                result = e
            # The window may have been closed (and its C++ side deleted) while
            # the read was running; its result is simply not needed then.
            try:
                signal.emit(result)
            except (RuntimeError, AttributeError):
                pass

        threading.Thread(target=work, name=name, daemon=True).start()

    def _fill_sessions(self, result: Any) -> None:
        selected = self._selected_session_path()
        self.session_list.clear()
        if isinstance(result, Exception):
            self.report_msg.setText(f"cannot read {self.sessions_dir}: {result}")
            return
        for s in result:
            item = QTreeWidgetItem([s.name, time.strftime("%Y-%m-%d %H:%M", time.localtime(s.mtime)),
                                    str(s.tags), str(s.highlights)])
            item.setData(0, Qt.UserRole, str(s.path))
            item.setToolTip(0, str(s.path))
            self.session_list.addTopLevelItem(item)
            if selected and str(s.path) == selected:
                item.setSelected(True)
        if result and not self.session_list.selectedItems():
            self.session_list.topLevelItem(0).setSelected(True)  # newest first: show the latest
        if not result:
            self.session_title.setText("No sessions yet")
            self.session_info.setText("A session log is written while the worker runs.")

    def _selected_session_path(self) -> str | None:
        items = self.session_list.selectedItems()
        return items[0].data(0, Qt.UserRole) if items else None

    def _on_session_selected(self) -> None:
        path = self._selected_session_path()
        if not path:
            return
        self.session_title.setText(Path(path).name)
        self.session_info.setText("loading…")
        self._read_in_background(lambda: sessmod.load_session(path), self.session_loaded, "merlb-panel-session")

    def _show_session(self, detail: Any) -> None:
        self.session_plot.clear()
        self.marker_list.clear()
        if isinstance(detail, Exception):
            self.session_info.setText(f"cannot read the session: {detail}")
            return
        if str(detail.path) != self._selected_session_path():
            return  # a slower load for an earlier click
        self._current_session = detail
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(detail.start_wall)) if detail.start_wall else "?"
        top = sorted(((n, c) for n, c in detail.labels.items() if n != "uncertain"), key=lambda x: -x[1])[:3]
        total = sum(detail.labels.values()) or 1
        mix = ", ".join(f"{n} {c / total * 100:.0f}%" for n, c in top) or "no emotions recorded"
        self.session_info.setText(
            f"started {started} · {detail.duration_s / 60:.1f} min · {len(detail.tags)} tags · "
            f"{len(detail.highlights)} highlights · {mix}"
            + (f"\nrecording: {detail.recording}" if detail.recording else ""))
        self.session_plot.plot(detail.t, detail.valence, pen=pg.mkPen(ACCENT, width=1.5), name="valence")
        self.session_plot.plot(detail.t, detail.arousal, pen=pg.mkPen(ACCENT2, width=1.5), name="arousal")
        for h in detail.highlights:
            if isinstance(h.get("t"), (int, float)):
                self.session_plot.addItem(pg.InfiniteLine(h["t"], angle=90, pen=pg.mkPen(WARN, width=1.5)))
        for tg in detail.tags:
            if isinstance(tg.get("t"), (int, float)):
                line = pg.InfiniteLine(tg["t"], angle=90, pen=pg.mkPen(OK, width=1, style=Qt.DashLine),
                                       label=str(tg.get("name", "")),
                                       labelOpts={"position": 0.92, "color": OK})
                self.session_plot.addItem(line)
        markers = [(float(h.get("t") or 0), "highlight", f"{h.get('kind')} · {h.get('label')} · "
                    f"score {h.get('score')}" + (" · replay saved" if h.get("replay_saved") else ""))
                   for h in detail.highlights]
        markers += [(float(tg.get("t") or 0), "tag", f"{tg.get('name')} (from {tg.get('source')})")
                    for tg in detail.tags]
        for t, kind, text in sorted(markers):
            it = QTreeWidgetItem([_clock(t), kind, text])
            it.setForeground(1, pg.mkColor(WARN if kind == "highlight" else OK))
            self.marker_list.addTopLevelItem(it)
        report = sessmod.find_report(detail.path, detail.recording)
        self.open_report_btn.setEnabled(report is not None)
        can_make = bool(detail.recording and Path(detail.recording).is_file())
        self.make_report_btn.setEnabled(can_make and self._analyze is None)
        if report is not None:
            self.report_msg.setText(f"report: {report}")
        elif can_make:
            self.report_msg.setText("No report yet: make one from the recording (runs `merlb analyze`).")
        else:
            self.report_msg.setText("No report: this session has no recording file to analyse "
                                    "(record in OBS to get one).")

    def open_report(self) -> None:
        d = self._current_session
        if d is None:
            return
        report = sessmod.find_report(d.path, d.recording)
        if report is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(report)))

    def make_report(self) -> None:
        import sys

        d = self._current_session
        if d is None or not d.recording or self._analyze is not None:
            return
        out = sessmod.report_dir_for(d.path)
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        proc.finished.connect(lambda code, _status: self._analyze_done(code, proc))
        self._analyze = proc
        self.make_report_btn.setEnabled(False)
        self.report_msg.setText(f"analysing {d.recording}… (runs in the background)")
        proc.start(sys.executable, ["-m", "obs_merlb", "analyze", d.recording, "--out", str(out)])

    def _analyze_done(self, code: int, proc: QProcess) -> None:
        tail = bytes(proc.readAll()).decode("utf-8", "replace").strip().splitlines()[-3:]
        self._analyze = None
        if code == 0:
            self.report_msg.setText("report ready")
            if self._current_session is not None:
                self._show_session(self._current_session)
            self.open_report()
        else:
            self.report_msg.setText(f"analysis failed ({code}): {' / '.join(tail)}")
            self.make_report_btn.setEnabled(True)

    # ================================================================ lifecycle

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self._save_section("panel", {"plot_minutes": int(self.plot_window.currentData() or 2)})
        self.client.stop()
        # Only a worker this panel started is ours to stop; one OBS started
        # keeps running for the stream.
        if self.worker is not None:
            self.worker.stop()
        super().closeEvent(event)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(1280, 820)


def _num(v: Any, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"


def _clock(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "?"
    t = int(t)
    return f"{t // 3600:d}:{t // 60 % 60:02d}:{t % 60:02d}" if t >= 3600 else f"{t // 60:d}:{t % 60:02d}"
