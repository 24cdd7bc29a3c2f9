"""Inference backends behind one interface: onnxruntime on CPU, torch on CUDA.

    backend = load_backend(model_dir, device="cpu" | "cuda" | "cuda:N")
    backend.encode("face", x)            # (N, 1, 64, 64) -> (N, D)
    backend.sequence({"face": e, ...}, mask) -> {head: probs}
    backend.predict(face, voice, body, scene, mask) -> {head: probs}

Arrays are batched (B, T, ...) with mask (B, T, 4); or unbatched (T, ...)
with mask (T, 4), and then the probabilities come back unbatched too. A
modality given as None (or left out of `embs`) is missing at every step.

The CPU backend caps onnxruntime's threads (one by default): the streamer's
game and encoder own the CPU. The CUDA backend falls back to CPU on any
error, once, with a warning. Every call is timed: a call longer than
`stall_s` counts in `slow_calls` and is logged. (A call that never returns is
the live engine's stall watch's job: it sees no tick finish.)

Probabilities are temperature-scaled per window by the modality set it
holds (obs_merlb/calibration.py) when the model folder carries a calibration.

A folder's voice reader (model/voice_reader.py) is loaded beside the model
as `backend.reader` (None without one); the analyzer mixes it into the
calibrated emotion (obs_merlb/person_reader.py). A damaged one stops the
load like a damaged ONNX file.
"""
from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import platformdirs

from obs_merlb.calibration import load_calibration, modality_sets
from obs_merlb.config import APP_NAME
from obs_merlb.labels import EMOTIONS, MODALITIES
from obs_merlb.model.config import (CONFIG_FILE, ONNX_SEQUENCE, ONNX_WHOLE, WEIGHTS, MERLBConfig, ModelFolderError,
                                    encoder_file, load_config, onnx_files)
from obs_merlb.model.verify import check_weights
from obs_merlb.model.voice_reader import READER_FILE, VoiceReader, load_reader

log = logging.getLogger(__name__)

_ORT_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : |Load model from .*? failed: ?")


def _cache_root() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "onnx"


def ensure_onnx(model_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A folder holding the model's ONNX files: model_dir itself if it has them,
    else a cache folder keyed by the weights' hash, exported there on first use."""
    model_dir = Path(model_dir)
    cfg, _ = load_config(model_dir)
    if all((model_dir / f).is_file() for f in onnx_files(cfg.modalities)):
        return model_dir
    check_weights(model_dir)   # the export below reads them: say which file is wrong first
    h = hashlib.sha256()
    for name in (WEIGHTS, CONFIG_FILE):
        h.update((model_dir / name).read_bytes())
    target = Path(cache_dir or _cache_root()) / h.hexdigest()[:20]
    if not all((target / f).is_file() for f in onnx_files(cfg.modalities)):
        from obs_merlb.model.export import export_onnx
        from obs_merlb.model.io import load_model
        log.info("exporting %s to ONNX in %s", model_dir, target)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + "."))
        export_onnx(load_model(model_dir), tmp)
        # Rename last, so a crash mid-export never leaves a folder that looks complete.
        try:
            tmp.rename(target)
        except OSError:  # another worker finished the same export first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _batched(mask: np.ndarray) -> bool:
    return np.asarray(mask).ndim == 3


class _Ort:
    """onnxruntime sessions for the whole model, the sequence part and each encoder."""

    def __init__(self, onnx_dir: Path, cfg: MERLBConfig, threads: int) -> None:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(name: str, inputs: list[str]) -> Any:
            # Loading every file at start is the check of the ONNX files (model/verify.py says why).
            path = onnx_dir / name
            try:
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes for every kind of damage
                # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from P failed:Protobuf parsing failed."
                why = _ORT_NOISE.sub("", " ".join(str(e).split()))[:240]
                raise ModelFolderError(f"{path} is damaged or incomplete: onnxruntime cannot load it ({why})") from None
            found = [i.name for i in sess.get_inputs()]
            if sorted(found) != sorted(inputs):
                raise ModelFolderError(f"{path} was exported for another model: its inputs are {found}, "
                                       f"{onnx_dir / CONFIG_FILE} needs {inputs}")
            return sess

        mods = list(cfg.modalities)
        self.whole = session(ONNX_WHOLE, mods + ["mask"])
        self.seq = session(ONNX_SEQUENCE, [m + "_e" for m in mods] + ["mask"])
        self.encoders = {m: session(encoder_file(m), ["x"]) for m in mods}
        self.heads = [o.name for o in self.whole.get_outputs()]
        self.name = "onnxruntime-cpu"

    def encode(self, modality: str, x: np.ndarray) -> np.ndarray:
        return self.encoders[modality].run(None, {"x": x})[0]

    def sequence(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.heads, self.seq.run(None, inputs)))

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.heads, self.whole.run(None, inputs)))


class _Torch:
    """The torch model on a CUDA device."""

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        from obs_merlb.model.io import load_model
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda is not available (CPU-only torch build, or no driver)")
        self.torch = torch
        self.device = torch.device(device)
        self.model = load_model(model_dir, device=str(self.device))
        self.name = f"torch-{self.device.type}:{self.device.index if self.device.index is not None else 0}"

    def _t(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def encode(self, modality: str, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.encode(modality, self._t(x)).float().cpu().numpy()

    def _run(self, fn: Callable[..., dict], inputs: dict[str, np.ndarray], suffix: str) -> dict[str, np.ndarray]:
        with self.torch.inference_mode():
            args = [self._t(inputs[m + suffix]) if m + suffix in inputs else None for m in MODALITIES]
            out = fn(*args, self._t(inputs["mask"]))
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    def sequence(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.model.sequence, inputs, "_e")

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.model, inputs, "")


def _reader(model_dir: Path, labels: dict[str, list[str]]) -> VoiceReader | None:
    """The folder's voice reader, None without one; ModelFolderError for one it cannot use."""
    reader = load_reader(model_dir)
    if reader is not None and list(labels.get("emotion", [])) != list(EMOTIONS):
        raise ModelFolderError(f"{model_dir / READER_FILE} reads the standard emotions ({', '.join(EMOTIONS)}) "
                               f"but this model's emotion classes are {labels.get('emotion', [])}; delete it, "
                               f"or fit the reader for a model with the standard emotions")
    return reader


class Backend:
    """One interface over the onnxruntime and torch implementations, with
    CUDA-to-CPU fallback and stall detection."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int = 1,
                 stall_s: float = 2.0, cache_dir: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.cfg, self.meta = load_config(self.model_dir)
        self.labels: dict[str, list[str]] = self.cfg.active_heads
        try:
            self.calibration = load_calibration(self.model_dir)
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelFolderError(f"{self.model_dir / CONFIG_FILE} is damaged: its calibration is not "
                                   f"valid ({e})") from None
        self.reader = _reader(self.model_dir, self.labels)
        self.threads = threads
        self.stall_s = stall_s
        self.cache_dir = cache_dir
        self.slow_calls = 0
        self.calls = 0
        self.last_ms = 0.0
        self.last_error: str | None = None
        self._impl: _Ort | _Torch
        if device.startswith("cuda"):
            try:
                self._impl = _Torch(self.model_dir, device)
            except Exception as e:  # noqa: BLE001 - any CUDA trouble means: use the CPU
                self._fall_back(e)
        else:
            self._impl = self._cpu()

    def _cpu(self) -> _Ort:
        return _Ort(ensure_onnx(self.model_dir, self.cache_dir), self.cfg, self.threads)

    def _fall_back(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        log.warning("GPU backend failed (%s); using onnxruntime on the CPU from now on", self.last_error)
        self._impl = self._cpu()

    @property
    def name(self) -> str:
        return self._impl.name

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities)

    def _call(self, method: str, *args: Any) -> Any:
        start = time.monotonic()
        try:
            try:
                return getattr(self._impl, method)(*args)
            except Exception as e:  # noqa: BLE001
                if isinstance(self._impl, _Ort):
                    raise
                self._fall_back(e)
                return getattr(self._impl, method)(*args)
        finally:
            elapsed = time.monotonic() - start
            self.last_ms = 1000.0 * elapsed
            self.calls += 1
            if elapsed > self.stall_s:
                self.slow_calls += 1
                log.warning("inference call %s took %.1f s (slow calls: %d)", method, elapsed, self.slow_calls)

    def encode(self, modality: str, x: np.ndarray) -> np.ndarray:
        """(N, *step_shape) -> (N, D) embeddings."""
        return self._call("encode", modality, np.ascontiguousarray(x, dtype=np.float32))

    def _inputs(self, arrays: dict[str, np.ndarray | None], mask: np.ndarray, suffix: str,
                dims: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], bool]:
        mask = np.asarray(mask, dtype=np.float32)
        batched = _batched(mask)
        if not batched:
            mask = mask[None]
            arrays = {k: None if v is None else np.asarray(v)[None] for k, v in arrays.items()}
        mask = mask.copy()
        b, t = mask.shape[:2]
        feed = {}
        for m in self.modalities:
            x = arrays.get(m)
            if x is None:
                # Missing for the whole window: zeros behind a zero mask.
                mask[..., MODALITIES.index(m)] = 0.0
                x = np.zeros((b, t, *dims[m]), np.float32)
            feed[m + suffix] = np.ascontiguousarray(x, dtype=np.float32)
        feed["mask"] = mask
        return feed, batched

    def _probs(self, logits: dict[str, np.ndarray], feed: dict[str, np.ndarray],
               batched: bool) -> dict[str, np.ndarray]:
        sets = modality_sets(feed["mask"], self.modalities)
        probs = {k: self.calibration.probs(k, v, sets) for k, v in logits.items()}
        return probs if batched else {k: v[0] for k, v in probs.items()}

    def sequence(self, embs: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
        """Per-step embeddings {modality: (B, T, D)} and mask -> {head: probs}."""
        dims = {m: (d,) for m, d in self.cfg.embed_dims.items()}
        feed, batched = self._inputs(dict(embs), mask, "_e", dims)
        return self._probs(self._call("sequence", feed), feed, batched)

    def predict(self, face: np.ndarray | None, voice: np.ndarray | None, body: np.ndarray | None,
                scene: np.ndarray | None, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Raw per-step inputs -> {head: probs}."""
        dims = {m: self.cfg.input_shape(m) for m in self.modalities}
        arrays = {"face": face, "voice": voice, "body": body, "scene": scene}
        feed, batched = self._inputs(arrays, mask, "", dims)
        return self._probs(self._call("predict", feed), feed, batched)


def load_backend(model_dir: str | Path, device: str = "cpu", threads: int = 1,
                 stall_s: float = 2.0, cache_dir: str | Path | None = None) -> Backend:
    """A ready backend for the saved model in model_dir (see the module docstring)."""
    return Backend(model_dir, device, threads, stall_s, cache_dir)
