"""tools/gpu_face.py: the GPU face recipe packed for a lent GPU machine and run the way it runs there.

No GPU here, so `train` runs on the CPU for one epoch of fixture faces; the machine's Python is played by
tests/standins/device_python (imports of the packages it lacks fail, from the device tool's package list).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
TOOL = ROOT / "tools" / "gpu_face.py"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], env=env, capture_output=True, text=True, timeout=600)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "GPU_FACE_WORK": str(tmp_path / "work"), "GPU_FACE_SITE": str(tmp_path / "site"),
            "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT / "tests" / "standins" / "device_python"),
            "GPU_FACE_CARRIED": "platformdirs tomli_w", "OMP_NUM_THREADS": "1"}


def _tars(work: Path) -> None:
    """FER2013-shaped train and val tars of the fixture faces, with votes for the train split."""
    work.mkdir(parents=True)
    votes = (FIX / "ferplus_votes_sample.csv").read_text().replace("fer2013/", "train/")
    with tarfile.open(work / "fer_train.tar.gz", "w:gz") as t:
        t.add(FIX / "fer2013", "train")
        csv = work / "ferplus_votes.csv"
        csv.write_text(votes)
        t.add(csv, "ferplus_votes.csv")
    with tarfile.open(work / "fer_val.tar.gz", "w:gz") as t:
        t.add(FIX / "fer2013", "val")


@pytest.mark.slow
def test_the_recipe_runs_on_the_machines_python_and_returns_its_model(tmp_path: Path) -> None:
    from obs_merlb.model.io import load_model

    pytest.importorskip("setuptools", reason="`train` builds the project with the machine's setuptools")
    env = _env(tmp_path)
    _tars(tmp_path / "work")
    for part in ("train", "val"):
        r = _run(["unpack", part], env)
        assert r.returncode == 0, r.stderr
        assert f"{part}: 14 images" in r.stdout
    r = _run(["train", "--device", "cpu", "--set", "epochs=1", "--set", "batch_size=8"], env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "merlb.onnx", "summary.json"}
    assert load_model(out) is not None
    # The project ran from what `train` installed, not from this checkout's environment.
    assert (tmp_path / "site" / "obs_merlb" / "assets" / "model" / "config.json").is_file()


def test_a_missing_part_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    r = _run(["unpack", "val"], env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "did not come with this call" in r.stderr
    r = _run(["train", "--device", "cpu"], env)
    assert r.returncode == 2 and "run `unpack train` first" in r.stderr
    r = _run(["pack", "--data", str(tmp_path / "nowhere")], env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not found" in r.stderr


def test_the_device_stand_in_refuses_what_the_machine_lacks(tmp_path: Path) -> None:
    """Without this the test above would prove nothing: the stand-in really hides the packages."""
    env = {**_env(tmp_path), "GPU_FACE_CARRIED": ""}
    r = subprocess.run([sys.executable, "-c", "import av"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "not on the GPU machine" in r.stderr
