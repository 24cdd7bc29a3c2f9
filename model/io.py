"""Saved models: a folder with model.safetensors and config.json. No pickles.

config.json holds the MERLBConfig, the label names of the model's heads (so
a reader needs no code to know what the outputs mean) and optional metadata
from training (metrics, data sources) under "meta".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .config import CONFIG_FILE, load_config
from .merlb import MERLB

WEIGHTS = "model.safetensors"
FORMAT = 1
# ONNX files a folder may hold; saving new weights makes them stale.
ONNX_FILES = ("merlb.onnx", "sequence.onnx", "face_encoder.onnx", "voice_encoder.onnx",
              "body_encoder.onnx", "scene_encoder.onnx")


def save_model(model: MERLB, directory: str | Path, meta: dict[str, Any] | None = None,
               onnx: bool = False) -> Path:
    """Write weights and config.json; with onnx=True also the ONNX files the live engine uses."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS), metadata={"format": str(FORMAT)})
    doc = {"format": FORMAT, "config": model.cfg.to_dict(), "labels": model.cfg.active_heads,
           "meta": meta or {}}
    (d / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    # ONNX files left from earlier weights would silently serve the old model.
    for name in ONNX_FILES:
        (d / name).unlink(missing_ok=True)
    if onnx:
        from .export import export_onnx
        export_onnx(model, d)
    return d


def load_model(directory: str | Path, device: str = "cpu") -> MERLB:
    """The saved model, in eval mode, on `device`. Weights load with safetensors (no pickle)."""
    cfg, _ = load_config(directory)
    model = MERLB(cfg)
    model.load_state_dict(load_file(str(Path(directory) / WEIGHTS), device="cpu"), strict=True)
    return model.to(device).eval()
