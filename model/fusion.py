"""Fusion of per-step embeddings into head logits: ours (tt) and the paper's baselines.

Every fusion type takes the same inputs, K per-step embedding sequences
(B, T, D_k) for the enabled modalities and their mask (B, T, K), and runs
three stages, split so each can be timed and exported on its own:

    temporal(embs, mask) -> h (B, S)       the LSTM part
    fuse(h, presence)    -> z              the fusion proper
    classify(z, presence) -> {head: logits}

Missing data is a mask everywhere: a masked step's embedding is zeroed and
flagged to the LSTM, summaries are masked means over time, a modality with
no present step has presence 0 and a zero summary. With every modality
missing the outputs are finite (the heads' biases).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MERLBConfig
from .tt import TTFusion


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T, D) over the steps where m (B, T, 1) is 1; zero if none."""
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def mlp(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Dropout(dropout))


class Temporal(nn.Module):
    """Bi-LSTM over one modality's steps, summarised by a masked mean over time.

    The step's presence flag is an extra input feature, so the LSTM can tell
    "missing" from "present with a small embedding".
    """

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in + 1, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, e: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        m = m.unsqueeze(-1)
        out, _ = self.lstm(torch.cat([e * m, m], dim=-1))
        return masked_mean(out, m)


class Heads(nn.Module):
    def __init__(self, d_in: int, heads: dict[str, list[str]]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(d_in, len(labels)) for name, labels in heads.items()})

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(z) for name, head in self.heads.items()}


class Fusion(nn.Module):
    """Base: per-modality Bi-LSTMs (the common temporal stage) and the stage plumbing.
    Subclasses define `fuse` and, where needed, their own `temporal` / `classify`."""

    def __init__(self, cfg: MERLBConfig) -> None:
        super().__init__()
        self.modalities = list(cfg.modalities)
        dims = cfg.embed_dims
        self.temporals = nn.ModuleList(Temporal(dims[m], cfg.lstm_hidden) for m in self.modalities)
        self.summary_dims = [t.out_dim for t in self.temporals]

    def temporal(self, embs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(e, mask[..., i]) for i, (t, e) in enumerate(zip(self.temporals, embs))], dim=1)

    def split(self, h: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(h, self.summary_dims, dim=1))

    def classify(self, z: torch.Tensor, presence: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(z)

    def forward(self, embs: list[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        presence = mask.amax(dim=1)
        return self.classify(self.fuse(self.temporal(embs, mask), presence), presence)


class TTFusionHead(Fusion):
    """Ours: Bi-LSTM summaries -> tensor-train fusion of [1, h_k] -> dense."""

    def __init__(self, cfg: MERLBConfig) -> None:
        super().__init__(cfg)
        # LayerNorm puts every summary at unit scale, the scale TTFusion's init assumes.
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.summary_dims)
        self.tt = TTFusion(self.summary_dims, cfg.out_modes, cfg.tt_rank)
        self.post = nn.Sequential(nn.GELU(), nn.Dropout(cfg.dropout), mlp(self.tt.out_dim, cfg.fused_dim, cfg.dropout))
        self.heads = Heads(cfg.fused_dim, cfg.active_heads)

    def fuse(self, h: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        # A missing modality contributes [1, 0...0]: only the interactions among the present ones remain.
        vs = [norm(x) * presence[:, i:i + 1] for i, (norm, x) in enumerate(zip(self.norms, self.split(h)))]
        return self.post(self.tt(vs))


class EarlyFusion(Fusion):
    """Concatenate per-step embeddings (and presence flags) -> one Bi-LSTM -> dense."""

    def __init__(self, cfg: MERLBConfig) -> None:
        nn.Module.__init__(self)
        self.modalities = list(cfg.modalities)
        d_in = sum(cfg.embed_dims.values()) + len(self.modalities)
        # Twice the hidden size: one LSTM carries what the per-modality LSTMs carry elsewhere.
        self.lstm = nn.LSTM(d_in, 2 * cfg.lstm_hidden, batch_first=True, bidirectional=True)
        self.summary_dims = [4 * cfg.lstm_hidden]
        self.post = mlp(4 * cfg.lstm_hidden + len(self.modalities), cfg.fused_dim, cfg.dropout)
        self.heads = Heads(cfg.fused_dim, cfg.active_heads)

    def temporal(self, embs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([e * mask[..., i:i + 1] for i, e in enumerate(embs)] + [mask], dim=-1)
        out, _ = self.lstm(x)
        return masked_mean(out, mask.amax(dim=-1, keepdim=True))

    def fuse(self, h: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return self.post(torch.cat([h, presence], dim=1))


class LateFusion(Fusion):
    """Per-modality classifiers; their log-probabilities averaged over present modalities."""

    def __init__(self, cfg: MERLBConfig) -> None:
        super().__init__(cfg)
        self.posts = nn.ModuleList(mlp(d, cfg.fused_dim, cfg.dropout) for d in self.summary_dims)
        self.mod_heads = nn.ModuleList(Heads(cfg.fused_dim, cfg.active_heads) for _ in self.modalities)

    def fuse(self, h: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return torch.stack([post(x) for post, x in zip(self.posts, self.split(h))], dim=1)

    def classify(self, z: torch.Tensor, presence: torch.Tensor) -> dict[str, torch.Tensor]:
        per_mod = [heads(z[:, i]) for i, heads in enumerate(self.mod_heads)]
        weight = presence / presence.sum(dim=1, keepdim=True).clamp_min(1.0)
        # Log-probabilities are valid logits; with nothing present the sum is 0, a uniform guess.
        return {name: sum(F.log_softmax(p[name], dim=-1) * weight[:, i:i + 1] for i, p in enumerate(per_mod))
                for name in per_mod[0]}


class JointFusion(Fusion):
    """Concatenate the Bi-LSTM summaries (and presence flags) -> dense layers."""

    def __init__(self, cfg: MERLBConfig) -> None:
        super().__init__(cfg)
        self.post = nn.Sequential(mlp(sum(self.summary_dims) + len(self.modalities), cfg.fused_dim, cfg.dropout),
                                  mlp(cfg.fused_dim, cfg.fused_dim, cfg.dropout))
        self.heads = Heads(cfg.fused_dim, cfg.active_heads)

    def fuse(self, h: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        xs = [x * presence[:, i:i + 1] for i, x in enumerate(self.split(h))]
        return self.post(torch.cat(xs + [presence], dim=1))


class DeepFusion(Fusion):
    """Hierarchical: fuse the first modality, then add one modality per dense layer."""

    def __init__(self, cfg: MERLBConfig) -> None:
        super().__init__(cfg)
        f = cfg.fused_dim
        self.stages = nn.ModuleList(
            mlp((0 if i == 0 else f) + d + 1, f, cfg.dropout) for i, d in enumerate(self.summary_dims))
        self.heads = Heads(f, cfg.active_heads)

    def fuse(self, h: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        z = None
        for i, (stage, x) in enumerate(zip(self.stages, self.split(h))):
            p = presence[:, i:i + 1]
            z = stage(torch.cat(([] if z is None else [z]) + [x * p, p], dim=1))
        return z


FUSION_TYPES: dict[str, type[Fusion]] = {
    "tt": TTFusionHead, "early": EarlyFusion, "late": LateFusion, "joint": JointFusion, "deep": DeepFusion}


def build_fusion(cfg: MERLBConfig) -> Fusion:
    return FUSION_TYPES[cfg.fusion](cfg)
