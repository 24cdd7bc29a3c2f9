"""The registry's active.json is read, not trusted: a version is a version folder's name, and a
malformed history never stops a rollback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from obs_merlb import registry


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "models"
    for _ in range(2):
        tmp = registry.new_temp_dir(r)
        (tmp / "config.json").write_text("{}")
        registry.commit_temp_dir(tmp, r)
    return r


def _active(root: Path, doc: Any) -> None:
    (root / registry.ACTIVE_FILE).write_text(json.dumps(doc))


@pytest.mark.parametrize("version", ["../elsewhere", "{abs}", "v0001/../../elsewhere", "./v0001", "v1",
                                     5, ["v0001"], {"v": 1}])
def test_active_version_must_name_a_version_folder(root: Path, version: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # A model folder outside the registry, which a path in active.json would have loaded.
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    if version == "{abs}":
        version = str(elsewhere)
    _active(root, {"version": version, "history": []})
    assert registry.active_version(root) is None
    assert registry.active_model_dir(root) is None      # the shipped model, not that folder
    assert any("active.json" in r.getMessage() for r in caplog.records)


def test_good_pointers_still_work(root: Path) -> None:
    _active(root, {"version": "v0002", "history": [{"version": "v0001", "until": 1.0}]})
    assert registry.active_model_dir(root) == root / "v0002"
    assert registry.previous_active(root) == "v0001"
    _active(root, {"version": "default", "history": []})
    assert registry.active_version(root) is None


@pytest.mark.parametrize("history", ["v0001", 5, {"version": "v0001"}, [1, "v0001", None],
                                     [{"version": "../x"}, {"version": "v0001", "until": 1.0}, {"until": 2}]])
def test_malformed_history_never_breaks_rollback(root: Path, history: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    _active(root, {"version": "v0002", "history": history})
    prev = registry.previous_active(root)
    good = isinstance(history, list) and {"version": "v0001", "until": 1.0} in history
    assert prev == ("v0001" if good else registry.DEFAULT)
    doc = registry.set_active(prev, "rollback", root)
    assert all(isinstance(h, dict) and h["version"] in ("v0001", "v0002", "default") for h in doc["history"])
    assert registry.read_active(root) == doc
    assert any("history" in r.getMessage() for r in caplog.records)


def test_unreadable_active_file_is_the_default(root: Path) -> None:
    (root / registry.ACTIVE_FILE).write_bytes(b"\xff\xfe not json")
    assert registry.read_active(root) == {} and registry.active_model_dir(root) is None
    _active(root, ["v0001"])
    assert registry.read_active(root) == {}


def test_merlb_personalize_rollback_with_malformed_history_is_not_a_traceback(root: Path,
                                                                              tmp_path: Path) -> None:
    _active(root, {"version": "v0002", "history": "not a list"})
    env = {**os.environ, "MERLB_MODELS": str(root), "MERLB_CONFIG": str(tmp_path / "config.toml"),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "obs_merlb", "personalize", "rollback", "--no-notify"],
                       capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("history is not a list") == 1 and "active model: default" in r.stdout + r.stderr
    assert registry.active_version(root) is None
