"""`merlb install-obs` on temporary OBS config folders (no OBS needed)."""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from obs_merlb import install

GLOBAL_INI = ("[General]\nFirstRun=true\nLastVersion=486539266\n\n[Basic]\nProfile=Untitled\n"
              "ProfileDir=Untitled\nSceneCollection=Stream\nSceneCollectionFile=Stream\n")
COLLECTION = {
    "name": "Stream", "current_scene": "Main", "current_program_scene": "Main",
    "scene_order": [{"name": "Main"}],
    "sources": [
        {"id": "v4l2_input", "name": "Webcam", "settings": {}},
        {"id": "scene", "name": "Main",
         "settings": {"items": [{"name": "Webcam", "id": 1}], "id_counter": 1}},
    ],
    "modules": {"scripts-tool": [{"path": "/somewhere/other.py", "settings": {"x": 1}}],
                "auto-scene-switcher": {"active": False}},
}


@pytest.fixture
def obs_cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "obs-studio"
    (cfg / "basic" / "scenes").mkdir(parents=True)
    (cfg / "global.ini").write_text(GLOBAL_INI)
    (cfg / "basic" / "scenes" / "Stream.json").write_text(json.dumps(COLLECTION, indent=4))
    return cfg


def run(cfg: Path | None, tmp_path: Path, *extra: str, monkeypatch: pytest.MonkeyPatch | None = None,
        capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    """`merlb install-obs` in this process; cfg None: the installer finds OBS's folder itself."""
    parser = argparse.ArgumentParser()
    install.add_arguments(parser)
    where = ["--obs-config", str(cfg)] if cfg is not None else []
    args = parser.parse_args([*where, "--config", str(tmp_path / "cfg" / "config.toml"),
                              "--python", "/opt/venv/bin/python", "--yes", *extra])
    rc = install.run(args)
    out = capsys.readouterr().out if capsys else ""
    return rc, out


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(autouse=True)
def obs_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "obs_running", lambda: [])


def test_install_fresh(obs_cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(obs_cfg, tmp_path, "--add-overlay", "text", capsys=capsys)
    assert rc == 0
    g = (obs_cfg / "global.ini").read_text()
    assert install.ini_get(g, "OBSWebSocket", "ServerEnabled") == "true"
    assert install.ini_get(g, "OBSWebSocket", "AuthRequired") == "true"
    assert install.ini_get(g, "OBSWebSocket", "FirstLoad") == "false"
    assert install.ini_get(g, "OBSWebSocket", "ServerPort") == "4455"
    pw = install.ini_get(g, "OBSWebSocket", "ServerPassword")
    assert pw and len(pw) >= 20
    assert g.startswith(GLOBAL_INI.rstrip("\n"))  # the rest of the file untouched
    # the password is shown exactly once, on the line that says it was generated
    assert out.count(pw) == 1 and "generated" in out.splitlines()[
        [i for i, ln in enumerate(out.splitlines()) if pw in ln][0]]

    col = json.loads((obs_cfg / "basic" / "scenes" / "Stream.json").read_text())
    scripts = col["modules"]["scripts-tool"]
    assert scripts[0]["path"] == "/somewhere/other.py"  # other scripts kept
    ours = scripts[1]
    assert ours["path"].endswith("/obs_script.py") and Path(ours["path"]).is_file()
    assert ours["settings"]["worker_python"] == "/opt/venv/bin/python"
    assert ours["settings"]["camera_source"] == "Webcam"  # guessed from the v4l2 source
    assert ours["settings"]["obs_config_dir"] == obs_cfg.as_posix()
    assert ours["settings"]["overlay_mode"] == "text"
    assert col["modules"]["auto-scene-switcher"] == {"active": False}
    text = [s for s in col["sources"] if s["name"] == install.OVERLAY_TEXT]
    assert text and text[0]["id"] == install.text_source_kind()
    items = [s for s in col["sources"] if s["name"] == "Main"][0]["settings"]["items"]
    assert [i["name"] for i in items] == ["Webcam", install.OVERLAY_TEXT]
    assert items[1]["id"] == 2

    conf = tmp_path / "cfg" / "config.toml"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    import tomllib
    t = tomllib.loads(conf.read_text())
    assert t["obs"]["password"] == pw and t["obs"]["port"] == 4455
    # backups of each OBS file edited
    assert len(list(obs_cfg.glob("global.ini.bak-*"))) == 1
    assert len(list((obs_cfg / "basic" / "scenes").glob("Stream.json.bak-*"))) == 1


def test_dry_run_changes_nothing(obs_cfg: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(tmp_path)
    rc, out = run(obs_cfg, tmp_path, "--dry-run", "--add-overlay", "browser", capsys=capsys)
    assert rc == 0
    assert snapshot(tmp_path) == before
    assert "Dry run" in out and "global.ini" in out and "Stream.json" in out
    assert "add source 'MERLB overlay'" in out and "config.toml" in out


def test_idempotent(obs_cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(obs_cfg, tmp_path, "--add-overlay", "browser", capsys=capsys)
    after_first = snapshot(tmp_path)
    rc, out = run(obs_cfg, tmp_path, "--add-overlay", "browser", capsys=capsys)
    assert rc == 0 and "Nothing to change" in out
    assert snapshot(tmp_path) == after_first
    col = json.loads((obs_cfg / "basic" / "scenes" / "Stream.json").read_text())
    assert sum(1 for s in col["sources"] if s["name"] == install.OVERLAY_BROWSER) == 1
    assert sum(1 for e in col["modules"]["scripts-tool"] if install._is_our_script(e)) == 1


def test_uninstall_restores(obs_cfg: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    g0 = (obs_cfg / "global.ini").read_text()
    c0 = json.loads((obs_cfg / "basic" / "scenes" / "Stream.json").read_text())
    run(obs_cfg, tmp_path, "--add-overlay", "text", capsys=capsys)
    rc, _ = run(obs_cfg, tmp_path, "--uninstall", capsys=capsys)
    assert rc == 0
    assert (obs_cfg / "global.ini").read_text() == g0
    c1 = json.loads((obs_cfg / "basic" / "scenes" / "Stream.json").read_text())
    # the scene's item id counter stays advanced: OBS must never reuse an item id
    c1["sources"][1]["settings"]["id_counter"] = c0["sources"][1]["settings"]["id_counter"]
    assert c1 == c0
    assert not (tmp_path / "cfg" / "config.toml").exists()
    assert not (tmp_path / "cfg" / "install-manifest.json").exists()


def test_uninstall_removes_sources_the_worker_and_panel_made(
        obs_cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """obs-websocket cannot mark a source, so the worker's emoji image and a
    panel-made browser source carry no mark: they are known by name and kind.
    A streamer's own source is kept, even one of those kinds."""
    run(obs_cfg, tmp_path, "--add-overlay", "text", capsys=capsys)
    path = obs_cfg / "basic" / "scenes" / "Stream.json"
    col = json.loads(path.read_text())
    # as OBS saves them after the worker and the panel made them (unversioned id beside the versioned)
    made = [{"id": "image_source", "versioned_id": "image_source", "name": "MERLB emoji",
             "settings": {"file": "/home/u/.cache/obs-merlb/emoji/happy-emoji-128.png"}},
            {"id": "browser_source", "versioned_id": "browser_source", "name": "MERLB overlay",
             "settings": {"url": "http://127.0.0.1:8765/overlay.html"}}]
    own = [{"id": "image_source", "versioned_id": "image_source", "name": "Logo", "settings": {}},
           {"id": "color_source", "versioned_id": "color_source_v3", "name": "MERLB emoji backdrop"}]
    col["sources"] += made + own
    scene = next(s for s in col["sources"] if s["name"] == "Main")
    scene["settings"]["items"] += [{"name": s["name"], "id": 10 + i} for i, s in enumerate(made + own)]
    path.write_text(json.dumps(col))
    rc, out = run(obs_cfg, tmp_path, "--uninstall", capsys=capsys)
    assert rc == 0 and "'MERLB emoji'" in out
    col = json.loads(path.read_text())
    assert [s["name"] for s in col["sources"]] == ["Webcam", "Main", "Logo", "MERLB emoji backdrop"]
    items = next(s for s in col["sources"] if s["name"] == "Main")["settings"]["items"]
    assert [i["name"] for i in items] == ["Webcam", "Logo", "MERLB emoji backdrop"]


def test_existing_websocket_is_kept(obs_cfg: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    g = install.ini_set(GLOBAL_INI, "OBSWebSocket", "ServerEnabled", "true")
    g = install.ini_set(g, "OBSWebSocket", "AuthRequired", "true")
    g = install.ini_set(g, "OBSWebSocket", "ServerPort", "4460")
    g = install.ini_set(g, "OBSWebSocket", "ServerPassword", "users-own")
    (obs_cfg / "global.ini").write_text(g)
    rc, out = run(obs_cfg, tmp_path, capsys=capsys)
    assert rc == 0 and "users-own" not in out
    assert (obs_cfg / "global.ini").read_text() == g
    import tomllib
    t = tomllib.loads((tmp_path / "cfg" / "config.toml").read_text())
    assert (t["obs"]["port"], t["obs"]["password"]) == (4460, "users-own")
    run(obs_cfg, tmp_path, "--uninstall", capsys=capsys)
    assert (obs_cfg / "global.ini").read_text() == g  # not ours to disable


def test_obs30_websocket_json_updated(obs_cfg: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    j = obs_cfg / "plugin_config" / "obs-websocket" / "config.json"
    j.parent.mkdir(parents=True)
    j.write_text(json.dumps({"alerts_enabled": False, "auth_required": True, "first_load": True,
                             "server_enabled": False, "server_password": "", "server_port": 4455}))
    run(obs_cfg, tmp_path, capsys=capsys)
    d = json.loads(j.read_text())
    pw = install.ini_get((obs_cfg / "global.ini").read_text(), "OBSWebSocket", "ServerPassword")
    assert d["server_enabled"] is True and d["server_password"] == pw and d["first_load"] is False


def test_obs_running_edits_nothing(obs_cfg: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(install, "obs_running", lambda: [1234])
    before = snapshot(tmp_path)
    rc, out = run(obs_cfg, tmp_path, capsys=capsys)
    assert rc == 3
    assert "Tools > WebSocket Server Settings" in out and "Tools > Scripts" in out
    assert snapshot(tmp_path) == before


def test_empty_obs_home_gets_a_collection(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "obs-studio"
    rc, _ = run(cfg, tmp_path, capsys=capsys)
    assert rc == 0
    g = (cfg / "global.ini").read_text()
    assert install.ini_get(g, "Basic", "SceneCollectionFile") == "Untitled"
    col = json.loads((cfg / "basic" / "scenes" / "Untitled.json").read_text())
    assert install._is_our_script(col["modules"]["scripts-tool"][0])


def test_bad_scene_is_a_clear_error(obs_cfg: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no scene named 'Nope'"):
        run(obs_cfg, tmp_path, "--add-overlay", "text", "--scene", "Nope")


@pytest.mark.parametrize("platform,env,expected", [
    ("win32", {"APPDATA": "C:/Users/a/AppData/Roaming"}, "C:/Users/a/AppData/Roaming/obs-studio"),
    ("darwin", {}, "/home/u/Library/Application Support/obs-studio"),
    ("linux", {}, "/home/u/.config/obs-studio"),
    ("linux", {"XDG_CONFIG_HOME": "/x"}, "/x/obs-studio"),
])
def test_config_dir_per_platform(platform: str, env: dict[str, str], expected: str) -> None:
    got = install.obs_config_candidates(platform=platform, env=env, home=Path("/home/u"))
    assert got[0].as_posix() == expected
    if platform == "linux":
        assert got[1].as_posix() == "/home/u/.var/app/com.obsproject.Studio/config/obs-studio"


def test_flatpak_config_found(tmp_path: Path) -> None:
    flat = tmp_path / ".var" / "app" / "com.obsproject.Studio" / "config" / "obs-studio"
    flat.mkdir(parents=True)
    (flat / "global.ini").write_text(GLOBAL_INI)
    found = install.find_obs_config(None, platform="linux", env={}, home=tmp_path)
    assert found == flat and install.is_flatpak_config(found)


def test_ini_set_keeps_other_lines() -> None:
    t = "[A]\nx=1\n\n[B]\ny=2\n"
    assert install.ini_set(t, "A", "z", "3") == "[A]\nx=1\nz=3\n\n[B]\ny=2\n"
    assert install.ini_set(t, "B", "y", "5") == "[A]\nx=1\n\n[B]\ny=5\n"
    assert install.ini_set(install.ini_set(t, "C", "k", "v"), "C", "k", None) == t


def test_top_level_script_runs(obs_cfg: Path, tmp_path: Path) -> None:
    import subprocess
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(repo / "install_obs_script.py"), "--obs-config",
                        str(obs_cfg), "--config", str(tmp_path / "c.toml"), "--dry-run"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(repo)})
    assert r.returncode == 0, r.stderr
    assert "Dry run" in r.stdout


def lay_out(folder: Path) -> Path:
    """A fresh OBS config folder at `folder`, as OBS leaves it after its first run."""
    (folder / "basic" / "scenes").mkdir(parents=True)
    (folder / "global.ini").write_text(GLOBAL_INI)
    (folder / "basic" / "scenes" / "Stream.json").write_text(json.dumps(COLLECTION, indent=4))
    return folder


# (--platform, environment, where OBS keeps its config below the fake root, what the run says)
OS_LAYOUTS = {
    "windows": ("windows", {"APPDATA": "Users/u/AppData/Roaming"},
                "Users/u/AppData/Roaming/obs-studio", ""),
    "windows-portable": ("windows", {"APPDATA": "Users/u/AppData/Roaming",
                                     "ProgramFiles": "Program Files"},
                         "Program Files/obs-studio/config/obs-studio", " (portable OBS)"),
    "macos": ("macos", {}, "home/Library/Application Support/obs-studio", ""),
    "linux": ("linux", {}, "home/.config/obs-studio", ""),
    "linux-xdg": ("linux", {"XDG_CONFIG_HOME": "xdg"}, "xdg/obs-studio", ""),
    "linux-flatpak": ("linux", {}, "home/.var/app/com.obsproject.Studio/config/obs-studio",
                      " (Flatpak)"),
}


@pytest.mark.parametrize("layout", sorted(OS_LAYOUTS))
def test_finds_obs_config_laid_out_as_on_each_os(layout: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """No --obs-config: the installer looks where that OS's OBS keeps its config."""
    platform, env, rel, said = OS_LAYOUTS[layout]
    root = tmp_path / "fs"
    monkeypatch.setenv("HOME", str(root / "home"))
    for k in ("APPDATA", "ProgramFiles", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, str(root / v))
    cfg = lay_out(root / rel)
    if layout == "windows-portable":
        # the portable marker beside OBS wins over a user config that also exists
        (cfg.parent.parent / "obs_portable_mode.txt").write_text("")
        lay_out(root / "Users/u/AppData/Roaming/obs-studio")
    rc, out = run(None, tmp_path, "--platform", platform, "--add-overlay", "text", capsys=capsys)
    assert rc == 0, out
    assert f"OBS config folder: {cfg}{said}\n" in out
    col = json.loads((cfg / "basic" / "scenes" / "Stream.json").read_text())
    ours = [e for e in col["modules"]["scripts-tool"] if install._is_our_script(e)]
    assert len(ours) == 1 and ours[0]["settings"]["obs_config_dir"] == cfg.as_posix()
    text = [s for s in col["sources"] if s["name"] == install.OVERLAY_TEXT]
    assert text[0]["id"] == ("text_gdiplus_v2" if platform == "windows" else "text_ft2_source_v2")


@pytest.mark.parametrize("given", ["obs", "obs/bin/64bit", "obs/config", "obs/config/obs-studio"])
def test_obs_config_option_takes_a_portable_obs_folder(given: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A portable OBS (unzipped anywhere, a marker file beside bin/) keeps its
    config in its own folder: --obs-config may name that folder, its
    bin/64bit, its config/ or the config folder itself."""
    obs = tmp_path / "obs"
    (obs / "bin" / "64bit").mkdir(parents=True)
    (obs / "portable_mode.txt").write_text("")
    cfg = lay_out(obs / "config" / "obs-studio")
    assert install.find_obs_config(str(tmp_path / given)) == cfg
    rc, out = run(tmp_path / given, tmp_path, capsys=capsys)
    assert rc == 0 and f"OBS config folder: {cfg} (portable OBS)\n" in out
    assert "obs_script.py" in (cfg / "basic" / "scenes" / "Stream.json").read_text()


def test_obs_config_option_without_marker_is_taken_as_given(tmp_path: Path) -> None:
    plain = tmp_path / "obs"
    (plain / "bin" / "64bit").mkdir(parents=True)
    assert install.find_obs_config(str(plain)) == plain
    assert install.find_obs_config(str(plain / "bin" / "64bit")) == plain / "bin" / "64bit"


def test_script_must_have_its_supervisor_beside_it(obs_cfg: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """OBS loads obs_supervisor.py from the script's folder: registering a lone
    copy of the script would give a script that cannot start."""
    registered = Path(install.script_source_path())
    assert (registered.parent / install.SUPERVISOR_NAME).is_file()
    lone = tmp_path / "lone" / install.SCRIPT_NAME
    lone.parent.mkdir()
    lone.write_text(registered.read_text())
    before = snapshot(obs_cfg)
    rc = run(obs_cfg, tmp_path, "--script", str(lone))[0]
    assert rc == 2 and install.SUPERVISOR_NAME in capsys.readouterr().err
    assert snapshot(obs_cfg) == before


@pytest.mark.parametrize("bindir,exe", [("bin", "python3"), ("Scripts", "python.exe")])
def test_worker_python_defaults_to_the_venv_the_script_is_installed_in(
        bindir: str, exe: str, tmp_path: Path) -> None:
    """A script added by hand (OBS was running) with 'Worker Python' blank runs
    the worker with the Python of the environment obs_merlb is installed in."""
    from obs_merlb.obs_supervisor import installed_python

    venv = tmp_path / "venv"
    site = (venv / "lib" / "python3.11" / "site-packages" if bindir == "bin"
            else venv / "Lib" / "site-packages")
    (site / "obs_merlb").mkdir(parents=True)
    (venv / bindir).mkdir()
    (venv / bindir / exe).write_text("")
    assert installed_python(str(site / "obs_merlb")) == ""   # no pyvenv.cfg: not a venv
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert installed_python(str(site / "obs_merlb")) == str(venv / bindir / exe)
