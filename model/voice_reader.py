"""The voice reader: a linear classifier of person-z-scored voice functionals, fused with the model.

The MERLB voice encoder hears 1 s windows with their level taken off; the
reader hears a window's speech as a whole (perception/functionals.py),
against the person's own statistics, and its emotion log-probabilities are
mixed into the model's: log p = (1 - weight) log p_model + weight log p_reader,
renormalised, for windows that hold speech. It is fitted on the training
speakers (train/fit_reader.py) and kept in the model folder as
`voice_reader.safetensors`: the population's functionals (a stranger's
baseline), the standardisation and the classifier; the metadata names the
classes and the weight.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from obs_merlb.labels import EMOTIONS
from obs_merlb.model.config import ModelFolderError
from obs_merlb.perception.functionals import N_FUNCTIONALS, Population

READER_FILE = "voice_reader.safetensors"
FLOOR = 1e-6          # probability of a class the reader never saw


@dataclass(frozen=True)
class VoiceReader:
    population: Population
    scale_mean: np.ndarray      # standardisation of the z-scored functionals (fitted on the training speakers)
    scale_std: np.ndarray
    coef: np.ndarray            # (K, N_FUNCTIONALS)
    intercept: np.ndarray       # (K,)
    classes: tuple[str, ...]    # K emotion names, a subset of EMOTIONS
    weight: float

    def probs(self, z: np.ndarray) -> np.ndarray:
        """(N, len(EMOTIONS)) probabilities from (N, N_FUNCTIONALS) person-z-scored functionals."""
        logits = ((np.atleast_2d(z) - self.scale_mean) / self.scale_std) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        out = np.full((len(p), len(EMOTIONS)), FLOOR)
        out[:, [EMOTIONS.index(c) for c in self.classes]] = p
        return out / out.sum(axis=1, keepdims=True)

    def fuse(self, model_probs: np.ndarray, z: np.ndarray, weight: float | np.ndarray | None = None) -> np.ndarray:
        """The model's (N, len(EMOTIONS)) emotion probabilities with the reader mixed in at `weight`
        (one for all rows or one per row; default the reader's own); a row at weight 0 is the model's."""
        p = np.asarray(model_probs, np.float64)
        w = np.broadcast_to(np.asarray(self.weight if weight is None else weight, np.float64), (len(p),))[:, None]
        logp = (1 - w) * np.log(p + FLOOR) + w * np.log(self.probs(z))
        fused = np.exp(logp - logp.max(axis=1, keepdims=True))
        fused /= fused.sum(axis=1, keepdims=True)
        return np.where(w > 0, fused, p).astype(np.float32)

    def save(self, model_dir: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(model_dir) / READER_FILE
        tmp = path.with_name(path.name + ".partial")
        tensors = {"population_mean": self.population.mean, "population_std": self.population.std,
                   "scale_mean": self.scale_mean, "scale_std": self.scale_std,
                   "coef": self.coef, "intercept": self.intercept}
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp),
                  metadata={"classes": json.dumps(list(self.classes)), "weight": repr(float(self.weight))})
        tmp.replace(path)
        return path


def load_reader(model_dir: str | Path) -> VoiceReader | None:
    """The model folder's reader; None without one; ModelFolderError, one line, when it is damaged."""
    path = Path(model_dir) / READER_FILE
    if not path.exists():
        return None
    if not path.is_file():     # a FIFO would block the load forever, a folder cannot be read
        raise ModelFolderError(f"{path} is not a regular file; fit the reader again with "
                               f"`merlb fit-reader --model {Path(model_dir)}` or delete it")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}
        classes = tuple(json.loads(meta["classes"]))
        weight = float(meta["weight"])
        reader = VoiceReader(Population(t["population_mean"], t["population_std"]), t["scale_mean"],
                             t["scale_std"], t["coef"], t["intercept"], classes, weight)
    except Exception as e:  # noqa: BLE001 - safetensors, json and a missing key each raise their own
        raise ModelFolderError(f"{path} is damaged or incomplete ({type(e).__name__}: {e}); fit it again "
                               f"with `merlb fit-reader --model {Path(model_dir)}` or delete it") from None
    k = len(classes)
    if (not set(classes) <= set(EMOTIONS) or not 0.0 <= weight <= 1.0 or reader.coef.shape != (k, N_FUNCTIONALS)
            or reader.intercept.shape != (k,) or any(v.shape != (N_FUNCTIONALS,) for v in
                                                     (reader.population.mean, reader.population.std,
                                                      reader.scale_mean, reader.scale_std))
            or not all(np.isfinite(v).all() for v in t.values()) or (reader.scale_std <= 0).any()):
        raise ModelFolderError(f"{path} does not hold a voice reader for {N_FUNCTIONALS} functionals and "
                               f"the emotions {list(EMOTIONS)}; fit it again or delete it")
    return reader
