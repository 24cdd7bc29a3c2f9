"""One saved model from the parts of others: a base folder, then named weights from each PART.

    python -m obs_merlb.train.recipes.combine_parts --base RUNS/face_ferplus2/model \\
        --part encoders.voice.=RUNS/voice_all/model --part fusion.temporals.1.=RUNS/voice_all/model \\
        --part fusion.norms.1.=RUNS/voice_all/model --out RUNS/combined/model

Stages that each train a disjoint set of weights from the same start (the
face stages keep every voice weight and the shared fusion and heads fixed,
the voice stage every face weight) meet here without a training run. The
result is saved like any trained model (weights, config, ONNX); its
config's training record is the base's, and `parts` lists what came from where.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from obs_merlb.model.config import CONFIG_FILE, load_config
from obs_merlb.model.export import export_onnx
from obs_merlb.model.io import load_model, save_model
from obs_merlb.train.start import load_part


def combine(base: Path, parts: list[str], out: Path) -> Path:
    model = load_model(base)
    for spec in parts:
        n = load_part(model, spec)
        print(f"{spec}: {n} tensors")
    _, meta = load_config(base)
    meta = {k: v for k, v in meta.items() if k not in ("calibration",)}   # new weights: any calibration is stale
    meta["parts"] = {"base": str(base), "from": parts}
    save_model(model.eval(), out, meta=meta)
    export_onnx(model.eval(), out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="saved model folder the rest starts from")
    ap.add_argument("--part", action="append", default=[], metavar="PREFIX=MODEL_DIR",
                    help="weights whose names start with PREFIX, from MODEL_DIR (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not (args.base / CONFIG_FILE).exists():
        raise SystemExit(f"--base {args.base}: no saved model there ({CONFIG_FILE} missing)")
    out = combine(args.base, args.part, args.out)
    print(json.dumps({"model": str(out), "parts": args.part}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
