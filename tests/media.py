"""Where the tests' real media lives, shared by the capture and perception tests."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
DEMO = ROOT / "assets" / "demo.mp4"
CREMA_FLV = ROOT.parent / "shared" / "data" / "crema_d_samples" / "1001_DFA_HAP_XX.flv"


def av_clip() -> Path:
    """A real CREMA-D audio-visual clip: the demo video, else a shared FLV."""
    for p in (DEMO, CREMA_FLV):
        if p.exists():
            return p
    pytest.skip("no CREMA-D audio-visual clip (assets/demo.mp4 or ../shared/data/crema_d_samples)")
