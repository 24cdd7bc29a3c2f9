"""The benchmarks stay runnable: each runs briefly on the demo clip and prints
its figures. Their targets are judged from full runs (README, issue notes),
not here: timings on a shared CI machine are noise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"
pytestmark = pytest.mark.slow


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_soak_short_run_writes_figures_and_plot(tmp_path: Path) -> None:
    proc = _run(["benchmarks/soak.py", "--hours", "0.01", "--out", str(tmp_path)])
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1 = not flat; a 36 s run may be noisy
    figures = json.loads((tmp_path / "soak.json").read_text())["figures"]
    assert figures["frames"] > 100 and figures["stream_hours"] >= 0.009
    assert figures["threads_end"] <= figures["threads_start"] + 1
    assert (tmp_path / "soak.png").stat().st_size > 1000


def test_bench_live_json_has_the_issue_fields() -> None:
    proc = _run(["-m", "obs_merlb", "bench", "live", "--video", str(DEMO), "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    for key in ("p95_latency_ms", "cpu_ms_per_frame", "realtime_factor", "seed_path_ratio"):
        assert isinstance(out[key], (int, float)) and out[key] > 0, key


def test_faults_short_run_loses_nothing_and_names_each_fault() -> None:
    # About a minute: the worker's start and its restart after the corrupt model take most of it.
    proc = _run(["benchmarks/faults.py", "--short", "--json"])
    assert proc.returncode in (0, 1), proc.stderr[-2000:]   # 1 = a target missed; the freeze one is timing
    out = json.loads(proc.stdout)
    assert out["targets"]["nothing_lost"] and out["targets"]["each_fault_named_once"], out
    assert out["restarts"] >= 1 and out["unplanned_exits"] == 0 and out["events_delivered"] > 100
    log = out["session_log"]
    assert log["lines_checked"] > 100 and log["markers"]["soak.merlb.jsonl"] == {"open": 1, "resume": 1, "close": 1}
    assert log["tags_paired_with_the_recording"] == ["before-crash", "after-restart"]
    faults = {f["name"]: f for f in out["faults"]}
    assert faults["obs_killed"]["skipped"] and all(f["named"] for f in out["faults"] if not f["skipped"])
