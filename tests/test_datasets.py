"""Dataset readers and layout detection, on the real fixture files."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from obs_merlb import labels as L

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
    assert {i.dataset for i in mixed} == {"ravdess", "emodb", "crema_d", "ased", "urdu", "emotiontts_kr", "nemo"}


def test_new_speech_sets_read_speaker_and_emotion_from_names() -> None:
    def read(name: str) -> dict[str, D.Item]:
        assert D.detect_format(FIX / name) == name
        return {Path(i.path).name: i for i in D.load_items(FIX / name)}

    ased = read("ased")
    assert ased["n1-01-01-01-01.opus"].group == "ased:01-01"          # gender 01 + speaker 01
    assert ased["n1-01-01-02-02.opus"].group == "ased:02-02"          # the same number, other gender: another person
    assert ased["a5-01-01-01-03.opus"].labels["emotion"] == "angry"
    urdu = read("urdu")
    assert (urdu["SM1_F10_A010.opus"].group, urdu["SM1_F10_A010.opus"].labels["emotion"]) == ("urdu:M1", "angry")
    assert (urdu["SF10_F1_S01.opus"].group, urdu["SF10_F1_S01.opus"].labels["emotion"]) == ("urdu:F10", "sad")
    kr = read("emotiontts_kr")
    assert kr["ema00001.opus"].labels == {"emotion": "neutral", "valence": "neutral", "arousal": "neutral",
                                          "behaviour": None}
    assert kr["ema00201.opus"].labels["emotion"] == "angry" and kr["ema00201.opus"].group == "emotiontts_kr:ema"
    nemo = read("nemo")
    assert {(i.group, i.labels["emotion"]) for i in nemo.values()} == {("nemo:EB0", "surprise")}
    # The Korean corpus' bare names are only trusted inside <speaker>/wav/.
    assert D.parse_named(Path("elsewhere/ema00001.opus")) is None


def test_set_emotions_mask_classes_a_set_does_not_offer() -> None:
    from obs_merlb.labels import EMOTIONS
    from obs_merlb.train.data import allowed_emotions, emotion_distributions

    items = D.load_items(FIX / "urdu") + D.load_items(FIX / "ravdess")
    allowed = allowed_emotions(items)
    urdu = [i for i, it in enumerate(items) if it.dataset == "urdu"]
    ravdess = [i for i, it in enumerate(items) if it.dataset == "ravdess"]
    assert {EMOTIONS[c] for c in np.flatnonzero(allowed[urdu[0]])} == {"angry", "happy", "neutral", "sad"}
    assert allowed[ravdess].all()
    q = emotion_distributions(items)
    assert np.allclose(q.sum(axis=1), 1.0) and all(q[i, EMOTIONS.index(it.labels["emotion"])] == 1
                                                   for i, it in enumerate(items))


def test_ferplus_votes_become_soft_targets_and_majority_labels() -> None:
    votes = FIX / "ferplus_votes_sample.csv"
    items = {Path(i.path).name: i for i in D.load_items(FIX / "fer2013", votes=votes)}
    assert len(items) == 14                            # no fixture image is mostly unknown
    # 8 neutral, 1 sad, 1 angry in a folder called "angry": FER+ says neutral.
    a = items["PublicTest_10116449.jpg"]
    assert a.labels["emotion"] == "neutral" and a.orig == "angry"
    assert np.allclose(a.soft, [0.1, 0, 0, 0, 0.8, 0.1, 0]) and abs(sum(a.soft) - 1) < 1e-6
    # Three-way tie (sad, angry, disgust; 1 contempt vote left out): a soft target, no hard label.
    tie = items["PublicTest_1145545.jpg"]
    assert tie.labels["emotion"] is None and tie.soft is not None and tie.orig == "disgust"
    # No row in the CSV: the folder label stays, no soft target.
    plain = items["PublicTest_11387162.jpg"]
    assert plain.labels["emotion"] == "disgust" and plain.soft is None
    # The votes file is not mistaken for a dataset CSV; without votes the folder labels stand.
    assert D.detect_format(FIX) == "mixed"
    assert all(i.soft is None for i in D.load_items(FIX / "fer2013", votes=False))


def test_the_votes_setting_names_auto_none_or_a_csv(tmp_path: Path) -> None:
    from obs_merlb.train.loop import TrainConfig

    assert D.parse_votes("auto") is True and D.parse_votes(" None ") is False
    assert D.parse_votes(str(FIX / "ferplus_votes_sample.csv")) == FIX / "ferplus_votes_sample.csv"
    with pytest.raises(D.DatasetError, match="votes 'nope.csv': no such CSV file"):
        D.parse_votes("nope.csv")
    # In a recipe a CSV's path is relative to the recipe, like the data paths.
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.toml").write_text('data = ["d"]\nvotes = "../v.csv"\n')
    (tmp_path / "r" / "b.toml").write_text('data = ["d"]\nvotes = "none"\n')
    assert TrainConfig.from_toml(tmp_path / "r" / "a.toml").votes == str(tmp_path / "v.csv")
    assert TrainConfig.from_toml(tmp_path / "r" / "b.toml").votes == "none"


def test_ferplus_mostly_unknown_or_not_a_face_is_dropped_and_counted(tmp_path: Path, caplog) -> None:
    shutil.copytree(FIX / "fer2013", tmp_path / "fer2013" / "val")
    header = "file,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    (tmp_path / "fer2013" / "ferplus_votes.csv").write_text(
        header
        + "val/happy/PublicTest_10130075.jpg,0,0,0,0,0,0,0,0,4,6\n"      # not a face
        + "val/happy/PublicTest_10181609.jpg,0,4,0,0,0,0,0,0,6,0\n"      # mostly unknown
        + "val/sad/PublicTest_10404299.jpg,0,0,0,0,0,0,0,9,1,0\n"        # contempt only: no class here
        + "val/sad/PublicTest_10760798.jpg,0,0,0,1,0,0,0,6,1,0\n"        # contempt wins over sad
        + "val/neutral/PublicTest_10262886.jpg,5,5,0,0,0,0,0,0,0,0\n")    # a tie
    with caplog.at_level(logging.INFO, logger="obs_merlb.train.datasets"):
        items = D.load_items(tmp_path / "fer2013" / "val")      # votes found two folders up
    names = {Path(i.path).name: i for i in items}
    assert len(items) == 11 and not {"PublicTest_10130075.jpg", "PublicTest_10181609.jpg",
                                     "PublicTest_10404299.jpg"} & set(names)
    sad = names["PublicTest_10760798.jpg"]
    assert sad.labels["emotion"] is None and np.allclose(sad.soft, np.eye(7)[5])
    assert names["PublicTest_10262886.jpg"].labels["emotion"] is None
    assert np.allclose(names["PublicTest_10262886.jpg"].soft, [0, 0, 0, 0.5, 0.5, 0, 0])
    line = [r.getMessage() for r in caplog.records if "FER+ votes" in r.getMessage()]
    assert len(line) == 1 and "2 dropped as mostly unknown" in line[0] and "1 dropped as contempt" in line[0]
    assert "9 without votes" in line[0]


def test_votes_csv_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "ferplus_votes.csv"
    bad.write_text("file,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
                   "val/a.jpg,1,2,x,0,0,0,0,0,0,0\n")
    with pytest.raises(ValueError, match=r"ferplus_votes.csv:2"):
        D.read_votes(bad)
    other = tmp_path / "other.csv"
    other.write_text("file,label\n")
    with pytest.raises(ValueError, match="not a FER\\+ votes CSV"):
        D.read_votes(other)


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
    fer = D.load_items(DATA / "fer2013", votes=False)
    assert {i.split for i in fer} == {"train", "val"}
    train, val = D.split_items(fer)
    assert len(val) == 3589
    # With FER+ votes (found beside the split folders): mostly-unknown images
    # are dropped, every image keeps its folder label in `orig`.
    voted = D.load_items(DATA / "fer2013" / "val")
    assert 3500 < len(voted) < 3589 and all(i.orig is not None for i in voted)
    assert sum(i.soft is not None for i in voted) > 3300
    # Every speech set of the data root, speakers from the names.
    sets = {"ased": (2224, 65), "urdu": (400, 29), "emotiontts_kr": (260, 13), "nemo": (1572, 8)}
    for name, (n_clips, n_speakers) in sets.items():
        assert D.detect_format(DATA / name) == name
        items = D.load_items(DATA / name)
        assert (len(items), len({i.group for i in items})) == (n_clips, n_speakers), name
        assert {i.labels["emotion"] for i in items} == set(L.SET_EMOTIONS[name]), name
