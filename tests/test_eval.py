"""`merlb eval`: per-class F1 in the paper's layout, --json, clear errors."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from obs_merlb.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


def test_eval_json_one_object_per_head(tiny_model, tmp_path: Path, capsys) -> None:
    model, cache = tiny_model
    out = tmp_path / "out"
    assert main(["eval", str(FIX / "fer2013"), "--model", str(model), "--cache", str(cache),
                 "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)     # stdout holds exactly one JSON object
    assert set(result) == {"emotion", "valence", "arousal"}   # behaviour: no labels, not scored
    emo = result["emotion"]
    assert emo["n"] == 14 and 0 <= emo["accuracy"] <= 1 and 0 <= emo["balanced_accuracy"] <= 1
    assert set(emo["per_class_f1"]) == {"angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"}
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):      # FER images: each its own person
        lo, hi = emo["ci95"][key]
        assert 0.0 <= lo <= hi <= 1.0
    assert (out / "confusion_emotion.png").exists() and (out / "table.csv").exists()
    header = (out / "table.csv").read_text().splitlines()[0].split(",")
    paper = ["Rou", "Pro", "Res", "Exp", "Fig", "Pun", "Def", "Dft", "VNeg", "VNeut", "VPos", "ALow", "ANeut", "AHigh"]
    assert header[header.index("Rou"):header.index("AHigh") + 1] == paper
    md = (out / "table.md").read_text()
    assert md.startswith("| model") and "VNeg" in md


def test_eval_clips_with_seed_csv_and_its_own_split(tiny_model, tmp_path: Path, capsys) -> None:
    model, cache = tiny_model
    assert main(["eval", str(FIX / "seed_csv"), "--model", str(model), "--cache", str(cache),
                 "--out", str(tmp_path / "o"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The seed CSV labels valence, arousal and behaviours, never emotions.
    assert set(result) == {"valence", "arousal", "behaviour"} and result["valence"]["n"] == 10
    assert main(["eval", "--model", str(model), "--cache", str(cache), "--out", str(tmp_path / "v"), "--json"]) == 0
    assert "emotion" in json.loads(capsys.readouterr().out)


def test_missing_model_names_path_and_how_to_train(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(FIX / "fer2013"), "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"merlb eval: no model at {tmp_path / 'nothing'}") and "merlb train" in err


def test_card_tables_render_the_eval_json(tmp_path: Path, capsys) -> None:
    from obs_merlb.train.recipes import card_tables

    m = {"n": 10, "accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3,
         "per_class_f1": {"angry": 0.25, "disgust": None}}
    (tmp_path / "fer_val.json").write_text(json.dumps({"emotion": {**m, "ece": 0.05}, "valence": m,
                                                       "arousal": {**m, "ci95": {"balanced_accuracy": [0.3, 0.52]}}}))
    (tmp_path / "pairs.json").write_text(json.dumps(
        {"pairs": 10, **{k: {"emotion": m, "valence": m, "arousal": m} for k in ("fusion", "face_only", "voice_only")}}))
    assert card_tables.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| FER2013 val (faces) | emotion | 10 | 0.500 | 0.400 | 0.300 | 0.050 |" in out
    assert "| FER2013 val (faces) | valence | 10 | 0.500 | 0.400 | 0.300 | - |" in out   # JSON without ECE
    assert "| FER2013 val (faces) | arousal | 10 | 0.500 | 0.400 [0.30-0.52] | 0.300 | - |" in out
    assert "fer_val emotion per-class F1: angry 0.25" in out and "disgust" not in out
    assert "| face only | 0.500 |" in out and "RAVDESS" not in out
    with pytest.raises(SystemExit, match="no eval folder"):
        card_tables.main([str(tmp_path / "missing")])


def test_eval_reports_each_set_and_both_fer_label_kinds(tiny_model, tmp_path: Path, capsys) -> None:
    model, cache = tiny_model
    data = tmp_path / "data"
    for name in ("urdu", "nemo", "ravdess"):
        shutil.copytree(FIX / name, data / name)
    assert main(["eval", str(data), "--model", str(model), "--cache", str(cache),
                 "--out", str(tmp_path / "sets"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["sets"]) == {"urdu", "nemo", "ravdess"}
    assert result["sets"]["urdu"]["emotion"]["n"] == 2 and result["emotion"]["n"] == 7
    # --people keeps only the named speakers; a name nobody has is one clear line.
    assert main(["eval", str(data), "--model", str(model), "--cache", str(cache), "--people", "urdu:M1,nemo:EB0",
                 "--out", str(tmp_path / "people"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["emotion"]["n"] == 3 and set(result["sets"]) == {"urdu", "nemo"}
    assert main(["eval", str(data), "--model", str(model), "--cache", str(cache), "--people", "urdu:X9",
                 "--out", str(tmp_path / "nobody")]) == 2
    assert "merlb eval: --people: nobody called urdu:X9" in capsys.readouterr().err
    # FER2013 with FER+ votes beside its folders: the FER+ majority and the folder labels.
    fer = tmp_path / "fer"
    shutil.copytree(FIX / "fer2013", fer / "fer2013")
    shutil.copy(FIX / "ferplus_votes_sample.csv", fer / "ferplus_votes.csv")
    assert main(["eval", str(fer / "fer2013"), "--model", str(model), "--cache", str(cache),
                 "--out", str(tmp_path / "fer_out"), "--json"]) == 0
    kinds = json.loads(capsys.readouterr().out)["label_kinds"]
    assert kinds["original"]["emotion"]["n"] == 14          # every image, its folder's label
    assert kinds["ferplus_majority"]["emotion"]["n"] == 11  # voted images with a strict majority
    # Where the two kinds agree, disagree, or FER+ has no majority: the parts add up to both accuracies.
    a, d, r = (kinds["agreement"][k] for k in ("agree", "disagree", "no_majority"))
    assert a["n"] + d["n"] == 11 and a["n"] + d["n"] + r["n"] == 14 and d["n"] > 0
    ferplus = (a["accuracy"] * a["n"] + d["as_ferplus"] * d["n"]) / 11
    original = (a["accuracy"] * a["n"] + d["as_original"] * d["n"] + r["accuracy_original"] * r["n"]) / 14
    assert ferplus == pytest.approx(kinds["ferplus_majority"]["emotion"]["accuracy"])
    assert original == pytest.approx(kinds["original"]["emotion"]["accuracy"])
    # --votes none: the folder labels only; --votes CSV: votes kept elsewhere; a CSV that is not there: one line.
    assert main(["eval", str(fer / "fer2013"), "--model", str(model), "--cache", str(cache), "--votes", "none",
                 "--out", str(tmp_path / "fer_none"), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "label_kinds" not in plain and plain["emotion"]["n"] == 14
    assert plain["emotion"]["accuracy"] == pytest.approx(kinds["original"]["emotion"]["accuracy"])
    bare = tmp_path / "bare"
    shutil.copytree(FIX / "fer2013", bare / "fer2013")
    assert main(["eval", str(bare / "fer2013"), "--model", str(model), "--cache", str(cache), "--votes",
                 str(fer / "ferplus_votes.csv"), "--out", str(tmp_path / "fer_named"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label_kinds"]["ferplus_majority"]["emotion"]["n"] == 11
    assert main(["eval", str(bare / "fer2013"), "--model", str(model), "--cache", str(cache), "--votes",
                 str(tmp_path / "gone.csv"), "--out", str(tmp_path / "fer_gone")]) == 2
    assert "merlb eval: votes" in capsys.readouterr().err


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after `merlb eval`, what the one line must say)."""
    (tmp / "empty").mkdir()
    (tmp / "cats" / "cat").mkdir(parents=True)                  # images, but no emotion folders
    shutil.copy(next((FIX / "fer2013").rglob("*.jpg")), tmp / "cats" / "cat" / "a.jpg")
    (tmp / "binary.csv").write_bytes(b"\xff\xfe\x00path,label\n")
    shutil.copy(FIX / "ravdess" / "03-01-01-01-01-01-01.wav", tmp / "clip.wav")
    (tmp / "times.csv").write_text("path,start,end,label\nclip.wav,soon,2,happy\n")
    (tmp / "a_file").write_text("x")
    data = str(FIX / "ravdess")
    return {
        "missing path": ([str(tmp / "nope")], f"{tmp / 'nope'}: no such file or folder"),
        "empty folder": ([str(tmp / "empty")], f"{tmp / 'empty'}: no image, audio or video files"),
        "no known layout": ([str(tmp / "cats")], f"{tmp / 'cats'}: no known layout"),
        "not a CSV": ([str(tmp / "binary.csv")], "not a UTF-8 CSV file"),
        "bad time in CSV": ([str(tmp / "times.csv")], "start/end of clip.wav must be seconds, got 'soon'"),
        "--out is a file": ([data, "--out", str(tmp / "a_file")], f"--out {tmp / 'a_file'}: is a file"),
        "--out under a file": ([data, "--out", str(tmp / "a_file" / "o")], "cannot write there (Not a directory)"),
        "--cache is a file": ([data, "--cache", str(tmp / "a_file")], f"--cache {tmp / 'a_file'}: is a file"),
        "--device": ([data, "--device", "gpu"], "--device 'gpu' is not a device"),
    }


@pytest.mark.parametrize("case", ["missing path", "empty folder", "no known layout", "not a CSV",
                                  "bad time in CSV", "--out is a file", "--out under a file",
                                  "--cache is a file", "--device"])
def test_bad_input_is_one_line_and_exit_2(tiny_model, tmp_path: Path, capsys, case: str) -> None:
    model, _ = tiny_model
    args, says = _bad_inputs(tmp_path)[case]
    cache = tmp_path / "cache"
    argv = ["eval", *args, "--model", str(model)]
    argv += [] if "--cache" in args else ["--cache", str(cache)]
    argv += [] if "--out" in args else ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("merlb eval: ") and says in err and len(err.strip().splitlines()) == 1, err
    assert not (cache / "shards").exists()          # refused before any preprocessing
    assert not (tmp_path / "out").exists()          # and no empty results folder left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_read_only_out_is_refused_before_the_work(tiny_model, tmp_path: Path, capsys) -> None:
    model, _ = tiny_model
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    assert main(["eval", str(FIX / "ravdess"), "--model", str(model), "--cache", str(tmp_path / "cache"),
                 "--out", str(ro / "out")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "cache" / "shards").exists()


def test_bad_numbers_are_refused_by_the_parser(capsys) -> None:
    for flag, value in (("--limit", "-1"), ("--limit", "0"), ("--workers", "abc")):
        with pytest.raises(SystemExit) as e:
            main(["eval", str(FIX / "ravdess"), flag, value])
        assert e.value.code == 2 and f"{value!r} is not a whole number of 1 or more" in capsys.readouterr().err


def test_a_skipped_file_is_named_once(tiny_model, tmp_path: Path, capsys, caplog,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_model
    monkeypatch.setenv("COLUMNS", "400")                # rich would wrap the file name
    data = tmp_path / "data"
    shutil.copytree(FIX / "ravdess", data)
    shutil.copy(FIX / "corrupt" / "empty.wav", data / "03-01-04-01-01-01-03.wav")
    with caplog.at_level(logging.WARNING):
        assert main(["eval", str(data), "--model", str(model), "--cache", str(tmp_path / "cache"),
                     "--out", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().err + caplog.text      # the terminal gets both
    assert shown.count("03-01-04-01-01-01-03.wav") == 1, shown



@pytest.mark.parametrize("n, starts", [(5, [0]), (8, [0]), (9, [0, 1]), (16, [0, 8]), (17, [0, 8, 9])])
def test_windows_read_every_step_of_a_clip(n: int, starts: list[int]) -> None:
    """Evaluation, calibration and the voice reader cut clips into windows of T steps; a clip whose
    length is no multiple of T gets one more window ending at its end, as live's last window would:
    the old cut never read a 2.39 s RAVDESS clip's last step, where much of its speech is."""
    import numpy as np

    from obs_merlb.train.data import Records, targets_of, windows_of
    from obs_merlb.train.datasets import Item

    rec = {"mask": np.ones((n, 4), np.uint8), "speech_prob": np.arange(n, dtype=np.float16)}
    items = [Item(path="a.wav", labels={"emotion": "happy"})]
    win, owners = windows_of(Records(items, [rec], targets_of(items)), 8)
    assert [int(w["speech_prob"][0]) for w in win.arrays] == starts and owners.tolist() == [0] * len(starts)
    assert set(np.concatenate([w["speech_prob"] for w in win.arrays]).astype(int)) == set(range(n))


def test_eval_pairs_reads_faces_by_folder_or_by_votes(tiny_model, tmp_path: Path, capsys) -> None:
    """The card's pairs command names its face labels: `--votes none` pairs each face by its folder
    (the card's table since session 1), the default by its FER+ majority where one exists."""
    from obs_merlb.model.io import load_model
    from obs_merlb.train.recipes.eval_pairs import load_pair_records
    from obs_merlb.train.recipes.eval_pairs import main as pairs_main

    model, cache = tiny_model
    fer = tmp_path / "fer"
    shutil.copytree(FIX / "fer2013", fer / "fer2013")
    shutil.copy(FIX / "ferplus_votes_sample.csv", fer / "ferplus_votes.csv")
    net = load_model(model)
    faces = [str(fer / "fer2013")]
    by_folder = load_pair_records(net, faces, [], str(cache), votes=False)
    by_votes = load_pair_records(net, faces, [], str(cache), votes=True)
    folder = {it.path: it.labels["emotion"] for it in by_folder.items}
    assert all(Path(p).parent.name == e for p, e in folder.items())
    assert any(it.labels["emotion"] != folder[it.path] for it in by_votes.items)     # FER+ disagrees somewhere
    args = ["--model", str(model), "--cache", str(cache), "--faces", faces[0], "--voices", str(FIX / "ravdess"),
            "--pairs", "20", "--json"]
    assert pairs_main([*args, "--votes", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] > 0
    with pytest.raises(SystemExit, match="eval_pairs: votes 'nowhere.csv': no such CSV file"):
        pairs_main([*args, "--votes", "nowhere.csv"])
