"""Soft emotion targets (FER+ votes) and per-set class masks in the training loss."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from obs_merlb.model.merlb import IGNORE, multitask_loss, soft_cross_entropy
from obs_merlb.train.loop import plain_progress


def test_one_hot_targets_reproduce_weighted_smoothed_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(32, 7)
    y = torch.randint(0, 7, (32,))
    y[[3, 9]] = IGNORE
    w = torch.rand(7) + 0.5
    q = torch.zeros(32, 7)
    q[y >= 0, y[y >= 0]] = 1.0
    want = F.cross_entropy(logits, y, weight=w, ignore_index=IGNORE, label_smoothing=0.05)
    assert torch.allclose(soft_cross_entropy(logits, q, None, w, 0.05), want, atol=1e-5)
    # Through multitask_loss, the emotion head takes the distributions, the others their indices.
    total, parts = multitask_loss({"emotion": logits, "valence": logits[:, :3]},
                                  {"emotion": y, "valence": torch.zeros(32, dtype=torch.long)},
                                  {"emotion": w}, label_smoothing=0.05, emotion_q=q)
    assert abs(parts["emotion"] - float(want)) < 1e-5
    assert abs(float(total) - parts["emotion"] - parts["valence"]) < 1e-5


def test_a_class_the_set_does_not_offer_gets_no_gradient_and_no_smoothing() -> None:
    logits = torch.zeros(1, 7, requires_grad=True)
    q = torch.zeros(1, 7)
    q[0, 0] = 1.0                                      # "angry" from a set with four emotions
    allowed = torch.zeros(1, 7, dtype=torch.bool)
    allowed[0, [0, 3, 4, 5]] = True
    soft_cross_entropy(logits, q, allowed, label_smoothing=0.1).backward()
    grad = logits.grad[0]
    assert torch.all(grad[[1, 2, 6]] == 0)             # disgust, fear, surprise: no evidence either way
    assert grad[0] < 0 and torch.all(grad[[3, 4, 5]] > 0)
    # With all four allowed classes equally likely, the loss is log(4) softened by nothing else.
    loss = soft_cross_entropy(torch.zeros(1, 7), q, allowed)
    assert abs(float(loss) - np.log(4)) < 1e-5


def test_vote_distribution_pulls_toward_every_voted_class() -> None:
    logits = torch.zeros(1, 7, requires_grad=True)
    q = torch.tensor([[0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.4]])      # 6 happy, 4 surprise votes
    soft_cross_entropy(logits, q).backward()
    g = logits.grad[0]
    assert g[3] < g[6] < 0 and torch.all(g[[0, 1, 2, 4, 5]] > 0)
    # A minimum at the votes themselves: logits equal to log q give zero gradient on voted classes.
    at_votes = torch.log(q.clamp_min(1e-6)).requires_grad_(True)
    soft_cross_entropy(at_votes, q).backward()
    assert at_votes.grad.abs().max() < 1e-4


def test_unlabelled_rows_add_nothing() -> None:
    logits = torch.randn(4, 7, requires_grad=True)
    q = torch.zeros(4, 7)
    assert float(soft_cross_entropy(logits, q)) == 0.0
    q[1, 2] = 1.0
    soft_cross_entropy(logits, q).backward()
    assert torch.all(logits.grad[[0, 2, 3]] == 0) and logits.grad[1].abs().sum() > 0


def test_plain_progress_line_has_rate_and_eta() -> None:
    line = plain_progress(epoch=1, epochs=4, done=100, total=400, elapsed_s=50.0, loss=1.234)
    assert "epoch 2/4" in line and "2.00 steps/s" in line
    assert "ETA epoch 2.5 min" in line and "run 9.2 min" in line      # 300 steps + 2 epochs of 400 at 2/s


def test_blend_original_mixes_the_folder_label_into_voted_targets_only() -> None:
    from pathlib import Path

    from obs_merlb.labels import EMOTIONS
    from obs_merlb.train import datasets as D
    from obs_merlb.train.data import Records, blend_original

    fix = Path(__file__).parent / "fixtures"
    items = D.load_items(fix / "fer2013", votes=fix / "ferplus_votes_sample.csv")
    rec = Records(items, [{} for _ in items], np.zeros((len(items), 4), np.int64))
    out = blend_original(rec, 0.25)
    for i, it in enumerate(items):
        if it.soft is None:                                   # unvoted: its folder label, unchanged
            assert np.array_equal(out.emotion_q[i], rec.emotion_q[i])
        else:
            want = 0.75 * np.asarray(it.soft) + 0.25 * np.eye(len(EMOTIONS))[EMOTIONS.index(it.orig)]
            assert np.allclose(out.emotion_q[i], want) and abs(out.emotion_q[i].sum() - 1) < 1e-6
