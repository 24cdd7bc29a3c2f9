"""The wheel carries what `merlb demo`, `merlb live` and the OBS script need
outside a checkout: the shipped model, the demo clip with its labels, and the
script with the supervisor it loads from its own folder.

Built with `pip wheel --no-deps` from a copy of the files git would commit
(the checkout's own build/ may hold stale files); nothing is installed.
`make wheel-check` goes on to install the wheel and run it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_ASSET_BYTES = 20 * 1024 * 1024   # the model, the clip and the card, unpacked

pytestmark = pytest.mark.slow


def _git_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the wheel is built from the files git would commit")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for f in _git_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "--disable-pip-version-check", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("obs_merlb-*.whl")
    return whl


def test_wheel_carries_the_model_and_the_demo_clip(wheel: Path) -> None:
    infos = zipfile.ZipFile(wheel).infolist()
    names = {i.filename for i in infos}
    model = sorted(p.name for p in (ROOT / "assets" / "model").iterdir() if p.is_file())
    assert "config.json" in model and "model.safetensors" in model
    missing = [n for n in (*(f"obs_merlb/assets/model/{m}" for m in model),
                           "obs_merlb/assets/demo.mp4", "obs_merlb/assets/demo.csv",
                           "obs_merlb/assets/README.md", "obs_merlb/assets/__init__.py")
               if n not in names]
    assert not missing, missing
    # The OBS script loads obs_supervisor.py from its own folder.
    assert {"obs_merlb/obs_script.py", "obs_merlb/obs_supervisor.py"} <= names
    assert "obs_merlb/overlay/static/overlay.html" in names
    assert not [n for n in names if n.startswith(("assets/", "tests/", "model/", "train/"))]
    assets = sum(i.file_size for i in infos if i.filename.startswith("obs_merlb/assets/"))
    assert 10_000_000 < assets < MAX_ASSET_BYTES, assets
