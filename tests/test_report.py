"""`merlb analyze` on the demo video writes the timeline (CSV, JSON) and the HTML report.

A freshly initialised, seeded model stands in for the trained one (none ships
yet): the report's structure, not the model's accuracy, is what is tested.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from merlb_testmodel import fresh_model_dir

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"


def test_analyze_demo(tmp_path: Path) -> None:
    model = fresh_model_dir(tmp_path / "model")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "obs_merlb", "analyze", str(DEMO), "--out", str(out),
                           "--model", str(model)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = Path(proc.stdout.strip().splitlines()[-1])
    assert report == out / "report.html" and report.is_file()
    html = report.read_text()
    assert html.count("data:image/png;base64,") == 3      # emotions, valence, arousal inlined
    assert "Highlights" in html and "<script" not in html
    rows = list(csv.DictReader(open(out / "timeline.csv")))
    assert len(rows) >= 12.0 * 15 * 0.9                    # ~15 rows per second of the 12.6 s clip
    assert {"t", "label", "valence_score", "arousal_score", "p_happy", "share_face"} <= set(rows[0])
    assert all(-1 <= float(r["valence_score"]) <= 1 for r in rows)
    doc = json.loads((out / "timeline.json").read_text())
    assert doc["meta"]["duration_s"] == pytest.approx(12.6, abs=0.2)
    timeline = [json.loads(line) for line in (out / doc["meta"]["rows"]).read_text().splitlines()]
    assert len(timeline) == len(rows) and isinstance(doc["highlights"], list)
    assert any(r["face_present"] for r in timeline)
    assert not (out / ".analyze-checkpoint.json").exists()    # a finished run leaves no checkpoint
    # Faster than real time even on 2 shared cores (the requirement).
    assert doc["meta"]["realtime_factor"] > 1.0
