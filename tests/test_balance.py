"""Class weights and the seed's iterative oversampling on a small label table."""
from __future__ import annotations

from collections import Counter

import numpy as np

from obs_merlb.train.balance import class_counts, class_weights, seed_oversample


def test_class_weights_inverse_frequency_normalised() -> None:
    y = [0] * 6 + [1] * 3 + [2] * 1 + [None, -100]
    w = class_weights(y, 3)
    assert np.allclose(w[0] * 6, w[1] * 3) and np.allclose(w[1] * 3, w[2] * 1)
    counts = class_counts(y, 3)
    assert np.isclose((w * counts).sum() / counts.sum(), 1.0)  # mean weight over samples is 1
    assert class_weights([0, 0, 1], 3)[2] == 0.0                # absent class
    soft = class_weights(y, 3, power=0.5)
    assert soft[2] / soft[0] < w[2] / w[0]


def test_seed_oversampling_balances_the_table() -> None:
    # valence: 8 negative, 1 neutral, 1 positive; arousal 5/5/0 (a class nobody has);
    # behaviours: index 0 for most clips.
    valence = [0] * 8 + [1, 2]
    arousal = [2, 2, 2, 2, 2, 1, 1, 1, 1, 1]
    behaviour = [0, 0, 0, 0, 0, 0, 1, 2, None, 3]
    labels = {"valence": valence, "arousal": arousal, "behaviour": behaviour}
    idx = seed_oversample(labels, {"valence": 3, "arousal": 3, "behaviour": 8}, limit=20, seed=0)
    assert idx[:10] == list(range(10)) and 10 < len(idx) <= 30
    before = Counter(valence)
    after = Counter(valence[i] for i in idx)
    assert after[1] + after[2] > before[1] + before[2]
    # Every addition had the least represented class and lacked the most represented one,
    # so the majority valence never grows faster than the minorities.
    assert after[0] / len(idx) < before[0] / 10
    assert seed_oversample(labels, {"valence": 3, "arousal": 3, "behaviour": 8}, 20, seed=0) == idx
    assert seed_oversample(labels, {"valence": 3}, 0) == list(range(10))


def test_seed_oversampling_stops_when_nothing_qualifies() -> None:
    # The only clip with the rare class also has the common one: no candidate, stop early.
    idx = seed_oversample({"valence": [0, 0, 0]}, {"valence": 3}, limit=10)
    assert idx == [0, 1, 2]
