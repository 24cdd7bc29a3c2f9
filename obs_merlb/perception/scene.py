"""Scene: the gameplay frame as a letterboxed 3x128x128 RGB thumbnail in [0, 1].

Letterboxing (not stretching) keeps a 16:9 game's shapes as they are; the
bars are black, as a 4:3 game would show them anyway.
"""
from __future__ import annotations

import numpy as np

SCENE = 128


def thumbnail(image: np.ndarray, size: int = SCENE) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (3, size, size) float32."""
    import cv2

    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("empty image")
    s = size / max(h, w)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = np.repeat(small[:, :, None], 3, axis=2)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small[:, :, :3]
    return out.transpose(2, 0, 1).astype(np.float32) / 255.0
