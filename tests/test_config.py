"""The config file: a file that cannot be read is never written over, and every writer says why."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from obs_merlb import config as cfgmod

# The reported case: [obs], [sources], [personalize.tags] and one typo (a table without its bracket).
BROKEN = """[obs]
password = "pw-secret-123"
port = 4455

[engine
threshold = 0.5

[sources]
camera = "Webcam"

[personalize.tags]
gg = "happy"
"""


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(BROKEN)
    return p


def _unchanged(p: Path) -> None:
    assert p.read_text() == BROKEN
    assert [x.name for x in p.parent.iterdir()] == [p.name], "a temporary file was left behind"


def test_read_names_the_file_and_line_and_never_echoes_a_secret(tmp_path: Path, broken: Path) -> None:
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.read_config(broken)
    msg = str(e.value)
    assert str(broken) in msg and "line 5" in msg and "\n" not in msg
    p = tmp_path / "secret.toml"
    p.write_text('[obs]\npassword = "unterminated-secret\n')
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.read_config(p)
    assert "line 2" in str(e.value) and "unterminated-secret" not in str(e.value)


def test_read_missing_is_empty_and_unreadable_kinds_are_errors(tmp_path: Path) -> None:
    assert cfgmod.read_config(tmp_path / "none.toml") == {}
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[obs]\n")
    with pytest.raises(cfgmod.ConfigError, match="UTF-8"):
        cfgmod.read_config(tmp_path / "binary.toml")
    (tmp_path / "folder.toml").mkdir()
    with pytest.raises(cfgmod.ConfigError, match="folder.toml"):
        cfgmod.read_config(tmp_path / "folder.toml")


def test_load_for_readers_goes_on_with_defaults_and_says_where(broken: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="obs_merlb.config"):
        assert cfgmod.load_config(broken) == {}
        assert cfgmod.get_section("sources", broken) == {}
    assert any("line 5" in r.getMessage() and "pw-secret" not in r.getMessage() for r in caplog.records)
    _unchanged(broken)


def test_update_section_refuses_a_file_it_could_not_read(broken: Path) -> None:
    # The panel's slider, its source list and its plot setting all save through update_section.
    for name, values in (("engine", {"threshold": 0.3}), ("sources", {"camera": "Cam 2"}),
                         ("panel", {"plot_minutes": 2})):
        with pytest.raises(cfgmod.ConfigError, match="line 5"):
            cfgmod.update_section(name, values, broken)
        _unchanged(broken)


def test_save_config_refuses_to_replace_a_file_it_could_not_read(broken: Path) -> None:
    with pytest.raises(cfgmod.ConfigError, match="line 5"):
        cfgmod.save_config({"panel": {"plot_minutes": 2}}, broken)
    _unchanged(broken)


def test_config_error_is_an_oserror_so_existing_save_handlers_report_it(broken: Path) -> None:
    # The panel catches OSError around saving (a full disk, a read-only folder) and shows it.
    try:
        cfgmod.update_section("engine", {"threshold": 0.3}, broken)
    except OSError as e:
        assert "line 5" in str(e)
    else:
        pytest.fail("update_section wrote over an unreadable config")


def test_writers_still_work_on_a_good_or_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "cfg" / "config.toml"
    cfgmod.update_section("obs", {"password": "pw"}, p)
    cfgmod.update_section("engine", {"threshold": 0.5}, p)
    assert cfgmod.read_config(p) == {"obs": {"password": "pw"}, "engine": {"threshold": 0.5}}


@pytest.mark.parametrize("extra", [["--set-password"], ["--dry-run", "--yes"], ["--uninstall", "--dry-run"]])
def test_install_obs_refuses_an_unreadable_config_in_one_line(tmp_path: Path, broken: Path,
                                                              extra: list[str]) -> None:
    obs = tmp_path / "obs"
    obs.mkdir()
    r = subprocess.run([sys.executable, "-m", "obs_merlb", "install-obs", "--config", str(broken),
                        "--obs-config", str(obs), *extra],
                       input="new-password\n4455\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "line 5" in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [r.stderr.strip()]
    assert broken.read_text() == BROKEN
