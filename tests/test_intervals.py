"""The intervals `merlb eval` puts around its scores: a bootstrap over the people scored."""
from __future__ import annotations

import numpy as np
import pytest

from obs_merlb.train.metrics import bootstrap_ci, confusion_scores, head_metrics, score

CLASSES = ["a", "b", "c", "d"]


@pytest.mark.parametrize("seed", range(5))
def test_confusion_scores_are_head_metrics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 60)             # class "d" never in the labels, sometimes predicted
    p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 4, 60))
    m = head_metrics(y, p, CLASSES)
    got = confusion_scores(np.array(m["confusion"]))
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert got[key] == pytest.approx(m[key])


def test_perfect_predictions_have_no_spread() -> None:
    y = np.arange(40) % 4
    ci = bootstrap_ci(y, y, [f"p{i % 5}" for i in range(40)], 4)
    assert all(v == pytest.approx([1.0, 1.0]) for v in ci.values())


def test_people_not_items_are_resampled() -> None:
    # Half the items right, half wrong: as 2 people (one always right) the resamples swing from
    # all wrong to all right; as 40 people each with one item they stay near one half.
    y = np.zeros(40, np.int64)
    p = np.r_[np.zeros(20), np.ones(20)].astype(np.int64)
    two = bootstrap_ci(y, p, ["right"] * 20 + ["wrong"] * 20, 4)["accuracy"]
    forty = bootstrap_ci(y, p, [str(i) for i in range(40)], 4)["accuracy"]
    assert two == pytest.approx([0.0, 1.0])
    assert bootstrap_ci(y, p, [""] * 40, 4)["accuracy"] == forty     # unnamed items: one person each
    assert 0.2 < forty[0] < 0.5 < forty[1] < 0.8


def test_more_people_narrow_the_interval_and_the_draw_is_fixed() -> None:
    rng = np.random.default_rng(0)

    def width(people: int) -> float:
        y = rng.integers(0, 4, people * 10)
        p = np.where(rng.random(y.size) < 0.6, y, (y + 1) % 4)
        lo, hi = bootstrap_ci(y, p, np.repeat(np.arange(people).astype(str), 10), 4)["balanced_accuracy"]
        return hi - lo

    assert width(100) < width(4)
    y = np.arange(30) % 3
    groups = [str(i % 6) for i in range(30)]
    assert bootstrap_ci(y, (y + (np.arange(30) % 2)) % 3, groups, 4) == \
        bootstrap_ci(y, (y + (np.arange(30) % 2)) % 3, groups, 4)


def test_score_adds_intervals_only_when_enough_people_are_given() -> None:
    y = np.array([[0], [1], [2], [0]])
    probs = np.eye(7)[[0, 1, 1, 0]]
    from obs_merlb.train.datasets import HEADS
    targets = np.full((4, len(HEADS)), -1, np.int64)
    targets[:, HEADS.index("emotion")] = y[:, 0]
    assert "ci95" not in score({"emotion": probs}, targets)["emotion"]
    assert "ci95" not in score({"emotion": probs}, targets, groups=["x", "x", "y", "y"])["emotion"]   # 2 people
    assert "ci95" in score({"emotion": probs}, targets, groups=["", "", "", ""])["emotion"]   # 4 unnamed items
    m = score({"emotion": probs}, targets, groups=["w", "x", "y", "z"])["emotion"]
    lo, hi = m["ci95"]["accuracy"]
    assert 0.0 <= lo <= m["accuracy"] <= hi <= 1.0
