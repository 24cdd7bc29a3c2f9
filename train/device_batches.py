"""Face images held on the training device and augmented there (the GPU face recipe).

On a GPU the DataLoader path (one OpenCV warp per image in CPU workers,
then a host-to-device copy) leaves the GPU mostly idle: the last GPU run
took about 11 s per FER2013 epoch with the GPU waiting. Here the whole image
set is one uint8 tensor on the device (FER2013 train: 28,709 x 64 x 64,
118 MB) and each batch gets `data.augment_face`'s transform at once with
`affine_grid`/`grid_sample`: the same distribution of flips, rotations,
zooms, shifts, contrast and erased rectangles, drawn per image.

Used by train/loop.py when `TrainConfig.device_data` is set; every item must
be a one-step face image (an image set such as FER2013 with its votes).
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from obs_merlb.labels import FACE, MODALITIES

from .data import Records

MAX_ANGLE_DEG = 12.0      # as augment_face
ZOOM = (0.9, 1.1)
MAX_SHIFT = 0.1           # of the crop's width
GAIN = (0.75, 1.25)
BIAS = 0.1
ERASE_AREA = (0.02, 0.2)
ERASE_ASPECT = (0.3, 3.3)
# Why loop.py refuses device_data with pairing or several processes.
DEVICE_DATA_RULE = "device_data trains one-step face images on one device: without pairing, one process"


def check_images(records: Records) -> None:
    """Refuse, in one line, a training set that is not all one-step face images."""
    bad = next((it for it, r in zip(records.items, records.arrays)
                if r["mask"].shape[0] != 1 or "face" not in r or r["mask"][0].sum() != r["mask"][0, FACE]), None)
    if bad is not None:
        raise SystemExit(f"device_data holds one-step face images only; {bad.path} is a clip or has no face "
                         f"(train clips with device_data = false)")


def augment(x: torch.Tensor, gen: torch.Generator, erase: float = 0.0) -> torch.Tensor:
    """(B, 1, S, S) float in [0, 1] -> the same, each image with its own random transform."""
    b, _, s, _ = x.shape
    dev = x.device

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (torch.rand(shape or (b,), generator=gen, device=dev) * (hi - lo) + lo)

    flip = torch.rand(b, generator=gen, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    angle = uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG) * (math.pi / 180)
    zoom = uniform(*ZOOM)
    shift = uniform(-MAX_SHIFT, MAX_SHIFT, b, 2) * 2      # normalised coordinates span 2
    # affine_grid maps each output pixel to where it samples the input: the
    # inverse of "rotate, zoom, then shift".
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, -(cos * shift[:, 0] - sin * shift[:, 1])], 1),
                         torch.stack([sin, cos, -(sin * shift[:, 0] + cos * shift[:, 1])], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    gain = uniform(*GAIN)[:, None, None, None]
    bias = uniform(-BIAS, BIAS)[:, None, None, None]
    x = ((x - mean) * gain + mean + bias).clamp(0.0, 1.0)
    if erase > 0:
        on = torch.rand(b, generator=gen, device=dev) < erase
        area = uniform(*ERASE_AREA) * s * s
        aspect = torch.exp(uniform(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])))
        h = torch.sqrt(area * aspect).round().clamp(1, s)
        w = torch.sqrt(area / aspect).round().clamp(1, s)
        top = (torch.rand(b, generator=gen, device=dev) * (s - h + 1)).floor()
        left = (torch.rand(b, generator=gen, device=dev) * (s - w + 1)).floor()
        rows = torch.arange(s, device=dev)[None, :, None]
        cols = torch.arange(s, device=dev)[None, None, :]
        box = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
               & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]) & on[:, None, None])
        noise = torch.rand(x.shape, generator=gen, device=dev)
        x = torch.where(box[:, None], noise, x)
    return x


class DeviceImageBatches:
    """Shuffled, augmented batches of one-step face images, built on `device`.

    Yields the dicts `data.collate` makes (mask, face, y, q, allowed, keep;
    the other modalities None), already on the device. `len` counts full
    batches (the last partial one is dropped, as the DataLoader path does).
    """

    def __init__(self, records: Records, batch_size: int, device: torch.device, *, seed: int = 0,
                 augment: bool = True, erase: float = 0.0, image_steps: int = 1) -> None:
        check_images(records)
        self.device, self.batch_size, self.seed = device, batch_size, seed
        self.augment, self.erase, self.image_steps = augment, erase, image_steps
        faces = np.stack([r["face"][0] for r in records.arrays])          # (N, 1, S, S) uint8
        self.faces = torch.from_numpy(faces).to(device)
        self.y = torch.from_numpy(records.targets.astype(np.int64)).to(device)
        self.q = torch.from_numpy(records.emotion_q.astype(np.float32)).to(device)
        self.allowed = torch.from_numpy(records.emotion_allowed).to(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.faces) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | None]]:
        n = len(self.faces)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 100003 + self.epoch)
        t = self.image_steps
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size].to(self.device)
            x = self.faces[idx].float() / 255.0
            if self.augment:
                x = augment(x, gen, self.erase)
            b = x.shape[0]
            mask = torch.zeros(b, t, len(MODALITIES), device=self.device)
            mask[:, :, FACE] = 1.0
            batch: dict[str, torch.Tensor | None] = {m: None for m in MODALITIES}
            batch.update(face=x[:, None].expand(b, t, *x.shape[1:]), mask=mask, y=self.y[idx], q=self.q[idx],
                         allowed=self.allowed[idx], keep=torch.zeros(b, len(MODALITIES), device=self.device))
            yield batch
