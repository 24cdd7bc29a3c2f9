"""Saved models: a folder with model.safetensors and config.json. No pickles.

config.json holds the MERLBConfig, the label names of the model's heads (so
a reader needs no code to know what the outputs mean) and optional metadata
from training (metrics, data sources) under "meta".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import CONFIG_FILE, WEIGHTS, ModelFolderError, load_config, onnx_files
from .merlb import MERLB
from .verify import check_weights

FORMAT = 1


def save_model(model: MERLB, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write weights and config.json, and remove ONNX files of earlier weights.

    The ONNX files the live engine uses are written after it by
    `obs_merlb.model.export.export_onnx` (export builds on this module, not the
    other way round)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS), metadata={"format": str(FORMAT)})
    doc = {"format": FORMAT, "config": model.cfg.to_dict(), "labels": model.cfg.active_heads,
           "meta": meta or {}}
    (d / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    # ONNX files left from earlier weights would silently serve the old model.
    for name in onnx_files():
        (d / name).unlink(missing_ok=True)
    return d


def load_model(directory: str | Path, device: str = "cpu") -> MERLB:
    """The saved model, in eval mode, on `device`. Weights load with safetensors (no pickle).

    A damaged folder (config.json, the weights, or weights that belong to
    another config) raises ModelFolderError naming the file.
    """
    cfg, _ = load_config(directory)
    check_weights(directory)
    model = MERLB(cfg)
    path = Path(directory) / WEIGHTS
    try:
        model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    except (SafetensorError, RuntimeError) as e:
        why = " ".join(str(e).split())[:240] or type(e).__name__   # one line, however long torch's is
        raise ModelFolderError(f"{path} does not hold the model {Path(directory) / CONFIG_FILE} describes "
                               f"({why})") from None
    return model.to(device).eval()
