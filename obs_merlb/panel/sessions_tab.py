"""The panel's Sessions tab: past session logs, one session's curves and markers, its report.

Listing and loading read the disk on a thread (obs_merlb/panel/sessions.py
does the reading) and come back by signal; a report is made by running
`merlb analyze` in a QProcess, so the GUI never waits on either.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pyqtgraph as pg
from PyQt5.QtCore import QProcess, Qt, QUrl, pyqtSignal
from PyQt5.QtGui import QDesktopServices
from PyQt5.QtWidgets import (
    QAbstractItemView, QHeaderView, QLabel, QPushButton, QSplitter, QTreeWidget, QTreeWidgetItem,
    QVBoxLayout, QWidget,
)

from obs_merlb.panel import sessions as sessmod
from obs_merlb.panel.widgets import ACCENT, ACCENT2, OK, TEXT, WARN, button_row, clock, muted


def read_in_background(read: Callable[[], Any], signal: Any, name: str) -> None:
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


class SessionsTab(QSplitter):
    """The session list on the left, the selected session on the right."""

    session_loaded = pyqtSignal(object)
    sessions_listed = pyqtSignal(object)

    def __init__(self, sessions_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Horizontal, parent)
        self.sessions_dir = sessions_dir
        self._analyze: QProcess | None = None
        self._current: sessmod.SessionDetail | None = None
        self.addWidget(self._build_list())
        self.addWidget(self._build_detail())
        self.setSizes([520, 760])
        self.session_loaded.connect(self._show_session)
        self.sessions_listed.connect(self._fill_sessions)

    def _build_list(self) -> QWidget:
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
        rb = QPushButton("Refresh")
        rb.clicked.connect(self.refresh)
        fb = QPushButton("Open folder")
        fb.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.sessions_dir))))
        ll.addLayout(button_row(rb, fb))
        ll.addWidget(muted(f"Session logs: {self.sessions_dir}"))
        return left

    def _build_detail(self) -> QWidget:
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
        self.open_report_btn = QPushButton("Open report")
        self.open_report_btn.clicked.connect(self.open_report)
        self.make_report_btn = QPushButton("Make report from recording")
        self.make_report_btn.clicked.connect(self.make_report)
        self.open_report_btn.setEnabled(False)
        self.make_report_btn.setEnabled(False)
        rl.addLayout(button_row(self.open_report_btn, self.make_report_btn))
        self.report_msg = muted("")
        rl.addWidget(self.report_msg)
        return right

    # ------------------------------------------------------------ list

    def refresh(self) -> None:
        directory = self.sessions_dir
        read_in_background(lambda: sessmod.list_sessions(directory), self.sessions_listed,
                           "merlb-panel-sessions")

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
        read_in_background(lambda: sessmod.load_session(path), self.session_loaded, "merlb-panel-session")

    # ------------------------------------------------------------ one session

    def _show_session(self, detail: Any) -> None:
        self.session_plot.clear()
        self.marker_list.clear()
        if isinstance(detail, Exception):
            self.session_info.setText(f"cannot read the session: {detail}")
            return
        if str(detail.path) != self._selected_session_path():
            return  # a slower load for an earlier click
        self._current = detail
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(detail.start_wall)) if detail.start_wall else "?"
        top = sorted(((n, c) for n, c in detail.labels.items() if n != "uncertain"), key=lambda x: -x[1])[:3]
        total = sum(detail.labels.values()) or 1
        mix = ", ".join(f"{n} {c / total * 100:.0f}%" for n, c in top) or "no emotions recorded"
        self.session_info.setText(
            f"started {started} · {detail.duration_s / 60:.1f} min · {len(detail.tags)} tags · "
            f"{len(detail.highlights)} highlights · {mix}"
            + (f"\nrecording: {detail.recording}" if detail.recording else ""))
        self._plot_session(detail)
        self._list_markers(detail)
        self._show_report_state(detail)

    def _plot_session(self, detail: sessmod.SessionDetail) -> None:
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

    def _list_markers(self, detail: sessmod.SessionDetail) -> None:
        markers = [(float(h.get("t") or 0), "highlight", f"{h.get('kind')} · {h.get('label')} · "
                    f"score {h.get('score')}" + (" · replay saved" if h.get("replay_saved") else ""))
                   for h in detail.highlights]
        markers += [(float(tg.get("t") or 0), "tag", f"{tg.get('name')} (from {tg.get('source')})")
                    for tg in detail.tags]
        for t, kind, text in sorted(markers):
            it = QTreeWidgetItem([clock(t), kind, text])
            it.setForeground(1, pg.mkColor(WARN if kind == "highlight" else OK))
            self.marker_list.addTopLevelItem(it)

    def _show_report_state(self, detail: sessmod.SessionDetail) -> None:
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

    # ------------------------------------------------------------ reports

    def open_report(self) -> None:
        d = self._current
        if d is None:
            return
        report = sessmod.find_report(d.path, d.recording)
        if report is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(report)))

    def make_report(self) -> None:
        d = self._current
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
            if self._current is not None:
                self._show_session(self._current)
            self.open_report()
        else:
            self.report_msg.setText(f"analysis failed ({code}): {' / '.join(tail)}")
            self.make_report_btn.setEnabled(True)
