"""`merlb eval`: per-class F1 in the paper's layout, --json, clear errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from obs_merlb.cli import main
from obs_merlb.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("eval")
    cfg = TrainConfig.from_toml(ROOT / "train" / "recipes" / "tiny.toml")
    cfg.out, cfg.cache, cfg.epochs = str(tmp / "run"), str(tmp / "cache"), 1
    train(cfg, quiet=True)
    return tmp / "run" / "model", tmp / "cache"


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


def test_missing_model_names_path_and_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", str(FIX / "fer2013"), "--model", str(tmp_path / "nothing")])
    assert str(tmp_path / "nothing") in str(e.value) and "merlb train" in str(e.value)


def test_card_tables_render_the_eval_json(tmp_path: Path, capsys) -> None:
    from obs_merlb.train.recipes import card_tables

    m = {"n": 10, "accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3,
         "per_class_f1": {"angry": 0.25, "disgust": None}}
    (tmp_path / "fer_val.json").write_text(json.dumps({"emotion": {**m, "ece": 0.05}, "valence": m}))
    (tmp_path / "pairs.json").write_text(json.dumps(
        {"pairs": 10, **{k: {"emotion": m, "valence": m, "arousal": m} for k in ("fusion", "face_only", "voice_only")}}))
    assert card_tables.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| FER2013 val (faces) | emotion | 10 | 0.500 | 0.400 | 0.300 | 0.050 |" in out
    assert "| FER2013 val (faces) | valence | 10 | 0.500 | 0.400 | 0.300 | - |" in out   # JSON without ECE
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
    with pytest.raises(SystemExit, match="nobody called urdu:X9"):
        main(["eval", str(data), "--model", str(model), "--cache", str(cache), "--people", "urdu:X9",
              "--out", str(tmp_path / "nobody")])
    # FER2013 with FER+ votes beside its folders: the FER+ majority and the folder labels.
    fer = tmp_path / "fer"
    shutil.copytree(FIX / "fer2013", fer / "fer2013")
    shutil.copy(FIX / "ferplus_votes_sample.csv", fer / "ferplus_votes.csv")
    assert main(["eval", str(fer / "fer2013"), "--model", str(model), "--cache", str(cache),
                 "--out", str(tmp_path / "fer_out"), "--json"]) == 0
    kinds = json.loads(capsys.readouterr().out)["label_kinds"]
    assert kinds["original"]["emotion"]["n"] == 14          # every image, its folder's label
    assert kinds["ferplus_majority"]["emotion"]["n"] == 11  # voted images with a strict majority
