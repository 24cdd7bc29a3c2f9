"""Build assets/demo.mp4 from the six CREMA-D clips of actor 1001.

The clips (anger, disgust, fear, happiness, neutral, sadness, in that order)
are decoded with PyAV and re-encoded one after another into one H.264/AAC
MP4, with a CSV of where each emotion starts and ends, so the demo and the
tests have a real face and voice whose labels are known.

    python tools/make_demo_video.py ../shared/data/crema_d_samples assets/
"""
from __future__ import annotations

import csv
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ORDER = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
FPS = Fraction(30000, 1001)
RATE = 44100


def build(src: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "demo.mp4"
    out = av.open(str(out_path), "w")
    vs = out.add_stream("libx264", rate=FPS)
    vs.width, vs.height, vs.pix_fmt = 480, 360, "yuv420p"
    vs.options = {"crf": "26", "preset": "veryslow"}
    aus = out.add_stream("aac", rate=RATE, layout="mono")
    aus.bit_rate = 64000
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=RATE)

    rows, n_frames, n_samples = [], 0, 0
    for code in ORDER:
        clip = src / f"1001_DFA_{code}_XX.flv"
        start = n_frames / float(FPS)
        with av.open(str(clip)) as inp:
            for frame in inp.decode(video=0):
                f = frame.reformat(480, 360, "yuv420p")
                f.pts, f.time_base = n_frames, 1 / FPS
                out.mux(vs.encode(f))
                n_frames += 1
        with av.open(str(clip)) as inp:
            pcm = np.concatenate([r.to_ndarray().reshape(-1)
                                  for fr in inp.decode(audio=0) for r in resampler.resample(fr)])
        # Keep audio exactly as long as this clip's video, so the two stay in sync.
        want = int(round(n_frames / float(FPS) * RATE)) - n_samples
        pcm = np.pad(pcm, (0, max(0, want - len(pcm))))[:want].astype(np.float32)
        for i in range(0, len(pcm), 1024):
            chunk = pcm[i:i + 1024][None, :]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = RATE, n_samples + i, Fraction(1, RATE)
            out.mux(aus.encode(af))
        n_samples += want
        rows.append((out_path.name, round(start, 3), round(n_frames / float(FPS), 3), code))
    out.mux(vs.encode(None))
    out.mux(aus.encode(None))
    out.close()

    from obs_merlb.labels import CREMA_D
    with open(out_dir / "demo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "start", "end", "label"])
        for name, s, e, code in rows:
            w.writerow([name, s, e, CREMA_D[code]])
    return out_path


if __name__ == "__main__":
    path = build(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
