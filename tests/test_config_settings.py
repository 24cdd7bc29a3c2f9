"""One range check for every source of an engine setting: config file, flags, the `set` command."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from obs_merlb.settings import RANGES, SettingError, check_setting, checked_live_config
from obs_merlb.state import StateConfig

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo.mp4"


def _args(**flags: float | None) -> argparse.Namespace:
    return argparse.Namespace(**{key: flags.get(key) for key in RANGES})


@pytest.mark.parametrize("key,good,bad", [
    ("rate", [1, 15, 30], [0.5, 31, -1]),
    ("smoothing", [0, 0.75, 0.999], [1, 7, -0.1]),
    ("threshold", [0, 0.4, 1], [5, -0.01, 1.01]),
    ("min_dwell_s", [0, 1, 60], [-5, -0.001]),
    ("hide_after_s", [0, 2], [-1]),
])
def test_ranges(key: str, good: list[float], bad: list[float]) -> None:
    for v in good:
        assert check_setting(key, v) == v
        assert check_setting(key, str(v)) == v   # the set command's values arrive as JSON, maybe strings
    for v in [*bad, float("nan"), float("inf"), "abc", None, [1]]:
        with pytest.raises(SettingError, match=key):
            check_setting(key, v)


def test_unknown_setting() -> None:
    with pytest.raises(SettingError, match="unknown setting 'nope'"):
        check_setting("nope", 1)


def test_the_set_command_uses_the_same_table() -> None:
    cfg = StateConfig()
    with pytest.raises(ValueError) as e:
        cfg.set("smoothing", 7)
    assert str(e.value) == "smoothing must be in [0, 1), not 7"
    cfg.set("min_dwell_s", 0.5)
    assert cfg.min_dwell_s == 0.5


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text,line", [
    ("[engine]\nsmoothing = 7\n", "[engine] smoothing = 7 in {p} is refused: smoothing must be in [0, 1)"),
    ("[engine]\nrate = 100\n", "[engine] rate = 100 in {p} is refused: rate must be 1-30 Hz"),
    ('[engine]\nthreshold = "high"\n', "[engine] threshold = 'high' in {p} is refused: threshold must be 0-1"),
    ("engine = 3\n", "[engine] in {p} must be a table"),
])
def test_config_file_out_of_range_is_refused(tmp_path: Path, text: str, line: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(SystemExit) as e:
        checked_live_config(_args(), p)
    assert str(e.value) == "merlb live: " + line.format(p=p)


@pytest.mark.parametrize("flags,line", [
    ({"threshold": 5.0}, "--threshold 5 is refused: threshold must be 0-1"),
    ({"min_dwell_s": -5.0}, "--min-dwell-s -5 is refused: min_dwell_s must be >= 0 s"),
    ({"rate": 0.0}, "--rate 0 is refused: rate must be 1-30 Hz"),
])
def test_flags_out_of_range_are_refused(tmp_path: Path, flags: dict, line: str) -> None:
    with pytest.raises(SystemExit) as e:
        checked_live_config(_args(**flags), _write(tmp_path, ""))
    assert str(e.value) == "merlb live: " + line


def test_flags_win_over_the_file_and_good_values_pass(tmp_path: Path) -> None:
    p = _write(tmp_path, "[engine]\nsmoothing = 7\nthreshold = 0.3\n[sources]\ncamera = 'Cam'\n")
    cfg = checked_live_config(_args(smoothing=0.5), p)   # the file's bad value is not used
    assert cfg["sources"] == {"camera": "Cam"}


def test_unreadable_config_is_refused_with_its_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "[obs]\npassword = 'x'\n[engine\n")
    with pytest.raises(SystemExit, match=r"line 3") as e:
        checked_live_config(_args(), p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("config,flags,expect", [
    ("[engine]\nsmoothing = 7\n", [], "[engine] smoothing = 7"),
    ("", ["--threshold", "5"], "--threshold 5"),
    ("", ["--min-dwell-s", "-5"], "--min-dwell-s -5"),
])
def test_merlb_live_refuses_at_start_in_one_line(tmp_path: Path, config: str, flags: list[str],
                                                 expect: str) -> None:
    env = {**os.environ, "MERLB_CONFIG": _write(tmp_path, config), "MERLB_MODELS": str(tmp_path / "models"),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "obs_merlb", "live", "--video", str(DEMO), "--port", "0",
                        "--no-session", "--control", "none", *flags],
                       capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"merlb live: {expect} ") and " is refused: " in lines[0], \
        r.stderr
