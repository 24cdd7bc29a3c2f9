"""Bad input to any `merlb` command: exit code 2 and one line naming the problem, never a traceback.

Each case runs `merlb` in-process. A refusal by the command prints exactly
one line, `merlb CMD: ...`; a flag argparse refuses prints its usage first
and then one line `merlb CMD: error: ...`, so only its last line is checked.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from obs_merlb.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
DEMO = ROOT / "assets" / "demo.mp4"
MODEL = ROOT / "assets" / "model"


@pytest.fixture()
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder as the working directory, with the things the cases point at."""
    monkeypatch.chdir(tmp_path)
    for var, name in (("MERLB_CACHE", "cache"), ("MERLB_CONFIG", "config.toml"), ("MERLB_MODELS", "models")):
        monkeypatch.setenv(var, str(tmp_path / name))
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "junk.mp4").write_text("not a video\n")
    (tmp_path / "broken.toml").write_text("epochs = 2\n[model\n")
    (tmp_path / "typo.toml").write_text("epochz = 2\n")
    (tmp_path / "labels.csv").write_text(f"path,start,end,label\n{DEMO},one,2,happy\n")
    (tmp_path / "header_only.csv").write_text("path,start,end,label\n")
    (tmp_path / "faces.toml").write_text(f'data = ["{FIX / "fer2013"}"]\n')
    return tmp_path


# (argv, what the one line must contain); paths are relative to the scratch folder.
REFUSED = {
    "preprocess-missing": (["preprocess", "missing"], "merlb preprocess: missing: no such file or folder"),
    "preprocess-empty": (["preprocess", "empty"], "merlb preprocess: empty: no image, audio or video files"),
    "preprocess-out-file": (["preprocess", str(FIX / "ravdess"), "--out", "a_file"],
                            "merlb preprocess: --out a_file: is a file, not a folder"),
    "train-data-missing": (["train", "--data", "missing", "--out", "run"], "merlb train: ", "missing: no such file"),
    "train-data-empty": (["train", "--data", "empty", "--out", "run"], "merlb train: ", "empty: no image, audio"),
    "train-config-missing": (["train", "--config", "nope.toml"], "merlb train: --config nope.toml: cannot read"),
    "train-config-folder": (["train", "--config", "empty"], "merlb train: --config empty: cannot read"),
    "train-config-broken": (["train", "--config", "broken.toml"], "merlb train: --config broken.toml: ", "line 2"),
    "train-config-unknown": (["train", "--config", "typo.toml"],
                             "merlb train: --config typo.toml: unknown training settings: epochz"),
    "train-epochs-set": (["train", "--data", str(FIX / "ravdess"), "--out", "run", "--set", "epochs=-1"],
                         "merlb train: epochs ", "got -1"),
    "train-out-file": (["train", "--data", str(FIX / "ravdess"), "--out", "a_file"],
                       "merlb train: --out a_file: is a file, not a folder"),
    "train-set-wrong-type": (["train", "--data", str(FIX / "ravdess"), "--out", "run", "--set", "epochs='x'"],
                             "merlb train: epochs must be int, got 'x'"),
    "train-config-device": (["train", "--data", str(FIX / "ravdess"), "--out", "run", "--set", "device='gpu'"],
                            "merlb train: device: 'gpu' is not a device"),
    "preprocess-no-items": (["preprocess", "header_only.csv"], "merlb preprocess: header_only.csv: no items"),
    "calibrate-out-file": (["calibrate", "--model", str(MODEL), "--faces", "empty", "--out", "a_file"],
                           "merlb calibrate: --out a_file: is a file, not a folder"),
    "experiments-tasks": (["experiments", "empty", "--out", "exp", "--tasks", "single,bogus"],
                          "merlb experiments: --tasks single,bogus: choose multi, single"),
    "experiments-out-file": (["experiments", "empty", "--out", "a_file"], "merlb experiments: --out a_file: is a file"),
    "analyze-out-file": (["analyze", str(DEMO), "--out", "a_file"], "merlb analyze: --out a_file: is a file"),
    "export-out-file": (["export", str(MODEL), "--out", "a_file"], "merlb export: --out a_file: is a file"),
    "personalize-unknown-version": (["personalize", "activate", "v999", "--no-notify"],
                                    "merlb personalize: no model version 'v0999'"),
    "calibrate-faces-missing": (["calibrate", "--model", str(MODEL), "--faces", "missing", "--dry-run"],
                                "merlb calibrate: missing: no such file or folder"),
    "calibrate-voices-empty": (["calibrate", "--model", str(MODEL), "--voices", "empty", "--dry-run"],
                               "merlb calibrate: empty: no image, audio or video files"),
    "fit-reader-no-model": (["fit-reader", "--model", "missing"], "merlb fit-reader: missing/config.json is missing"),
    "fit-reader-weight": (["fit-reader", "--model", str(MODEL), "--weight", "1.5"],
                          "merlb fit-reader: --weight is a share, 0 to 1"),
    "fit-reader-C": (["fit-reader", "--model", str(MODEL), "--C", "0"],
                     "merlb fit-reader: --C is an inverse regularisation, a number above 0"),
    "fit-reader-C-inf": (["fit-reader", "--model", str(MODEL), "--C", "inf"],
                         "merlb fit-reader: --C is an inverse regularisation, a number above 0"),
    "fit-reader-images": (["fit-reader", "--model", str(MODEL), "--config", "faces.toml"],
                          "merlb fit-reader: --config faces.toml: ", "holds images; the reader reads voices"),
    "fit-reader-config": (["fit-reader", "--model", str(MODEL), "--config", "missing.toml"],
                          "merlb fit-reader: --config missing.toml: cannot read"),
    "experiments-missing": (["experiments", "missing", "--out", "exp"], "merlb experiments: ", "missing: no such"),
    "experiments-empty": (["experiments", "empty", "--out", "exp"], "merlb experiments: ", "empty: no image"),
    "bench-live-missing": (["bench", "live", "--video", "missing.mp4"],
                           "merlb bench live: missing.mp4: file does not exist"),
    "bench-live-junk": (["bench", "live", "--video", "junk.mp4"],
                        "merlb bench live: junk.mp4: not a media file FFmpeg can read"),
    "bench-live-no-video": (["bench", "live"], "merlb bench live: --video FILE is required"),
    "install-obs-config-file": (["install-obs", "--obs-config", "a_file", "--dry-run"],
                                "merlb install-obs: --obs-config a_file: is a file"),
    "personalize-labels-missing": (["personalize", "--sessions-dir", "empty", "--labels", "missing.csv"],
                                   "merlb personalize: --labels missing.csv: cannot read"),
    "personalize-labels-bad-time": (["personalize", "--sessions-dir", "empty", "--labels", "labels.csv"],
                                    "merlb personalize: labels.csv:2: ", "'one'"),
    "personalize-pair-missing-recording": (["personalize", "--sessions-dir", "empty", "--pair", "gone.mp4=gone.jsonl"],
                                           "merlb personalize: --pair gone.mp4=gone.jsonl: no such file: gone.mp4, gone.jsonl"),
    "personalize-pair-missing-log": (["personalize", "--sessions-dir", "empty", "--pair", f"{DEMO}=gone.jsonl"],
                                     "merlb personalize: --pair ", "=gone.jsonl: no such file: gone.jsonl"),
}

# Refused by the flag's type: argparse's usage, then `merlb CMD: error: argument FLAG: ...`.
BAD_FLAGS = {
    "analyze-rate": (["analyze", str(DEMO), "--rate", "-1"], "merlb analyze: error: argument --rate: ", "1-30 Hz"),
    "demo-hop": (["demo", "--hop", "-1"], "merlb demo: error: argument --hop: ", "1 or more"),
    "bench-repeat": (["bench", "--repeat", "-3"], "merlb bench: error: argument --repeat: ", "1 or more"),
    "bench-live-rate": (["bench", "live", "--video", str(DEMO), "--rate", "0"], "merlb bench: error: ", "1-30 Hz"),
    "preprocess-workers": (["preprocess", "empty", "--workers", "0"], "merlb preprocess: error: ", "1 or more"),
    "train-epochs": (["train", "--epochs", "-1"], "merlb train: error: argument --epochs: ", "1 or more"),
    "train-device": (["train", "--device", "bogus"], "merlb train: error: argument --device: ", "not a device"),
    "analyze-device": (["analyze", str(DEMO), "--device", "gpu"], "merlb analyze: error: argument --device: "),
    "live-obs-port": (["live", "--obs-port", "-5"], "merlb live: error: argument --obs-port: ", "0 to 65535"),
    "panel-port": (["panel", "--port", "-1"], "merlb panel: error: argument --port: ", "0 to 65535"),
    "install-obs-port": (["install-obs", "--port", "0"], "merlb install-obs: error: argument --port: ", "1 to 65535"),
    "calibrate-pairs": (["calibrate", "--model", str(MODEL), "--pairs", "-1"], "merlb calibrate: error: "),
    "personalize-val-fraction": (["personalize", "--val-fraction", "2"], "merlb personalize: error: ", "0 to 1"),
    "personalize-steps": (["personalize", "--steps", "0"], "merlb personalize: error: ", "1 or more"),
    "personalize-before": (["personalize", "--before", "-1"], "merlb personalize: error: ", "from 0"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_bad_input_is_refused_in_one_line(case: str, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, start, *contains = REFUSED[case]
    rc = main(argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(start) and all(c in lines[0] for c in contains), lines[0]


@pytest.mark.parametrize("case", list(BAD_FLAGS), ids=list(BAD_FLAGS))
def test_bad_flag_values_are_refused_by_the_parser(case: str, here: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv, start, *contains = BAD_FLAGS[case]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert e.value.code == 2 and "Traceback" not in err
    assert last.startswith(start) and all(c in last for c in contains), last


def test_a_refusal_deep_in_a_command_gets_its_name_and_exit_2(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # train's own checks raise SystemExit with a message; the command line turns that into the convention.
    assert main(["train", "--data", str(FIX / "ravdess"), "--set", "nope=1"]) == 2
    assert capsys.readouterr().err.strip() == "merlb train: --set: unknown setting 'nope'"
