"""combine_parts: one model from the disjoint parts that separate stages trained."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from obs_merlb.calibration import load_calibration
from obs_merlb.model.io import load_model, save_model
from obs_merlb.registry import default_model_dir
from obs_merlb.train.recipes.combine_parts import combine, main

SHIPPED = default_model_dir()


@pytest.mark.skipif(SHIPPED is None, reason="no shipped model in this checkout")
def test_parts_come_from_their_folders_and_the_rest_from_the_base(tmp_path: Path) -> None:
    other = load_model(SHIPPED)
    with torch.no_grad():
        for name, p in other.named_parameters():
            p.add_(1.0)                              # every weight differs from the shipped one
    save_model(other, tmp_path / "other")
    out = combine(SHIPPED, [f"encoders.voice.={tmp_path / 'other'}", f"fusion.temporals.1.={tmp_path / 'other'}"],
                  tmp_path / "combined")
    combined, base = load_model(out).state_dict(), load_model(SHIPPED).state_dict()
    changed = other.state_dict()
    for k, v in combined.items():
        want = changed[k] if k.startswith(("encoders.voice.", "fusion.temporals.1.")) else base[k]
        assert torch.equal(v, want), k
    assert (out / "merlb.onnx").exists() and (out / "voice_encoder.onnx").exists()
    assert not load_calibration(out)                 # new weights: the base's temperatures do not carry over


def test_missing_base_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no saved model there"):
        main(["--base", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
