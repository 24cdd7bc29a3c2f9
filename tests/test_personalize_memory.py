"""`merlb personalize` reads a recording's steps by range, never whole (issue 25).

A shard holding an hour of a recording's steps (face crops and log-mels:
~240 MB once loaded) is made directly, as `merlb preprocess` streams one;
personalizing's preprocessing, its frozen-encoder pass and its window
batches then run with Python's allocations traced: the peak stays a small
fraction of the recording's arrays, and what the windows read is what the
shard holds.
"""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from obs_merlb.labels import MODALITIES

STEPS = 14_400                    # an hour at 0.25 s a step
FACE_EVERY = 97                   # steps with a face (sparse: the encoder pass stays quick)


def _write_shard(folder: Path, key: str) -> tuple[Path, dict[str, np.ndarray]]:
    """An hour's shard, written as `media_shard` writes one (spools copied into the .npz in
    blocks); returns it and a few rows to check against."""
    from obs_merlb.train.preprocess import STEP_SHAPES, STORE_DTYPE, write_shard_streamed

    spools = {}
    for m in ("face", "voice"):
        shape = STEP_SHAPES[m]
        path = folder / f"{m}.bin"
        with open(path, "wb") as fh:
            fh.truncate(STEPS * int(np.prod(shape)) * np.dtype(STORE_DTYPE[m]).itemsize)   # zeros, sparse
        spools[m] = (path, np.dtype(STORE_DTYPE[m]), shape)
    mask = np.zeros((STEPS, len(MODALITIES)), np.uint8)
    mask[::FACE_EVERY, MODALITIES.index("face")] = 1
    mask[::5, MODALITIES.index("voice")] = 1
    # A recognisable face at one step, to check the rows read back are the shard's.
    marked = 5 * FACE_EVERY
    face_row = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(1, 64, 64)
    with open(spools["face"][0], "r+b") as fh:
        fh.seek(marked * face_row.nbytes)
        fh.write(face_row.tobytes())
    mask.tofile(folder / "mask.bin")
    spools["mask"] = (folder / "mask.bin", np.dtype(np.uint8), (len(MODALITIES),))
    small = {"keys": np.array([key], dtype="U32"), "offsets": np.array([0, STEPS], np.int64),
             "failed": np.zeros(0, "U32"), "errors": np.zeros(0, "U1"),
             "speech_prob": np.zeros(STEPS, np.float16), "energy": np.zeros(STEPS, np.float16)}
    shard = folder / f"{key}.npz"
    write_shard_streamed(shard, small, spools, STEPS)
    return shard, {"marked": np.array(marked), "face_row": face_row}


def test_personalize_reads_an_hour_of_steps_in_bounded_memory(tmp_path: Path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.merlb import MERLB
    from obs_merlb.train.datasets import Item
    from obs_merlb.train.personalize import features
    from obs_merlb.train.personalize.progress import Progress
    from obs_merlb.train.personalize.windows import Session, Window
    from obs_merlb.train.preprocess import Prepared

    key = "f" * 32
    shard, check = _write_shard(tmp_path, key)
    for name in ("face.bin", "voice.bin", "mask.bin"):
        (tmp_path / name).unlink()
    recording = tmp_path / "stream.mkv"
    recording.write_bytes(b"")

    def prepared(*a, **kw) -> Prepared:
        return Prepared([Item(path=str(recording), group="stream", labels={}, dataset="personal")],
                        [str(shard)], [key])
    monkeypatch.setattr(features, "prepare", prepared)
    whole_mb = STEPS * (64 * 64 + 64 * 100 * 2) / 2**20          # face uint8 + voice float16

    torch.manual_seed(0)
    model = MERLB(MERLBConfig(modalities=["face", "voice"])).eval()
    tracemalloc.start()
    try:
        steps, failed = features.preprocess_sessions([Session(recording, None)], tmp_path / "cache", None,
                                                     Progress(quiet=True))
        features.compute_embeddings(model, steps)
        marked = float(check["marked"]) * 0.25
        windows = [Window(0, t, t + 2.0, "hype", {"emotion": "happy"}) for t in np.arange(0, 3600, 240.0)]
        windows.append(Window(0, marked - 1.0, marked + 1.0, "hype", {"emotion": "happy"}))
        batch = features.gather(steps, windows, range(len(windows)), 8, 0.25, ["face", "voice"], None,
                                use_emb=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not failed and steps[0].n == STEPS
    # The frozen encoders' embeddings (2 x 128 float32 a step: 15 MB an hour) are the one
    # cost that grows with the recording; loading it whole took all of `whole_mb`.
    assert peak / 2**20 < 0.15 * whole_mb, (peak / 2**20, whole_mb)
    # The window around the marked step holds the shard's face at that step (centred crop: step 4 of 8).
    assert np.allclose(batch["face"][-1, 4].numpy(), check["face_row"] / 255.0)
    assert steps[0].embs["face"].shape == (STEPS, model.cfg.embed_dims["face"])


def test_row_file_reads_what_numpy_loads(tmp_path: Path) -> None:
    from obs_merlb.train.personalize.rowfiles import RowFile

    x = np.arange(1000 * 6, dtype=np.float16).reshape(1000, 2, 3)
    np.save(tmp_path / "x.npy", x)
    rows = RowFile(tmp_path / "x.npy", 100, 900)          # an item's rows inside a shard
    part = x[100:900]
    assert rows.shape == part.shape and len(rows) == 800
    assert np.array_equal(rows[5:300], part[5:300]) and np.array_equal(rows[-1], part[-1])
    assert rows[10:5].shape == (0, 2, 3)
    idx = np.array([799, 3, 3, 400, 0, 401, 650, 2])      # unsorted, repeated, far apart
    assert np.array_equal(rows[idx], part[idx])
    sel = np.zeros(800, bool)
    sel[::37] = True
    assert np.array_equal(rows[sel], part[sel])
    with pytest.raises(IndexError):
        rows[800]
