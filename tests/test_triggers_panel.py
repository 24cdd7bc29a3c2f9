"""The panel's Triggers tab (Qt offscreen): the rules of the config file listed (a malformed
one marked and kept), edited in the form and saved without losing the rest of the file, and
"Test this rule" firing the rule's actions on an obs-websocket stand-in (tests/obs_standin.py).
The README's picture of the tab is written only when MERLB_SCREENSHOTS asks for it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytestqt")

from PyQt5.QtWidgets import QApplication  # noqa: E402

from obs_merlb.config import read_config, save_config  # noqa: E402
from obs_merlb.panel.store import ConfigStore  # noqa: E402
from obs_merlb.panel.triggers_tab import TriggersTab  # noqa: E402
from obs_merlb.panel.widgets import STYLESHEET, dark_palette  # noqa: E402
from tests.obs_standin import ObsStandIn  # noqa: E402
from tests.screenshots import screenshot_path  # noqa: E402
from tests.test_triggers import ObsRecorder, rule_table  # noqa: E402

pytestmark = [pytest.mark.triggers, pytest.mark.qt]

BROKEN = {"name": "typo", "when": "smile", "actions": [{"type": "obs_event"}]}


def write_config(path: Path, port: int) -> None:
    save_config({"obs": {"host": "127.0.0.1", "port": port, "password": "pw"}, "engine": {"rate": 12.0},
                 "triggers": [
                     rule_table(name="hype scene", cooldown_s=60.0, actions=[{"type": "scene", "scene": "Hype"}],
                                release=[{"type": "scene", "scene": "Main"}]),
                     {"name": "loud", "when": "arousal", "above": 0.6, "for_s": 2.0, "only_while": "streaming",
                      "actions": [{"type": "show_source", "scene": "Main", "source": "Confetti", "for_s": 5.0}]},
                     {"name": "bot", "when": "tag", "tag": "hype",
                      "actions": [{"type": "streamerbot", "action": "Hype clip"}]},
                     BROKEN]}, path)


def test_triggers_tab_lists_edits_saves_and_tests(qtbot: Any, tmp_path: Path) -> None:
    rec = ObsRecorder()
    with ObsStandIn("pw", rec.answers()) as obs:
        path = tmp_path / "config.toml"
        write_config(path, obs.port)
        tab = TriggersTab(ConfigStore(path))
        qtbot.addWidget(tab)
        # The main window's look, so the README picture shows the tab as the streamer sees it.
        QApplication.instance().setStyle("Fusion")
        QApplication.instance().setPalette(dark_palette())
        tab.setStyleSheet(STYLESHEET)
        tab.resize(1180, 720)
        texts = [tab.rule_list.item(i).text() for i in range(tab.rule_list.count())]
        assert len(texts) == 4 and texts[0].startswith("hype scene") and "scene(Hype)" in texts[0]
        assert texts[3].startswith("\u26a0 trigger 'typo'") and "when" in texts[3]

        # Edit the first rule in the form and save it.
        tab.rule_list.setCurrentRow(0)
        assert tab.name_edit.text() == "hype scene" and tab.numbers["cooldown_s"].value() == 60.0
        tab.numbers["cooldown_s"].setValue(45.0)
        tab.texts["label"].setText("surprise")
        qtbot.mouseClick(tab.save_btn, 1)
        cfg = read_config(path)
        first = cfg["triggers"][0]
        assert first["cooldown_s"] == 45.0 and first["label"] == "surprise"
        assert first["release"] == [{"type": "scene", "scene": "Main"}]
        assert cfg["triggers"][3] == BROKEN and cfg["obs"]["password"] == "pw" and cfg["engine"]["rate"] == 12.0

        # A bad edit is refused with one line, and nothing is written.
        tab.actions_edit.setPlainText("[[actions]]\ntype = \"scene\"\n")
        qtbot.mouseClick(tab.save_btn, 1)
        assert "scene is required" in tab.message.text() and read_config(path) == cfg

        # Add, then remove.
        qtbot.mouseClick(tab.add_btn, 1)
        qtbot.mouseClick(tab.save_btn, 1)
        assert [t["name"] for t in read_config(path)["triggers"]][-1] == "new rule"
        qtbot.mouseClick(tab.remove_btn, 1)
        assert [t["name"] for t in read_config(path)["triggers"]] == ["hype scene", "loud", "bot", "typo"]

        # Test this rule: its actions run once against OBS and the result is shown.
        tab.rule_list.setCurrentRow(0)
        qtbot.mouseClick(tab.test_btn, 1)
        qtbot.waitUntil(lambda: bool(tab.last_results), timeout=15_000)
        assert ("SetCurrentProgramScene", {"sceneName": "Hype"}) in rec.calls
        assert ("SetCurrentProgramScene", {"sceneName": "Main"}) in rec.calls   # the release ran too
        assert "every action worked" in tab.message.text() and "\u2713 scene(Hype)" in tab.message.text()
        qtbot.waitUntil(tab.test_btn.isEnabled, timeout=5_000)
        # README picture only when asked (`MERLB_SCREENSHOTS=docs/img`); a test run leaves the tree as it was.
        assert tab.grab().save(str(screenshot_path("triggers.png", tmp_path)))


def test_unreadable_config_is_never_written_over(qtbot: Any, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[obs]\npassword = \"keep\"\n[[triggers]\n", encoding="utf-8")
    tab = TriggersTab(ConfigStore(path))
    qtbot.addWidget(tab)
    assert tab.rule_list.count() == 0
    qtbot.mouseClick(tab.add_btn, 1)
    qtbot.mouseClick(tab.save_btn, 1)
    assert "rules not saved" in tab.message.text() and str(path) in tab.message.text()
    assert path.read_text(encoding="utf-8").startswith("[obs]\npassword = \"keep\"")
