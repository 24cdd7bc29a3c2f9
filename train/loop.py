"""`merlb train`: one MERLB training run, configured by a TOML file and flags.

    merlb train --config train/recipes/tiny.toml --fusion tt --task multi --out runs/x
    torchrun --nproc_per_node 4 -m obs_merlb train --config run.toml     (DDP, same code)

The whole run, top to bottom: read the data (preprocessing whatever is not
cached yet), split it by person, build the model, then epochs of AdamW with a
warmup + cosine (or one-cycle) schedule, validation macro-F1 after each
epoch, early stopping on it, a checkpoint every epoch (safetensors only: the
weights, the optimizer's tensors, and a JSON for everything else), and at
the end the best weights saved with `obs_merlb.model.io.save_model`, the
ONNX export, and a training-curve PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from obs_merlb.cli import device_type, positive_float, positive_int, refuse
from obs_merlb.files import check_writable
from obs_merlb.labels import MODALITIES

from . import balance
from .data import (Collate, PairedDataset, PersonBaselines, Records, StepDataset, blend_original, head_targets,
                   load_records, predict)
from .datasets import FORMATS, HEAD_CLASSES, HEADS, DatasetError, describe, parse_votes, split_items
from .device_batches import DEVICE_DATA_RULE, DeviceImageBatches
from .metrics import mean_macro_f1, score
from .preprocess import FeatureSettings, Prepared, default_cache, default_workers, load_manifest, prepare
from .start import build_model, load_voice_teacher, person_prior, voice_distill_loss


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)        # dataset folders/CSVs or manifest JSONs
    val_data: list[str] = field(default_factory=list)    # explicit validation sets (else split `data`)
    format: str | None = None
    cache: str | None = None
    out: str = "runs/merlb"
    fusion: str = "tt"
    task: str = "multi"                                  # multi | emotion | valence | arousal | behaviour
    modalities: list[str] = field(default_factory=lambda: ["face", "voice"])
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"                             # cosine | onecycle
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    label_smoothing: float = 0.05
    patience: int = 8                                    # epochs without a better val macro-F1
    seed: int = 0
    steps: int = 8                                       # window length T
    image_steps: int = 1                                 # an image repeated to this many steps
    voice_key_segments: int | None = None                # keep the k most salient speech steps per window
    val_fraction: float = 0.2
    val_groups: list[str] | None = None                  # e.g. ["ravdess:17", "emodb:03"]
    class_weights: bool = True
    class_weight_power: float = 0.5
    oversample: int = 0                                  # seed oversampling: at most this many additions
    pairing: bool = False                                # add label-matched face+voice pairs
    pairs_per_epoch: int = 0                             # 0 = as many as the smaller side
    # Share of pairs whose voice shows another emotion than the face, labelled
    # by the face. Label-matched pairs always agree, so without these the
    # fusion never sees a conflict and follows whichever side is more
    # confident, which on an unfamiliar voice is the voice's mistake. The
    # face wins because it is the better-measured modality (held-out
    # accuracy, MODEL_CARD.md) and the one the stream shows.
    pair_mismatch: float = 0.0
    modality_dropout: float = 0.2
    augment: bool = True
    # Share of training faces with a random rectangle erased (data.augment_face).
    face_erase: float = 0.0
    # Largest random equaliser tilt on training voices, log-mel units (data.augment_voice).
    voice_eq: float = 0.0
    # Share of training voices heard in a random reverberant room, and
    # (drawn apart) the same share over background noise (data.reverb_and_noise).
    voice_room: float = 0.0
    # FER+ votes: the share of an image's target taken by its original
    # FER2013 folder label (0 = the votes alone). The two label kinds
    # disagree on about a quarter of the images; a blend keeps some of the
    # original labels' accuracy (data.blend_original).
    vote_original_weight: float = 0.0
    # FER+ votes for the image folders: "auto" (a ferplus_votes.csv beside them),
    # "none" (the folder labels only: a stage trained on the original labels)
    # or a CSV's path (relative to the recipe, as the data paths are).
    votes: str = "auto"
    max_items: int | None = None                         # per dataset, a seeded subset (tiny runs)
    preprocess_workers: int = field(default_factory=default_workers)
    loader_workers: int = 0
    device: str = "auto"
    amp: bool = True
    onnx: bool = True
    resume: bool = False
    init: str | None = None                              # start from a saved model folder
    # "PREFIX=MODEL_DIR": after `init`, the weights whose names start with
    # PREFIX come from another saved model (e.g. "encoders.voice.=runs/voice/model";
    # end the prefix with "." so it names whole modules),
    # so encoders trained in separate runs meet in one fusion run.
    init_parts: list[str] = field(default_factory=list)
    # Measure the voice encoder's per-band input scale on this run's data even
    # when starting from `init`: for a stage that trains a voice encoder the
    # init model never trained (the default model's voice stage starts from
    # face-only weights). A fresh model always measures it.
    measure_voice_scale: bool = False
    # When starting from `init`: add this many dense layers to the face
    # encoder's last (8x8) / middle (16x16) dense block without changing its
    # outputs (model/grow.py).
    grow_face: int = 0
    grow_face_mid: int = 0
    # Validate, select and ship an exponential moving average of the weights
    # (and batch-norm statistics) over about this many epochs; 0 = the raw
    # weights. Small sets (the voice stage has ~40 steps per epoch) swing a
    # lot from epoch to epoch without it.
    ema_epochs: float = 0.0
    # Parameter-name prefixes kept fixed (e.g. ["encoders."]): fine-tune the
    # LSTMs/fusion/heads on top of pretrained encoders. Frozen modules also
    # stay in eval mode so their batch-norm statistics do not drift.
    freeze: list[str] = field(default_factory=list)
    # A saved model (the voice stage's) whose predictions the windows that
    # carry a voice and no face are pulled toward (KL divergence, added to
    # the loss with this weight). The fusion stage retrains the heads all
    # modalities share, mostly on faces and pairs, and its voice-only
    # accuracy fell below the voice stage's in every run (MODEL_CARD.md).
    voice_teacher: str | None = None
    voice_teacher_weight: float = 1.0
    # Train the voice to hear each person against their own baseline
    # (perception/baseline.py, data.PersonBaselines): the model then carries
    # the population prior and live adapts to the streamer without labels.
    # `baseline_none_p`: share of training clips seen with no baseline, as
    # live before the person has spoken.
    voice_baseline: bool = False
    baseline_none_p: float = 0.25
    # Hold the training images on the device and augment them there
    # (train/device_batches.py): for a face stage on a GPU, whose DataLoader
    # path leaves the GPU waiting. One-step face images only.
    device_data: bool = False
    # Stop before an epoch that would end past this many minutes of training
    # (0 = no limit): a stage that must fit one short GPU lease.
    time_limit_min: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)  # MERLBConfig overrides

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        """The run config in a TOML file; SystemExit with one line naming the file (and line) when unusable."""
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
            cfg = cls.from_dict(doc)
        except OSError as e:
            raise SystemExit(f"--config {path}: cannot read ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise SystemExit(f"--config {path}: not UTF-8 text") from None
        except ValueError as e:
            # A TOMLDecodeError (a ValueError) ends "(at line N, column M)"; from_dict's names unknown settings.
            raise SystemExit(f"--config {path}: {e}") from None
        base = Path(path).parent
        # Relative data paths in a recipe are relative to the recipe, not to the shell.
        cfg.data = [_rel(base, p) for p in cfg.data]
        cfg.val_data = [_rel(base, p) for p in cfg.val_data]
        if cfg.votes.strip().lower() not in ("auto", "none"):
            cfg.votes = _rel(base, cfg.votes)
        return cfg

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**doc)


def type_problem(cfg: TrainConfig) -> str | None:
    """The first setting whose value is not of its declared type (a TOML or --set typo), as one line."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if not _fits(value, hints[f.name]):
            return f"{f.name} must be {getattr(hints[f.name], '__name__', hints[f.name])}, got {value!r}"
    return None


def _fits(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    kind = typing.get_origin(hint) or hint
    if kind is type(None):
        return value is None
    if kind is Any:
        return True
    if kind in (int, float):    # bool is an int to Python, not to a config; an int is a fine float
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _rel(base: Path, p: str) -> str:
    q = Path(os.path.expandvars(os.path.expanduser(p)))
    return str(q if q.is_absolute() else (base / q).resolve())


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a plain single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        d = Dist(dist.get_rank(), world, local)
        return d, torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Dist(), torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data


def prepare_source(path: str, cfg: TrainConfig, quiet: bool = False) -> Prepared:
    """A manifest JSON as is; a dataset path preprocessed into the cache (a no-op when cached)."""
    if path.endswith(".json") and Path(path).is_file():
        return load_manifest(path)
    cache = Path(cfg.cache) if cfg.cache else default_cache()
    return prepare(path, cache, fmt=cfg.format, settings=FeatureSettings(step_s=cfg.model.get("step_s", 0.25)),
                   workers=cfg.preprocess_workers, quiet=quiet, votes=parse_votes(cfg.votes))


def _subset(prep: Prepared, n: int | None, seed: int) -> list:
    items = list(prep.items)
    if n is None or len(items) <= n:
        return items
    # Stratified by emotion so a tiny subset still holds every class it can.
    rng = np.random.default_rng(seed)
    by_label: dict[Any, list] = {}
    for it in items:
        by_label.setdefault(it.labels.get("emotion") or it.labels.get("valence"), []).append(it)
    for v in by_label.values():
        rng.shuffle(v)
    out: list = []
    while len(out) < n:
        for v in by_label.values():
            if v and len(out) < n:
                out.append(v.pop())
    return out


def load_data(cfg: TrainConfig, quiet: bool = False) -> tuple[Records, Records]:
    """(train, val) records; people never straddle the split."""
    train_parts, val_parts = [], []
    for path in cfg.data:
        prep = prepare_source(path, cfg, quiet)
        items = _subset(prep, cfg.max_items, cfg.seed)
        if cfg.val_data:
            train_parts.append(load_records(prep, items))
            continue
        tr, va = split_items(items, cfg.val_fraction, cfg.seed, cfg.val_groups)
        train_parts.append(load_records(prep, tr))
        val_parts.append(load_records(prep, va))
    for path in cfg.val_data:
        prep = prepare_source(path, cfg, quiet)
        val_parts.append(load_records(prep, _subset(prep, cfg.max_items, cfg.seed)))
    return Records.concat(train_parts), Records.concat(val_parts)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(d: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                    ema: torch.nn.Module | None = None) -> None:
    """Weights (and their moving average) + optimizer tensors as safetensors, the rest as JSON. No pickles."""
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    for name, module in (("model", model), ("ema", ema)):
        if module is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      str(d / f"{name}.safetensors"))
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    save_file(tensors or {"_empty": torch.zeros(0)}, str(d / "optimizer.safetensors"))
    doc = {**state, "param_groups": sd["param_groups"], "optimizer_scalars": scalars}
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, d / "state.json")  # state.json last: its presence means the checkpoint is whole


def load_checkpoint(d: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    ema: torch.nn.Module | None = None) -> dict[str, Any]:
    from safetensors.torch import load_file

    doc = json.loads((d / "state.json").read_text())
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    if ema is not None:
        if not (d / "ema.safetensors").exists():
            raise SystemExit(f"{d} has no weight average: resume with the ema_epochs the run started with")
        ema.load_state_dict(load_file(str(d / "ema.safetensors")))
    tensors = load_file(str(d / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key == "_empty":
            continue
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in doc.get("optimizer_scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    return doc


# --------------------------------------------------------------------------- the run


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str) -> float:
    """Linear warmup then cosine to 1% (or one-cycle: warmup to 30%, cosine down to 0.1%)."""
    if schedule == "onecycle":
        peak = max(1, int(0.3 * total))
        if step < peak:
            return base * (0.04 + 0.96 * step / peak)
        p = (step - peak) / max(1, total - peak)
        return base * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * p)))
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def train(cfg: TrainConfig, quiet: bool = False,
          data: tuple[Records, Records] | None = None) -> dict[str, Any]:
    """Run training; returns a summary (best epoch, validation metrics, paths).

    `data` passes already loaded (train, val) records (the experiments grid
    loads its data once for all runs).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from obs_merlb.model.io import save_model
    from obs_merlb.model.merlb import multitask_loss

    problem = type_problem(cfg)
    if problem:
        raise SystemExit(problem)
    try:
        device_type(auto=True)(cfg.device)
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"device: {e}") from None
    if cfg.epochs < 1:
        raise SystemExit(f"epochs is how many passes over the training data, 1 or more; got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise SystemExit(f"batch_size is how many windows a step learns from, 1 or more; got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise SystemExit(f"lr is the learning rate, above 0; got {cfg.lr}")
    if not 0.0 <= cfg.pair_mismatch <= 1.0:
        raise SystemExit(f"pair_mismatch is a share of the pairs, 0 to 1; got {cfg.pair_mismatch}")
    if not 0.0 <= cfg.face_erase <= 1.0:
        raise SystemExit(f"face_erase is a share of the training faces, 0 to 1; got {cfg.face_erase}")
    if cfg.voice_teacher_weight < 0:
        raise SystemExit(f"voice_teacher_weight weighs a loss term, 0 or more; got {cfg.voice_teacher_weight}")
    if not 0.0 <= cfg.voice_eq <= 3.0:
        raise SystemExit(f"voice_eq is the largest equaliser tilt in log-mel units, 0 to 3; got {cfg.voice_eq}")
    if not 0.0 <= cfg.voice_room <= 1.0:
        raise SystemExit(f"voice_room is a share of the training voices, 0 to 1; got {cfg.voice_room}")
    if not 0.0 <= cfg.baseline_none_p <= 1.0:
        raise SystemExit(f"baseline_none_p is a share of the training clips, 0 to 1; got {cfg.baseline_none_p}")
    if not cfg.time_limit_min >= 0:      # NaN too: it would never stop, a negative one after every epoch
        raise SystemExit(f"time_limit_min is minutes of training, 0 (no limit) or more; got {cfg.time_limit_min}")
    if cfg.device_data and cfg.pairing:   # before the data loads: that takes minutes on a full set
        raise SystemExit(DEVICE_DATA_RULE)
    dist_info, device = setup_distributed(cfg.device)
    console = Console(stderr=True, quiet=quiet or not dist_info.main)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))

    # Data. Rank 0 preprocesses first so the other ranks find it cached.
    if dist_info.world > 1 and not dist_info.main:
        torch.distributed.barrier()
    train_rec, val_rec = data if data is not None else load_data(cfg, quiet=quiet or not dist_info.main)
    if not 0.0 <= cfg.vote_original_weight <= 1.0:
        raise SystemExit(f"vote_original_weight is a share, 0 to 1; got {cfg.vote_original_weight}")
    if cfg.vote_original_weight:
        train_rec = blend_original(train_rec, cfg.vote_original_weight)
    if dist_info.world > 1 and dist_info.main:
        torch.distributed.barrier()
    if not len(train_rec):
        raise SystemExit("no training items: check --data (and the warnings above)")
    console.print(f"train: {describe(train_rec.items)}")
    console.print(f"val:   {describe(val_rec.items)}")

    # channels_last: the face/scene CNNs' convolutions run ~1.4x faster on
    # CPU (and use tensor cores better on GPU); only 4-d weights change layout.
    model = build_model(cfg, train_rec).to(device).to(memory_format=torch.channels_last)
    frozen = tuple(cfg.freeze)
    if frozen:
        for name, p in model.named_parameters():
            if name.startswith(frozen):
                p.requires_grad_(False)
    teacher = load_voice_teacher(cfg.voice_teacher, model, device) if cfg.voice_teacher else None
    heads = list(model.cfg.active_heads)
    labelled = [h for h in heads if (train_rec.targets[:, HEADS.index(h)] >= 0).any()]
    console.print(f"model: fusion={model.cfg.fusion} task={model.cfg.task} modalities={model.cfg.modalities} "
                  f"heads with labels={labelled} params={sum(p.numel() for p in model.parameters()):,}")

    if cfg.oversample > 0:
        idx = balance.seed_oversample({h: train_rec.targets[:, HEADS.index(h)] for h in heads},
                                      {h: len(HEAD_CLASSES[h]) for h in heads}, cfg.oversample, cfg.seed)
        console.print(f"oversampling: {len(train_rec)} -> {len(idx)} training items")
        train_rec = train_rec.subset(idx)
    weights = {}
    if cfg.class_weights:
        weights = {h: torch.from_numpy(balance.class_weights(train_rec.targets[:, HEADS.index(h)],
                                                             len(HEAD_CLASSES[h]), cfg.class_weight_power))
                   for h in labelled}

    mods = model.cfg.modalities
    k = cfg.voice_key_segments
    train_base = val_base = None
    if cfg.voice_baseline:
        if "voice" not in mods:
            raise SystemExit(f"voice_baseline = true adapts the voice, but the model has no voice input "
                             f"(modalities {mods}); drop voice_baseline or add voice")
        prior = person_prior(model, train_rec)
        train_base = PersonBaselines(train_rec, prior, cfg.baseline_none_p)
        val_base = PersonBaselines(val_rec, prior)
        console.print(f"person baselines: {len(train_base.people)} training and {len(val_base.people)} "
                      f"validation people; {cfg.baseline_none_p:.0%} of training clips without one")
    parts = [StepDataset(train_rec, mods, cfg.steps, True, cfg.augment, cfg.image_steps, cfg.seed, k,
                         cfg.face_erase, cfg.voice_eq, cfg.voice_room, train_base)]
    if cfg.pairing:
        paired = PairedDataset(train_rec, mods, cfg.steps, True, cfg.pairs_per_epoch, cfg.augment, cfg.seed, k,
                               mismatch=cfg.pair_mismatch, face_erase=cfg.face_erase, voice_eq=cfg.voice_eq,
                               voice_room=cfg.voice_room, baselines=train_base)
        console.print(f"face+voice pairs per epoch: {len(paired)} "
                      f"({cfg.pair_mismatch:.0%} disagreeing, labelled by the face)")
        if len(paired):
            parts.append(paired)
    train_ds = ConcatDataset(parts)
    val_ds = StepDataset(val_rec, mods, cfg.steps, False, image_steps=cfg.image_steps, key_segments=k,
                         baselines=val_base)

    sampler = None
    if dist_info.world > 1:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(train_ds, dist_info.world, dist_info.rank, shuffle=True, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader: Any
    if cfg.device_data:
        if dist_info.world > 1:
            raise SystemExit(DEVICE_DATA_RULE)
        loader = DeviceImageBatches(train_rec, cfg.batch_size, device, seed=cfg.seed, augment=cfg.augment,
                                    erase=cfg.face_erase, image_steps=cfg.image_steps)
        parts.append(loader)          # it follows the epoch like the datasets do
    else:
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                            generator=gen, collate_fn=Collate(mods), num_workers=cfg.loader_workers,
                            drop_last=len(train_ds) > cfg.batch_size, persistent_workers=cfg.loader_workers > 0,
                            pin_memory=device.type == "cuda")   # lets the non_blocking copies below overlap

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 and p.requires_grad]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                            fused=device.type == "cuda")
    ddp_model: torch.nn.Module = model
    if dist_info.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=True)  # a batch without faces leaves the face encoder unused

    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    total_steps = cfg.epochs * len(loader)
    warmup = int(cfg.warmup_epochs * len(loader))
    ema = None
    if cfg.ema_epochs > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        decay = 1.0 - 1.0 / max(1.0, cfg.ema_epochs * len(loader))
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    start_epoch, best, best_epoch, history = 0, float("-inf"), -1, []
    ckpt = out / "checkpoint"
    if cfg.resume and (ckpt / "state.json").exists():
        doc = load_checkpoint(ckpt, model, opt, ema)
        start_epoch, best, best_epoch, history = doc["epoch"] + 1, doc["best"], doc["best_epoch"], doc["history"]
        console.print(f"resumed from {ckpt} at epoch {start_epoch}")

    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console,
                        disable=quiet or not dist_info.main or not console.is_terminal)
    step = start_epoch * len(loader)
    stop = start_epoch >= cfg.epochs
    # Without a terminal (a log file, nohup) the bar is off: a line a minute instead.
    log_every = 60.0 if not quiet and dist_info.main and not console.is_terminal else None
    last_log = time.perf_counter()
    epoch = start_epoch
    run_t0 = time.perf_counter()
    with progress:
        for epoch in range(start_epoch, cfg.epochs):
            if stop:
                break
            t0 = time.perf_counter()
            for ds in parts:
                ds.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            gen.manual_seed(cfg.seed + epoch)  # resume replays the same batch order
            ddp_model.train()
            if frozen:
                for name, mod in model.named_modules():
                    if name and (name + ".").startswith(frozen):
                        mod.eval()
            task = progress.add_task("", total=len(loader), epoch=epoch + 1, loss="-")
            losses = []
            for batch in loader:
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total_steps, warmup, cfg.lr, cfg.schedule)
                x = {m: (batch[m].to(device, non_blocking=True) if batch.get(m) is not None else None)
                     for m in MODALITIES}
                mask = batch["mask"].to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = ddp_model(x["face"], x["voice"], x["body"], x["scene"], mask,
                                       keep=batch["keep"].to(device))
                    if teacher is not None:
                        distill = voice_distill_loss(teacher, logits, x["voice"], mask)
                soft = "emotion" in heads
                loss, _ = multitask_loss({h: lg.float() for h, lg in logits.items()},
                                         head_targets(batch["y"].to(device), heads), weights,
                                         label_smoothing=cfg.label_smoothing,
                                         emotion_q=batch["q"].to(device) if soft else None,
                                         emotion_allowed=batch["allowed"].to(device) if soft else None)
                if teacher is not None:
                    loss = loss + cfg.voice_teacher_weight * distill
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                # Kept on the device: reading a loss each step would make the
                # host wait for the GPU every step; the bar reads one per 20.
                losses.append(loss.detach())
                step += 1
                shown = {"loss": f"{float(torch.stack(losses[-20:]).mean()):.3f}"} if len(losses) % 20 == 0 else {}
                progress.update(task, advance=1, **shown)
                if log_every is not None and time.perf_counter() - last_log >= log_every:
                    last_log = time.perf_counter()
                    console.print(plain_progress(epoch, cfg.epochs, len(losses), len(loader), time.perf_counter() - t0,
                                                 float(torch.stack(losses[-20:]).mean())))
            progress.remove_task(task)

            # Validation and bookkeeping on rank 0; the stop decision is shared with the others.
            rec: dict[str, Any] = {"epoch": epoch + 1,
                                   "train_loss": float(torch.stack(losses).float().mean()) if losses else None,
                                   "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)}
            if dist_info.main:
                val_metrics = {}
                shipped = model if ema is None else ema.module
                if len(val_ds):
                    probs, y = predict(shipped, val_ds, mods, device, batch_size=max(64, cfg.batch_size))
                    val_metrics = score(probs, y)
                rec["val_macro_f1"] = mean_macro_f1(val_metrics) if val_metrics else None
                rec["val"] = {h: {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
                              for h, m in val_metrics.items()}
                history.append(rec)
                metric = rec["val_macro_f1"] if rec["val_macro_f1"] is not None else -rec["train_loss"]
                if metric > best:
                    best, best_epoch = metric, epoch + 1
                    save_model(shipped, out / "best", meta={"epoch": epoch + 1, "val": rec["val"]})
                save_checkpoint(ckpt, model, opt, {"epoch": epoch, "best": best, "best_epoch": best_epoch,
                                                   "history": history, "config": asdict(cfg)}, ema)
                vals = " ".join(f"{h}:{m['macro_f1']:.3f}" for h, m in val_metrics.items())
                console.print(f"epoch {epoch + 1}/{cfg.epochs} loss {rec['train_loss']:.4f} "
                              f"val macro-F1 {vals or '-'} ({rec['seconds']}s)")
                stop = epoch + 1 - best_epoch >= cfg.patience
                if stop:
                    console.print(f"early stop: no better validation macro-F1 for {cfg.patience} epochs")
                spent = time.perf_counter() - run_t0
                if (not stop and cfg.time_limit_min and epoch + 1 < cfg.epochs
                        and spent + rec["seconds"] > cfg.time_limit_min * 60):
                    stop = True
                    console.print(f"time limit: {spent / 60:.1f} of {cfg.time_limit_min:g} min spent, another "
                                  f"epoch (~{rec['seconds'] / 60:.1f} min) would pass it; keeping the best so far")
            if dist_info.world > 1:
                flag = torch.tensor([int(stop)], device=device)
                torch.distributed.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                break

    summary: dict[str, Any] = {"out": str(out), "best_epoch": best_epoch, "best_val_macro_f1": best,
                               "history": history}
    if dist_info.main:
        from obs_merlb.model.io import load_model

        final = out / "model"
        last = model if ema is None else ema.module
        best_model = load_model(out / "best") if (out / "best").exists() else last.cpu().eval()
        save_model(best_model, final, meta={"best_epoch": best_epoch, "val_macro_f1": best,
                                            "train": asdict(cfg), "history": history})
        summary["model"] = str(final)
        summary["onnx"] = export_onnx(best_model, final, cfg.onnx, console)
        summary["curve"] = str(plot_curves(history, out / "training_curve.png"))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        console.print(f"[green]model saved to {final}[/] (best epoch {best_epoch}, val macro-F1 {best:.3f})")
    if dist_info.world > 1:
        torch.distributed.destroy_process_group()
    return summary


def plain_progress(epoch: int, epochs: int, done: int, total: int, elapsed_s: float, loss: float) -> str:
    """One progress line for logs: position, rate, and the ETA of the epoch and of the run."""
    rate = done / max(elapsed_s, 1e-9)
    epoch_s = total / max(rate, 1e-9)
    left_s = (total - done) / max(rate, 1e-9) + (epochs - epoch - 1) * epoch_s
    return (f"epoch {epoch + 1}/{epochs} step {done}/{total} loss {loss:.3f} {rate:.2f} steps/s "
            f"ETA epoch {(total - done) / max(rate, 1e-9) / 60:.1f} min, run {left_s / 60:.1f} min "
            f"(validation not counted)")


def export_onnx(model: torch.nn.Module, out: Path, enabled: bool, console) -> bool:
    """ONNX next to the weights when the model package offers an exporter."""
    if not enabled:
        return False
    try:
        from obs_merlb.model import export
    except ImportError:
        console.print("ONNX export skipped: obs_merlb.model.export is not available")
        return False
    try:
        export.export_onnx(model, out)
    except Exception as e:  # noqa: BLE001 - weights are saved; a failed export must not lose the run
        console.print(f"[yellow]ONNX export failed[/]: {e}")
        return False
    return True


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    heads = sorted({k for h in history for k in h.get("val", {})})
    for head in heads:
        ax2.plot(ep, [h.get("val", {}).get(head, {}).get("macro_f1") for h in history], "s--",
                 label=f"val {head} macro-F1")
    ax2.set_ylabel("validation macro-F1")
    ax2.set_ylim(0, 1)
    if heads:
        ax2.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML run config (flags below override it)")
    parser.add_argument("--data", action="append", help="dataset folder/CSV or manifest JSON (repeatable)")
    parser.add_argument("--val-data", action="append", help="explicit validation set (repeatable)")
    parser.add_argument("--format", choices=FORMATS)
    parser.add_argument("--cache", help="feature cache folder")
    parser.add_argument("--fusion", choices=("tt", "early", "late", "joint", "deep"))
    parser.add_argument("--task", choices=("multi",) + HEADS)
    parser.add_argument("--modalities", help="comma-separated subset of " + ",".join(MODALITIES))
    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--schedule", choices=("cosine", "onecycle"))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-items", type=positive_int, help="seeded subset per dataset")
    parser.add_argument("--oversample", type=int, help="seed oversampling limit")
    parser.add_argument("--pairing", action="store_true", default=None, help="add label-matched face+voice pairs")
    parser.add_argument("--device", type=device_type(auto=True), help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", help="run folder")
    parser.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint")
    parser.add_argument("--init", help="start from a saved model folder")
    parser.add_argument("--init-part", dest="init_parts", action="append", metavar="PREFIX=MODEL_DIR",
                        help="after --init, take the weights named PREFIX... from another model "
                             "(e.g. encoders.voice.=runs/voice/model; repeatable)")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, TOML value syntax (e.g. --set model.lstm_hidden=32)")


def parse_modalities(text: str) -> list[str]:
    """`--modalities face,voice` as a list; SystemExit naming an unknown one."""
    modalities = [m.strip() for m in text.split(",") if m.strip()]
    bad = set(modalities) - set(MODALITIES)
    if bad:
        raise SystemExit(f"unknown modalities {sorted(bad)}; choose from {MODALITIES}")
    return modalities


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    for name in ("format", "cache", "fusion", "task", "epochs", "batch_size", "lr", "schedule", "seed",
                 "max_items", "oversample", "pairing", "device", "out", "resume", "init", "onnx"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v)
    if args.data:
        cfg.data = [str(Path(p).resolve()) if not p.endswith(".json") else p for p in args.data]
    if args.val_data:
        cfg.val_data = list(args.val_data)
    if getattr(args, "init_parts", None):
        cfg.init_parts = list(args.init_parts)
    if args.modalities:
        cfg.modalities = parse_modalities(args.modalities)
    for kv in args.set:
        key, _, value = kv.partition("=")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise SystemExit(f"--set {kv}: {value!r} is not a TOML value "
                             "(numbers as 2.0, text in quotes: '\"cosine\"', lists as [1, 2])") from None
        if key.startswith("model."):
            cfg.model[key[6:]] = parsed
        elif key in {f.name for f in fields(TrainConfig)}:
            setattr(cfg, key, parsed)
        else:
            raise SystemExit(f"--set: unknown setting {key!r}")
    if not cfg.data:
        raise SystemExit("no data: give --data PATH or `data = [...]` in the config")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_writable(Path(cfg.out), "--out")
    try:
        train(cfg)
    except DatasetError as e:
        return refuse("train", str(e))
    return 0
