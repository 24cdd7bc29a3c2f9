"""Scoring candidate and current model on the held-out windows, and the gate between them."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from obs_merlb.model.merlb import IGNORE

from ..metrics import head_metrics
from .features import targets_for
from .windows import Window


def _macro_f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    """Macro-F1 over the classes present in y (as metrics.head_metrics), vectorised for permutations."""
    present = np.unique(y)
    f1s = []
    for c in present:
        tp = np.sum((y == c) & (p == c))
        fp = np.sum((y != c) & (p == c))
        fn = np.sum((y == c) & (p != c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def score_model(probs: dict[str, np.ndarray], model_heads: dict[str, list[str]], windows: Sequence[Window],
                eval_heads: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-head metrics by class *name* (the two models' heads may differ); (metrics, predictions)."""
    y = targets_for(windows, eval_heads)
    metrics, preds = {}, {}
    for h, names in eval_heads.items():
        if h not in probs:
            continue
        own = model_heads[h]
        pred_names = [own[i] for i in probs[h].argmax(axis=1)]
        pred = np.array([names.index(n) if n in names else -1 for n in pred_names], np.int64)
        m = head_metrics(y[h], pred, names)
        if m is not None:
            metrics[h] = m
            preds[h] = pred
    return metrics, preds


def gate(cand: dict[str, Any], cand_pred: dict[str, np.ndarray], inc: dict[str, Any],
         y: dict[str, np.ndarray], eval_heads: dict[str, list[str]], margin: float, alpha: float,
         min_val: int, seed: int = 0, n_perm: int = 1000,
         inc_pred: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Accept when the candidate beats the current model by `margin`, is above chance, and
    beats the current model by more than the luck of which windows were held out.

    Chance: the candidate's own predictions against labels shuffled across
    validation windows (rows together, so heads stay consistent); a head the
    current model lacks (a new user head) counts at chance level for it, the
    null's mean. Better than the current model: a paired permutation test
    that swaps the two models' predictions window by window (heads both
    models have). A dozen held-out windows make a 0.15 gain easy to get by
    luck; both tests at `alpha` keep noise from replacing a good model.
    """
    heads = [h for h in eval_heads if h in cand]
    labelled = {h: y[h] != IGNORE for h in heads}
    n_val = int(max((int(k.sum()) for k in labelled.values()), default=0))
    cand_score = float(np.mean([cand[h]["macro_f1"] for h in heads])) if heads else 0.0
    rng = np.random.default_rng(seed)
    n = len(next(iter(y.values()))) if y else 0
    null = np.zeros(n_perm)
    null_head = {h: np.zeros(n_perm) for h in heads}
    for r in range(n_perm):
        perm = rng.permutation(n)
        vals = []
        for h in heads:
            yy = y[h][perm]
            keep = yy != IGNORE
            v = _macro_f1(yy[keep], cand_pred[h][keep], len(eval_heads[h])) if keep.any() else 0.0
            null_head[h][r] = v
            vals.append(v)
        null[r] = np.mean(vals) if vals else 0.0
    p_value = float((1 + np.sum(null >= cand_score - 1e-12)) / (1 + n_perm))
    inc_heads = {h: (inc[h]["macro_f1"] if h in inc else float(null_head[h].mean())) for h in heads}
    inc_score = float(np.mean(list(inc_heads.values()))) if heads else 0.0
    shared = [h for h in heads if inc_pred is not None and h in inc_pred and h in inc]
    p_better = None
    if shared:
        def diff(swap: np.ndarray) -> float:
            vals = []
            for h in shared:
                keep = y[h] != IGNORE
                c = np.where(swap, inc_pred[h], cand_pred[h])[keep]
                i = np.where(swap, cand_pred[h], inc_pred[h])[keep]
                vals.append(_macro_f1(y[h][keep], c, 0) - _macro_f1(y[h][keep], i, 0))
            return float(np.mean(vals))
        observed = diff(np.zeros(n, bool))
        null_d = np.array([diff(rng.random(n) < 0.5) for _ in range(n_perm // 2)])
        p_better = float((1 + np.sum(null_d >= observed - 1e-12)) / (1 + len(null_d)))
    reasons = []
    if n_val < min_val:
        reasons.append(f"only {n_val} validation windows (need {min_val})")
    if cand_score < inc_score + margin:
        reasons.append(f"macro-F1 {cand_score:.3f} does not beat the current {inc_score:.3f} by {margin:.3f}")
    if p_value > alpha:
        reasons.append(f"not above chance (permutation p = {p_value:.3f} > {alpha})")
    if p_better is not None and p_better > alpha and cand_score >= inc_score + margin:
        reasons.append(f"the gain over the current model could be luck (paired p = {p_better:.3f} > {alpha})")
    return {"heads": heads, "n_val": n_val, "candidate_score": cand_score, "active_score": inc_score,
            "active_per_head": inc_heads, "candidate_per_head": {h: cand[h]["macro_f1"] for h in heads},
            "chance_per_head": {h: float(null_head[h].mean()) for h in heads}, "p_value": p_value,
            "p_better": p_better,
            "margin": margin, "alpha": alpha, "passed": not reasons, "reasons": reasons}
