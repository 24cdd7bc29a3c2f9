"""Fixtures shared by test modules: a one-epoch model of train/recipes/tiny.toml (once per module that uses it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from obs_merlb.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, feature cache) of a tiny model trained on the fixtures."""
    tmp = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig.from_toml(ROOT / "train" / "recipes" / "tiny.toml")
    cfg.out, cfg.cache, cfg.epochs = str(tmp / "run"), str(tmp / "cache"), 1
    train(cfg, quiet=True)
    return tmp / "run" / "model", tmp / "cache"
