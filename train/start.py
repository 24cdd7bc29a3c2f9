"""The model a training run starts from: fresh, from a saved folder (`init`),
with parts of other folders (`init_parts`), grown deeper; its voice prior for
person baselines; and the voice teacher a fusion stage distils toward.
train/loop.py's `train` calls these before its first epoch.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from obs_merlb.labels import MODALITIES
from obs_merlb.perception.baseline import BandStats, Prior

from .data import Records, voice_band_std, voice_stats


def load_part(model: torch.nn.Module, spec: str) -> int:
    """Copy the weights named PREFIX... from the model folder in "PREFIX=DIR"; returns how many."""
    from safetensors.torch import load_file

    from obs_merlb.model.io import WEIGHTS

    prefix, sep, directory = spec.partition("=")
    if not sep or not prefix or not directory:
        raise SystemExit(f"init part {spec!r}: expected PREFIX=MODEL_DIR, e.g. encoders.voice.=runs/voice/model")
    source = load_file(str(Path(directory) / WEIGHTS))
    own = model.state_dict()
    picked = {k: v for k, v in source.items() if k.startswith(prefix)}
    if not picked:
        raise SystemExit(f"init part {spec!r}: {directory} has no weights starting with {prefix!r}")
    wrong = [k for k, v in picked.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise SystemExit(f"init part {spec!r}: {len(wrong)} weights do not fit this model, e.g. {wrong[0]}")
    missing = [k for k in own if k.startswith(prefix) and k not in picked]
    if missing:
        raise SystemExit(f"init part {spec!r}: {directory} lacks {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict(picked, strict=False)
    return len(picked)


def build_model(cfg: Any, train: Records):   # cfg: loop.TrainConfig (loop imports this module)
    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.io import load_model
    from obs_merlb.model.merlb import MERLB

    if cfg.init:
        from obs_merlb.model.config import CONFIG_FILE
        if not (Path(cfg.init) / CONFIG_FILE).is_file():
            raise SystemExit(f"init {cfg.init}: not a saved model folder (no {CONFIG_FILE}); "
                             "point --init at a run's model/ folder, e.g. runs/face/model")
        model = load_model(cfg.init).train()
        # Modality dropout is a training setting: the run's value wins over
        # the one saved with the init weights (else a fusion stage started
        # from a single-modality stage would silently train without it).
        model.cfg.modality_dropout = cfg.modality_dropout
        for spec in cfg.init_parts:
            load_part(model, spec)
        from obs_merlb.model.grow import grow_face
        for key, block in (("grow_face", "top"), ("grow_face_mid", "mid")):
            n = getattr(cfg, key)
            if not n:
                continue
            try:
                model = grow_face(model, n, block)
            except ValueError as e:       # a face-less init, or a count below 1
                raise SystemExit(f"{key}={n} with init {cfg.init}: {e}") from None
        if cfg.measure_voice_scale:
            _measure_voice_scale(model, train, cfg.seed)
        return model
    if cfg.init_parts:
        raise SystemExit("init_parts needs init: the model they are copied into")
    for key, depth in (("grow_face", "face_top_layers"), ("grow_face_mid", "face_mid_layers")):
        if getattr(cfg, key):
            raise SystemExit(f"{key} needs init: the trained model to grow "
                             f"(a fresh model sets its depth with model.{depth})")
    unknown = sorted(set(cfg.model) - {f.name for f in fields(MERLBConfig)})
    if unknown:
        raise SystemExit(f"unknown model settings: {', '.join(unknown)} (model/config.py MERLBConfig lists them)")
    try:
        mcfg = MERLBConfig(**{**cfg.model, "fusion": cfg.fusion, "task": cfg.task,
                              "modalities": list(cfg.modalities), "steps": cfg.steps,
                              "modality_dropout": cfg.modality_dropout})
    except (TypeError, ValueError) as e:      # an unknown or out-of-range [model] setting
        raise SystemExit(f"model settings: {e}") from None
    model = MERLB(mcfg)
    _measure_voice_scale(model, train, cfg.seed)
    return model


def _measure_voice_scale(model, train: Records, seed: int = 0) -> None:
    if "voice" in model.cfg.modalities and hasattr(model.encoders["voice"], "set_band_scale"):
        std = voice_band_std(train, seed=seed)
        if std is not None:
            model.encoders["voice"].set_band_scale(torch.from_numpy(std))


def person_prior(model, train: Records) -> Prior:
    """The model's population voice prior; measured on the training speech (and kept) when it has none."""
    if model.cfg.voice_prior is None:
        stats = sum((voice_stats(r) for r in train.arrays), BandStats())
        if not stats.n:
            # Prior.of would give every band a spread of MIN_STD, and live every voice would be squeezed.
            raise SystemExit("voice_baseline = true needs speech in the training data to measure the population's "
                             "voice, and none of its clips has any (face images only?); add voice clips or "
                             "drop voice_baseline")
        prior = Prior.of(stats)
        model.cfg.voice_prior = prior.to_dict()
    return Prior.from_dict(model.cfg.voice_prior)


def load_voice_teacher(directory: str, student: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The teacher for voice-only windows, fixed, on the student's device; it must hear voices
    and answer every head the student has."""
    from obs_merlb.model.config import CONFIG_FILE
    from obs_merlb.model.io import load_model

    if not (Path(directory) / CONFIG_FILE).is_file():
        raise SystemExit(f"voice_teacher {directory}: not a saved model folder (no {CONFIG_FILE})")
    teacher = load_model(directory, str(device))
    if "voice" not in teacher.cfg.modalities:
        raise SystemExit(f"voice_teacher {directory}: the model has no voice input ({teacher.cfg.modalities})")
    missing = set(student.cfg.active_heads) - set(teacher.cfg.active_heads)
    if missing:
        raise SystemExit(f"voice_teacher {directory}: no {', '.join(sorted(missing))} head to learn from")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def voice_distill_loss(teacher: torch.nn.Module, logits: dict[str, torch.Tensor],
                       voice: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per head, averaged over the batch's voice-only windows (0 when none)."""
    import torch.nn.functional as F

    zero = sum(lg.sum() * 0.0 for lg in logits.values())
    if voice is None:
        return zero
    face, heard = mask[..., MODALITIES.index("face")], mask[..., MODALITIES.index("voice")]
    only = torch.nonzero((heard.amax(1) > 0) & (face.amax(1) == 0)).squeeze(1)
    if not only.numel():
        return zero
    with torch.no_grad():
        target = teacher(None, voice.index_select(0, only), None, None, mask.index_select(0, only))
    return zero + sum(F.kl_div(F.log_softmax(lg.index_select(0, only).float(), -1),
                               F.log_softmax(target[h].float(), -1), log_target=True, reduction="batchmean")
                      for h, lg in logits.items())
