"""Fusion check on label-matched face+voice pairs from held-out people.

    python -m obs_merlb.train.recipes.eval_pairs --model assets/model \
        --faces ../shared/data/fer2013/val --voices runs/default/heldout/ravdess \
        --voices runs/default/heldout/emodb --pairs 1000 --json

Each pair is a FER2013 val face and a held-out voice clip with the same
emotion (train/data.py PairedDataset, deterministic when not training), the
face held over the voice window as a webcam would show it. The same pairs are
scored three ways: both modalities, face only (voice masked out) and voice
only (face masked out), so the numbers differ only in what the model sees.

Each face is encoded once and repeated over the window (the window repeats
one image, so this equals encoding every step, at 1/T of the cost); then
`MERLB.sequence` runs the LSTMs, fusion and heads on the embeddings, as the
live engine does.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from obs_merlb.calibration import Calibration
from obs_merlb.labels import FACE, VOICE

from ..data import Collate, PairedDataset, Records, load_records
from ..datasets import VOTES_HELP, DatasetError, parse_votes
from ..metrics import score
from ..preprocess import FeatureSettings, default_cache, prepare


SETS = {"fusion": "face+voice", "face_only": "face", "voice_only": "voice"}


@torch.no_grad()
def pair_probs(model, records: Records, n_pairs: int, seed: int = 0,
               calibration: Calibration | None = None) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Probabilities per way of seeing the pairs ("fusion", "face_only", "voice_only") and head,
    and the pairs' (N, len(HEADS)) targets. With a calibration, each way is
    temperature-scaled for its modality set, as the live engine would."""
    from torch.utils.data import DataLoader

    calibration = calibration or Calibration()      # none: T = 1, the plain softmax
    mods = model.cfg.modalities
    ds = PairedDataset(records, mods, model.cfg.steps, train=False, n_pairs=n_pairs, augment=False, seed=seed)
    probs: dict[str, dict[str, list[np.ndarray]]] = {"fusion": {}, "face_only": {}, "voice_only": {}}
    ys = []
    for batch in DataLoader(ds, batch_size=64, shuffle=False, collate_fn=Collate(mods)):
        mask = batch["mask"]
        b, t = mask.shape[:2]
        face_e = model.encode("face", batch["face"][:, 0]).unsqueeze(1).expand(b, t, -1) * mask[..., FACE, None]
        voice = batch["voice"]
        voice_e = model.encode("voice", voice.reshape(b * t, *voice.shape[2:])).reshape(b, t, -1) * mask[..., VOICE, None]
        for name, (fe, ve) in {"fusion": (face_e, voice_e), "face_only": (face_e, None),
                               "voice_only": (None, voice_e)}.items():
            m = mask.clone()
            if fe is None:
                m[..., FACE] = 0
            if ve is None:
                m[..., VOICE] = 0
            out = model.sequence(fe, ve, None, None, m)
            for h, lg in out.items():
                probs[name].setdefault(h, []).append(calibration.probs(h, lg.numpy(), [SETS[name]] * b))
        ys.append(batch["y"].numpy())
    return ({name: {h: np.concatenate(v) for h, v in p.items()} for name, p in probs.items()},
            np.concatenate(ys))


def load_pair_records(model, faces: list[str], voices: list[str], cache: str | None = None,
                      votes: Path | bool = True) -> Records:
    """`votes` (datasets.parse_votes) picks the face folders' labels: FER+ majorities or the folders'
    (voice folders have none)."""
    settings = FeatureSettings(step_s=model.cfg.step_s)
    cache_dir = Path(cache) if cache else default_cache()
    return Records.concat([load_records(prepare(p, cache_dir, settings=settings, workers=1, quiet=True,
                                                votes=votes))
                           for p in faces + voices])


def evaluate_pairs(model_dir: str, faces: list[str], voices: list[str], n_pairs: int,
                   cache: str | None = None, seed: int = 0, votes: Path | bool = True) -> dict:
    from obs_merlb.calibration import load_calibration
    from obs_merlb.model.io import load_model

    model = load_model(model_dir).eval()
    records = load_pair_records(model, faces, voices, cache, votes)
    probs, y = pair_probs(model, records, n_pairs, seed, load_calibration(model_dir))
    result = {"pairs": len(y)}
    for name, p in probs.items():
        metrics = score(p, y)
        result[name] = {h: {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "ece")}
                        for h, m in metrics.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="assets/model")
    ap.add_argument("--faces", action="append", required=True, help="face image folder(s), held-out people")
    ap.add_argument("--voices", action="append", required=True, help="voice folder(s), held-out people")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--votes", default="auto", metavar="auto|none|CSV", help=VOTES_HELP)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        votes = parse_votes(a.votes)
    except DatasetError as e:
        raise SystemExit(f"eval_pairs: {e}") from None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = evaluate_pairs(a.model, a.faces, a.voices, a.pairs, a.cache, a.seed, votes)
    if a.json:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        print(f"{res['pairs']} label-matched pairs")
        for name in ("fusion", "face_only", "voice_only"):
            for h, m in res[name].items():
                print(f"{name:>10} {h:>8}: n={m['n']} acc {m['accuracy']:.3f} bal.acc "
                      f"{m['balanced_accuracy']:.3f} macro-F1 {m['macro_f1']:.3f} ECE {m['ece']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
