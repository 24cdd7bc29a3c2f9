"""Inference backends: onnxruntime CPU matches torch, CUDA falls back, stalls are seen."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from obs_merlb.inference import Backend, load_backend
from obs_merlb.model import MERLB, MERLBConfig, save_model
from obs_merlb.model.export import example_inputs, export_onnx

TOL = 1e-4


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[MERLB, Path]:
    torch.manual_seed(0)
    model = MERLB(MERLBConfig(fusion="tt")).eval()
    d = tmp_path_factory.mktemp("model")
    export_onnx(model, save_model(model, d))
    return model, d


@pytest.fixture(scope="module")
def backend(saved: tuple[MERLB, Path]) -> Backend:
    return load_backend(saved[1])


def _inputs(model: MERLB, batch: int = 2, steps: int = 8) -> dict[str, np.ndarray]:
    x = {k: v.numpy() for k, v in example_inputs(model, batch=batch, steps=steps).items()}
    x["mask"][0, :3, 0] = 0
    return x


def _torch_probs(model: MERLB, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    t = {k: torch.from_numpy(v) for k, v in x.items()}
    with torch.no_grad():
        out = model(t.get("face"), t.get("voice"), t.get("body"), t.get("scene"), t["mask"])
    return {k: torch.softmax(v, -1).numpy() for k, v in out.items()}


def test_cpu_backend_matches_torch(saved: tuple[MERLB, Path], backend: Backend) -> None:
    model, _ = saved
    assert backend.name == "onnxruntime-cpu"
    assert backend.labels["emotion"][0] == "angry"
    x = _inputs(model)
    probs = backend.predict(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    ref = _torch_probs(model, x)
    for head, p in probs.items():
        np.testing.assert_allclose(p, ref[head], atol=TOL, rtol=0)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_encode_then_sequence_equals_predict(saved: tuple[MERLB, Path], backend: Backend) -> None:
    model, _ = saved
    x = _inputs(model, batch=1, steps=4)
    embs = {m: backend.encode(m, x[m][0])[None] for m in model.modalities}
    with torch.no_grad():
        ref = model.encode("face", torch.from_numpy(x["face"][0])).numpy()
    np.testing.assert_allclose(embs["face"][0], ref, atol=TOL, rtol=0)
    a = backend.sequence(embs, x["mask"])
    b = backend.predict(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    for head in a:
        np.testing.assert_allclose(a[head], b[head], atol=TOL, rtol=0)


def test_unbatched_and_missing_modality(saved: tuple[MERLB, Path], backend: Backend) -> None:
    model, _ = saved
    x = _inputs(model, batch=1, steps=8)
    single = backend.predict(x["face"][0], None, x["body"][0], None, x["mask"][0])
    assert single["emotion"].shape == (7,)
    masked = x["mask"].copy()
    masked[..., 1] = 0
    masked[..., 3] = 0
    ref = _torch_probs(model, {**x, "mask": masked})
    for head, p in single.items():
        np.testing.assert_allclose(p, ref[head][0], atol=TOL, rtol=0)
    nothing = backend.predict(None, None, None, None, np.zeros((8, 4), np.float32))
    assert all(np.isfinite(p).all() for p in nothing.values())


def test_missing_onnx_files_are_exported_to_cache(saved: tuple[MERLB, Path], tmp_path: Path) -> None:
    model, _ = saved
    plain = tmp_path / "plain"
    save_model(model, plain)
    assert not (plain / "merlb.onnx").exists()
    cache = tmp_path / "cache"
    b = load_backend(plain, cache_dir=cache)
    assert not (plain / "merlb.onnx").exists()
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "sequence.onnx").is_file()
    x = _inputs(model, batch=1, steps=2)
    p = b.predict(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    ref = _torch_probs(model, x)
    np.testing.assert_allclose(p["valence"], ref["valence"], atol=TOL, rtol=0)
    # A second load reuses the cache instead of exporting again.
    stamp = (folders[0] / "merlb.onnx").stat().st_mtime_ns
    load_backend(plain, cache_dir=cache)
    assert (folders[0] / "merlb.onnx").stat().st_mtime_ns == stamp


def test_cpu_threads_are_capped(saved: tuple[MERLB, Path]) -> None:
    b = load_backend(saved[1], threads=1)
    assert b._impl.whole.get_session_options().intra_op_num_threads == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the fallback test needs none")
def test_cuda_unavailable_falls_back_with_one_warning(saved: tuple[MERLB, Path],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="obs_merlb.inference"):
        b = load_backend(saved[1], device="cuda")
    assert b.name == "onnxruntime-cpu"
    assert len([r for r in caplog.records if "CPU" in r.getMessage()]) == 1
    assert b.last_error and "cuda" in b.last_error.lower()


class _FlakyGPU:
    """Stands in for the torch-CUDA implementation: fails the way a lost device does."""
    name = "torch-cuda:0"

    def __getattr__(self, method: str):
        def fail(*args, **kwargs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return fail


def test_gpu_error_mid_run_falls_back_to_cpu(saved: tuple[MERLB, Path], caplog: pytest.LogCaptureFixture) -> None:
    model, d = saved
    b = load_backend(d)
    b._impl = _FlakyGPU()
    x = _inputs(model, batch=1, steps=2)
    with caplog.at_level(logging.WARNING, logger="obs_merlb.inference"):
        p = b.predict(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
        b.predict(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    assert b.name == "onnxruntime-cpu"
    np.testing.assert_allclose(p["emotion"], _torch_probs(model, x)["emotion"], atol=TOL, rtol=0)
    assert len([r for r in caplog.records if "GPU backend failed" in r.getMessage()]) == 1


def test_slow_calls_counted(saved: tuple[MERLB, Path]) -> None:
    model, d = saved
    b = load_backend(d, stall_s=0.05)
    real = b._impl.sequence

    def slow(inputs):
        time.sleep(0.2)
        return real(inputs)

    b._impl.sequence = slow
    embs = {m: np.zeros((1, 2, n), np.float32) for m, n in b.cfg.embed_dims.items()}
    b.sequence(embs, np.ones((1, 2, 4), np.float32))
    assert b.slow_calls == 1 and b.last_ms >= 200
    b._impl.sequence = real
    b.sequence(embs, np.ones((1, 2, 4), np.float32))
    assert b.slow_calls == 1 and b.calls == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_matches_cpu(saved: tuple[MERLB, Path], backend: Backend) -> None:
    model, d = saved
    gpu = load_backend(d, device="cuda")
    assert gpu.name.startswith("torch-cuda")
    x = _inputs(model)
    a = gpu.predict(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    b = backend.predict(x["face"], x["voice"], x["body"], x["scene"], x["mask"])
    for head in a:
        np.testing.assert_allclose(a[head], b[head], atol=1e-3, rtol=0)
