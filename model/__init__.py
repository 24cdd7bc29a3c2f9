"""The MERLB network (installed as obs_merlb.model).

Names are imported on first use (PEP 562), so `obs_merlb.model.config` can be
read by the onnxruntime path of the live worker without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FUSIONS": "config", "MERLBConfig": "config",
    "load_config": "config", "load_model": "io", "save_model": "io",
    "IGNORE": "merlb", "MERLB": "merlb", "multitask_loss": "merlb",
    "TTFusion": "tt",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
