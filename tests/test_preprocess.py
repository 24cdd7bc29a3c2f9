"""Preprocessing: cached shards (no pickles), reruns decode nothing, corrupt files skipped by name."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from obs_merlb.train import preprocess as P

FIX = Path(__file__).parent / "fixtures"


def _shards(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (cache / "shards").rglob("*.npz")}


def test_images_one_step_and_rerun_does_no_decoding(tmp_path: Path, monkeypatch) -> None:
    prep = P.prepare(FIX / "fer2013", tmp_path, quiet=True)
    assert len(prep.items) == 14 and not prep.failed
    recs = prep.load()
    assert all(r["mask"].shape == (1, 4) and r["mask"][0].tolist() == [1, 0, 0, 0] for r in recs)
    face = recs[0]["face"]
    assert face.shape == (1, 1, 64, 64) and face.dtype == np.float32 and 0 <= face.min() and face.max() <= 1
    before = _shards(tmp_path)

    calls = []
    real = P.compute_steps
    monkeypatch.setattr(P, "compute_steps", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = P.prepare(FIX / "fer2013", tmp_path, quiet=True)
    assert calls == [] and _shards(tmp_path) == before
    assert again.keys == prep.keys

    # A changed file is recomputed (its content hash changed), and only its chunk.
    src = tmp_path / "data"
    shutil.copytree(FIX / "fer2013", src)
    P.prepare(src, tmp_path, quiet=True)
    calls.clear()
    img = next((src / "happy").glob("*.jpg"))
    img.write_bytes((FIX / "fer2013" / "sad").glob("*.jpg").__next__().read_bytes())
    P.prepare(src, tmp_path, quiet=True)
    assert len(calls) == 14  # images share one shard: the chunk is redone


def test_shards_load_without_pickle(tmp_path: Path) -> None:
    prep = P.prepare(FIX / "fer2013", tmp_path, quiet=True)
    with np.load(prep.shards[0], allow_pickle=False) as z:
        assert {"keys", "offsets", "mask", "face"} <= set(z.files)


def test_media_steps_and_corrupt_files_skipped_by_name(tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for f in ["ravdess/03-01-05-01-01-01-01.wav", "crema_d/1002_DFA_HAP_XX.mp3"]:
        shutil.copy(FIX / f, data)
    # Damaged files under names the RAVDESS / CREMA-D readers accept.
    shutil.copy(FIX / "corrupt/empty.wav", data / "03-01-04-01-01-01-03.wav")
    shutil.copy(FIX / "corrupt/text.mp4", data / "1001_DFA_SAD_XX.mp4")
    shutil.copy(FIX / "corrupt/truncated.mp4", data / "1001_DFA_ANG_XX.mp4")
    with caplog.at_level(logging.WARNING):
        prep = P.prepare(data, tmp_path / "cache", quiet=True)
    names = {Path(i.path).name for i in prep.items}
    assert {"03-01-05-01-01-01-01.wav", "1002_DFA_HAP_XX.mp3"} <= names
    failed = {Path(p).name for p in prep.failed}
    assert {"03-01-04-01-01-01-03.wav", "1001_DFA_SAD_XX.mp4"} <= failed
    assert "1001_DFA_ANG_XX.mp4" in failed | names  # a truncated file is kept only if something decoded
    text = caplog.text
    assert "03-01-04-01-01-01-03.wav" in text and "1001_DFA_SAD_XX.mp4" in text
    rec = prep.load()[[Path(i.path).name for i in prep.items].index("03-01-05-01-01-01-01.wav")]
    assert rec["voice"].shape[1:] == (1, 64, 100) and rec["mask"][:, 1].sum() > 0
    assert rec["mask"][:, 0].sum() == 0   # audio only: no face steps

    # Failures are cached too: the rerun decodes nothing and still names them.
    caplog.clear()
    before = _shards(tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        again = P.prepare(data, tmp_path / "cache", quiet=True)
    assert _shards(tmp_path / "cache") == before and again.failed.keys() == prep.failed.keys()
    assert "1001_DFA_SAD_XX.mp4" in caplog.text


def test_cli_parallel_workers(tmp_path: Path) -> None:
    from obs_merlb.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for f in (FIX / "emodb").glob("*.wav"):
        shutil.copy(f, data)
    shutil.copy(FIX / "corrupt/empty.wav", data / "03a04Wc.wav")
    assert main(["preprocess", str(data), "--out", str(tmp_path / "c"), "-j", "2"]) == 0
    (manifest,) = (tmp_path / "c" / "manifests").glob("*.json")
    prep = P.load_manifest(manifest)
    assert len(prep.items) == 2 and [Path(p).name for p in prep.failed] == ["03a04Wc.wav"]


@pytest.mark.parametrize("fmt", ["seed_csv"])
def test_seed_csv_video_clips(tmp_path: Path, fmt: str) -> None:
    prep = P.prepare(FIX / "seed_csv", tmp_path, fmt=fmt, quiet=True)
    assert len(prep.items) == 10 and not prep.failed
    by_name = {Path(i.path).name: r for i, r in zip(prep.items, prep.load())}
    video = by_name["1001_ang.mp4"]
    assert video["mask"][:, 0].sum() >= 1          # a face found in the video
    assert video["face"].shape[1:] == (1, 64, 64)
