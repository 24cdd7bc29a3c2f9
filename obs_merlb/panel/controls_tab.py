"""The panel's Controls tab: analysis settings, sources, and the overlay.

Analysis settings go to the running worker with the `set` command and to
the config file; sources go to the config file only (the worker reads them
when it starts); the overlay card builds the browser-source URL and can add
the overlay to OBS. Everything that waits (OBS, PortAudio) runs on the
source lister's and the overlay adder's threads.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

from PyQt5.QtCore import Qt, QTimer, QUrl
from PyQt5.QtGui import QDesktopServices, QGuiApplication
from PyQt5.QtWidgets import (
    QComboBox, QDoubleSpinBox, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSizePolicy, QSlider,
    QWidget,
)

from obs_merlb.panel.client import WorkerClient
from obs_merlb.panel.sources import OverlayAdder, SourceLister, SourceLists
from obs_merlb.panel.store import ConfigStore
from obs_merlb.panel.widgets import ACCENT, BAD, OK, WARN, BadgePreview, button_row, card, muted, silently

THEMES = ("badge", "meter", "timeline", "full")
POSITIONS = ("bottom-left", "bottom-center", "bottom-right", "top-left", "top-center",
             "top-right", "center-left", "center", "center-right")
SETTINGS_DEBOUNCE_MS = 200


class ControlsTab(QWidget):
    """`worker` is the WorkerProcess the panel started, else None (OBS's worker)."""

    def __init__(self, client: WorkerClient, store: ConfigStore, worker: Any = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.store = store
        self.worker = worker
        self._pending: dict[str, float] = {}

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 8, 0, 0)
        grid.setSpacing(12)
        grid.addWidget(self._build_analysis(), 0, 0)
        grid.addWidget(self._build_sources(), 0, 1)
        grid.addWidget(self._build_overlay(), 0, 2)
        for c in range(3):
            grid.setColumnStretch(c, 1)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(SETTINGS_DEBOUNCE_MS)
        self._debounce.timeout.connect(self._flush_settings)
        self.lister = SourceLister(self)
        self.lister.listed.connect(self._on_sources)
        self.adder = OverlayAdder(self)
        self.adder.done.connect(self._on_overlay_added)

    # ------------------------------------------------------------ layout

    def _build_analysis(self) -> QWidget:
        """Settings the worker applies live (the `set` command)."""
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
        self.threshold_slider, self.threshold_value = _slider(0, 100, 40)
        self.threshold_slider.valueChanged.connect(
            lambda v: self._slider_changed("threshold", v / 100.0, self.threshold_value))
        self.smoothing_slider, self.smoothing_value = _slider(0, 95, 75)
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
            ("Confidence threshold", _pair(self.threshold_slider, self.threshold_value),
             "Below this the overlay shows \u201cuncertain\u201d instead of a guess "
             "(set for the 7 emotions; heads with fewer classes need proportionally more)."),
            ("Smoothing", _pair(self.smoothing_slider, self.smoothing_value),
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
        return an_card

    def _build_sources(self) -> QWidget:
        """Saved to the config; the worker reads them when it starts."""
        src_card, src_lay = card("Sources")
        sg = QGridLayout()
        sg.setVerticalSpacing(8)
        self.camera_combo = _source_combo()
        self.game_combo = _source_combo()
        self.mic_combo = _source_combo()
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
        self.refresh_sources_btn = QPushButton("Refresh lists")
        self.refresh_sources_btn.clicked.connect(self.refresh_sources)
        self.apply_sources_btn = QPushButton("Save sources")
        self.apply_sources_btn.clicked.connect(self.save_sources)
        src_lay.addLayout(button_row(self.refresh_sources_btn, self.apply_sources_btn))
        self.sources_note = muted("Saved to the config file; the worker uses them when it (re)starts: "
                                  "OBS restarts it when you reload the script"
                                  + (", or the panel restarts the worker it started." if self.worker else "."))
        src_lay.addWidget(self.sources_note)
        src_lay.addStretch(1)
        return src_card

    def _build_overlay(self) -> QWidget:
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
        self.add_browser_btn = QPushButton("Add browser source")
        self.add_browser_btn.setToolTip("\u201cMERLB overlay\u201d: this URL, 1920\u00d71080, transparent")
        self.add_browser_btn.clicked.connect(lambda: self.add_overlay_to_obs("browser"))
        self.add_text_btn = QPushButton("Add native text source")
        self.add_text_btn.setToolTip("\u201cMERLB emotion\u201d, for OBS builds without a browser source; "
                                     "set the script's Overlay to \u201cNative text source\u201d")
        self.add_text_btn.clicked.connect(lambda: self.add_overlay_to_obs("text"))
        ov_lay.addLayout(button_row(self.add_browser_btn, self.add_text_btn))
        self.add_overlay_msg = muted("")
        ov_lay.addWidget(self.add_overlay_msg)
        ov_lay.addStretch(1)
        self.theme_combo.currentTextChanged.connect(self._on_overlay_look)
        self.position_combo.currentTextChanged.connect(self._on_overlay_look)
        return ov_card

    # ------------------------------------------------------------ analysis settings

    def apply_saved(self) -> None:
        """The config file's values, before any worker has said its own."""
        self._show_engine_settings(self.store.section("engine"), lambda v: float(v))
        ov = self.store.section("overlay")
        silently([(self.theme_combo, lambda: self.theme_combo.setCurrentText(str(ov.get("theme", "badge")))),
                  (self.position_combo, lambda: self.position_combo.setCurrentText(
                      str(ov.get("position", "bottom-left"))))])
        self.update_overlay_url()

    def show_worker_config(self, conf: Mapping[str, Any]) -> None:
        """The running worker is the truth: show its settings, do not push ours."""
        def number(v: Any) -> float:
            if not isinstance(v, (int, float)):
                raise TypeError(v)
            return float(v)

        self._show_engine_settings(conf, number)

    def _show_engine_settings(self, values: Mapping[str, Any], number: Callable[[Any], float]) -> None:
        # `number` raises TypeError/ValueError for a value to skip; `silently` skips it.
        sliders = {"threshold": self.threshold_slider, "smoothing": self.smoothing_slider}
        spins = {"rate": self.rate_spin, "min_dwell_s": self.dwell_spin}
        items: list[tuple[QWidget, Callable[[], None]]] = []
        for key, slider in sliders.items():
            if key in values:
                items.append((slider, lambda s=slider, k=key: s.setValue(round(number(values[k]) * 100))))
        for key, spin in spins.items():
            if key in values:
                items.append((spin, lambda s=spin, k=key: s.setValue(number(values[k]))))
        silently(items)
        self.threshold_value.setText(f"{self.threshold_slider.value() / 100:.2f}")
        self.smoothing_value.setText(f"{self.smoothing_slider.value() / 100:.2f}")

    def set_threshold(self, value: float) -> None:
        """Programmatic equivalent of moving the slider (used by tests and shortcuts)."""
        self.threshold_slider.setValue(round(value * 100))

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
        self.store.save("engine", pending)
        self.settings_note.setText("Applied to the worker and saved." if sent
                                   else "Saved; the worker is not connected, it will read them when it starts.")

    # ------------------------------------------------------------ sources

    def refresh_sources(self) -> None:
        if self.lister.refresh(self.store.section("obs")):
            self.obs_sources_msg.setText("Asking OBS for its sources…")
            self.refresh_sources_btn.setEnabled(False)

    def _on_sources(self, lists: SourceLists) -> None:
        self.refresh_sources_btn.setEnabled(True)
        saved = self.store.section("sources")
        _fill_combo(self.camera_combo, lists.cameras, saved.get("camera"), "(not set)")
        _fill_combo(self.game_combo, lists.games, saved.get("game"), "(no gameplay)")
        _fill_combo(self.mic_combo, lists.mics, saved.get("mic"), "(no microphone)")
        self.obs_sources_msg.setText(lists.obs_error or f"{len(lists.cameras)} OBS sources found.")
        self.obs_sources_msg.setStyleSheet(f"color: {WARN};" if lists.obs_error else "")
        self.mic_msg.setText(lists.mic_error or f"{len(lists.mics)} microphones found.")
        self.mic_msg.setStyleSheet(f"color: {WARN};" if lists.mic_error else "")

    def save_sources(self) -> None:
        values = {"camera": self.camera_combo.currentData() or "",
                  "game": self.game_combo.currentData() or "",
                  "mic": self.mic_combo.currentData() or ""}
        self.store.save("sources", values)
        if self.worker is not None and self.worker.restart_with_sources(values):
            self.sources_note.setText("Saved; restarting the worker the panel started…")
        else:
            self.sources_note.setText("Saved. Reload the obs-merlb script in OBS (Tools > Scripts) to apply.")

    # ------------------------------------------------------------ overlay

    def _on_overlay_look(self) -> None:
        self.store.save("overlay", {"theme": self.theme_combo.currentText(),
                                    "position": self.position_combo.currentText()})
        self.update_overlay_url()

    def overlay_base(self) -> str:
        parts = urlsplit(self.client.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}"

    def update_overlay_url(self) -> None:
        params = {"theme": self.theme_combo.currentText()}
        if self.position_combo.currentText() != "bottom-left":
            params["position"] = self.position_combo.currentText()
        self.overlay_url.setText(f"{self.overlay_base()}/overlay.html?{urlencode(params)}")
        self.overlay_url.setCursorPosition(0)
        ov = self.store.section("overlay")
        self.badge.set_look(str(ov.get("accent", ACCENT)), str(ov.get("panel_color", "#0d0f1a")),
                            bool(ov.get("emotion_colors", True)), bool(ov.get("show_confidence", True)))

    def add_overlay_to_obs(self, mode: str) -> None:
        """Create the browser or native text source in OBS's current scene (off the GUI thread)."""
        if self.adder.add(self.store.section("obs"), mode, self.overlay_url.text()):
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


def _slider(lo: int, hi: int, value: int) -> tuple[QSlider, QLabel]:
    s = QSlider(Qt.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    lab = QLabel(f"{value / 100:.2f}")
    lab.setMinimumWidth(40)
    return s, lab


def _pair(a: QWidget, b: QWidget) -> QWidget:
    w = QWidget()
    # a plain QWidget would paint the window colour inside the lighter card
    w.setStyleSheet("background: transparent;")
    h = QHBoxLayout(w)
    h.setContentsMargins(0, 0, 0, 0)
    h.addWidget(a, 1)
    h.addWidget(b)
    return w


def _source_combo() -> QComboBox:
    c = QComboBox()
    c.setEditable(False)
    c.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    c.setMinimumContentsLength(14)
    c.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
    return c


def _fill_combo(combo: QComboBox, names: list[str], saved: Any, none_text: str) -> None:
    combo.clear()
    combo.addItem(none_text, "")
    for n in names:
        combo.addItem(n, n)
    if saved:
        if combo.findData(saved) < 0:
            combo.addItem(f"{saved} (not found now)", saved)
        combo.setCurrentIndex(combo.findData(saved))
