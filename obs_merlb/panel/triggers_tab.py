"""The panel's Triggers tab: the config's `[[triggers]]` rules, edited in a form and tested.

The list shows every rule of the file, a malformed one marked with the line
that says what is wrong (it is kept as written and saved back unchanged
until it is fixed here). The form edits one rule's condition fields; its
actions and release actions are edited as TOML (`[[actions]]` tables), the
same text the config file holds. Saving checks the rule with the worker's
own parser (obs_merlb/triggers/rules.py) and writes `[[triggers]]` while
keeping every other table of the file. The worker reads the rules when it
starts.

"Test this rule" fires the rule's actions once from the panel itself
(OBS through the config's [obs] connection, Streamer.bot, VTube Studio,
webhooks), releases them a few seconds later and lists what happened. It
runs on its own thread; the result comes back through a Qt signal.
"""
from __future__ import annotations

import sys
import threading
from typing import Any

from PyQt5.QtCore import QObject, pyqtSignal
from PyQt5.QtGui import QColor
from PyQt5.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QHBoxLayout, QLineEdit, QListWidget, QListWidgetItem,
    QPlainTextEdit, QPushButton, QWidget,
)

from obs_merlb.obs_client import ObsLink
from obs_merlb.panel.store import ConfigStore
from obs_merlb.panel.widgets import BAD, OK, WARN, button_row, card, muted
from obs_merlb.triggers.actions import ActionResult
from obs_merlb.triggers.rules import CONDITIONS, GATES, RULE_DEFAULTS, RuleError, parse_rule, rule_to_table, save_triggers
from obs_merlb.triggers.runner import executor_from_config, test_rule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NEW_RULE: dict[str, Any] = {"name": "new rule", "when": "emotion", "label": "happy", "min_confidence": 0.6,
                            "for_s": 1.0, "cooldown_s": 30.0,
                            "actions": [{"type": "scene", "scene": "Hype"}]}
# Form fields: (key, what the row says); numbers get a spin box, the rest a line edit.
NUMBERS = (("min_confidence", "Minimum confidence", 0.0, 1.0), ("for_s", "Held for (s)", 0.0, 600.0),
           ("cooldown_s", "Cool-down (s)", 0.0, 3600.0), ("release_s", "Release after (s)", 0.0, 600.0),
           ("hold_s", "Event hold (s)", 0.0, 600.0))
TEXTS = (("label", "Emotion / class"), ("head", "Head"), ("tag", "Tag name"), ("kind", "Highlight kind"))
CHECK, CROSS = "\u2713", "\u2717"


def actions_text(table: dict[str, Any]) -> str:
    """The rule's actions and release as TOML, the way the config file holds them."""
    import tomli_w

    # Written by hand as [[actions]] blocks: tomli_w makes short lists of tables inline arrays,
    # which read unlike the README and the config file.
    out = []
    for key in ("actions", "release"):
        for action in table.get(key) or []:
            out.append(f"[[{key}]]\n" + "".join(tomli_w.dumps({k: v}) for k, v in action.items()))
    return "\n".join(out)


class _Tester(QObject):
    done = pyqtSignal(str, list)     # rule name, [ActionResult]


class TriggersTab(QWidget):
    def __init__(self, store: ConfigStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.tables: list[dict[str, Any]] = []
        self.current = -1
        self.last_results: list[ActionResult] = []
        self.tester = _Tester(self)
        self.tester.done.connect(self._show_results)

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 8, 0, 0)
        grid.setSpacing(12)
        grid.addWidget(self._build_list(), 0, 0)
        grid.addWidget(self._build_form(), 0, 1)
        grid.setColumnStretch(0, 2)
        grid.setColumnStretch(1, 3)
        self.reload()

    # ------------------------------------------------------------ layout
    def _build_list(self) -> QWidget:
        box, lay = card("Rules")
        self.rule_list = QListWidget()
        self.rule_list.currentRowChanged.connect(self._select)
        lay.addWidget(self.rule_list, 1)
        self.add_btn, self.remove_btn = QPushButton("Add rule"), QPushButton("Remove")
        self.add_btn.clicked.connect(self.add_rule)
        self.remove_btn.clicked.connect(self.remove_rule)
        lay.addLayout(button_row(self.add_btn, self.remove_btn))
        lay.addWidget(muted("The worker reads the rules when it starts: restart it (or OBS) after saving."))
        return box

    def _build_form(self) -> QWidget:
        box, lay = card("Rule")
        form = QFormLayout()
        self.name_edit = QLineEdit()
        self.when_combo = QComboBox()
        self.when_combo.addItems(CONDITIONS)
        self.level_dir = QComboBox()
        self.level_dir.addItems(["above", "below"])
        self.level_spin = _spin(-1.0, 1.0)
        self.gate_combo = QComboBox()
        self.gate_combo.addItems([g or "always" for g in GATES])
        self.enabled_box = QCheckBox("enabled")
        self.texts = {key: QLineEdit() for key, _ in TEXTS}
        self.numbers = {key: _spin(lo, hi) for key, _, lo, hi in NUMBERS}
        form.addRow("Name", self.name_edit)
        form.addRow("When", self.when_combo)
        for key, text in TEXTS:
            form.addRow(text, self.texts[key])
        level = QWidget()
        row = QHBoxLayout(level)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.level_dir)
        row.addWidget(self.level_spin, 1)
        form.addRow("Valence / arousal", level)
        for key, text, _, _ in NUMBERS:
            form.addRow(text, self.numbers[key])
        form.addRow("Only while", self.gate_combo)
        form.addRow("", self.enabled_box)
        lay.addLayout(form)
        lay.addWidget(muted("Actions and release, as TOML ([[actions]] / [[release]] tables; see README "
                            "\u201cMake the stream react\u201d)."))
        self.actions_edit = QPlainTextEdit()
        self.actions_edit.setMinimumHeight(120)
        lay.addWidget(self.actions_edit, 1)
        self.save_btn, self.test_btn = QPushButton("Save rule"), QPushButton("Test this rule")
        self.save_btn.setObjectName("primary")
        self.save_btn.clicked.connect(self.save_rule)
        self.test_btn.clicked.connect(self.test_rule)
        lay.addLayout(button_row(self.save_btn, self.test_btn))
        self.message = muted("")
        lay.addWidget(self.message)
        return box

    # ------------------------------------------------------------ list
    def reload(self) -> None:
        raw = self.store.data.get("triggers", [])
        self.tables = [dict(t) for t in raw if isinstance(t, dict)] if isinstance(raw, list) else []
        self._refill(0 if self.tables else -1)

    def _refill(self, select: int) -> None:
        self.rule_list.blockSignals(True)
        self.rule_list.clear()
        for i, table in enumerate(self.tables):
            try:
                rule = parse_rule(table, i)
                item = QListWidgetItem(f"{rule.name}  \u2014  {rule.when}: "
                                       + ", ".join(a.describe() for a in rule.actions))
                if not rule.enabled:
                    item.setForeground(QColor(WARN))
            except RuleError as e:
                item = QListWidgetItem(f"\u26a0 {e}")
                item.setForeground(QColor(BAD))
            self.rule_list.addItem(item)
        self.rule_list.blockSignals(False)
        self.rule_list.setCurrentRow(select)
        self._select(select)

    def _select(self, row: int) -> None:
        self.current = row
        has = 0 <= row < len(self.tables)
        for w in (self.save_btn, self.test_btn, self.remove_btn):
            w.setEnabled(has)
        if has:
            self._fill(self.tables[row])

    def _fill(self, t: dict[str, Any]) -> None:
        self.name_edit.setText(str(t.get("name", "")))
        self.when_combo.setCurrentText(str(t.get("when", "emotion")))
        for key, edit in self.texts.items():
            edit.setText(str(t.get(key, RULE_DEFAULTS[key])))
        for key, spin in self.numbers.items():
            spin.setValue(_float(t.get(key), RULE_DEFAULTS[key]))
        below = t.get("below") is not None and t.get("above") is None
        self.level_dir.setCurrentText("below" if below else "above")
        self.level_spin.setValue(_float(t.get("below" if below else "above"), 0.5))
        self.gate_combo.setCurrentText(str(t.get("only_while") or "always"))
        self.enabled_box.setChecked(t.get("enabled", True) is not False)
        self.actions_edit.setPlainText(actions_text(t))

    def add_rule(self) -> None:
        names = {str(t.get("name")) for t in self.tables}
        table = dict(NEW_RULE)
        n = 1
        while table["name"] in names:
            n += 1
            table["name"] = f"new rule {n}"
        self.tables.append(table)
        self._refill(len(self.tables) - 1)
        self._say("A new rule: edit it, then Save rule.", WARN)

    def remove_rule(self) -> None:
        if 0 <= self.current < len(self.tables):
            name = self.tables.pop(self.current).get("name")
            if self._write():
                self._say(f"Rule {name!r} removed.", OK)
            self._refill(min(self.current, len(self.tables) - 1))

    # ------------------------------------------------------------ save / test
    def form_table(self) -> dict[str, Any]:
        """The rule the form describes, as a `[[triggers]]` table (RuleError when it is not valid)."""
        t: dict[str, Any] = {"name": self.name_edit.text().strip(), "when": self.when_combo.currentText()}
        for key, edit in self.texts.items():
            t[key] = edit.text().strip()
        t["head"] = t["head"] or "emotion"
        for key, spin in self.numbers.items():
            t[key] = float(spin.value())
        if t["when"] in ("valence", "arousal"):
            t[self.level_dir.currentText()] = float(self.level_spin.value())
        gate = self.gate_combo.currentText()
        t["only_while"] = "" if gate == "always" else gate
        t["enabled"] = self.enabled_box.isChecked()
        try:
            lists = tomllib.loads(self.actions_edit.toPlainText())
        except tomllib.TOMLDecodeError as e:
            raise RuleError(f"actions: not valid TOML ({e})") from None
        extra = sorted(set(lists) - {"actions", "release"})
        if extra:
            raise RuleError(f"actions: only [[actions]] and [[release]] tables belong here, not {extra[0]!r}")
        t.update(lists)
        # Normalised through the parser: defaults dropped, so the file stays as short as a hand-written one.
        return rule_to_table(parse_rule(t, max(self.current, 0)))

    def _checked_form(self) -> dict[str, Any] | None:
        """The form's rule, or None after saying what is wrong with it."""
        try:
            return self.form_table()
        except RuleError as e:
            self._say(str(e), BAD)
            return None

    def save_rule(self) -> None:
        table = self._checked_form()
        if table is None:
            return
        others = {str(t.get("name")) for i, t in enumerate(self.tables) if i != self.current}
        if table["name"] in others:
            self._say(f"another rule is already named {table['name']!r}: names must be unique", BAD)
            return
        self.tables[self.current] = table
        if self._write():
            self._say(f"Rule {table['name']!r} saved to {self.store.file}.", OK)
        self._refill(self.current)

    def _write(self) -> bool:
        try:
            save_triggers(self.tables, self.store.path)
        except OSError as e:   # ConfigError included: the file is never written over unread
            self._say(f"rules not saved: {e}", BAD)
            return False
        self.store.data = dict(self.store.data, triggers=list(self.tables))
        return True

    def test_rule(self) -> None:
        table = self._checked_form()
        if table is None:
            return
        rule = parse_rule(table)
        config = dict(self.store.data, triggers=[table])
        self.test_btn.setEnabled(False)
        self._say(f"Testing {rule.name!r}: firing its actions, releasing them in a few seconds\u2026", WARN)
        threading.Thread(target=self._run_test, args=(rule, config), name="merlb-trigger-test",
                         daemon=True).start()

    def _run_test(self, rule: Any, config: dict[str, Any]) -> None:
        obs_cfg = config.get("obs") if isinstance(config.get("obs"), dict) else {}
        obs = ObsLink.from_config(obs_cfg) if obs_cfg else None
        executor = executor_from_config(config, obs, config_path=None if self.store.path is None
                                        else str(self.store.path))
        state = {"label": rule.label or "happy", "confidence": rule.min_confidence, "valence_score": 0.0,
                 "arousal_score": 0.0, "t": 0.0}
        try:
            results = test_rule(executor, rule, state)
        finally:
            for client in (obs, executor.streamerbot, executor.vts):
                if client is not None:
                    client.close()
        self.tester.done.emit(rule.name, results)

    def _show_results(self, name: str, results: list[ActionResult]) -> None:
        self.test_btn.setEnabled(0 <= self.current < len(self.tables))
        lines = [f"{CHECK if r.ok else CROSS} {r.action}: {r.detail}" for r in results]
        ok = all(r.ok for r in results)
        self._say(f"Test of {name!r}: " + ("every action worked" if ok else "some actions failed")
                  + "\n" + "\n".join(lines), OK if ok else BAD)
        self.last_results = results

    def _say(self, text: str, color: str) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(f"color: {color};")


def _spin(lo: float, hi: float) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(2)
    s.setSingleStep(0.05 if hi <= 1.0 else 0.5)
    return s


def _float(value: Any, default: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float(default or 0.0)


