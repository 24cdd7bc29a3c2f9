"""MERLB: per-step encoders -> per-modality Bi-LSTMs -> fusion -> heads.

Inputs are aligned on one time grid (docs/ARCHITECTURE.md): face
(B,T,1,64,64), voice (B,T,1,64,100), body (B,T,132), scene (B,T,3,128,128),
mask (B,T,4) in the order face, voice, body, scene. Any T >= 1 works (FER
images train with T=1). A modality's input may be None: it is then missing
at every step, whatever the mask says.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from obs_merlb.labels import IGNORE, MODALITIES

from .config import MERLBConfig
from .encoders import build_encoder
from .fusion import build_fusion


class MERLB(nn.Module):
    def __init__(self, cfg: MERLBConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MERLBConfig()
        c = self.cfg
        self.encoders = nn.ModuleDict({
            m: build_encoder(m, d, c.n_mels, c.pose_dim, c.dropout * 0.5, c.face_top_layers,
                             c.face_mid_layers, c.face_width, c.voice_width)
            for m, d in c.embed_dims.items()})
        self.fusion = build_fusion(c)
        # Columns of the 4-wide mask that belong to the enabled modalities.
        self.register_buffer("mask_cols", torch.tensor([MODALITIES.index(m) for m in c.modalities]),
                             persistent=False)

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities)

    @property
    def head_names(self) -> list[str]:
        return list(self.cfg.active_heads)

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """One encoder on (N, *step_shape) -> (N, D)."""
        return self.encoders[modality](x)

    def _encode_steps(self, modality: str, x: torch.Tensor | None, m: torch.Tensor) -> torch.Tensor:
        b, t = m.shape
        dim = self.cfg.embed_dims[modality]
        if x is None:
            return m.new_zeros(b, t, dim)
        flat = x.reshape(b * t, *x.shape[2:])
        if self.training:
            # Only present steps go through the encoder: no wasted compute, and
            # batch-norm statistics never see the zero filler of missing steps.
            idx = torch.nonzero(m.reshape(-1) > 0).squeeze(1)
            out = m.new_zeros(b * t, dim)
            if idx.numel():
                enc = self.encoders[modality](flat.index_select(0, idx))
                # Under autocast the encoder answers in bf16/fp16: the filler takes its dtype.
                out = out.to(enc.dtype).index_copy(0, idx, enc)
        else:
            # Eval: encoders are per-sample, so encoding everything and zeroing
            # the missing steps gives the same result with static shapes (ONNX).
            out = self.encoders[modality](flat) * m.reshape(-1, 1)
        return out.reshape(b, t, dim)

    def _select(self, mask: torch.Tensor, inputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The enabled modalities' mask columns, with None inputs marked missing."""
        m = mask.to(torch.float32).index_select(-1, self.mask_cols)
        missing = [i for i, name in enumerate(self.modalities) if inputs.get(name) is None]
        if missing:
            keep = torch.ones(len(self.modalities), device=m.device)
            keep[missing] = 0.0
            m = m * keep
        return m

    def modality_dropout(self, m: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Drop whole modalities per sample so the model learns to do without them.
        A sample that would lose every modality it has keeps them all instead:
        an empty sample teaches nothing but the heads' biases. `keep` (B, 4,
        MODALITIES order) marks modalities a sample never loses: a face+voice
        pair whose voice shows another emotion is labelled by its face, and
        without the face it would teach the voice a wrong label."""
        p = self.cfg.modality_dropout
        if not self.training or p <= 0 or m.shape[-1] < 2:
            return m
        draw = torch.rand(m.shape[0], 1, m.shape[-1], device=m.device) >= p
        if keep is not None:
            draw = draw | (keep.index_select(-1, self.mask_cols)[:, None, :] > 0)
        dropped = m * draw.to(m.dtype)
        empty = dropped.amax(dim=(1, 2)) == 0
        return torch.where(empty[:, None, None], m, dropped)

    def _sequence(self, embs: list[torch.Tensor], m: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fusion(embs, m)

    def sequence(self, face_e: torch.Tensor | None, voice_e: torch.Tensor | None,
                 body_e: torch.Tensor | None, scene_e: torch.Tensor | None,
                 mask: torch.Tensor, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """LSTMs + fusion + heads on per-step embeddings (B, T, D_m) -> {head: logits}."""
        given = {"face": face_e, "voice": voice_e, "body": body_e, "scene": scene_e}
        m = self.modality_dropout(self._select(mask, given), keep)
        b, t = m.shape[:2]
        embs = [given[name] if given[name] is not None else m.new_zeros(b, t, self.cfg.embed_dims[name])
                for name in self.modalities]
        return self._sequence(embs, m)

    def forward(self, face: torch.Tensor | None, voice: torch.Tensor | None,
                body: torch.Tensor | None, scene: torch.Tensor | None,
                mask: torch.Tensor, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        given = {"face": face, "voice": voice, "body": body, "scene": scene}
        m = self.modality_dropout(self._select(mask, given), keep)
        embs = [self._encode_steps(name, given[name], m[..., i]) for i, name in enumerate(self.modalities)]
        return self._sequence(embs, m)


def soft_cross_entropy(logits: torch.Tensor, q: torch.Tensor, allowed: torch.Tensor | None = None,
                       weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against target distributions `q` (B, C); rows of zeros are unlabelled.

    `allowed` (B, C) masks the classes a row's dataset offers: the others
    leave the softmax and get no smoothing mass, so a clip from a set that
    has no "surprise" is no evidence against surprise. With one-hot `q` and
    every class allowed this is exactly F.cross_entropy with `weight` and
    `label_smoothing` (the mean divides by the summed weights of the labels).
    """
    labelled = q.sum(dim=1) > 0
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    logits, q = logits[labelled], q[labelled].to(logits)
    if allowed is None:
        allowed = torch.ones_like(q, dtype=torch.bool)
    else:
        allowed = allowed[labelled].to(torch.bool) | (q > 0)     # a voted class is never masked
    q = q / q.sum(dim=1, keepdim=True)
    logp = torch.log_softmax(logits.masked_fill(~allowed, -1e4), dim=1)
    n_allowed = allowed.sum(dim=1, keepdim=True).to(q)
    smoothed = (1.0 - label_smoothing) * q + label_smoothing * allowed.to(q) / n_allowed
    w = torch.ones(q.shape[1], device=q.device, dtype=q.dtype) if weight is None else weight.to(q)
    per_row = -(smoothed * w * logp.masked_fill(~allowed, 0.0)).sum(dim=1)
    return per_row.sum() / (q * w).sum().clamp_min(1e-12)


def multitask_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                   class_weights: dict[str, torch.Tensor] | None = None,
                   task_weights: dict[str, float] | None = None,
                   label_smoothing: float = 0.0,
                   emotion_q: torch.Tensor | None = None,
                   emotion_allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of per-head cross-entropies; -100 marks a missing label.

    A head with no labelled sample in the batch adds nothing (plain
    cross-entropy would return NaN for it). Single-task training is this with
    one head. The emotion head can instead take target distributions
    (`emotion_q`: FER+ votes, or one-hot rows) and the classes each row's
    set offers (`emotion_allowed`), see `soft_cross_entropy`. Returns
    (total loss, {head: loss value}).
    """
    class_weights = class_weights or {}
    task_weights = task_weights or {}
    total = sum(lg.sum() * 0.0 for lg in logits.values())  # keeps the graph when nothing is labelled
    parts: dict[str, torch.Tensor] = {}
    for head, lg in logits.items():
        w = class_weights.get(head)
        if head == "emotion" and emotion_q is not None:
            if not bool((emotion_q.sum(dim=1) > 0).any()):
                continue
            loss = soft_cross_entropy(lg, emotion_q.to(lg.device), emotion_allowed, w, label_smoothing)
        else:
            y = targets.get(head)
            if y is None or not bool((y != IGNORE).any()):
                continue
            loss = F.cross_entropy(lg, y.to(lg.device), weight=None if w is None else w.to(lg),
                                   ignore_index=IGNORE, label_smoothing=label_smoothing)
        total = total + task_weights.get(head, 1.0) * loss
        parts[head] = loss.detach()
    return total, {h: float(v) for h, v in parts.items()}
