"""The panel's Live tab: camera preview, emotion, model heads, modality share, valence/arousal, health.

It only displays (and offers one action, forgetting the learned voice, which
the main window sends): the main window hands it each state, health and preview
event. Labels and bars update per event (cheap paints); the pyqtgraph plot
redraws on a 4 Hz timer so a burst of events never queues redraws.
"""
from __future__ import annotations

import base64
import collections
from typing import Any

import pyqtgraph as pg
from PyQt5.QtCore import Qt, QTimer, pyqtSignal
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QComboBox, QGridLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from obs_merlb.labels import EMOTIONS, MODALITIES
from obs_merlb.panel.store import ConfigStore
from obs_merlb.panel.widgets import (
    ACCENT, ACCENT2, BAD, EMOTION_COLORS, MODALITY_COLORS, OK, TEXT, WARN, BarList, Metric, Pill,
    PreviewView, card, muted, silently,
)

PLOT_WINDOWS_MIN = (1, 2, 5, 10)
DEFAULT_PLOT_MINUTES = 2
# At 15 Hz ten minutes is 9,000 points: bounded memory over a long stream.
HISTORY_MAX = 15 * 60 * max(PLOT_WINDOWS_MIN)
PLOT_REDRAW_MS = 250


def plot_minutes(value: Any) -> int | None:
    """[panel] plot_minutes as one of the plot's windows, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in PLOT_WINDOWS_MIN:
        return None
    return int(value)


def _num(v: Any, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"


def baseline_text(baseline: dict[str, Any]) -> str:
    """A `health` event's `baseline` as the streamer reads it."""
    if baseline.get("learning"):
        return f"learning your voice: {float(baseline.get('progress') or 0.0) * 100:.0f}%"
    minutes = max(1, round(float(baseline.get("seconds") or 0.0) / 60.0))
    return f"adapted to your voice ({minutes} min of speech)"


class LiveTab(QWidget):
    """What the worker sees and says, event by event."""

    # the streamer asked to forget the learned voice (the main window sends `reset_baseline`)
    baseline_reset_requested = pyqtSignal()

    def __init__(self, store: ConfigStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.history: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=HISTORY_MAX)
        self._plot_dirty = False

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 8, 0, 0)
        grid.setSpacing(12)
        grid.addWidget(self._build_preview(), 0, 0, 2, 1)
        grid.addLayout(self._build_emotion(), 0, 1)
        contrib_card, _ = card("What it is looking at (modality share)")
        self.contrib_bars = BarList(MODALITIES, MODALITY_COLORS, highlight_top=False)
        contrib_card.layout().addWidget(self.contrib_bars)
        grid.addWidget(contrib_card, 1, 1)
        grid.addWidget(self._build_plot(), 2, 0, 1, 1)
        grid.addWidget(self._build_health(), 2, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(2, 2)

        self._plot_timer = QTimer(self)
        self._plot_timer.setInterval(PLOT_REDRAW_MS)
        self._plot_timer.timeout.connect(self._redraw_plot)
        self._plot_timer.start()

    # ------------------------------------------------------------ layout

    def _build_preview(self) -> QWidget:
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
        return prev_card

    def _build_emotion(self) -> QVBoxLayout:
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
        return emo_col

    def _build_plot(self) -> QWidget:
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
        return va_card

    def _build_health(self) -> QWidget:
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
        # Only a model that adapts to the person's voice has a baseline: hidden until one is reported.
        self.baseline_label = muted("", wrap=False)
        self.baseline_reset = QPushButton("Forget my voice")
        self.baseline_reset.setToolTip("Reset the voice baseline this profile has learned; the worker learns "
                                       "your voice afresh (the overlay keeps showing emotions meanwhile)")
        self.baseline_reset.clicked.connect(self.baseline_reset_requested.emit)
        row = QHBoxLayout()
        row.addWidget(self.baseline_label, 1)
        row.addWidget(self.baseline_reset)
        health_lay.addLayout(row)
        self.baseline_label.hide()
        self.baseline_reset.hide()
        health_lay.addStretch(1)
        return health_card

    # ------------------------------------------------------------ settings

    def apply_saved(self) -> None:
        raw = self.store.section("panel").get("plot_minutes", DEFAULT_PLOT_MINUTES)
        minutes = plot_minutes(raw)
        if minutes is None:
            # A hand-edited file must not keep the panel from starting.
            minutes = DEFAULT_PLOT_MINUTES
            self.store.report_invalid("panel", "plot_minutes", raw,
                                      "one of " + ", ".join(map(str, PLOT_WINDOWS_MIN)) + " (minutes)",
                                      minutes)
        idx = self.plot_window.findData(minutes)
        silently([(self.plot_window, lambda: self.plot_window.setCurrentIndex(idx))])

    def save_plot_window(self) -> None:
        self.store.save("panel", {"plot_minutes": int(self.plot_window.currentData() or DEFAULT_PLOT_MINUTES)})

    def _on_plot_window(self) -> None:
        self.save_plot_window()
        self._plot_dirty = True

    # ------------------------------------------------------------ events

    def show_state(self, ev: dict[str, Any]) -> None:
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

    def show_health(self, ev: dict[str, Any]) -> None:
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
        self.backend_text.setText(f"backend: {ev.get('backend') or '–'}")
        err = ev.get("last_error")
        self.error_text.setText(f"last error: {err}" if err else "last error: none")
        self.error_text.setStyleSheet(f"color: {BAD};" if err else "")
        self.show_baseline(ev.get("baseline"))

    def show_baseline(self, baseline: Any) -> None:
        """The voice baseline line and its reset button; hidden for a model without one."""
        shown = isinstance(baseline, dict)
        if shown:
            self.baseline_label.setText(baseline_text(baseline))
            self.baseline_label.setStyleSheet(f"color: {WARN};" if baseline.get("learning") else f"color: {OK};")
        self.baseline_label.setVisible(shown)
        self.baseline_reset.setVisible(shown)

    def show_error(self, where: str, message: str) -> None:
        self.error_text.setText(f"last error ({where}): {message}")
        self.error_text.setStyleSheet(f"color: {BAD};")

    def show_preview(self, ev: dict[str, Any]) -> None:
        img = QImage.fromData(base64.b64decode(ev.get("jpeg") or "", validate=False), "JPG")
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

    def _redraw_plot(self) -> None:
        if not self._plot_dirty or not self.history:
            return
        self._plot_dirty = False
        span = 60.0 * float(self.plot_window.currentData() or DEFAULT_PLOT_MINUTES)
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
