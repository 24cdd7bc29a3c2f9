"""TT fusion: the mode-by-mode contraction equals the materialized outer product."""
from __future__ import annotations

import pytest
import torch

from obs_merlb.model.tt import TTFusion

SETTINGS = [
    # (input dims h_k, output modes m_k, ranks)
    ([5, 3, 4], [2, 3, 2], [3, 2]),
    ([7], [5], []),
    ([3, 6], [4, 2], 5),
    ([4, 3, 5, 2], [2, 2, 3, 2], [2, 3, 4]),
    ([16, 8, 12, 6], [3, 3, 3, 3], 8),
    ([1, 1], [1, 1], 1),
]


def _random_tt(dims: list[int], modes: list[int], ranks: int | list[int], seed: int = 0) -> TTFusion:
    torch.manual_seed(seed)
    tt = TTFusion(dims, modes, ranks).double()
    with torch.no_grad():
        # A non-zero bias, so the check covers it too.
        tt.bias.normal_()
    return tt


def _outer(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Plain outer product of [1, v_k], flattened, written independently of TTFusion."""
    x = None
    for v in vectors:
        v1 = torch.cat([torch.ones(v.shape[0], 1, dtype=v.dtype), v], dim=1)
        x = v1 if x is None else torch.einsum("bi,bj->bij", x, v1).reshape(v.shape[0], -1)
    return x


@pytest.mark.parametrize("dims,modes,ranks", SETTINGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_tt_equals_materialized(dims: list[int], modes: list[int], ranks: int | list[int], batch: int) -> None:
    tt = _random_tt(dims, modes, ranks)
    for trial in range(3):
        g = torch.Generator().manual_seed(trial)
        vs = [torch.randn(batch, d, generator=g, dtype=torch.float64) * 2 for d in dims]
        fast = tt(vs)
        assert fast.shape == (batch, tt.out_dim)
        torch.testing.assert_close(fast, tt.forward_materialized(vs), atol=1e-5, rtol=0)
        # And against the dense matrix the cores stand for, built a third way.
        dense = _outer(vs) @ tt.dense_weight() + tt.bias.reshape(-1)
        torch.testing.assert_close(fast, dense, atol=1e-5, rtol=0)


def test_tt_at_seed_sizes_matches() -> None:
    # The seed's fusion: three [1, 128] vectors, 129^3 = 2.1 M outer-product values.
    tt = _random_tt([128, 128, 128], [8, 8, 6], 4)
    vs = [torch.randn(2, 128, dtype=torch.float64) for _ in range(3)]
    torch.testing.assert_close(tt(vs), tt.forward_materialized(vs), atol=1e-5, rtol=0)


def test_core_view_has_documented_shape() -> None:
    tt = TTFusion([5, 3, 4], [2, 3, 2], [3, 2])
    assert [tuple(tt.core(k).shape) for k in range(3)] == [(1, 6, 2, 3), (3, 4, 3, 2), (2, 5, 2, 1)]


def test_missing_vector_keeps_only_present_interactions() -> None:
    # A zero vector stands for [1, 0...0]: only index 0 of that mode survives.
    tt = _random_tt([4, 3, 5], [2, 2, 2], 3)
    vs = [torch.randn(2, d, dtype=torch.float64) for d in (4, 3, 5)]
    vs[1] = torch.zeros(2, 3, dtype=torch.float64)
    w = tt.dense_weight().reshape(5, 4, 6, -1)[:, 0]  # (n1, n3, out) at i2 = 0
    x1 = torch.cat([torch.ones(2, 1, dtype=torch.float64), vs[0]], 1)
    x3 = torch.cat([torch.ones(2, 1, dtype=torch.float64), vs[2]], 1)
    expected = torch.einsum("bi,bk,iko->bo", x1, x3, w) + tt.bias.reshape(-1)
    torch.testing.assert_close(tt(vs), expected, atol=1e-10, rtol=0)


def test_init_gives_sane_output_scale() -> None:
    torch.manual_seed(0)
    tt = TTFusion([128, 128, 128, 128], [4, 4, 4, 4], 8)
    with torch.no_grad():
        y = tt([torch.randn(256, 128) for _ in range(4)])
        y_missing = tt([torch.randn(256, 128), torch.zeros(256, 128), torch.randn(256, 128), torch.zeros(256, 128)])
    assert 0.3 < y.std().item() < 3.0
    assert 0.05 < y_missing.std().item() < 3.0


def test_gradients_reach_every_core_and_input() -> None:
    tt = TTFusion([6, 4, 5], [2, 3, 2], 3)
    vs = [torch.randn(3, d, requires_grad=True) for d in (6, 4, 5)]
    tt(vs).pow(2).sum().backward()
    for name, p in tt.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for v in vs:
        assert v.grad is not None and v.grad.abs().sum() > 0


def test_wrong_number_of_vectors_raises() -> None:
    tt = TTFusion([3, 3], [2, 2], 2)
    with pytest.raises(ValueError):
        tt([torch.randn(1, 3)])
