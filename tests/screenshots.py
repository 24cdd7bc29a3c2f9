"""Where tests save their screenshots: a temporary folder, or a folder asked for.

Tests never write into tracked files. `make screenshots` sets MERLB_SCREENSHOTS
to docs/img to refresh the README's pictures from a test run on purpose.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "MERLB_SCREENSHOTS"
REPO = Path(__file__).resolve().parent.parent


def screenshot_path(name: str, tmp_dir: Path) -> Path:
    """`name` in $MERLB_SCREENSHOTS (relative to the repository) when set, else in `tmp_dir`."""
    wanted = os.environ.get(ENV)
    folder = (REPO / wanted) if wanted else tmp_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
