"""ONNX export of a MERLB model: the whole model, each encoder, and the sequence part.

Files (docs/ARCHITECTURE.md): merlb.onnx (inputs: the enabled modalities'
(B,T,...) arrays and mask (B,T,4); outputs: one logits array per head),
<modality>_encoder.onnx (x (N,...) -> embedding (N,D)), sequence.onnx
(<modality>_e (B,T,D) and mask -> logits). Batch, N and T are dynamic.

Also the `merlb export MODEL_DIR [--out DIR]` command.
"""
from __future__ import annotations

import argparse
import copy
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from obs_merlb.files import check_writable

from .config import ONNX_SEQUENCE, ONNX_WHOLE, encoder_file
from .io import load_model
from .merlb import MERLB

OPSET = 17
log = logging.getLogger(__name__)


class _Whole(nn.Module):
    def __init__(self, model: MERLB) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        given = dict(zip(self.model.modalities, args[:-1]))
        out = self.model(given.get("face"), given.get("voice"), given.get("body"), given.get("scene"), args[-1])
        return tuple(out[h] for h in self.model.head_names)


class _Sequence(nn.Module):
    def __init__(self, model: MERLB) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        given = dict(zip(self.model.modalities, args[:-1]))
        out = self.model.sequence(given.get("face"), given.get("voice"), given.get("body"),
                                  given.get("scene"), args[-1])
        return tuple(out[h] for h in self.model.head_names)


def export_module(module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]], path: Path) -> Path:
    """torch -> ONNX with the TorchScript exporter (the dynamo one needs onnxscript).

    The module is put in eval mode first: the exporter restores the mode it
    found, recursively, so a freshly built wrapper (training by default)
    would otherwise switch the wrapped model into training mode.
    """
    module.eval()
    with warnings.catch_warnings():
        # The exporter warns about its own deprecation and about LSTM batch sizes
        # (our LSTMs start from zero states, which ONNX LSTM handles at any batch).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return path


def example_inputs(model: MERLB, batch: int = 1, steps: int | None = None) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes for the enabled modalities, and a full mask."""
    t = steps or model.cfg.steps
    g = torch.Generator().manual_seed(0)
    out = {m: torch.rand(batch, t, *model.cfg.input_shape(m), generator=g) for m in model.modalities}
    out["mask"] = torch.ones(batch, t, 4)
    return out


def export_onnx(model: MERLB, out_dir: str | Path) -> dict[str, Path]:
    """Write all ONNX files for `model` into out_dir; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().float().eval()
    ex = example_inputs(model, batch=2)
    mods = model.modalities
    heads = model.head_names
    bt = {0: "batch", 1: "steps"}
    files: dict[str, Path] = {}
    with torch.no_grad():
        files["merlb"] = export_module(
            _Whole(model), tuple(ex[m] for m in mods) + (ex["mask"],), mods + ["mask"], heads,
            {**{n: bt for n in mods + ["mask"]}, **{h: {0: "batch"} for h in heads}}, out / ONNX_WHOLE)
        embs = {}
        for m in mods:
            x = ex[m].reshape(-1, *ex[m].shape[2:])
            embs[m] = model.encode(m, x).reshape(*ex[m].shape[:2], -1)
            files[f"{m}_encoder"] = export_module(
                model.encoders[m], (x,), ["x"], ["embedding"], {"x": {0: "n"}, "embedding": {0: "n"}},
                out / encoder_file(m))
        names = [f"{m}_e" for m in mods]
        files["sequence"] = export_module(
            _Sequence(model), tuple(embs[m] for m in mods) + (ex["mask"],), names + ["mask"], heads,
            {**{n: bt for n in names + ["mask"]}, **{h: {0: "batch"} for h in heads}}, out / ONNX_SEQUENCE)
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="saved model folder (model.safetensors + config.json)")
    parser.add_argument("--out", help="where to write the ONNX files (default: MODEL_DIR)")


def run(args: argparse.Namespace) -> int:
    if args.out:
        check_writable(Path(args.out), "--out")
    model = load_model(args.model_dir)
    files = export_onnx(model, args.out or args.model_dir)
    for name, path in files.items():
        print(f"{name:16s} {path}  ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
