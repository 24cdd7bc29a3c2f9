"""A freshly initialised, seeded MERLB model for engine tests.

No trained weights ship yet (assets/model comes from the model issue), and
the engine's behaviour under test (events, timing, robustness) does not
depend on the weights: a random model's probabilities are near uniform,
which the tests treat as "uncertain". ONNX files are exported into the same
folder so the tests never write to the user's cache.
"""
from __future__ import annotations

from pathlib import Path


def fresh_model_dir(path: Path, heads: dict[str, list[str]] | None = None) -> Path:
    """`heads` replaces the default heads (e.g. a personalized model's extra `user` head)."""
    import torch

    from obs_merlb.model.config import MERLBConfig
    from obs_merlb.model.export import export_onnx
    from obs_merlb.model.io import save_model
    from obs_merlb.model.merlb import MERLB

    torch.manual_seed(0)
    model = MERLB(MERLBConfig() if heads is None else MERLBConfig(heads=heads)).eval()
    save_model(model, path)
    export_onnx(model, path)
    return path


def make_clip(path: Path, *, seconds: float = 2.5, face_from: Path | None = None,
              audio: str | None = "tone", fps: int = 15, size: tuple[int, int] = (320, 240),
              container: str | None = None) -> Path:
    """A small test video: frames from `face_from` (a video with a face) or a moving
    gradient (no face); audio "tone", "silence" or None (no audio track)."""
    import av
    import numpy as np

    src_frames = []
    if face_from is not None:
        with av.open(str(face_from)) as c:
            for f in c.decode(video=0):
                if f.time is not None and f.time > seconds:
                    break
                src_frames.append(f.to_ndarray(format="rgb24", width=size[0], height=size[1]))
    out = av.open(str(path), "w", format=container)
    vs = out.add_stream("libx264" if container != "mpegts" else "mpeg2video", rate=fps)
    vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
    as_ = out.add_stream("aac", rate=16000, layout="mono") if audio else None
    n = int(seconds * fps)
    for i in range(n):
        if src_frames:
            img = src_frames[min(len(src_frames) - 1, int(i * len(src_frames) / n))]
        else:
            x = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
            img = np.broadcast_to((x + 8 * i) % 256, (size[1], size[0], 3)).astype(np.uint8)
        for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    if as_ is not None:
        sr, block = 16000, 1024
        total = int(seconds * sr)
        t = np.arange(total) / sr
        sig = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32) if audio == "tone" else np.zeros(total, np.float32)
        pts = 0
        for s0 in range(0, total, block):
            chunk = sig[s0:s0 + block]
            fr = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = sr, pts
            pts += len(chunk)
            for p in as_.encode(fr):
                out.mux(p)
        for p in as_.encode():
            out.mux(p)
    out.close()
    return path
