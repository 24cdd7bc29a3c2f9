"""The panel's look and its small widgets: bars, the camera preview, status pills, cards.

Bars, preview and pills are painted by hand rather than built from
QProgressBars and QLabels: the live view repaints ~15 times a second and a
few QPainter calls cost far less than restyling dozens of child widgets, and
the look stays the same on every platform style.
"""
from __future__ import annotations

import html
from typing import Any, Callable, Iterable, Mapping, Sequence

from PyQt5.QtCore import QPointF, QRectF, QSize, Qt
from PyQt5.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPalette, QPen
from PyQt5.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from obs_merlb import palette

# One colour per emotion (obs_merlb/palette.py, the overlay's), used by the
# bars, the label and the plots, so a glance at any of them reads the same.
EMOTION_COLORS: dict[str, str] = {**palette.EMOTION_COLORS, "uncertain": palette.UNCERTAIN_COLOR}
MODALITY_COLORS: dict[str, str] = {
    "face": "#a78bfa",
    "voice": "#22d3ee",
    "body": "#34d399",
    "scene": "#f472b6",
}
ACCENT = "#a78bfa"
ACCENT2 = "#22d3ee"
BG = "#0f1117"
SURFACE = "#171a23"
SURFACE2 = "#1f2330"
TEXT = "#e5e7eb"
MUTED = "#8b93a7"
OK = "#34d399"
WARN = "#fbbf24"
BAD = "#f87171"


def card(title: str, body: QWidget | None = None) -> tuple[QFrame, QVBoxLayout]:
    """A titled panel section (styled by STYLESHEET's #card) and its layout."""
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
    """A secondary line of text: hints, notes, messages.

    Plain text: messages carry what the worker and its clients sent (a rejected
    command is quoted), and Qt would otherwise render markup in them, loading images.
    """
    lab = QLabel(text)
    lab.setTextFormat(Qt.PlainText)
    lab.setObjectName("muted")
    lab.setWordWrap(wrap)
    return lab


def button_row(*buttons: QWidget) -> QHBoxLayout:
    """Buttons side by side from the left."""
    row = QHBoxLayout()
    for b in buttons:
        row.addWidget(b)
    row.addStretch(1)
    return row


def silently(items: Iterable[tuple[QWidget, Callable[[], None]]]) -> None:
    """Set widgets without firing their change handlers (no echo to the worker or the config)."""
    for w, fn in items:
        w.blockSignals(True)
        try:
            fn()
        except (TypeError, ValueError):
            pass
        finally:
            w.blockSignals(False)


def clock(t: Any) -> str:
    """Stream seconds as m:ss, or h:mm:ss past an hour."""
    if not isinstance(t, (int, float)):
        return "?"
    t = int(t)
    return f"{t // 3600:d}:{t // 60 % 60:02d}:{t % 60:02d}" if t >= 3600 else f"{t // 60:d}:{t % 60:02d}"


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


class BarList(QWidget):
    """Horizontal bars, one per name, with the value printed at the right."""

    def __init__(self, names: Sequence[str], colors: Mapping[str, str] | None = None,
                 highlight_top: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.names = list(names)
        self.colors = dict(colors or {})
        self.highlight_top = highlight_top
        self.values: dict[str, float] = {n: 0.0 for n in self.names}
        self.setMinimumHeight(24 * len(self.names))
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(260, 26 * len(self.names))

    def set_values(self, values: Mapping[str, float]) -> None:
        self.values = {n: max(0.0, min(1.0, float(values.get(n, 0.0) or 0.0))) for n in self.names}
        self.update()

    def paintEvent(self, _event: object) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        n = max(1, len(self.names))
        row_h = self.height() / n
        label_w = min(96.0, self.width() * 0.32)
        value_w = 48.0
        bar_x = label_w + 8
        bar_w = max(10.0, self.width() - bar_x - value_w - 4)
        top = max(self.values, key=self.values.get) if self.values and self.highlight_top else None
        font = QFont(self.font())
        for i, name in enumerate(self.names):
            y = i * row_h
            v = self.values.get(name, 0.0)
            is_top = name == top and v > 0
            font.setBold(is_top)
            p.setFont(font)
            p.setPen(QColor(TEXT if is_top else MUTED))
            p.drawText(QRectF(0, y, label_w, row_h), Qt.AlignVCenter | Qt.AlignLeft, name)
            bar_h = min(12.0, row_h * 0.5)
            track = QRectF(bar_x, y + (row_h - bar_h) / 2, bar_w, bar_h)
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(SURFACE2))
            p.drawRoundedRect(track, bar_h / 2, bar_h / 2)
            if v > 0:
                fill = QRectF(track.x(), track.y(), max(bar_h, bar_w * v), bar_h)
                c = QColor(self.colors.get(name, ACCENT))
                if not is_top and self.highlight_top:
                    c.setAlpha(170)
                p.setBrush(c)
                p.drawRoundedRect(fill, bar_h / 2, bar_h / 2)
            p.setPen(QColor(TEXT if is_top else MUTED))
            p.drawText(QRectF(bar_x + bar_w + 4, y, value_w, row_h), Qt.AlignVCenter | Qt.AlignRight,
                       f"{v * 100:.0f}%")
        p.end()


class PreviewView(QWidget):
    """The worker's camera preview with the face box and landmarks drawn on top.

    Coordinates in `preview` events are pixels of the preview image, so they
    are scaled with the image, never re-derived from the widget size.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image: QImage | None = None
        self.box: Sequence[float] | None = None
        self.landmarks: list[Sequence[float]] = []
        self.placeholder = "No preview yet"
        self.setMinimumSize(240, 150)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(400, 260)

    def set_frame(self, image: QImage | None, box: Sequence[float] | None,
                  landmarks: Iterable[Sequence[float]] | None) -> None:
        self.image = image if image is not None and not image.isNull() else None
        self.box = box
        self.landmarks = list(landmarks or [])
        self.update()

    def clear(self, placeholder: str) -> None:
        self.image, self.box, self.landmarks = None, None, []
        self.placeholder = placeholder
        self.update()

    def paintEvent(self, _event: object) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        p.setRenderHint(QPainter.SmoothPixmapTransform)
        r = QRectF(self.rect())
        path = QPainterPath()
        path.addRoundedRect(r, 10, 10)
        p.fillPath(path, QColor("#0b0d12"))
        if self.image is None:
            p.setPen(QColor(MUTED))
            p.drawText(r, Qt.AlignCenter, self.placeholder)
            p.end()
            return
        iw, ih = self.image.width(), self.image.height()
        s = min(r.width() / iw, r.height() / ih)
        dw, dh = iw * s, ih * s
        target = QRectF(r.x() + (r.width() - dw) / 2, r.y() + (r.height() - dh) / 2, dw, dh)
        p.setClipPath(path)
        p.drawImage(target, self.image)
        if self.landmarks:
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(34, 211, 238, 200))
            rad = max(1.0, 1.2 * s)
            for pt in self.landmarks:
                if len(pt) >= 2:
                    p.drawEllipse(QPointF(target.x() + pt[0] * s, target.y() + pt[1] * s), rad, rad)
        if self.box:
            x, y, w, h = (float(v) for v in self.box[:4])
            pen = QPen(QColor(ACCENT))
            pen.setWidthF(2.0)
            p.setPen(pen)
            p.setBrush(Qt.NoBrush)
            p.drawRoundedRect(QRectF(target.x() + x * s, target.y() + y * s, w * s, h * s), 4, 4)
        p.end()


class Pill(QLabel):
    """A rounded status label: dot colour says ok / warning / bad / idle."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.set_state("idle", text)

    def set_state(self, state: str, text: str) -> None:
        color = {"ok": OK, "warn": WARN, "bad": BAD}.get(state, MUTED)
        self.setProperty("state", state)
        # Rich text for the coloured dot only: the text may quote the worker (an error), so it is escaped.
        self.setTextFormat(Qt.RichText)
        self.setText(f'<span style="color:{color}">&#9679;</span>&nbsp;{html.escape(text)}')
        self.setStyleSheet(f"QLabel {{ background: {SURFACE2}; border-radius: 11px; padding: 3px 10px;"
                           f" color: {TEXT}; }}")


class BadgePreview(QWidget):
    """A native rendering of the overlay's badge with the current label.

    The browser page itself needs QtWebEngine, which the PyQt5 wheels do not
    ship; this shows the same information (label, colour, confidence) so the
    streamer can judge the theme's colours, and the exact page opens in the
    system browser from the button beside it.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = "uncertain"
        self.confidence = 0.0
        self.visible_on_stream = False
        self.accent = ACCENT
        self.panel_color = "#0d0f1a"
        self.emotion_colors = True
        self.show_confidence = True
        self.setMinimumSize(260, 84)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(320, 96)

    def set_state(self, label: str, confidence: float, visible: bool) -> None:
        self.label, self.confidence, self.visible_on_stream = label, confidence, visible
        self.update()

    def set_look(self, accent: str, panel_color: str, emotion_colors: bool, show_confidence: bool) -> None:
        self.accent, self.panel_color = accent, panel_color
        self.emotion_colors, self.show_confidence = emotion_colors, show_confidence
        self.update()

    def paintEvent(self, _event: object) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        r = QRectF(self.rect())
        # checkerboard: the overlay is transparent over the stream
        cell = 12
        for yi in range(int(r.height() // cell) + 1):
            for xi in range(int(r.width() // cell) + 1):
                p.fillRect(QRectF(xi * cell, yi * cell, cell, cell),
                           QColor("#1b1e27" if (xi + yi) % 2 else "#15171f"))
        color = QColor(EMOTION_COLORS.get(self.label, self.accent) if self.emotion_colors else self.accent)
        badge = QRectF(14, r.height() / 2 - 26, min(r.width() - 28, 230), 52)
        panel = QColor(self.panel_color)
        panel.setAlpha(205 if self.visible_on_stream else 90)
        p.setPen(Qt.NoPen)
        p.setBrush(panel)
        p.drawRoundedRect(badge, 26, 26)
        p.setBrush(color)
        p.drawEllipse(QRectF(badge.x() + 10, badge.y() + 10, 32, 32))
        f = QFont(self.font())
        f.setPointSizeF(f.pointSizeF() * 1.35)
        f.setBold(True)
        p.setFont(f)
        p.setPen(QColor("#ffffff") if self.visible_on_stream else QColor(MUTED))
        p.drawText(QRectF(badge.x() + 52, badge.y(), badge.width() - 60, badge.height()),
                   Qt.AlignVCenter | Qt.AlignLeft, self.label.capitalize())
        if self.show_confidence and self.label != "uncertain":
            f.setBold(False)
            f.setPointSizeF(f.pointSizeF() * 0.7)
            p.setFont(f)
            p.drawText(QRectF(badge.x(), badge.y(), badge.width() - 16, badge.height()),
                       Qt.AlignVCenter | Qt.AlignRight, f"{self.confidence * 100:.0f}%")
        if not self.visible_on_stream:
            p.setPen(QColor(MUTED))
            small = QFont(self.font())
            p.setFont(small)
            p.drawText(QRectF(badge.right() + 8, badge.y(), r.width() - badge.right() - 8, badge.height()),
                       Qt.AlignVCenter | Qt.AlignLeft | Qt.TextWordWrap, "hidden on stream")
        p.end()


def dark_palette() -> QPalette:
    """Fusion's palette in the panel's colours; spin boxes and scroll bars take it
    natively, which keeps their arrows (a style sheet on them would drop them)."""

    pal = QPalette()
    for role, color in ((QPalette.Window, BG), (QPalette.WindowText, TEXT), (QPalette.Base, SURFACE2),
                        (QPalette.AlternateBase, SURFACE), (QPalette.Text, TEXT), (QPalette.Button, SURFACE2),
                        (QPalette.ButtonText, TEXT), (QPalette.Highlight, ACCENT),
                        (QPalette.HighlightedText, "#0b0d12"), (QPalette.ToolTipBase, SURFACE2),
                        (QPalette.ToolTipText, TEXT), (QPalette.PlaceholderText, MUTED)):
        pal.setColor(role, QColor(color))
    pal.setColor(QPalette.Disabled, QPalette.Text, QColor("#555c6e"))
    pal.setColor(QPalette.Disabled, QPalette.ButtonText, QColor("#555c6e"))
    return pal


STYLESHEET = f"""
QWidget {{ background: {BG}; color: {TEXT}; font-size: 10pt; }}
QMainWindow, QDialog {{ background: {BG}; }}
QFrame#card {{ background: {SURFACE}; border: 1px solid #252a38; border-radius: 12px; }}
QLabel {{ background: transparent; }}
QLabel#cardTitle {{ color: {MUTED}; font-size: 8.5pt; font-weight: 600; letter-spacing: 1px; }}
QLabel#bigLabel {{ font-size: 26pt; font-weight: 700; }}
QLabel#muted {{ color: {MUTED}; }}
QLabel#metric {{ font-size: 13pt; font-weight: 600; }}
QLabel#metricName {{ color: {MUTED}; font-size: 8.5pt; }}
QTabWidget::pane {{ border: none; }}
QTabBar::tab {{ background: transparent; color: {MUTED}; padding: 8px 18px; border: none;
               border-bottom: 2px solid transparent; min-width: 70px; }}
QTabBar::tab:selected {{ color: {TEXT}; border-bottom: 2px solid {ACCENT}; }}
QPushButton {{ background: {SURFACE2}; border: 1px solid #2c3242; border-radius: 8px; padding: 6px 14px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:pressed {{ background: #2a3042; }}
QPushButton:disabled {{ color: #555c6e; border-color: #23283a; }}
QPushButton#primary {{ background: {ACCENT}; color: #0b0d12; border: none; font-weight: 700; }}
QPushButton#primary:hover {{ background: #b9a2fc; }}
QPushButton#primary:disabled {{ background: #2f2a45; color: #6b7285; }}
QPushButton#tag {{ font-weight: 700; padding: 8px 12px; }}
QComboBox, QLineEdit {{ background: {SURFACE2}; border: 1px solid #2c3242;
               border-radius: 6px; padding: 4px 8px; selection-background-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: {SURFACE2}; selection-background-color: #2e3550; }}
QSlider::groove:horizontal {{ height: 4px; background: {SURFACE2}; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: #ffffff; width: 14px; margin: -6px 0; border-radius: 7px; }}
QListWidget, QTreeWidget, QTableWidget {{ background: {SURFACE}; border: 1px solid #252a38; border-radius: 8px; }}
QListWidget::item, QTreeWidget::item {{ padding: 6px; }}
QListWidget::item:selected, QTreeWidget::item:selected {{ background: #2e3550; color: {TEXT}; }}
QHeaderView::section {{ background: {SURFACE}; color: {MUTED}; border: none; padding: 4px; }}
QStatusBar {{ color: {MUTED}; }}
QScrollArea {{ border: none; }}
QToolTip {{ background: {SURFACE2}; color: {TEXT}; border: 1px solid #2c3242; }}
"""
