"""Per-step encoders: one input step of one modality -> an embedding vector.

Each takes (N, *step_shape) and returns (N, dim). They are exported to ONNX
on their own, because the live engine encodes each new step once and caches
the embedding; so they hold their own input normalisation.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Parallel 1x1, 3x3, 5x5 (as two 3x3: same field, fewer FLOPs) and pool
    branches, concatenated on channels (Szegedy et al. 2015/2016)."""

    def __init__(self, c_in: int, b1: int, b3: tuple[int, int], b5: tuple[int, int], bp: int) -> None:
        super().__init__()
        self.b1 = conv_bn(c_in, b1, 1)
        self.b3 = nn.Sequential(conv_bn(c_in, b3[0], 1), conv_bn(b3[0], b3[1], 3))
        self.b5 = nn.Sequential(conv_bn(c_in, b5[0], 1), conv_bn(b5[0], b5[1], 3), conv_bn(b5[1], b5[1], 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(c_in, bp, 1))
        self.out_channels = b1 + b3[1] + b5[1] + bp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 bottleneck then BN-ReLU-3x3 producing `growth` new channels (Huang et al. 2017)."""

    def __init__(self, c_in: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, bottleneck, 1, bias=False),
            nn.BatchNorm2d(bottleneck), nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseBlock(nn.Sequential):
    def __init__(self, c_in: int, layers: int, growth: int, bottleneck: int) -> None:
        super().__init__(*[DenseLayer(c_in + i * growth, growth, bottleneck) for i in range(layers)])
        self.out_channels = c_in + layers * growth


def transition(c_in: int, c_out: int) -> nn.Sequential:
    """DenseNet transition: compress channels, halve resolution."""
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2))


def scaled(channels: int, width: float) -> int:
    """A channel count times an encoder's `width`, in multiples of 4 (full SIMD lanes)."""
    return max(4, int(round(channels * width / 4)) * 4)


class FaceEncoder(nn.Module):
    """Deep CNN of inception modules and dense blocks on a 1x64x64 grey face.

    64 -> stem (stride 2) 32 -> inception -> pool 16 -> dense block ->
    transition 8 -> inception -> dense block -> global pool. About 40 MFLOPs
    at width 1, a few ms per face on one CPU core in onnxruntime.
    `mid_layers` and `top_layers` set the dense blocks' depths; each layer
    adds 16 channels at 16x16 or 24 at 8x8. `width` scales every channel
    count (stem, inception branches, growth, bottlenecks): the early layers
    are the encoder's thinnest part, and only a wider model trained from
    scratch widens them (`grow_face` can only deepen a trained one).
    """

    def __init__(self, dim: int = 128, dropout: float = 0.2, top_layers: int = 4,
                 mid_layers: int = 4, width: float = 1.0) -> None:
        super().__init__()

        def w(c: int) -> int:
            return scaled(c, width)

        self.stem = nn.Sequential(conv_bn(1, w(16), 3, 2), conv_bn(w(16), w(32), 3))      # 32x32
        inc1 = Inception(w(32), w(16), (w(16), w(24)), (w(8), w(12)), w(12))               # 64 ch at width 1
        dense1 = DenseBlock(inc1.out_channels, mid_layers, w(16), w(32))                   # +16 per layer
        inc2 = Inception(w(64), w(32), (w(32), w(48)), (w(16), w(24)), w(24))              # 128 ch at width 1
        dense2 = DenseBlock(inc2.out_channels, top_layers, w(24), w(48))                   # +24 per layer
        self.features = nn.Sequential(
            inc1, nn.MaxPool2d(2),                                                         # 16x16
            dense1, transition(dense1.out_channels, w(64)),                                # 8x8
            inc2, dense2, nn.BatchNorm2d(dense2.out_channels), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dense2.out_channels, dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the [0,1] grey range so the first convolution sees zero-mean input.
        x = self.features(self.stem(x - 0.5))
        return self.head(x.mean(dim=(2, 3)))


class VoiceEncoder(nn.Module):
    """Compact CNN on a 1 s log-mel patch (1 x n_mels x frames).

    The per-clip mean of the log-mel is removed first: a microphone gain g
    shifts every bin of log(mel) by 2 log g, so this makes the encoder
    indifferent to the streamer's mic level while keeping spectral shape and
    dynamics. `scale` brings typical log-mel spread to about unit size.
    `width` scales every channel count (1.0 = the seed layout); the encoder
    costs well under its 5 ms budget per second of audio, so width is cheap.
    """

    def __init__(self, dim: int = 128, n_mels: int = 64, dropout: float = 0.2, width: float = 1.0) -> None:
        super().__init__()

        def w(c: int) -> int:
            return scaled(c, width)

        self.register_buffer("scale", torch.full((1, 1, n_mels, 1), 0.25))
        self.body = nn.Sequential(
            conv_bn(1, w(24), 3, 2),                 # 32 x 50
            conv_bn(w(24), w(32), 3, 2),             # 16 x 25
            conv_bn(w(32), w(32), 3),
            conv_bn(w(32), w(64), 3, 2),             # 8 x 13
            conv_bn(w(64), w(64), 3),
            conv_bn(w(64), w(128), 3, 2))            # 4 x 7
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * w(128), dim))
        self.dim = dim

    def set_band_scale(self, std: torch.Tensor) -> None:
        """Per-mel-band spread measured on training data (after mean removal)."""
        self.scale.copy_((1.0 / std.clamp_min(1e-3)).reshape(self.scale.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * self.scale
        x = self.body(x).mean(dim=2)             # (N, C, time)
        # Mean and max over time: a short emphatic burst must not average away.
        return self.head(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))


# mediapipe Pose landmark indices of the shoulders.
_L_SHOULDER, _R_SHOULDER = 11, 12


class BodyEncoder(nn.Module):
    """MLP on 33 pose landmarks x (x, y, z, visibility).

    x, y are re-expressed relative to the shoulder midpoint and in units of
    shoulder width, so where the streamer sits in the frame and how far from
    the camera do not matter; the posture does.
    """

    def __init__(self, dim: int = 64, pose_dim: int = 132, dropout: float = 0.2) -> None:
        super().__init__()
        self.pose_dim = pose_dim
        self.net = nn.Sequential(
            nn.Linear(pose_dim, 128), nn.LayerNorm(128), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(128, 128), nn.GELU(), nn.Linear(128, dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.reshape(x.shape[0], -1, 4)
        xy, z, vis = p[..., :2], p[..., 2:3], p[..., 3:4]
        centre = 0.5 * (xy[:, _L_SHOULDER] + xy[:, _R_SHOULDER])
        width = (xy[:, _L_SHOULDER] - xy[:, _R_SHOULDER]).norm(dim=-1, keepdim=True).clamp_min(0.05)
        xy = (xy - centre[:, None]) / width[:, None]
        return self.net(torch.cat([xy, z / width[:, None], vis], dim=-1).reshape(x.shape[0], -1))


class SceneEncoder(nn.Module):
    """Small strided CNN on a 3x128x128 gameplay thumbnail."""

    def __init__(self, dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(3, 16, 3, 2), conv_bn(16, 32, 3, 2), conv_bn(32, 64, 3, 2), conv_bn(64, 64, 3, 2))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(64, dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x - 0.5).mean(dim=(2, 3)))


def build_encoder(modality: str, dim: int, n_mels: int = 64, pose_dim: int = 132,
                  dropout: float = 0.2, face_top_layers: int = 4, face_mid_layers: int = 4,
                  face_width: float = 1.0, voice_width: float = 1.0) -> nn.Module:
    if modality == "face":
        return FaceEncoder(dim, dropout, face_top_layers, face_mid_layers, face_width)
    if modality == "voice":
        return VoiceEncoder(dim, n_mels, dropout, voice_width)
    if modality == "body":
        return BodyEncoder(dim, pose_dim, dropout)
    if modality == "scene":
        return SceneEncoder(dim, dropout)
    raise ValueError(f"unknown modality {modality!r}")
