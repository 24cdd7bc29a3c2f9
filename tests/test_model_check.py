"""Damaged model folders: one line naming the file, never a traceback; a damaged personalized
model falls back to the shipped one with a visible error (issue 23 item 7)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from live_worker import DEMO, live_env, run_until_running, start_live
from obs_merlb import registry
from obs_merlb.inference import load_backend
from obs_merlb.model.config import CONFIG_FILE, ONNX_SEQUENCE, WEIGHTS, ModelFolderError, encoder_file, load_config
from obs_merlb.model.verify import check_weights
from obs_merlb.model_check import load_checked

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "assets" / "model"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


# (what is damaged, how, the file the message must name)
DAMAGE = {
    "config-not-json": (_write(CONFIG_FILE, '{"config": {"steps": 8'), CONFIG_FILE),
    "config-no-config": (_write(CONFIG_FILE, '{"labels": {}}'), CONFIG_FILE),
    "config-bad-value": (lambda d: (d / CONFIG_FILE).write_text(json.dumps(
        {**json.loads((d / CONFIG_FILE).read_text()), "config": {"fusion": "nope"}})), CONFIG_FILE),
    "config-bad-calibration": (lambda d: (d / CONFIG_FILE).write_text(json.dumps(
        {**json.loads((d / CONFIG_FILE).read_text()), "calibration": {"temperatures": {"face": {"emotion": -1}}}})),
        CONFIG_FILE),
    "config-bad-voice-prior": (lambda d: (d / CONFIG_FILE).write_text(json.dumps(
        {**(doc := json.loads((d / CONFIG_FILE).read_text())),
         "config": {**doc["config"], "voice_prior": {"mean": [0.0] * 64, "std": [0.0] * 64}}})), CONFIG_FILE),
    "config-missing": (lambda d: (d / CONFIG_FILE).unlink(), CONFIG_FILE),
    "onnx-truncated": (lambda d: _truncate(d / ONNX_SEQUENCE), ONNX_SEQUENCE),
    "onnx-cut-near-end": (lambda d: _truncate(d / encoder_file("face"), 0.999), encoder_file("face")),
    "onnx-of-another-part": (lambda d: shutil.copy(d / encoder_file("voice"), d / ONNX_SEQUENCE), ONNX_SEQUENCE),
}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(SHIPPED, d)
    return d


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_folder_is_one_error_naming_the_file(model: Path, case: str) -> None:
    damage, name = DAMAGE[case]
    damage(model)
    with pytest.raises(ModelFolderError) as err:
        load_backend(model)
    message = str(err.value)
    assert str(model / name) in message and "\n" not in message, message


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_damaged_weights_are_found_from_the_header(model: Path, keep: float) -> None:
    _truncate(model / WEIGHTS, keep)
    with pytest.raises(ModelFolderError, match="model.safetensors"):
        check_weights(model)
    from obs_merlb.model.io import load_model

    with pytest.raises(ModelFolderError, match="model.safetensors"):
        load_model(model)


def test_weights_of_another_config_are_named(model: Path, tmp_path: Path) -> None:
    from obs_merlb.model.io import load_model

    doc = json.loads((model / CONFIG_FILE).read_text())
    doc["config"]["lstm_hidden"] = 2 * doc["config"]["lstm_hidden"]
    (model / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelFolderError, match="does not hold the model"):
        load_model(model)


def test_sound_folders_pass() -> None:
    check_weights(SHIPPED)
    cfg, meta = load_config(SHIPPED)
    assert cfg.modalities and isinstance(meta, dict)


@pytest.fixture
def broken_active(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry whose active version has a truncated ONNX file."""
    root = tmp_path / "models"
    tmp = registry.new_temp_dir(root)
    shutil.copytree(SHIPPED, tmp, dirs_exist_ok=True)
    version = registry.commit_temp_dir(tmp, root)
    registry.set_active(version.name, "test", root)
    _truncate(version.path / ONNX_SEQUENCE)
    monkeypatch.setenv("MERLB_MODELS", str(root))
    return version.path


def test_broken_active_model_falls_back_to_the_shipped_one(broken_active: Path) -> None:
    backend, problems = load_checked(lambda d: load_backend(d), None, "live")
    assert backend.model_dir.resolve() == registry.default_model_dir().resolve()
    assert len(problems) == 1 and str(broken_active / ONNX_SEQUENCE) in problems[0]
    assert "shipped model" in problems[0]


def test_a_model_the_streamer_named_is_not_replaced(model: Path) -> None:
    _truncate(model / ONNX_SEQUENCE)
    with pytest.raises(SystemExit, match=f"merlb live: {model / ONNX_SEQUENCE}"):
        load_checked(lambda d: load_backend(d), str(model), "live")


def test_damaged_weights_beside_working_onnx_are_reported(model: Path) -> None:
    _truncate(model / WEIGHTS)
    backend, problems = load_checked(lambda d: load_backend(d), str(model), "analyze")
    assert backend.model_dir == model
    assert len(problems) == 1 and str(model / WEIGHTS) in problems[0]


@pytest.mark.parametrize("command", [["analyze", str(DEMO), "--out", "{tmp}/out"], ["demo"]])
def test_commands_print_one_line_for_a_damaged_model(model: Path, tmp_path: Path, command: list[str]) -> None:
    (model / CONFIG_FILE).write_text("{not json")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command] + ["--model", str(model)]
    r = subprocess.run([sys.executable, "-m", "obs_merlb", *argv], capture_output=True, text=True,
                       env=live_env(tmp_path, MERLB_MODELS=str(tmp_path / "no-models")),
                       timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert f"{model / CONFIG_FILE} is damaged" in r.stderr.strip().splitlines()[-1]


def test_live_runs_on_the_shipped_model_when_the_personalized_one_is_damaged(
        broken_active: Path, tmp_path: Path) -> None:
    # Before: a traceback and exit, and under OBS a restart into the same damage, forever.
    status = tmp_path / "status.json"
    proc = start_live(tmp_path, status, "--sessions-dir", str(tmp_path / "sessions"),
                      env=live_env(tmp_path, MERLB_MODELS=os.environ["MERLB_MODELS"]))
    doc, err = run_until_running(proc, status)
    assert str(broken_active / ONNX_SEQUENCE) in (doc.get("last_error") or "")
    assert "Traceback" not in err, err
    assert err.count("cannot be used") == 1, err
    events = [json.loads(x) for log in (tmp_path / "sessions").glob("*.merlb.jsonl")
              for x in log.read_text().splitlines()]
    errors = [e for e in events if e.get("type") == "error" and e.get("where") == "model"]
    assert len(errors) == 1 and "shipped model" in errors[0]["message"]
