"""The GPU face recipe's batches (train/device_batches.py), checked on the CPU:
the same batch layout as the DataLoader path, augment_face's distribution,
and a training run that uses them with a time limit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from obs_merlb.labels import FACE, MODALITIES
from obs_merlb.train.data import Collate, Records, StepDataset
from obs_merlb.train.datasets import Item
from obs_merlb.train.device_batches import DeviceImageBatches, augment
from obs_merlb.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _images(n: int, seed: int = 0) -> Records:
    rng = np.random.default_rng(seed)
    items, arrays = [], []
    for i in range(n):
        items.append(Item(path=f"img{i}.jpg", group=f"img:{i}", labels={"emotion": "happy"}, dataset="fer2013"))
        mask = np.zeros((1, len(MODALITIES)), np.uint8)
        mask[0, FACE] = 1
        arrays.append({"mask": mask, "face": rng.integers(0, 256, (1, 1, 64, 64), dtype=np.uint8)})
    return Records(items, arrays, np.zeros((n, 4), np.int64))


def test_batches_have_the_dataloader_layout() -> None:
    rec = _images(10)
    ref = Collate(["face", "voice"])([StepDataset(rec, ["face", "voice"], 8, False)[i] for i in range(4)])
    batches = list(DeviceImageBatches(rec, 4, torch.device("cpu"), augment=False))
    assert len(batches) == 2                                      # 10 // 4: the partial batch is dropped
    b = batches[0]
    for k, v in ref.items():
        if v is None:
            assert b[k] is None, k
        else:
            assert b[k].shape == v.shape and b[k].dtype == v.dtype, k
    # Without augmentation a batch holds the images themselves, scaled to [0, 1].
    originals = {r["face"].tobytes() for r in rec.arrays}
    shown = [np.round(x.numpy() * 255).astype(np.uint8).tobytes() for bb in batches for x in bb["face"][:, 0]]
    assert len(set(shown)) == 8 and set(shown) <= originals


def test_epochs_shuffle_differently_and_replay_the_same() -> None:
    rec = _images(12)
    db = DeviceImageBatches(rec, 4, torch.device("cpu"), seed=3)
    first = [b["face"].clone() for b in db]
    again = [b["face"].clone() for b in db]
    db.set_epoch(1)
    other = [b["face"].clone() for b in db]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_augmentation_follows_augment_face() -> None:
    gen = torch.Generator().manual_seed(0)
    # A horizontal ramp: a flip reverses it, so its slope's sign counts flips.
    ramp = torch.linspace(0.2, 0.8, 64).expand(400, 1, 64, 64).contiguous()
    out = augment(ramp, gen)
    assert out.shape == ramp.shape and out.min() >= 0 and out.max() <= 1
    slope = (out[..., 40:44].mean(dim=(1, 2, 3)) - out[..., 20:24].mean(dim=(1, 2, 3)))
    flipped = (slope < 0).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert not torch.allclose(out[0], out[1])                       # each image its own transform
    erased = augment(torch.full((400, 1, 64, 64), 0.5), torch.Generator().manual_seed(1), erase=1.0)
    # A flat grey face stays flat (brightness moves it as a whole) except for its erased box.
    background = erased.flatten(1).median(dim=1).values[:, None, None, None]
    changed = ((erased - background).abs() > 0.05).float().mean(dim=(1, 2, 3))
    assert (changed > 0.01).float().mean() > 0.9 and changed.max() < 0.25   # 2-20% of the face, noise-filled


def test_clips_are_refused_in_one_line() -> None:
    rec = _images(3)
    rec.arrays[1] = {**rec.arrays[1], "mask": np.ones((4, len(MODALITIES)), np.uint8)}
    with pytest.raises(SystemExit) as e:
        DeviceImageBatches(rec, 2, torch.device("cpu"))
    assert "img1.jpg" in str(e.value) and "\n" not in str(e.value)


def test_a_face_stage_trains_on_device_batches_within_its_time_limit(tmp_path: Path) -> None:
    cfg = TrainConfig.from_toml(ROOT / "train" / "recipes" / "tiny.toml")
    cfg.data = [str(ROOT / "tests" / "fixtures" / "fer2013")]
    cfg.out, cfg.cache, cfg.epochs, cfg.pairing = str(tmp_path / "run"), str(tmp_path / "cache"), 50, False
    cfg.device_data, cfg.batch_size, cfg.time_limit_min = True, 4, 0.05   # 3 s: stops long before 50 epochs
    summary = train(cfg, quiet=True)
    epochs = len(summary["history"])
    assert 1 <= epochs < 50
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["meta"]["train"]["device_data"]


@pytest.mark.parametrize("settings, words", [
    ({"time_limit_min": -5.0}, "time_limit_min"),            # stopped after every epoch
    ({"time_limit_min": float("nan")}, "time_limit_min"),    # never stopped
    ({"device_data": True, "pairing": True}, "without pairing"),
])
def test_a_time_limit_or_device_data_that_cannot_work_is_refused_before_the_data_loads(
        tmp_path: Path, settings: dict, words: str) -> None:
    cfg = TrainConfig.from_toml(ROOT / "train" / "recipes" / "tiny.toml")
    cfg.out, cfg.cache = str(tmp_path / "run"), str(tmp_path / "cache")
    for key, value in settings.items():
        setattr(cfg, key, value)
    with pytest.raises(SystemExit) as e:
        train(cfg, quiet=True)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "cache").exists()        # refused before any preprocessing
