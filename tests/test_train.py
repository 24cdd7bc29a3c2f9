"""Training: a tiny real run, checkpoints without pickles, resume, pairing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from obs_merlb.train import loop
from obs_merlb.train.data import PairedDataset, StepDataset, collate
from obs_merlb.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "train" / "recipes" / "tiny.toml"


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    cfg = TrainConfig.from_toml(RECIPE)
    cfg.out = str(tmp_path / "run")
    cfg.cache = str(tmp_path / "cache")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_tiny_run_writes_model_checkpoint_and_curve(tmp_path: Path) -> None:
    summary = train(_cfg(tmp_path), quiet=True)
    run = Path(summary["out"])
    for f in ["model/model.safetensors", "model/config.json", "checkpoint/model.safetensors",
              "checkpoint/optimizer.safetensors", "checkpoint/state.json", "training_curve.png", "summary.json"]:
        assert (run / f).exists(), f
    assert len(summary["history"]) == 2
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["config"]["fusion"] == "tt" and meta["meta"]["train"]["pairing"] is True
    # No pickles anywhere in the run folder.
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin")]

    # Resume: continuing to 3 epochs runs only the third.
    resumed = train(_cfg(tmp_path, epochs=3, resume=True), quiet=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]


def test_checkpoint_round_trip_restores_optimizer(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    loop.save_checkpoint(tmp_path, model, opt, {"epoch": 4})
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    doc = loop.load_checkpoint(tmp_path, model2, opt2)
    assert doc["epoch"] == 4 and opt2.param_groups[0]["lr"] == 0.1
    assert torch.equal(model2.weight, model.weight)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"]) and float(s1["step"]) == float(s2["step"])


def test_pairs_match_labels_across_people(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, val_fraction=0.0)
    train_rec, _ = loop.load_data(cfg, quiet=True)
    ds = PairedDataset(train_rec, ["face", "voice"], 8, train=True, n_pairs=12)
    assert len(ds) == 12
    for i in range(len(ds)):
        f, v = ds.pair(i)
        assert train_rec.targets[f, 0] == train_rec.targets[v, 0] >= 0       # same emotion
        assert train_rec.items[f].group != train_rec.items[v].group
        s = ds[i]
        assert s["mask"][:, 0].all() and s["face"].shape[0] == s["voice"].shape[0]
    batch = collate([ds[0], StepDataset(train_rec, ["face", "voice"], 8, False)[0]], ["face", "voice"])
    assert batch["face"].shape[:2] == batch["mask"].shape[:2] and batch["y"].shape == (2, 4)


def test_cli_flags_override_the_recipe(tmp_path: Path) -> None:
    from obs_merlb.cli import main

    out = tmp_path / "cli"
    rc = main(["train", "--config", str(RECIPE), "--data", str(ROOT / "tests/fixtures/fer2013"),
               "--fusion", "late", "--task", "emotion", "--modalities", "face", "--epochs", "1",
               "--out", str(out), "--cache", str(tmp_path / "cache"), "--set", "pairing=false"])
    assert rc == 0
    cfg = json.loads((out / "model" / "config.json").read_text())["config"]
    assert (cfg["fusion"], cfg["task"], cfg["modalities"]) == ("late", "emotion", ["face"])


def test_schedule_warms_up_then_decays() -> None:
    lrs = [loop.lr_at(s, 100, 10, 1.0, "cosine") for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0) and lrs[-1] < 0.05
    one = [loop.lr_at(s, 100, 0, 1.0, "onecycle") for s in range(100)]
    assert int(np.argmax(one)) == 30
