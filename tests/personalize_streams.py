"""Fake "past streams" for the personalization tests, built from the demo clip.

assets/demo.mp4 holds CREMA-D actor 1001 saying one sentence in six
emotions, at the times in assets/demo.csv. A recording here is those six
clips in a shuffled order, played twice (about 27 s), and its session log
carries one tag per clip, placed 1.7 s into the clip (a streamer presses the
hotkey just after the moment), named as a streamer would: "hype" for happy,
"frustrated" for angry, "calm" for neutral (the default tag table maps them),
"sad" (an emotion name), and "cringe" / "spooked" for disgust and fear: names
no table knows, so they become classes of the streamer's own `user` head.
A rare tag ("lol", twice) must be reported as too rare to learn.

The held-out windows share clips with the training windows (there are only
six clips): the tests prove the pipeline, the gate and the registry, not how
well a streamer's model generalises.
"""
from __future__ import annotations

import csv
import json
import random
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo.mp4"
DEMO_CSV = ROOT / "assets" / "demo.csv"
TAG_FOR = {"angry": "frustrated", "happy": "hype", "neutral": "calm", "sad": "sad",
           "disgust": "cringe", "fear": "spooked"}
FPS = 15
SR = 16000
SIZE = (320, 240)
TAG_INTO_CLIP_S = 1.7


def load_clips() -> list[dict]:
    """The six clips of the demo: frames (RGB, SIZE, FPS) and 16 kHz mono audio each."""
    import av

    rows = list(csv.DictReader(open(DEMO_CSV)))
    frames: list[tuple[float, np.ndarray]] = []
    audio: list[np.ndarray] = []
    with av.open(str(DEMO)) as c:
        res = av.AudioResampler(format="flt", layout="mono", rate=SR)
        for packet in c.demux():
            for fr in packet.decode():
                if isinstance(fr, av.VideoFrame):
                    frames.append((float(fr.time), fr.to_ndarray(format="rgb24", width=SIZE[0], height=SIZE[1])))
                elif isinstance(fr, av.AudioFrame):
                    for r in res.resample(fr):
                        audio.append(r.to_ndarray().reshape(-1))
    pcm = np.concatenate(audio).astype(np.float32)
    clips = []
    for row in rows:
        a, b = float(row["start"]), float(row["end"])
        n = int(round((b - a) * FPS))
        times = np.array([t for t, _ in frames])
        imgs = [frames[int(np.argmin(np.abs(times - (a + i / FPS))))][1] for i in range(n)]
        clips.append({"label": row["label"], "frames": imgs,
                      "audio": pcm[int(a * SR):int(a * SR) + int(round(n / FPS * SR))]})
    return clips


def write_recording(path: Path, clips: list[dict], order: list[int]) -> list[tuple[float, str]]:
    """Clips in `order` as one video with audio; returns (start seconds, emotion) per clip."""
    import av

    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=FPS)
    vs.width, vs.height, vs.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
    vs.options = {"preset": "ultrafast"}
    as_ = out.add_stream("aac", rate=SR, layout="mono")
    starts, frame_i, pcm = [], 0, []
    for k in order:
        starts.append((frame_i / FPS, clips[k]["label"]))
        for img in clips[k]["frames"]:
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = frame_i, Fraction(1, FPS)
            for p in vs.encode(vf):
                out.mux(p)
            frame_i += 1
        pcm.append(clips[k]["audio"])
    for p in vs.encode():
        out.mux(p)
    sig = np.concatenate(pcm)
    for s0 in range(0, len(sig), 1024):
        af = av.AudioFrame.from_ndarray(sig[None, s0:s0 + 1024].copy(), format="flt", layout="mono")
        af.sample_rate, af.pts = SR, s0
        for p in as_.encode(af):
            out.mux(p)
    for p in as_.encode():
        out.mux(p)
    out.close()
    return starts


def write_session(path: Path, recording: Path, tags: list[tuple[float, str]], wall: float) -> Path:
    """A session log as the engine writes it: open event, state lines, tags (stream seconds), close."""
    # Stream time at the start of the recording: tags are in stream seconds.
    t0 = 5.0
    lines = [{"v": 1, "type": "session", "event": "open", "path": str(path), "recording": str(recording),
              "t": t0, "wall": wall}]
    for t, name in sorted(tags):
        lines.append({"v": 1, "type": "state", "t": t0 + t - 0.1, "label": "uncertain", "wall": wall + t})
        lines.append({"v": 1, "type": "tag", "t": t0 + t, "name": name, "source": "hotkey", "wall": wall + t})
    lines.append({"v": 1, "type": "session", "event": "close", "t": t0 + 30, "wall": wall + 30})
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines))
    return path


def make_streams(folder: Path, n: int = 3, seed: int = 0) -> tuple[list[Path], dict[Path, list[tuple[float, str]]]]:
    """`n` recordings in `folder` and their true tags (recording seconds, tag name)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = load_clips()
    rng = random.Random(seed)
    recordings, tags = [], {}
    for r in range(n):
        order = rng.sample(range(len(clips)), len(clips)) + rng.sample(range(len(clips)), len(clips))
        rec = folder / f"stream-{r + 1}.mp4"
        starts = write_recording(rec, clips, order)
        tags[rec] = [(s + TAG_INTO_CLIP_S, TAG_FOR[label]) for s, label in starts]
        if r == 0:
            tags[rec] += [(starts[1][0] + 0.4, "lol"), (starts[7][0] + 0.4, "lol")]
        recordings.append(rec)
    return recordings, tags


def write_sessions(folder: Path, tags: dict[Path, list[tuple[float, str]]], shuffle_seed: int | None = None,
                   wall0: float = 1.7e9) -> list[Path]:
    """Session logs named after the recordings; `shuffle_seed` permutes tag names over all tags."""
    folder.mkdir(parents=True, exist_ok=True)
    all_names = [name for rec in tags for _, name in tags[rec]]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(all_names)
    out, k = [], 0
    for i, (rec, ts) in enumerate(tags.items()):
        named = []
        for t, _ in ts:
            named.append((t, all_names[k]))
            k += 1
        out.append(write_session(folder / f"{rec.stem}.merlb.jsonl", rec, named, wall0 + 3600 * i))
    return out
