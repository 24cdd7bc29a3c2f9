"""The panel's Training tab: personalize on past streams, compare, activate, roll back.

Training runs `merlb personalize ... --progress-json` in a QProcess, the same
code as the command line, so the GUI never blocks and a crash or a Cancel
(kill) of the run cannot hurt the registry: the candidate is only renamed
into place when complete and the active model changes only after the gate
(obs_merlb/registry.py). Activation and rollback are registry calls followed
by a `reload_model` command to the running worker.
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from PyQt5.QtCore import QProcess, Qt, pyqtSignal
from PyQt5.QtWidgets import (QAbstractItemView, QCheckBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel,
                             QListWidget, QListWidgetItem, QProgressBar, QPushButton, QTreeWidget,
                             QTreeWidgetItem, QVBoxLayout, QWidget)

from obs_merlb import registry
from obs_merlb.session import SUFFIX, default_sessions_dir

STAGES = {"preprocess": "reading recordings", "train": "fine-tuning", "evaluate": "scoring"}


def recordings_with_logs(sessions_dir: Path) -> list[tuple[Path, Path, int]]:
    """(recording, session log, tags) for every log whose recording is still on disk."""
    out = []
    if not sessions_dir.is_dir():
        return out
    for log in sorted(sessions_dir.glob("*" + SUFFIX)):
        rec, tags = None, 0
        with open(log, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if rec is None and '"type":"session"' in line:
                    try:
                        rec = json.loads(line).get("recording")
                    except json.JSONDecodeError:
                        pass
                elif '"type":"tag"' in line:
                    tags += 1
        if rec and Path(rec).is_file():
            out.append((Path(rec), log, tags))
    return out


class TrainingTab(QWidget):
    """Pick recordings, run personalization with progress, compare and switch models."""

    finished = pyqtSignal(dict)     # the run's result line (or {"type": "error", ...})
    listed = pyqtSignal(object)     # recordings_with_logs() result, from a worker thread

    def __init__(self, client: Any = None, sessions_dir: str | Path | None = None,
                 extra_args: list[str] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.sessions_dir = Path(sessions_dir) if sessions_dir else default_sessions_dir()
        self.extra_args = list(extra_args or [])
        self.proc: QProcess | None = None
        self.last_result: dict[str, Any] | None = None
        self.progress_seen: list[dict[str, Any]] = []
        self._buf = b""

        root = QVBoxLayout(self)
        root.setContentsMargins(0, 8, 0, 0)
        root.addWidget(QLabel("Recordings with tags (from your session logs)"))
        self.recordings = QListWidget()
        root.addWidget(self.recordings, 2)
        row = QHBoxLayout()
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.clicked.connect(self.refresh)
        self.add_btn = QPushButton("Add recordings…")
        self.add_btn.clicked.connect(self._add_files)
        self.encoders = QCheckBox("also fine-tune the encoders (slower)")
        self.start_btn = QPushButton("Personalize")
        self.start_btn.setObjectName("primary")
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        for w in (self.refresh_btn, self.add_btn, self.encoders):
            row.addWidget(w)
        row.addStretch(1)
        row.addWidget(self.start_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.bar)
        root.addWidget(self.status)

        root.addWidget(QLabel("Models (* = active)"))
        self.models = QTreeWidget()
        self.models.setHeaderLabels(["", "version", "status", "macro-F1", "then-current", "held-out"])
        self.models.setRootIsDecorated(False)
        self.models.setSelectionMode(QAbstractItemView.SingleSelection)
        self.models.header().setSectionResizeMode(QHeaderView.ResizeToContents)
        root.addWidget(self.models, 2)
        mrow = QHBoxLayout()
        self.activate_btn = QPushButton("Activate selected")
        self.activate_btn.clicked.connect(self.activate_selected)
        self.rollback_btn = QPushButton("Roll back")
        self.rollback_btn.clicked.connect(self.rollback)
        self.report_btn = QPushButton("Open report")
        self.report_btn.clicked.connect(self.open_report)
        for w in (self.activate_btn, self.rollback_btn, self.report_btn):
            mrow.addWidget(w)
        mrow.addStretch(1)
        root.addLayout(mrow)
        self.listed.connect(self._fill_recordings)
        self.refresh()

    # ------------------------------------------------------------ lists
    def refresh(self) -> None:
        # An evening's session log is a few hundred thousand lines: count tags off the GUI thread.
        def work() -> None:
            try:
                found = recordings_with_logs(self.sessions_dir)
            except OSError:
                found = []
            try:
                self.listed.emit(found)
            except RuntimeError:
                pass  # the tab was closed meanwhile
        threading.Thread(target=work, name="merlb-training-list", daemon=True).start()
        self.refresh_models()

    def _fill_recordings(self, found: list[tuple[Path, Path, int]]) -> None:
        known = {self.recordings.item(i).data(Qt.UserRole) for i in range(self.recordings.count())}
        for rec, _log, tags in found:
            if str(rec) not in known:
                self._add_recording(rec, f"{rec.name}  ({tags} tags)")

    def _add_recording(self, rec: Path, text: str) -> None:
        item = QListWidgetItem(text)
        item.setData(Qt.UserRole, str(rec))
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(Qt.Checked)
        self.recordings.addItem(item)

    def _add_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Recordings", str(Path.home()),
                                                "Recordings (*.mkv *.mp4 *.flv *.mov)")
        for f in files:
            self._add_recording(Path(f), Path(f).name)

    def selected_recordings(self) -> list[str]:
        return [self.recordings.item(i).data(Qt.UserRole) for i in range(self.recordings.count())
                if self.recordings.item(i).checkState() == Qt.Checked]

    def refresh_models(self) -> None:
        self.models.clear()
        active = registry.active_version() or registry.DEFAULT
        QTreeWidgetItem(self.models, ["*" if active == registry.DEFAULT else "", registry.DEFAULT, "shipped",
                                      "", "", ""])
        for v in reversed(registry.versions()):
            g = v.info.get("gate") or {}
            item = QTreeWidgetItem(self.models, [
                "*" if v.name == active else "", v.name, v.status,
                _f(g.get("candidate_score")), _f(g.get("active_score")), str(g.get("n_val", ""))])
            item.setData(1, Qt.UserRole, v.name)

    # ------------------------------------------------------------ the run
    def command(self) -> list[str]:
        args = ["-m", "obs_merlb", "personalize", *self.selected_recordings(), "--progress-json",
                "--sessions-dir", str(self.sessions_dir), *self.extra_args]
        if self.encoders.isChecked():
            args.append("--train-encoders")
        url = self._worker_url()
        if url:
            args += ["--worker-url", url]
        return args

    def _worker_url(self) -> str | None:
        return getattr(self.client, "url", None)

    def start(self) -> None:
        if self.proc is not None:
            return
        if not self.selected_recordings():
            self.status.setText("Tick at least one recording (tag moments while you stream to get some).")
            return
        self.progress_seen = []
        self.last_result = None
        self._buf = b""
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.SeparateChannels)
        proc.readyReadStandardOutput.connect(self._read)
        proc.finished.connect(self._done)
        self.proc = proc
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setRange(0, 0)
        self.status.setText("starting…")
        proc.start(sys.executable, self.command())

    def cancel(self) -> None:
        # Safe at any moment: the registry only ever sees complete candidates.
        if self.proc is not None:
            self.proc.kill()

    def _read(self) -> None:
        if self.proc is None:
            return
        self._buf += bytes(self.proc.readAllStandardOutput())
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            try:
                doc = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(doc, dict):
                self.on_message(doc)

    def on_message(self, doc: dict[str, Any]) -> None:
        kind = doc.get("type")
        if kind == "progress":
            self.progress_seen.append(doc)
            total = max(1, int(doc.get("total") or 1))
            self.bar.setRange(0, total)
            self.bar.setValue(int(doc.get("done") or 0))
            self.status.setText(f"{STAGES.get(doc.get('stage', ''), doc.get('stage', ''))}: {doc.get('text', '')}")
        elif kind == "message":
            self.status.setText(str(doc.get("text", "")))
        elif kind == "error":
            self.last_result = doc
            self.status.setText(f"failed: {doc.get('message')}")
        elif kind == "result" and "status" in doc:
            self.last_result = doc
            self.status.setText(describe_result(doc))

    def _done(self, code: int, _status: Any) -> None:
        self._read()
        proc, self.proc = self.proc, None
        err = bytes(proc.readAllStandardError()).decode("utf-8", "replace").strip().splitlines() if proc else []
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if self.last_result and self.last_result.get("type") == "result" else 0)
        if self.last_result is None:
            self.last_result = {"type": "error", "message": f"stopped (exit {code})" + (f": {err[-1]}" if err else "")}
            self.status.setText(self.last_result["message"])
        self.refresh_models()
        self.finished.emit(self.last_result)

    # ------------------------------------------------------------ switching models
    def selected_version(self) -> str | None:
        items = self.models.selectedItems()
        if not items:
            return None
        return items[0].text(1)

    def activate_selected(self) -> None:
        name = self.selected_version()
        if name:
            self.activate(name, "activated in the panel")

    def rollback(self) -> None:
        self.activate(registry.previous_active(), "rollback in the panel")

    def activate(self, name: str, reason: str) -> None:
        try:
            registry.set_active(name, reason)
        except KeyError as e:
            self.status.setText(str(e.args[0]))
            return
        target = registry.active_model_dir()
        if target is None:
            from obs_merlb.registry import default_model_dir
            target = default_model_dir()
        sent = False
        if self.client is not None and target is not None:
            sent = bool(self.client.send_command("reload_model", path=str(target)))
        self.status.setText(f"active model: {name}" + (" (the worker is switching)" if sent else
                                                       " (the worker loads it at its next start)"))
        self.refresh_models()

    def open_report(self) -> None:
        from PyQt5.QtCore import QUrl
        from PyQt5.QtGui import QDesktopServices

        name = self.selected_version()
        if not name or name == registry.DEFAULT:
            return
        report = registry.get_version(name).path / "report.html"
        if report.is_file():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(report)))


def describe_result(doc: dict[str, Any]) -> str:
    head = {"accepted": "Accepted and activated", "forced": "Activated (forced)",
            "rejected": "Not activated"}.get(doc.get("status", ""), str(doc.get("status")))
    if doc.get("status") == "accepted" and not doc.get("activated"):
        head = "Passed the gate (not activated)"
    text = (f"{head}: {doc.get('version')} scores {doc.get('candidate_score', 0):.3f} macro-F1 on your held-out "
            f"moments vs {doc.get('active_score', 0):.3f} for the current model.")
    if doc.get("reasons"):
        text += " " + "; ".join(doc["reasons"]) + "."
    if doc.get("rare_tags"):
        text += " Too rare to learn: " + ", ".join(f"{k} ({v})" for k, v in doc["rare_tags"].items()) + "."
    return text


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else ""
