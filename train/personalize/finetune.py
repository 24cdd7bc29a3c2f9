"""The candidate model and its fine-tuning on the streamer's windows, plus pseudo-labels.

The candidate is the base model with a `user` head for the streamer's own
classes. Fine-tuning runs on frozen-encoder embeddings by default (only the
Bi-LSTMs, fusion and heads learn), counted in optimizer steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from obs_merlb import labels as L
from obs_merlb.calibration import Calibration
from obs_merlb.labels import MODALITIES
from obs_merlb.model.config import MERLBConfig
from obs_merlb.model.fusion import Fusion
from obs_merlb.model.io import load_model
from obs_merlb.model.merlb import IGNORE, MERLB

from .. import balance
from ..loop import lr_at
from .features import RecordingSteps, compute_embeddings, gather, predict_windows, run_model, step_range, targets_for
from .progress import Progress
from .windows import USER, Session, Window


def build_candidate(base_dir: Path, user_classes: Sequence[str]) -> Any:
    """The base model with a `user` head for the streamer's classes (rows of classes it knew are kept)."""
    base = load_model(base_dir)
    cfg = MERLBConfig.from_dict(base.cfg.to_dict())
    heads = dict(base.cfg.active_heads)
    old_user = list(heads.get(USER, []))
    if user_classes:
        heads[USER] = list(user_classes)
    cfg.heads, cfg.task = heads, "multi"
    model = MERLB(cfg)
    old, new = base.state_dict(), model.state_dict()
    for k, v in new.items():
        if k in old and old[k].shape == v.shape and not (f"heads.{USER}." in k and old_user != list(user_classes)):
            new[k] = old[k].clone()
        elif k in old and f"heads.{USER}." in k:
            # Same class name, same output row: a rerun keeps what it learnt about "tilted".
            for r, name in enumerate(user_classes):
                if name in old_user:
                    new[k][r] = old[k][old_user.index(name)]
    model.load_state_dict(new)
    return model


class EmbeddingNorm:
    """Fine-tune in standardized embedding coordinates without changing the model's function.

    Frozen encoders can emit embeddings whose spread across a streamer's
    windows is tiny (1e-3) next to their offset; Adam moves each weight by
    about the learning rate, so weights on such inputs barely change the
    output and fine-tuning stalls. Standardizing the inputs fixes that, and
    the standardization folds exactly into the Bi-LSTM's input weights
    (input = [e * m, m], so the mask column absorbs the mean and masked steps
    stay zero): W_e' = W_e * sd, w_m' = w_m + W_e @ mu while training, and the
    inverse afterwards. The saved model has the usual architecture and
    computes exactly what was trained.
    """

    def __init__(self, model: Any, steps: Sequence[RecordingSteps | None], sessions: set[int]) -> None:
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        fusion = model.fusion
        # Only fusions whose temporal stage is the per-modality Bi-LSTMs (early fusion has one LSTM of its own).
        self.enabled = hasattr(fusion, "temporals") and type(fusion).temporal is Fusion.temporal
        if not self.enabled:
            return
        for m in model.cfg.modalities:
            rows = [steps[i].embs[m][steps[i].arrays["mask"][:, MODALITIES.index(m)] > 0]
                    for i in sessions if steps[i] is not None and m in steps[i].embs]
            x = np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)
            if len(x) < 2:
                continue
            mu = x.mean(axis=0)
            sd = np.maximum(x.std(axis=0), 1e-6)
            self.stats[m] = (mu.astype(np.float32), sd.astype(np.float32))

    def _lstm_weights(self, model: Any, m: str) -> list[Any]:
        lstm = model.fusion.temporals[model.cfg.modalities.index(m)].lstm
        return [getattr(lstm, n) for n in ("weight_ih_l0", "weight_ih_l0_reverse") if hasattr(lstm, n)]

    def fold_in(self, model: Any, steps: Sequence[RecordingSteps | None]) -> None:
        """Standardize the embeddings and absorb the standardization into the LSTM input weights."""
        self._fold(model, steps, inverse=False)

    def fold_out(self, model: Any, steps: Sequence[RecordingSteps | None]) -> None:
        """Undo `fold_in`: raw embeddings, weights that take them."""
        self._fold(model, steps, inverse=True)

    def _fold(self, model: Any, steps: Sequence[RecordingSteps | None], inverse: bool) -> None:
        with torch.no_grad():
            for m, (mu, sd) in self.stats.items():
                for w in self._lstm_weights(model, m):
                    mu_t, sd_t = torch.from_numpy(mu).to(w.device), torch.from_numpy(sd).to(w.device)
                    d = mu.shape[0]
                    if inverse:
                        w[:, :d] /= sd_t
                        w[:, d] -= w[:, :d] @ mu_t
                    else:
                        w[:, d] += w[:, :d] @ mu_t
                        w[:, :d] *= sd_t
                for rs in steps:
                    if rs is not None and m in rs.embs:
                        e = rs.embs[m]
                        rs.embs[m] = (e * sd + mu if inverse else (e - mu) / sd).astype(np.float32)


def fine_tune(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window], *,
              n_steps: int, lr: float, batch_size: int, seed: int, train_encoders: bool,
              progress: Progress, label_smoothing: float = 0.05) -> list[dict[str, Any]]:
    """AdamW with warmup + cosine for `n_steps` batches; returns the loss history (every 10 steps).

    Counted in optimizer steps, not epochs: a streamer's first run may have
    twenty tagged windows, which would be one step per epoch.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    heads = model.cfg.active_heads
    y = targets_for(windows, heads)
    dev = next(model.parameters()).device
    wts = torch.tensor([w.weight for w in windows], dtype=torch.float32, device=dev)
    train_heads = [h for h in heads if (y[h] >= 0).any()]
    cw = {h: torch.from_numpy(balance.class_weights(y[h], len(heads[h]), 0.5)).float().to(dev) for h in train_heads}
    for name, p in model.named_parameters():
        p.requires_grad_(train_encoders or not name.startswith("encoders."))
    use_emb = not train_encoders
    norm: EmbeddingNorm | None = None
    if use_emb:
        compute_embeddings(model, steps)
        norm = EmbeddingNorm(model, steps, {w.session for w in windows})
        norm.fold_in(model, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    n = len(windows)
    bs = min(batch_size, n)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    progress.start("train", n_steps, "fine-tune")
    model.train()
    if use_emb:
        model.encoders.eval()     # frozen: batch-norm statistics must not drift either
    for step in range(n_steps):
        idx = rng.choice(n, size=bs, replace=False).tolist()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, n_steps, max(1, n_steps // 20), lr, "cosine")
        batch = gather(steps, windows, idx, model.cfg.steps, model.cfg.step_s, model.cfg.modalities, rng,
                       use_emb, augment=True, emb_dims=model.cfg.embed_dims)
        logits = run_model(model, batch, use_emb)
        loss = sum(lg.sum() * 0.0 for lg in logits.values())
        bw = wts[idx]
        for h in train_heads:
            t = torch.from_numpy(y[h][idx]).to(dev)
            keep = t != IGNORE
            if not bool(keep.any()):
                continue
            ce = F.cross_entropy(logits[h][keep].float(), t[keep], weight=cw[h], reduction="none",
                                 label_smoothing=label_smoothing)
            loss = loss + (ce * bw[keep]).sum() / bw[keep].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 10 == 0 or step + 1 == n_steps:
            rec = {"step": step + 1, "train_loss": float(np.mean(losses[-10:]))}
            history.append(rec)
            progress.advance(step + 1, n_steps, f"loss {rec['train_loss']:.3f}", loss=rec["train_loss"])
    progress.end()
    if norm is not None:
        norm.fold_out(model, steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def pseudo_windows(model: Any, steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
                   sessions: Sequence[Session], threshold: float, weight: float,
                   val_info: dict[str, Any], calibration: Calibration | None = None) -> list[Window]:
    """Confident emotion predictions of the current model on untagged stretches of training time.

    Confidence is the calibrated probability when the model has a calibration,
    the one the overlay shows: raw, the shipped model's voice-only windows sit
    lower than its face-only ones at the same accuracy, and a fixed
    threshold would take pseudo-labels almost only from faces.
    """
    T, step_s = model.cfg.steps, model.cfg.step_s
    held = set(val_info.get("val_sessions", []))
    cut = val_info.get("val_from_s", {})
    cands: list[Window] = []
    for si, rs in enumerate(steps):
        if rs is None or sessions[si].name in held:
            continue
        busy = np.zeros(rs.n, bool)
        for w in windows:
            if w.session == si:
                a, b = step_range(w, step_s, rs.n)
                busy[max(0, a - 4):b + 4] = True    # a second of margin around human labels
        limit = cut.get(sessions[si].name)
        for a in range(0, rs.n - T + 1, T):
            if busy[a:a + T].any() or (limit is not None and (a + T) * step_s > limit):
                continue
            if rs.arrays["mask"][a:a + T].sum() == 0:
                continue
            cands.append(Window(si, a * step_s, (a + T) * step_s, "", {}, "pseudo", weight))
    if not cands or "emotion" not in model.cfg.active_heads:
        return []
    probs = predict_windows(model, steps, cands, calibration=calibration)["emotion"]
    names = model.cfg.active_heads["emotion"]
    out = []
    for w, p in zip(cands, probs):
        if p.max() >= threshold:
            emo, val, aro = L.emotion_targets(names[int(p.argmax())])
            if emo is None:
                continue
            w.tag = f"~{emo}"
            w.labels = {"emotion": emo, "valence": val, "arousal": aro}
            out.append(w)
    return out
