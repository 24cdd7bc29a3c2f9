"""Class balance: loss weights and the seed's iterative oversampling.

Labels are class indices per head with -100 (or None) for "no label", the
same convention as the loss, so a head a sample does not speak to never
counts towards its balance.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from obs_merlb.labels import IGNORE


def _as_array(labels: Sequence[int | None] | np.ndarray) -> np.ndarray:
    return np.array([IGNORE if v is None else int(v) for v in labels], dtype=np.int64)


def class_counts(labels: Sequence[int | None] | np.ndarray, n_classes: int) -> np.ndarray:
    y = _as_array(labels)
    y = y[(y >= 0) & (y < n_classes)]
    return np.bincount(y, minlength=n_classes).astype(np.int64)


def class_weights(labels: Sequence[int | None] | np.ndarray, n_classes: int,
                  power: float = 1.0) -> np.ndarray:
    """Inverse-frequency weights, normalised so the labelled samples' mean weight is 1.

    With that normalisation the loss keeps its scale (and the learning rate
    its meaning) whatever the imbalance. `power` < 1 softens the weighting
    (0.5 = inverse square root), which helps when a class is very rare
    (FER2013 disgust is 1.5% of the set). A class absent from `labels` gets
    weight 0: there is nothing to weigh, and a 0 keeps it from inflating the
    normalisation.
    """
    counts = class_counts(labels, n_classes).astype(np.float64)
    w = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return np.ones(n_classes, dtype=np.float32)
    w[present] = counts[present] ** -power
    w *= counts.sum() / float((w * counts).sum())
    return w.astype(np.float32)


def seed_oversample(head_labels: Mapping[str, Sequence[int | None] | np.ndarray],
                    n_classes: Mapping[str, int], limit: int, seed: int = 0) -> list[int]:
    """The MERLB seed's oversampling, as indices into the original samples.

    Repeatedly: over all heads, find the least represented class and the most
    represented one, each head's class frequency taken relative to its
    uniform share (1/3 for valence or arousal, 1/8 for behaviours: 1/K in
    general); add a random sample that has the least represented class and
    lacks the most represented one; stop after `limit` additions or when no
    sample qualifies. Returns the original indices followed by the added
    ones (duplicates of originals).

    Differences from the seed's script, both deliberate: each head's
    frequency is relative to the samples labelled for that head (the seed
    divided every head by the valence total, which is wrong when some clips
    lack a head), a class that no sample has is passed over as "least
    represented" (the seed stopped at once on it), and counts are updated
    incrementally rather than recomputed from the whole table.
    """
    heads = [h for h in head_labels if n_classes.get(h, 0) > 0]
    ys = {h: _as_array(head_labels[h]) for h in heads}
    n = len(next(iter(ys.values()))) if ys else 0
    if any(len(y) != n for y in ys.values()):
        raise ValueError("every head needs one label per sample")
    counts = {h: class_counts(ys[h], n_classes[h]).astype(np.float64) for h in heads}
    rng = np.random.default_rng(seed)
    chosen = list(range(n))
    for _ in range(max(0, limit)):
        rel: list[tuple[float, str, int]] = []  # (relative frequency, head, class)
        for h in heads:
            total = counts[h].sum()
            if total == 0:
                continue
            share = counts[h] / total * n_classes[h]  # frequency / (1/K)
            rel += [(float(share[c]), h, c) for c in range(n_classes[h])]
        if not rel:
            break
        # Ties are broken by head order then class order, like the seed's min/max over dicts.
        # A class no sample has can never be drawn; the seed stopped there, we look past it.
        least = min((r for r in rel if counts[r[1]][r[2]] > 0), key=lambda r: r[0])
        most = max(rel, key=lambda r: r[0])
        ok = ys[least[1]] == least[2]
        ok &= ys[most[1]] != most[2]
        candidates = np.flatnonzero(ok)
        if candidates.size == 0:
            break
        pick = int(rng.choice(candidates))
        chosen.append(pick)
        for h in heads:
            c = ys[h][pick]
            if c >= 0:
                counts[h][c] += 1
    return chosen
