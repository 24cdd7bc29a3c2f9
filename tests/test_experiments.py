"""`merlb experiments --tiny`: the fusion x task table, end to end on real clips."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from obs_merlb.cli import main

FIX = Path(__file__).resolve().parent / "fixtures"


def _grid(tmp_path: Path, fusions: str) -> list[dict[str, str]]:
    out = tmp_path / "grid"
    assert main(["experiments", str(FIX / "seed_csv"), "--out", str(out), "--tiny",
                 "--cache", str(tmp_path / "cache"), "--fusions", fusions]) == 0
    for f in ["results.csv", "results.md", "results.json", "heatmap.png", "grid.json"]:
        assert (out / f).exists(), f
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_grid_two_fusions(tmp_path: Path) -> None:
    rows = _grid(tmp_path, "early,tt")
    assert [(r["fusion"], r["task"]) for r in rows] == [
        ("Early", "Multi"), ("Early", "Single"), ("Ours (TT)", "Multi"), ("Ours (TT)", "Single")]
    for r in rows:
        assert r["VNeg"] != "" and r["AHigh"] != ""          # labelled heads scored
        assert r["Ang"] == ""                                # no emotion labels: blank, not zero
    assert json.loads((tmp_path / "grid" / "results.json").read_text())[0]["dataset"] == "seed_csv"


@pytest.mark.slow
def test_tiny_grid_all_fusions(tmp_path: Path) -> None:
    rows = _grid(tmp_path, "early,late,joint,deep,tt")
    assert len(rows) == 10
