"""The OBS script's supervisor and glue, outside OBS (no obspython): fast
checks of the worker contract with a stand-in worker, and of the source
lists with a stand-in for obspython's few calls. The same script inside real
OBS is tested in test_obs.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from obs_merlb import obs_script, obs_supervisor
from obs_merlb.obs_supervisor import Supervisor, WorkerConfig, websocket_connection

FAKE = Path(__file__).with_name("fake_worker.py")


def fake_python(folder: Path) -> Path:
    """An executable that stands in for the worker's Python."""
    p = folder / "fake-python"
    p.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    p.chmod(0o755)
    return p


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


def read_json(p: Path) -> dict[str, Any] | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def next_start(data: Path, pid: int, what: str = "restart", timeout: float = 10.0) -> dict[str, Any]:
    """The stand-in worker's argv record once a worker other than `pid` has started."""
    return wait_for(lambda: (j := read_json(data / "fake-argv.json")) and j["pid"] != pid and j,
                    timeout=timeout, what=what)


def started(setup: dict[str, Any]) -> dict[str, Any]:
    """Configure and start the supervisor of `setup`; the stand-in worker's argv record."""
    setup["sup"].configure(setup["cfg"])
    setup["sup"].start()
    return wait_for(lambda: read_json(setup["data"] / "fake-argv.json"), what="worker start")


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    obs_cfg = tmp_path / "obs"
    obs_cfg.mkdir()
    (obs_cfg / "global.ini").write_text(
        "[General]\nFirstRun=true\n\n[OBSWebSocket]\nServerEnabled=true\nServerPort=4461\n"
        "AuthRequired=true\nServerPassword=s3cret-pw\n")
    data = tmp_path / "data"
    cfg = WorkerConfig(python=str(fake_python(tmp_path)), camera="Camera", data_dir=str(data),
                       obs_config_dir=str(obs_cfg), overlay="text", rate=6)
    logs: list[str] = []
    sup = Supervisor(log=logs.append, poll_s=0.05)
    yield {"sup": sup, "cfg": cfg, "data": data, "logs": logs}
    sup.shutdown()
    sup.thread.join(15)


def test_text_overlay_head_is_passed_and_restarts_the_worker(tmp_path: Path) -> None:
    cfg = WorkerConfig(python=sys.executable, camera="Camera", data_dir=str(tmp_path), overlay="text")
    assert "--overlay-head" not in cfg.argv(4455, "127.0.0.1")   # emotion is the worker's default
    user = WorkerConfig(**{**cfg.__dict__, "head": "user"})
    a = user.argv(4455, "127.0.0.1")
    assert a[a.index("--overlay-head") + 1] == "user"
    assert user.key() != cfg.key()
    browser = WorkerConfig(**{**user.__dict__, "overlay": "browser"})
    assert "--overlay-head" not in browser.argv(4455, "127.0.0.1")   # the page takes ?head= instead


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell wrapper")
def test_worker_lifecycle(setup: dict[str, Any]) -> None:
    sup, cfg, data = setup["sup"], setup["cfg"], setup["data"]
    argv = started(setup)
    a = argv["argv"]
    assert a[:3] == ["-m", "obs_merlb", "live"]
    assert a[a.index("--obs-source") + 1] == "Camera"
    assert a[a.index("--obs-port") + 1] == "4461"
    assert a[a.index("--overlay-text-source") + 1] == obs_supervisor.TEXT_SOURCE
    assert argv["password_in_env"] and not argv["password_in_argv"]
    assert not any("s3cret-pw" in line for line in setup["logs"])
    wait_for(lambda: sup.state == "running", what="running state")
    assert "8.0 fps" in sup.status_line()
    st = wait_for(lambda: read_json(data / "script-status.json"), what="script status")
    assert st["pid"] == argv["pid"]

    # commands reach the worker's stdin
    sup.send({"cmd": "tag", "name": "hype", "source": "hotkey"})
    stdin_log = data / "fake-stdin.jsonl"
    wait_for(lambda: stdin_log.is_file() and "hype" in stdin_log.read_text(), what="tag line")

    # a live setting goes as `set`, without a restart
    sup.configure(WorkerConfig(**{**cfg.__dict__, "rate": 10.0}))
    wait_for(lambda: '"rate"' in stdin_log.read_text(), what="set rate")
    assert read_json(data / "fake-argv.json")["pid"] == argv["pid"]

    # killed: restarted (first backoff 1 s)
    os.kill(argv["pid"], signal.SIGKILL)
    new = next_start(data, argv["pid"])
    assert sup.restarts == 1
    wait_for(lambda: sup.state == "running", what="running again")

    # stop: {"cmd":"stop"} and the worker exits by itself
    sup.stop()
    wait_for(lambda: sup.state == "stopped", what="stopped")
    wait_for(lambda: not _alive(new["pid"]), what="worker exit")
    assert '"stop"' in stdin_log.read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell wrapper")
def test_shutdown_stops_worker_without_blocking(setup: dict[str, Any]) -> None:
    sup, cfg, data = setup["sup"], setup["cfg"], setup["data"]
    sup.configure(cfg)
    sup.start()
    argv = wait_for(lambda: read_json(data / "fake-argv.json"), what="worker start")
    t = time.monotonic()
    sup.shutdown()
    assert time.monotonic() - t < 0.05
    wait_for(lambda: not _alive(argv["pid"]), timeout=10, what="worker exit")
    sup.thread.join(10)
    assert not sup.thread.is_alive()


def test_unstartable_config_gives_clear_status(setup: dict[str, Any], tmp_path: Path) -> None:
    sup, cfg = setup["sup"], setup["cfg"]
    sup.configure(WorkerConfig(**{**cfg.__dict__, "python": str(tmp_path / "nope")}))
    sup.start()
    wait_for(lambda: sup.state == "error", what="error state")
    assert "worker Python not found" in sup.status_line()
    sup.configure(WorkerConfig(**{**cfg.__dict__, "camera": ""}))
    wait_for(lambda: "choose a camera source" in sup.status_line(), what="camera hint")


def _start_with_python(setup: dict[str, Any], path: Path, script: str) -> Any:
    """The supervisor started with a stand-in "python": a shell script (POSIX only)."""
    sup, cfg = setup["sup"], setup["cfg"]
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    sup.configure(WorkerConfig(**{**cfg.__dict__, "python": str(path)}))
    sup.start()
    return sup


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell wrapper")
def test_crashing_worker_backs_off(setup: dict[str, Any], tmp_path: Path) -> None:
    sup = _start_with_python(setup, tmp_path / "bad-python",
                             "echo 'cannot connect to OBS: wrong password' >&2\nexit 3\n")
    wait_for(lambda: sup.restarts >= 2, timeout=10, what="two restarts")
    assert "exited with code 3: cannot connect to OBS: wrong password" in sup.status_line()
    # backoff grows: 1 s then 2 s, so no more than 3 restarts in ~4 s
    time.sleep(2)
    assert sup.restarts <= 3


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell wrapper")
def test_worker_hung_before_its_first_status_is_restarted(setup: dict[str, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that never writes a status (hung while starting) is restarted, and never counts as healthy."""
    monkeypatch.setattr(obs_supervisor, "STATUS_FIRST_S", 1.0)
    monkeypatch.setattr(obs_supervisor, "HEALTHY_AFTER_S", 0.5)
    sup = _start_with_python(setup, tmp_path / "hung-python", "exec sleep 600\n")
    wait_for(lambda: sup.restarts >= 1, timeout=20, what="restart of a worker with no status")
    assert "stopped answering" in sup.status_line()
    assert sup.failures >= 1          # the backoff keeps growing for a worker that never reports


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell wrapper")
def test_worker_restarted_during_a_recording_is_told_which(setup: dict[str, Any]) -> None:
    """A restarted worker started a new session log, so later tags were not paired with the recording."""
    sup, data = setup["sup"], setup["data"]
    first = started(setup)
    assert "--recording" not in first["argv"]
    rec = "/videos/2025-01-02 20-00-00.mkv"
    sup.send({"cmd": "session", "event": "open", "kind": "recording", "recording": rec})
    sup.send({"cmd": "session", "event": "open", "kind": "streaming", "recording": rec})
    os.kill(first["pid"], signal.SIGKILL)
    second = next_start(data, first["pid"])
    assert second["argv"][second["argv"].index("--recording") + 1] == rec
    wait_for(lambda: sup.state == "running", what="running again")
    sup.send({"cmd": "session", "event": "close", "kind": "recording", "recording": rec})
    os.kill(second["pid"], signal.SIGKILL)
    third = next_start(data, second["pid"], "second restart")
    assert "--recording" not in third["argv"]   # the recording ended: a new log


def test_websocket_connection_sources(tmp_path: Path) -> None:
    obs_cfg = tmp_path / "obs"
    (obs_cfg / "plugin_config" / "obs-websocket").mkdir(parents=True)
    (obs_cfg / "global.ini").write_text("[OBSWebSocket]\nServerPort=4456\nAuthRequired=true\n"
                                        "ServerPassword=ini-pw\n")
    assert websocket_connection(str(obs_cfg), "", obs_major=29)[1:3] == (4456, "ini-pw")
    (obs_cfg / "plugin_config" / "obs-websocket" / "config.json").write_text(json.dumps(
        {"server_port": 4457, "auth_required": True, "server_password": "json-pw"}))
    assert websocket_connection(str(obs_cfg), "", obs_major=30)[1:3] == (4457, "json-pw")
    assert websocket_connection(str(obs_cfg), "", obs_major=29)[1:3] == (4456, "ini-pw")
    toml = tmp_path / "config.toml"
    toml.write_text('[obs]\nhost = "127.0.0.1"\nport = 4999\npassword = "toml-pw"\n')
    assert websocket_connection(str(tmp_path / "none"), str(toml))[1:3] == (4999, "toml-pw")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def test_model_folder_is_passed_only_when_set(tmp_path: Path) -> None:
    cfg = WorkerConfig(python=sys.executable, camera="Camera", data_dir=str(tmp_path))
    assert "--model" not in cfg.argv(4455, "127.0.0.1")   # blank: the worker's own default
    assert cfg.key() != WorkerConfig(**{**cfg.__dict__, "model": str(tmp_path)}).key()  # a change restarts
    bad = WorkerConfig(**{**cfg.__dict__, "model": str(tmp_path / "nothing")})
    assert "has no config.json" in (bad.problem() or "")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    good = WorkerConfig(**{**cfg.__dict__, "model": str(tmp_path / "m")})
    a = good.argv(4455, "127.0.0.1")
    assert good.problem() is None and a[a.index("--model") + 1] == str(tmp_path / "m")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell wrapper")
def test_fixed_password_restarts_the_worker(setup: dict[str, Any], tmp_path: Path) -> None:
    """The streamer corrects the password in OBS: the worker is restarted with it,
    and the config file the installer wrote is named to the worker."""
    sup, cfg, data = setup["sup"], setup["cfg"], setup["data"]
    merlb_cfg = tmp_path / "merlb.toml"
    sup.configure(WorkerConfig(**{**cfg.__dict__, "merlb_config": str(merlb_cfg)}))
    sup.start()
    first = wait_for(lambda: read_json(data / "fake-argv.json"), what="worker start")
    assert first.get("merlb_config") == str(merlb_cfg)
    gini = Path(cfg.obs_config_dir) / "global.ini"
    gini.write_text(gini.read_text().replace("s3cret-pw", "n3w-pw"))
    new = next_start(data, first["pid"], "restart after the password changed", timeout=15)
    assert new["password_in_env"]
    assert any("obs-websocket settings changed" in line for line in setup["logs"])
    assert not any("n3w-pw" in line or "s3cret-pw" in line for line in setup["logs"])


class FakeObs:
    """The obspython calls `_fill_sources` makes; a property list is a list of (label, value)."""

    OBS_SOURCE_VIDEO = 0x1
    OBS_SOURCE_AUDIO = 0x2

    def __init__(self, sources: list[tuple[str, int]]) -> None:
        self.sources = sources

    def obs_property_list_clear(self, prop: list[tuple[str, str]]) -> None:
        prop.clear()

    def obs_property_list_add_string(self, prop: list[tuple[str, str]], label: str, value: str) -> None:
        prop.append((label, value))

    def obs_enum_sources(self) -> list[tuple[str, int]]:
        return list(self.sources)

    def obs_source_get_output_flags(self, source: tuple[str, int]) -> int:
        return source[1]

    def obs_source_get_name(self, source: tuple[str, int]) -> str:
        return source[0]

    def source_list_release(self, sources: list[tuple[str, int]]) -> None:
        pass


def test_camera_list_starts_with_choose_and_leaves_out_our_own_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """OBS shows a list's first item when nothing is chosen: it must not be our own label."""
    video = FakeObs.OBS_SOURCE_VIDEO
    monkeypatch.setattr(obs_script, "obs", FakeObs([
        ("MERLB emotion", video), ("MERLB emoji", video), ("MERLB overlay", video),
        ("Webcam", video), ("Game", video), ("Mic/Aux", FakeObs.OBS_SOURCE_AUDIO), ("my label", video)]))
    sup = Supervisor(log=lambda _msg: None)
    sup.config = WorkerConfig(text_source="my label")  # the streamer renamed the text source
    monkeypatch.setattr(obs_script.G, "supervisor", sup)
    try:
        cam: list[tuple[str, str]] = [("stale", "stale")]
        game: list[tuple[str, str]] = []
        obs_script._fill_sources(cam, game)
    finally:
        sup.shutdown()
    assert cam == [(obs_script.CHOOSE, ""), ("Game", "Game"), ("Webcam", "Webcam")]
    assert game == [("(none)", ""), ("Game", "Game"), ("Webcam", "Webcam")]


def test_our_own_source_saved_as_camera_is_refused(tmp_path: Path) -> None:
    cfg = WorkerConfig(python=sys.executable, camera="MERLB emotion", data_dir=str(tmp_path))
    assert "choose a camera source: 'MERLB emotion' is obs-merlb's own overlay" == cfg.problem()
    renamed = WorkerConfig(**{**cfg.__dict__, "camera": "my label", "text_source": "my label"})
    assert "is obs-merlb's own overlay" in (renamed.problem() or "")
    assert WorkerConfig(**{**cfg.__dict__, "camera": "Webcam"}).problem() is None


def test_own_source_names_match_the_worker_and_installer() -> None:
    """The script spells them out (it imports nothing of the package); the copies must agree."""
    from obs_merlb import install
    from obs_merlb.overlay import native

    assert obs_supervisor.OWN_SOURCES == (native.TEXT_SOURCE, native.IMAGE_SOURCE, install.OVERLAY_BROWSER)
    assert install.OVERLAY_TEXT == native.TEXT_SOURCE


def test_obs_address_defaults_match_the_client(tmp_path: Path) -> None:
    """The supervisor's copy of obs-websocket's default address is the worker's."""
    from obs_merlb import obs_client

    assert (obs_supervisor.DEFAULT_OBS_HOST, obs_supervisor.DEFAULT_OBS_PORT) == (
        obs_client.DEFAULT_HOST, obs_client.DEFAULT_PORT)
    # and it is what the script passes when neither OBS nor config.toml names a port
    assert websocket_connection(str(tmp_path), "", 29)[:3] == (obs_client.DEFAULT_HOST,
                                                                 obs_client.DEFAULT_PORT, None)


def test_script_loads_its_supervisor_as_obs_does_without_the_package(tmp_path: Path) -> None:
    """OBS appends the script's folder to sys.path and imports `obs_script` top-level."""
    folder = Path(obs_script.__file__).parent
    code = (f"import sys; sys.path.append({str(folder)!r}); import obs_script; "
            "assert obs_script.Supervisor.__module__ == 'obs_merlb_script_obs_supervisor', "
            "obs_script.Supervisor.__module__; "
            "heavy = sorted(m for m in ('obs_merlb', 'numpy', 'torch') if m in sys.modules); "
            "assert not heavy, heavy; print('ok')")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
