"""Temperature scaling: probabilities that mean what they say, per modality set.

Raw, a model's confidence on one modality alone is off, and not the same
way for each: the fusion heads see faces far more often than voices, and
models so far were overconfident on faces and, depending on the weights,
under- or overconfident on voices (MODEL_CARD.md, calibration). The
calibration has to follow the weights. The
overlay's "uncertain" threshold compares a probability with a fixed number,
so without calibration it hides right voice-only guesses and shows wrong
face-only ones. One temperature per (modality set, head) is fitted on
validation data (`merlb calibrate`); accuracy is unchanged (dividing logits
by T > 0 keeps their order).

A window's modality set is the model's modalities with at least one present
step, joined by "+" in MODALITIES order: "face", "voice", "face+voice". A set
or head with no fitted temperature keeps T = 1.

Numpy only: the live worker imports this without torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from obs_merlb.labels import MODALITIES
from obs_merlb.model.config import CONFIG_FILE

KEY = "calibration"
MIN_SAMPLES = 30                # fewer labelled windows than this fit noise, not a temperature
T_RANGE = (0.2, 5.0)


def modality_sets(mask: np.ndarray, modalities: Sequence[str]) -> list[str]:
    """(B, T, 4) mask -> each window's modality set ("face+voice", "voice", "" for none)."""
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    present = m.max(axis=1) > 0                                   # (B, 4)
    ordered = [x for x in MODALITIES if x in modalities]
    return ["+".join(x for x in ordered if row[MODALITIES.index(x)]) for row in present]


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def scale(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities of logits (or log-probabilities: softmax ignores a per-row shift) at T."""
    return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature)).astype(np.float32)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    lp = log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-lp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in T_RANGE minimising the negative log-likelihood of labels y.

    NLL is convex in 1/T, so a log-spaced grid and one finer grid around its
    best point find the minimum without an optimiser dependency.
    """
    y = np.asarray(y, np.int64)
    if len(y) == 0:
        raise ValueError("no labelled samples to fit a temperature on")
    grid = np.exp(np.linspace(np.log(T_RANGE[0]), np.log(T_RANGE[1]), 161))
    losses = [nll(logits, y, t) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    fine = np.exp(np.linspace(np.log(lo), np.log(hi), 41))
    return float(fine[int(np.argmin([nll(logits, y, t) for t in fine]))])


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged
    over equal-width confidence bins weighted by their share of samples."""
    conf, ok = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        s = idx == b
        if s.any():
            total += s.mean() * abs(ok[s].mean() - conf[s].mean())
    return float(total)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty confidence bin, for a reliability plot."""
    conf, ok = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    return [(float(conf[idx == b].mean()), float(ok[idx == b].mean()), int((idx == b).sum()))
            for b in range(bins) if (idx == b).any()]


class Calibration:
    """Temperatures per modality set and head: {"face": {"emotion": 1.3, ...}, ...}."""

    def __init__(self, temperatures: Mapping[str, Mapping[str, float]] | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        self.temperatures = {s: {h: float(t) for h, t in heads.items()} for s, heads in (temperatures or {}).items()}
        for s, heads in self.temperatures.items():
            for h, t in heads.items():
                if not (np.isfinite(t) and t > 0):
                    raise ValueError(f"calibration temperature for {s}/{h} must be positive, got {t}")
        self.info = dict(info or {})

    def __bool__(self) -> bool:
        return bool(self.temperatures)

    def temperature(self, modality_set: str, head: str) -> float:
        return self.temperatures.get(modality_set, {}).get(head, 1.0)

    def probs(self, head: str, logits: np.ndarray, sets: Sequence[str]) -> np.ndarray:
        """(B, C) logits (or log-probabilities) of windows with these modality sets -> probabilities."""
        logits = np.asarray(logits, np.float64)
        t = np.array([self.temperature(s, head) for s in sets], np.float64).reshape(-1, 1)
        return np.exp(log_softmax(logits / t)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "temperature", "temperatures": self.temperatures, **self.info}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> "Calibration":
        if not doc:
            return cls()
        if doc.get("method", "temperature") != "temperature":
            raise ValueError(f"unknown calibration method {doc.get('method')!r} (this version knows 'temperature')")
        return cls(doc.get("temperatures", {}), {k: v for k, v in doc.items() if k not in ("method", "temperatures")})


def load_calibration(model_dir: str | Path) -> Calibration:
    """The model folder's calibration (none: every T = 1)."""
    doc = json.loads((Path(model_dir) / CONFIG_FILE).read_text())
    return Calibration.from_dict(doc.get(KEY))


def save_calibration(model_dir: str | Path, calibration: Calibration) -> Path:
    """Write the calibration into config.json beside the config it belongs to.

    Written to a temporary file and renamed: a full disk or a crash leaves the
    old config.json whole. Saving new weights (model/io.py) rewrites
    config.json without it, as a calibration is only valid for its weights.
    """
    path = Path(model_dir) / CONFIG_FILE
    doc = json.loads(path.read_text())
    doc[KEY] = calibration.to_dict()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path
