"""MERLBConfig: every size and switch of the model, saved beside its weights.

The config is plain JSON (`to_dict` / `from_dict`) so a saved model folder
is readable without running code, and label names travel with the weights:
a model trained with custom behaviour names keeps them.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from obs_merlb.labels import AROUSAL, BEHAVIOURS, EMOTIONS, MODALITIES, VALENCE

# The files of a saved model folder (docs/ARCHITECTURE.md, "Saved models").
CONFIG_FILE = "config.json"
WEIGHTS = "model.safetensors"
ONNX_WHOLE = "merlb.onnx"
ONNX_SEQUENCE = "sequence.onnx"
FUSIONS = ("tt", "early", "late", "joint", "deep")


def default_heads() -> dict[str, list[str]]:
    return {"emotion": list(EMOTIONS), "valence": list(VALENCE),
            "arousal": list(AROUSAL), "behaviour": list(BEHAVIOURS)}


@dataclass
class MERLBConfig:
    # Time grid (docs/ARCHITECTURE.md): T steps of step_s seconds.
    steps: int = 8
    step_s: float = 0.25
    # Per-step input shapes.
    face_size: int = 64
    n_mels: int = 64
    voice_frames: int = 100
    pose_dim: int = 132
    scene_size: int = 128
    # Which modalities the model has encoders for (order is always MODALITIES).
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    # Per-step embedding sizes.
    face_dim: int = 128
    # Dense layers in the face encoder's two dense blocks: the middle one at
    # 16x16 and the last at 8x8 (`grow_face` adds layers to a trained model).
    face_mid_layers: int = 4
    face_top_layers: int = 4
    # Channel multiplier of the whole face encoder (1.0 = the seed's widths).
    face_width: float = 1.0
    voice_dim: int = 128
    # Channel multiplier of the voice encoder (1.0 = the seed's widths).
    voice_width: float = 1.0
    body_dim: int = 64
    scene_dim: int = 64
    # Bi-LSTM hidden size per direction.
    lstm_hidden: int = 64
    fusion: str = "tt"
    tt_rank: int = 8
    # One output mode per enabled modality; empty = derived from fused_dim.
    tt_out_modes: list[int] = field(default_factory=list)
    fused_dim: int = 256
    heads: dict[str, list[str]] = field(default_factory=default_heads)
    # "multi" trains every head; a head name trains (and outputs) that head only.
    task: str = "multi"
    # The population's voice band statistics (perception/baseline.Prior as a
    # dict) for a model trained with a person baseline (TrainConfig.voice_baseline);
    # None for a model that takes raw log-mels. Only a model that carries
    # one is fed baseline-normalised voices, live and in `merlb eval --adapt person`.
    voice_prior: dict[str, list[float]] | None = None
    dropout: float = 0.3
    modality_dropout: float = 0.2

    def __post_init__(self) -> None:
        self.modalities = [m for m in MODALITIES if m in self.modalities]
        if not self.modalities:
            raise ValueError("MERLBConfig needs at least one modality")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.task != "multi" and self.task not in self.heads:
            raise ValueError(f"task {self.task!r} is neither 'multi' nor a head ({list(self.heads)})")
        if not self.active_heads:
            raise ValueError("MERLBConfig needs at least one head")
        if self.tt_out_modes and len(self.tt_out_modes) != len(self.modalities):
            raise ValueError("tt_out_modes needs one entry per enabled modality")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.face_top_layers < 1 or self.face_mid_layers < 1:
            raise ValueError("face_mid_layers and face_top_layers must be >= 1")
        if self.voice_prior is not None:
            self._check_voice_prior()
        for name in ("face_width", "voice_width"):
            width = getattr(self, name)
            if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.25 <= width <= 4.0:
                raise ValueError(f"{name} must be between 0.25 and 4, got {width!r}")

    def _check_voice_prior(self) -> None:
        prior = self.voice_prior
        ok = isinstance(prior, dict) and all(
            isinstance(prior.get(k), list) and len(prior[k]) == self.n_mels
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in prior[k])
            for k in ("mean", "std"))
        if not ok or min(prior["std"]) <= 0:
            raise ValueError(f"voice_prior needs {self.n_mels} finite means and {self.n_mels} positive spreads")

    @property
    def active_heads(self) -> dict[str, list[str]]:
        """The heads the model actually has (all of them, or the single task's)."""
        if self.task == "multi":
            return {k: list(v) for k, v in self.heads.items() if v}
        return {self.task: list(self.heads[self.task])}

    @property
    def embed_dims(self) -> dict[str, int]:
        dims = {"face": self.face_dim, "voice": self.voice_dim,
                "body": self.body_dim, "scene": self.scene_dim}
        return {m: dims[m] for m in self.modalities}

    @property
    def out_modes(self) -> list[int]:
        """TT output modes; by default equal modes whose product is about fused_dim."""
        if self.tt_out_modes:
            return list(self.tt_out_modes)
        k = len(self.modalities)
        mode = max(2, round(self.fused_dim ** (1.0 / k)))
        return [mode] * k

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """Shape of one step of one modality (without batch and time)."""
        return {"face": (1, self.face_size, self.face_size),
                "voice": (1, self.n_mels, self.voice_frames),
                "body": (self.pose_dim,),
                "scene": (3, self.scene_size, self.scene_size)}[modality]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MERLBConfig":
        known = {f.name for f in fields(cls)}
        # Unknown keys come from newer versions; ignoring them keeps old code loading new configs.
        kwargs = {k: v for k, v in d.items() if k in known}
        if "heads" in kwargs:
            kwargs["heads"] = {k: list(v) for k, v in kwargs["heads"].items()}
        return cls(**kwargs)


class ModelFolderError(ValueError):
    """A saved model folder that cannot be used; the message is one line naming the file at fault."""


def load_config(directory: str | Path) -> tuple[MERLBConfig, dict[str, Any]]:
    """(config, training metadata) of a saved model folder; needs no torch.

    A missing, unreadable or damaged config.json raises ModelFolderError.
    """
    path = Path(directory) / CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{path} is missing: {directory} is not a saved model folder") from None
    except OSError as e:
        raise ModelFolderError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError alike
        raise ModelFolderError(f"{path} is damaged: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ModelFolderError(f'{path} is damaged: it has no "config" object')
    try:
        cfg = MERLBConfig.from_dict(doc["config"])
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelFolderError(f"{path} is damaged: its model config is not valid ({e})") from None
    meta = doc.get("meta")
    return cfg, meta if isinstance(meta, dict) else {}


def encoder_file(modality: str) -> str:
    """The ONNX file of one modality's encoder."""
    return f"{modality}_encoder.onnx"


def onnx_files(modalities: Sequence[str] = MODALITIES) -> list[str]:
    """The ONNX files a folder holds for a model with these modalities."""
    return [ONNX_WHOLE, ONNX_SEQUENCE] + [encoder_file(m) for m in modalities]
