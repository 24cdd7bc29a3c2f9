"""A `merlb live` worker on the looped demo clip, watched through its status file as the OBS script does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo.mp4"


def live_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """One thread, a config file and model registry of the test's own (none of the developer's)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MERLB_CONFIG": str(tmp_path / "config.toml"),
            "MERLB_MODELS": str(tmp_path / "models"), **extra}


def start_live(tmp_path: Path, status: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`merlb live --video DEMO --loop --status-file STATUS --control none --port 0 ARGS`; stderr is piped."""
    return subprocess.Popen([sys.executable, "-m", "obs_merlb", "live", "--video", str(DEMO), "--loop",
                             "--status-file", str(status), "--control", "none", "--port", "0", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env or live_env(tmp_path), cwd=tmp_path)


def wait_running(proc: subprocess.Popen, status: Path, timeout: float = 90.0) -> dict[str, Any]:
    """The status once it says running with a frame rate; fails the test if it never does."""
    doc: dict[str, Any] = {}
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            doc = json.loads(status.read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("state") == "running" and doc.get("fps"):
            return doc
        time.sleep(0.5)
    raise AssertionError(f"no running status: {doc}")


def run_until_running(proc: subprocess.Popen, status: Path) -> tuple[dict[str, Any], str]:
    """Wait for a running status, stop the worker with SIGTERM (it must exit 0); (that status, its stderr)."""
    try:
        doc = wait_running(proc, status)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return doc, proc.stderr.read()
