"""Dataset readers and layout detection, on the real fixture files."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from obs_merlb.train import datasets as D

FIX = Path(__file__).parent / "fixtures"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_detect_each_layout() -> None:
    assert D.detect_format(FIX / "fer2013") == "images"
    assert D.detect_format(FIX / "ravdess") == "ravdess"
    assert D.detect_format(FIX / "emodb") == "emodb"
    assert D.detect_format(FIX / "crema_d") == "crema_d"
    assert D.detect_format(FIX / "seed_csv") == "seed_csv"
    assert D.detect_format(FIX / "seed_csv" / "labels.csv") == "seed_csv"


def test_named_files_map_to_heads_and_people() -> None:
    items = {Path(i.path).name: i for i in D.load_items(FIX / "ravdess")}
    angry = items["03-01-05-01-01-01-01.wav"]
    assert angry.labels == {"emotion": "angry", "valence": "negative", "arousal": "high", "behaviour": None}
    assert angry.group == "ravdess:01"
    assert items["03-01-03-01-01-01-02.wav"].group == "ravdess:02"
    emodb = D.load_items(FIX / "emodb")
    assert {i.group for i in emodb} == {"emodb:03"}
    assert {i.labels["emotion"] for i in emodb} == {"angry", "neutral"}
    crema = D.load_items(FIX / "crema_d")
    assert {i.group for i in crema} == {"crema_d:1002"}
    # A data root holding several sets reads them all.
    mixed = D.load_items(FIX, "named")
    assert {i.dataset for i in mixed} == {"ravdess", "emodb", "crema_d"}


def test_image_aliases_and_unknown_folder_reported_once(tmp_path: Path, caplog) -> None:
    src = FIX / "fer2013"
    shutil.copytree(src / "angry", tmp_path / "Anger")
    shutil.copytree(src / "happy", tmp_path / "happiness")
    shutil.copytree(src / "sad", tmp_path / "contempt")      # a class the model does not know
    with caplog.at_level(logging.WARNING):
        items = D.load_items(tmp_path)
    assert sorted({i.labels["emotion"] for i in items}) == ["angry", "happy"]
    warnings = [r.getMessage() for r in caplog.records if "contempt" in r.getMessage()]
    assert len(warnings) == 1 and "2 files" in warnings[0]


def test_seed_csv_header_quirks(tmp_path: Path) -> None:
    clip = tmp_path / "s1" / "a.mp4"
    clip.parent.mkdir()
    clip.write_bytes(b"x")
    (tmp_path / "s2").mkdir()
    (tmp_path / "s2" / "b.mp4").write_bytes(b"x")
    # BOM, leading spaces in headers, a row with no behaviour on, a missing file.
    (tmp_path / "train.csv").write_text(
        "\ufeffFile, Valence_Negative, Valence_Neutral, Valence_Positive, Arousal_Low, Arousal_Neutral,"
        " Arousal_High, Punching, Respawning, Routing, Exploring, Procurement, Fighting, Defeated, Defending\n"
        "s1/a.mp4,0,0,1,0,0,1,1,0,0,0,0,0,0,0\n"
        "s2/b.mp4,1,0,0,1,0,0,0,0,0,0,0,0,0,0\n"
        "s2/gone.mp4,1,0,0,1,0,0,0,0,0,0,0,0,0,0\n", encoding="utf-8")
    assert D.detect_format(tmp_path) == "seed_csv"
    a, b = D.load_items(tmp_path)
    assert a.labels == {"emotion": None, "valence": "positive", "arousal": "high", "behaviour": "punching"}
    assert b.labels["behaviour"] is None and b.labels["arousal"] == "low"
    assert (a.group, b.group) == ("s1", "s2")  # one folder per streamer


def test_seed_fixture_groups_by_actor() -> None:
    items = D.load_items(FIX / "seed_csv")
    assert len(items) == 10
    assert {i.group for i in items} == {"1001", "1002"}
    assert sum(i.labels["behaviour"] is not None for i in items) == 8


def test_generic_csv_label_and_one_hot(tmp_path: Path) -> None:
    wav = FIX / "ravdess" / "03-01-05-01-01-01-01.wav"
    (tmp_path / "by_label.csv").write_text(f"path,start,end,label\n{wav},0.0,1.5,Anger\n{wav},1.0,,fighting\n")
    a, b = D.load_items(tmp_path / "by_label.csv")
    assert D.detect_format(tmp_path / "by_label.csv") == "csv"
    assert (a.start, a.end, a.labels["emotion"], a.labels["arousal"]) == (0.0, 1.5, "angry", "high")
    assert b.labels["behaviour"] == "fighting" and b.end is None
    (tmp_path / "one_hot.csv").write_text(f"path,start,end,happy,sad\n{wav},0,1,0,1\n")
    (c,) = D.load_items(tmp_path / "one_hot.csv", "csv")
    assert c.labels["emotion"] == "sad" and c.labels["valence"] == "negative"


def test_split_keeps_people_apart() -> None:
    items = D.load_items(FIX, "named") + D.load_items(FIX / "seed_csv")
    train, val = D.split_items(items, val_fraction=0.5, seed=3)
    assert train and val
    assert not ({i.group for i in train} & {i.group for i in val})
    again = D.split_items(items, val_fraction=0.5, seed=3)
    assert [i.path for i in again[1]] == [i.path for i in val]  # deterministic
    tr, va = D.split_items(items, val_groups={"ravdess:02"})
    assert {i.group for i in va} == {"ravdess:02"}


@pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} (the shared datasets) is not on this machine")
def test_shared_data_layouts() -> None:
    assert D.detect_format(DATA / "ravdess_speech") == "ravdess"
    assert D.detect_format(DATA / "emodb") == "emodb"
    ravdess = D.load_items(DATA / "ravdess_speech")
    assert len(ravdess) == 1194 and len({i.group for i in ravdess}) == 20
    fer = D.load_items(DATA / "fer2013")
    assert {i.split for i in fer} == {"train", "val"}
    train, val = D.split_items(fer)
    assert len(val) == 3589
