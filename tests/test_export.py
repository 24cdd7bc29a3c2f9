"""ONNX export agrees with torch; save/load is bitwise and pickle-free."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from obs_merlb.model import MERLB, MERLBConfig, load_model, save_model
from obs_merlb.model import export as export_mod
from obs_merlb.model.export import _Sequence, example_inputs, export_module, export_onnx

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _partial_mask(batch: int, steps: int) -> torch.Tensor:
    mask = torch.ones(batch, steps, 4)
    mask[0, :, 2] = 0          # no body in sample 0
    if batch > 1:
        mask[1, ::2, 0] = 0    # face lost every other step in sample 1
    if batch > 2:
        mask[2] = 0            # nothing at all in sample 2
    return mask


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MERLB, dict[str, Path]]:
    torch.manual_seed(0)
    model = MERLB(MERLBConfig(fusion="tt")).eval()
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx"))


def test_export_writes_every_file(exported: tuple[MERLB, dict[str, Path]]) -> None:
    _, files = exported
    names = sorted(p.name for p in files.values())
    assert names == sorted(["merlb.onnx", "sequence.onnx", "face_encoder.onnx", "voice_encoder.onnx",
                            "body_encoder.onnx", "scene_encoder.onnx"])
    assert all(p.stat().st_size < 20e6 for p in files.values())


@pytest.mark.parametrize("batch,steps", [(1, 8), (3, 8), (3, 2), (2, 1)])
def test_whole_model_onnx_matches_torch(exported: tuple[MERLB, dict[str, Path]], batch: int, steps: int) -> None:
    model, files = exported
    x = example_inputs(model, batch=batch, steps=steps)
    x["mask"] = _partial_mask(batch, steps)
    with torch.no_grad():
        ref = model(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    out = _session(files["merlb"]).run(None, {k: v.numpy() for k, v in x.items()})
    for head, o in zip(model.head_names, out):
        np.testing.assert_allclose(o, ref[head].numpy(), atol=TOL, rtol=0)


def test_encoders_and_sequence_onnx_match_torch(exported: tuple[MERLB, dict[str, Path]]) -> None:
    model, files = exported
    x = example_inputs(model, batch=2, steps=5)
    x["mask"] = _partial_mask(2, 5)
    embs = {}
    with torch.no_grad():
        for m in model.modalities:
            flat = x[m].flatten(0, 1)
            ref = model.encode(m, flat)
            got = _session(files[f"{m}_encoder"]).run(None, {"x": flat.numpy()})[0]
            np.testing.assert_allclose(got, ref.numpy(), atol=TOL, rtol=0)
            embs[m] = ref.reshape(2, 5, -1)
        ref = model.sequence(embs["face"], embs["voice"], embs["body"], embs["scene"], x["mask"])
    feed = {f"{m}_e": e.numpy() for m, e in embs.items()} | {"mask": x["mask"].numpy()}
    out = _session(files["sequence"]).run(None, feed)
    for head, o in zip(model.head_names, out):
        np.testing.assert_allclose(o, ref[head].numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("fusion", ["early", "late", "joint", "deep"])
def test_baseline_sequence_onnx_matches_torch(tmp_path: Path, fusion: str) -> None:
    torch.manual_seed(1)
    model = MERLB(MERLBConfig(fusion=fusion)).eval()
    dims = model.cfg.embed_dims
    embs = [torch.randn(3, 4, dims[m]) for m in model.modalities]
    mask = _partial_mask(3, 4)
    names = [f"{m}_e" for m in model.modalities] + ["mask"]
    bt = {0: "batch", 1: "steps"}
    path = export_module(_Sequence(model), tuple(embs) + (mask,), names, model.head_names,
                         {n: bt for n in names}, tmp_path / "sequence.onnx")
    with torch.no_grad():
        ref = model.sequence(*embs, mask)
    embs2 = [torch.randn(1, 6, dims[m]) for m in model.modalities]
    mask2 = torch.ones(1, 6, 4)
    with torch.no_grad():
        ref2 = model.sequence(*embs2, mask2)
    sess = _session(path)
    for e, m, r in ((embs, mask, ref), (embs2, mask2, ref2)):
        out = sess.run(None, dict(zip(names, [t.numpy() for t in e] + [m.numpy()])))
        for head, o in zip(model.head_names, out):
            np.testing.assert_allclose(o, r[head].numpy(), atol=TOL, rtol=0)


def test_save_load_round_trip_is_bitwise(tmp_path: Path) -> None:
    torch.manual_seed(2)
    cfg = MERLBConfig(fusion="deep", heads={"emotion": ["angry", "disgust", "fear", "happy", "neutral", "sad",
                                                        "surprise"], "behaviour": ["lane", "gank", "shop"]})
    model = MERLB(cfg)
    # Non-default buffers too (batch-norm statistics move during training).
    model.train()
    x = example_inputs(model, batch=2, steps=2)
    model(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    model.eval()
    save_model(model, tmp_path, meta={"trained_on": "nothing"})
    loaded = load_model(tmp_path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with torch.no_grad():
        out_a = model(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
        out_b = loaded(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    for head in out_a:
        assert torch.equal(out_a[head], out_b[head])
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["labels"]["behaviour"] == ["lane", "gank", "shop"]
    assert doc["meta"] == {"trained_on": "nothing"}
    assert loaded.cfg == cfg


def test_saved_folder_has_no_pickle_and_loads_with_safetensors(tmp_path: Path) -> None:
    save_model(MERLB(MERLBConfig()), tmp_path)
    for f in tmp_path.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f"{f.name} looks like a pickle"
    assert load_file(str(tmp_path / "model.safetensors"))


def test_saving_new_weights_drops_stale_onnx(tmp_path: Path) -> None:
    model = MERLB(MERLBConfig(modalities=["face"], fusion="joint"))
    export_onnx(model, save_model(model, tmp_path))
    assert (tmp_path / "merlb.onnx").is_file() and (tmp_path / "face_encoder.onnx").is_file()
    save_model(model, tmp_path)
    assert not (tmp_path / "merlb.onnx").exists()


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_model(MERLB(MERLBConfig(modalities=["voice"], fusion="late")), tmp_path / "m")
    parser = argparse.ArgumentParser()
    export_mod.add_arguments(parser)
    assert export_mod.run(parser.parse_args([str(tmp_path / "m"), "--out", str(tmp_path / "o")])) == 0
    assert (tmp_path / "o" / "voice_encoder.onnx").is_file() and (tmp_path / "o" / "sequence.onnx").is_file()
    assert "merlb" in capsys.readouterr().out


def test_no_pickle_loading_anywhere() -> None:
    pattern = re.compile(r"\btorch\.load\(|\bimport pickle\b|\bpickle\.load|\bjoblib\b|\bnp\.load\(.*allow_pickle=True")
    offenders = []
    for folder in ("obs_merlb", "model", "train"):
        for f in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders
