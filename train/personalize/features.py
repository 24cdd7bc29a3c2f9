"""Per-step features of the streamer's recordings and batches of labelled windows from them.

Recordings go through the same cached preprocessing as `merlb train`; with
frozen encoders their per-step embeddings are computed once and batches are
cut from those instead of the raw steps. A recording's large arrays are read
by step range from disk (rowfiles.py), so hours of recordings cost memory
for the windows in use, not for the hours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from obs_merlb.calibration import Calibration, modality_sets
from obs_merlb.labels import MODALITIES
from obs_merlb.model.merlb import IGNORE

from ..data import augment_face, augment_voice, to_float
from ..datasets import Item
from ..preprocess import PER_STEP, STEP_SHAPES, prepare
from .progress import Progress
from .rowfiles import recording_arrays
from .windows import Session, Window


@dataclass
class RecordingSteps:
    """All steps of one recording (storage dtypes; large ones as `RowFile`s, read by
    step range) and, with frozen encoders, their embeddings."""

    arrays: dict[str, Any]
    embs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.arrays["mask"].shape[0])


def preprocess_sessions(sessions: Sequence[Session], cache: Path, settings: Any, progress: Progress,
                        needed: set[int] | None = None,
                        workers: int = 1) -> tuple[list[RecordingSteps | None], dict[str, str]]:
    """Per-step features of the `needed` recordings (cached: a rerun decodes nothing)."""
    out: list[RecordingSteps | None] = []
    failed: dict[str, str] = {}
    progress.start("preprocess", len(sessions), "features")
    for i, s in enumerate(sessions):
        if needed is not None and i not in needed:
            out.append(None)
            progress.advance(i + 1, len(sessions), f"{s.name} (no labels, skipped)")
            continue
        item = Item(path=str(s.recording), group=f"stream:{s.name}", labels={}, dataset="personal")
        prep = prepare(s.recording.parent, cache, fmt="csv", settings=settings, items=[item],
                       workers=workers, quiet=True)
        if prep.items:
            out.append(RecordingSteps(recording_arrays(prep.shards[0], prep.keys[0], cache, tuple(PER_STEP))))
        else:
            out.append(None)
            failed[str(s.recording)] = next(iter(prep.failed.values()), "unreadable")
        progress.advance(i + 1, len(sessions), s.name)
    progress.end()
    return out, failed


def compute_embeddings(model: Any, steps: Sequence[RecordingSteps | None], batch: int = 256) -> None:
    """Frozen encoders run once per step, not once per step per epoch."""
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        for rs in steps:
            if rs is None:
                continue
            for m in model.cfg.modalities:
                dim = model.cfg.embed_dims[m]
                emb = np.zeros((rs.n, dim), np.float32)
                col = rs.arrays["mask"][:, MODALITIES.index(m)] > 0
                if m in rs.arrays and col.any():
                    idx = np.nonzero(col)[0]
                    for a in range(0, len(idx), batch):
                        sel = idx[a:a + batch]
                        x = torch.from_numpy(to_float(m, rs.arrays[m][sel])).to(dev)
                        emb[sel] = model.encode(m, x).float().cpu().numpy()
                rs.embs[m] = emb


def step_range(w: Window, step_s: float, n: int) -> tuple[int, int]:
    a = max(0, int(math.floor(w.start / step_s + 1e-6)))
    b = min(n, int(math.ceil(w.end / step_s - 1e-6)))
    return a, max(a, b)


def gather(steps: Sequence[RecordingSteps | None], windows: Sequence[Window], idx: Sequence[int], T: int,
           step_s: float, modalities: Sequence[str], rng: np.random.Generator | None, use_emb: bool,
           augment: bool = False, emb_dims: dict[str, int] | None = None) -> dict[str, Any]:
    """A batch: a T-step crop of each window (random with `rng`, else centred), zero-padded."""
    b = len(idx)
    mask = np.zeros((b, T, len(MODALITIES)), np.float32)
    xs: dict[str, np.ndarray] = {}
    for m in modalities:
        shape = (emb_dims or {}).get(m) if use_emb else None
        xs[m] = np.zeros((b, T, shape) if use_emb else (b, T, *STEP_SHAPES[m]), np.float32)
    for j, i in enumerate(idx):
        w = windows[i]
        rs = steps[w.session]
        a, e = step_range(w, step_s, rs.n)
        n = e - a
        if n <= 0:
            continue
        off = int(rng.integers(0, n - T + 1)) if (rng is not None and n > T) else max(0, (n - T) // 2)
        s0, s1 = a + off, min(a + off + T, e)
        k = s1 - s0
        mask[j, :k] = rs.arrays["mask"][s0:s1]
        for m in modalities:
            if use_emb:
                xs[m][j, :k] = rs.embs[m][s0:s1]
            elif m in rs.arrays:
                x = to_float(m, rs.arrays[m][s0:s1])
                if augment and rng is not None:
                    x = augment_face(x, rng) if m == "face" else augment_voice(x, rng) if m == "voice" else x
                xs[m][j, :k] = x
    out: dict[str, Any] = {"mask": torch.from_numpy(mask)}
    for m in MODALITIES:
        present = m in xs and mask[:, :, MODALITIES.index(m)].any()
        out[m] = torch.from_numpy(xs[m]) if present else None
    return out


def run_model(model: Any, batch: dict[str, Any], use_emb: bool) -> dict[str, Any]:
    dev = next(model.parameters()).device
    batch = {k: (v.to(dev, non_blocking=True) if v is not None else None) for k, v in batch.items()}
    if use_emb:
        return model.sequence(batch["face"], batch["voice"], batch["body"], batch["scene"], batch["mask"])
    return model(batch["face"], batch["voice"], batch["body"], batch["scene"], batch["mask"])


def window_logits(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
                  batch_size: int = 64) -> tuple[dict[str, np.ndarray], list[str]]:
    """Logits per head for the centred crop of each window (full model, eval mode), and each
    window's modality set ("face", "voice", "face+voice", ...)."""
    model.eval()
    logits: dict[str, list[np.ndarray]] = {}
    sets: list[str] = []
    with torch.no_grad():
        for a in range(0, len(windows), batch_size):
            idx = list(range(a, min(a + batch_size, len(windows))))
            batch = gather(steps, windows, idx, model.cfg.steps, model.cfg.step_s, model.cfg.modalities,
                           None, use_emb=False)
            sets += modality_sets(batch["mask"].numpy(), model.cfg.modalities)
            for h, lg in run_model(model, batch, False).items():
                logits.setdefault(h, []).append(lg.float().cpu().numpy())
    return {h: np.concatenate(v) for h, v in logits.items()}, sets


def predict_windows(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
                    batch_size: int = 64, calibration: Calibration | None = None) -> dict[str, np.ndarray]:
    """Softmax per head for the centred crop of each window, temperature-scaled per
    window's modality set when a calibration is given."""
    calibration = calibration or Calibration()      # none: T = 1, the plain softmax
    logits, sets = window_logits(model, steps, windows, batch_size)
    return {h: calibration.probs(h, lg, sets) for h, lg in logits.items()}


def targets_for(windows: Sequence[Window], heads: dict[str, list[str]]) -> dict[str, np.ndarray]:
    out = {}
    for h, names in heads.items():
        out[h] = np.array([names.index(w.labels[h]) if w.labels.get(h) in names else IGNORE for w in windows],
                          np.int64)
    return out
