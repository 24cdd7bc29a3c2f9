"""Tensor-train fusion of K modality vectors without forming their outer product.

The fused input is X = [1, h_1] ⊗ ... ⊗ [1, h_K], a tensor with
prod(1 + h_k) entries (the seed built it: 129^3 = 2.1 M values per sample).
A TT layer maps X to an output of prod(m_k) values through cores
G_k of shape (r_{k-1}, 1 + h_k, m_k, r_k), r_0 = r_K = 1:

    y[j_1..j_K] = sum_{i, r} prod_k G_k[r_{k-1}, i_k, j_k, r_k] X[i_1..i_K]

Because X is rank one, the sum over i factors per mode: contract each core
with its own vector first, A_k = sum_i v_k[i] G_k[:, i] (shape r x m_k x r'),
then multiply the small A_k left to right. Cost is linear in the sizes.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class TTFusion(nn.Module):
    """TT layer over the outer product of [1, v_k] for K input vectors.

    Core k is stored flattened and split as `one{k}` (r_{k-1} * m_k * r_k,),
    the slice that meets the constant 1, and `core{k}` (h_k, r_{k-1} * m_k * r_k),
    so contracting it with [1, v] is a single matrix multiply-add on
    contiguous memory: at batch 1 the cost is a handful of small ops.
    `core(k)` gives the (r_{k-1}, 1 + h_k, m_k, r_k) tensor.
    """

    def __init__(self, in_dims: list[int], out_modes: list[int], rank: int | list[int]) -> None:
        super().__init__()
        k = len(in_dims)
        if len(out_modes) != k:
            raise ValueError("one output mode per input vector")
        ranks = [1] + ([rank] * (k - 1) if isinstance(rank, int) else list(rank)) + [1]
        if len(ranks) != k + 1:
            raise ValueError(f"need {k - 1} inner ranks, got {len(ranks) - 2}")
        self.in_dims = list(in_dims)
        self.out_modes = list(out_modes)
        self.ranks = ranks
        self.out_dim = math.prod(out_modes)
        self.shapes = [(ranks[i], 1 + in_dims[i], out_modes[i], ranks[i + 1]) for i in range(k)]
        self.names = [(f"one{i}", f"core{i}") for i in range(k)]
        for (one, core), (r_in, n, m, r_out) in zip(self.names, self.shapes):
            self.register_parameter(one, nn.Parameter(torch.empty(r_in * m * r_out)))
            self.register_parameter(core, nn.Parameter(torch.empty(n - 1, r_in * m * r_out)))
        # Shaped like the last product's output (1, prod m_<K, m_K), so it rides along in one op.
        self.bias = nn.Parameter(torch.zeros(1, self.out_dim // out_modes[-1], out_modes[-1]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Inputs are [1, h] with h of about unit variance per entry (the fusion
        # layer-normalises its summaries). Half of each contracted core's
        # variance comes from the constant 1, half from h, and each core's
        # variance is split over the rank it sums into, so y has about unit
        # variance with every modality present and stays the same order
        # (about 2^-missing) when modalities are absent.
        for (one, core), (_, n, _, r_out) in zip(self.names, self.shapes):
            nn.init.normal_(getattr(self, one), 0.0, math.sqrt(0.5 / r_out))
            nn.init.normal_(getattr(self, core), 0.0, math.sqrt(0.5 / (r_out * max(n - 1, 1))))

    def core(self, k: int) -> torch.Tensor:
        """Core k as (r_{k-1}, 1 + h_k, m_k, r_k)."""
        r_in, n, m, r_out = self.shapes[k]
        one, core = (getattr(self, name) for name in self.names[k])
        return torch.cat([one[None], core]).reshape(n, r_in, m, r_out).transpose(0, 1)

    def _check(self, vectors: list[torch.Tensor]) -> None:
        if len(vectors) != len(self.names):
            raise ValueError(f"expected {len(self.names)} vectors, got {len(vectors)}")

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """vectors: K tensors (B, h_k) -> (B, prod m_k). Linear in the sizes."""
        self._check(vectors)
        b = vectors[0].shape[0]
        # Direct dict access: at batch 1 this layer costs microseconds, and
        # Module.__getattr__ would be a visible share of them.
        params = self._parameters
        last = len(self.shapes) - 1
        z = None  # (B, output modes so far, r)
        for k, (v, (one, core), (r_in, _, m, r_out)) in enumerate(zip(vectors, self.names, self.shapes)):
            # A_k[b] = G_k[:, 0] + sum_i v[b, i] G_k[:, 1 + i]
            a = torch.addmm(params[one], v, params[core])
            if z is None:
                z = a.view(b, m, r_out)
            elif k < last:
                z = torch.bmm(z, a.view(b, r_in, m * r_out)).view(b, -1, r_out)
            else:  # r_K = 1: the last product gives the output; the bias rides along
                z = torch.baddbmm(params["bias"], z, a.view(b, r_in, m))
        if last == 0:
            return z.view(b, self.out_dim) + params["bias"].view(1, -1)
        return z.view(b, self.out_dim)

    def forward_materialized(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """The seed's path: build the full outer product, apply the TT layer to it
        as a dense input. Reference for tests and `merlb bench` only."""
        self._check(vectors)
        b = vectors[0].shape[0]

        def with_one(v: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.ones_like(v[:, :1]), v], dim=1)

        x = with_one(vectors[0])
        for v in vectors[1:]:
            x = (x.unsqueeze(-1) * with_one(v).unsqueeze(1)).reshape(b, -1)
        # state: (B, output modes done, r, n_k, rest of the input modes)
        state = x.reshape(b, 1, 1, self.shapes[0][1], -1)
        for k in range(len(self.names)):
            y = torch.einsum("bjrnR,rnms->bjmsR", state, self.core(k))
            _, j, m, s, _ = y.shape
            state = y.reshape(b, j * m, s, self.shapes[k + 1][1], -1) if k + 1 < len(self.names) else y
        return state.reshape(b, self.out_dim) + self.bias.reshape(-1)

    def dense_weight(self) -> torch.Tensor:
        """The (prod(1+h_k), prod m_k) matrix the cores stand for (small sizes only)."""
        w = self.core(0).squeeze(0)  # (n1, m1, r1)
        for k in range(1, len(self.names)):
            # w: (N, M, r) x core (r, n, m, s) -> (N, n, M, m, s)
            w = torch.einsum("NMr,rnms->NnMms", w, self.core(k))
            big_n, n, big_m, m, s = w.shape
            w = w.reshape(big_n * n, big_m * m, s)
        return w.squeeze(-1)
