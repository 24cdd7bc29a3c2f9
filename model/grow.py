"""Growing a trained model's face encoder without changing what it computes.

The face encoder underfits FER2013 (a trained one scores about 0.68 on its
own training images, 0.63 on validation), and training a wider one from
scratch costs days on a CPU. Its last dense block is the cheap place to add
capacity: each new layer only appends channels (DenseNet concatenation), so
the old channels are untouched. Giving the new channels zero weight in the
encoder's output layer makes the grown model compute exactly what the old
one did; training then moves those weights off zero (their gradient is the
new channels' activations, which are not zero), and the new layers learn
from there, as a zero-initialised residual branch does.

The middle block (16x16) grows the same way: there the layer that first sees
the new channels is the transition convolution into the 8x8 part, and it is
that layer's weights for them that start at zero. Stage 1f grew the last
block and gained a point while its training loss fell and validation stayed
flat; the middle block, four times the pixels, is where the encoder's
mid-level features (16 channels per layer) are thin.
"""
from __future__ import annotations

import copy

import torch

from .merlb import MERLB


# Per block: the config field holding its depth, and the layer that reads its
# output channels (its weights for new channels start at zero).
_BLOCKS = {"top": ("face_top_layers", "encoders.face.head.1.weight"),          # Linear(channels -> dim)
           "mid": ("face_mid_layers", "encoders.face.features.3.2.weight")}    # transition 1x1 conv


def grow_face(model: MERLB, layers: int, block: str = "top") -> MERLB:
    """A copy of `model` with `layers` more dense layers in the face encoder's
    last (`top`, 8x8) or middle (`mid`, 16x16) dense block, computing the
    same outputs (in eval mode) as `model`."""
    if layers < 1:
        raise ValueError(f"grow_face adds at least one layer, got {layers}")
    if block not in _BLOCKS:
        raise ValueError(f"grow_face grows block 'top' or 'mid', got {block!r}")
    if "face" not in model.cfg.modalities:
        raise ValueError("grow_face needs a model with a face encoder")
    depth, head = _BLOCKS[block]
    cfg = copy.deepcopy(model.cfg)
    setattr(cfg, depth, getattr(cfg, depth) + layers)
    grown = MERLB(cfg).to(next(model.parameters()).device)
    old = model.state_dict()
    new = grown.state_dict()
    # The only old tensors whose shape changes are those that see the grown
    # block's output: a batch norm (per channel) and the reading layer's
    # weight (out x channels [x 1 x 1]). The old channels come first.
    with torch.no_grad():
        for name, tensor in new.items():
            if name not in old:
                continue                          # a new layer: default init
            src = old[name]
            if src.shape == tensor.shape:
                tensor.copy_(src)
            elif name == head:
                tensor.zero_()
                tensor[:, :src.shape[1]] = src
            elif src.dim() == 1 and src.shape[0] < tensor.shape[0]:
                tensor[:src.shape[0]] = src       # new channels keep BN defaults
            else:
                raise RuntimeError(f"grow_face: unexpected shape change in {name}: "
                                   f"{tuple(src.shape)} -> {tuple(tensor.shape)}")
    grown.load_state_dict(new)
    grown.train(model.training)
    return grown
