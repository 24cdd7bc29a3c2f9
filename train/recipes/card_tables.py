"""Render the validation tables of assets/MODEL_CARD.md from `build_default.sh eval`'s JSON.

    python -m obs_merlb.train.recipes.card_tables runs/default/eval

Prints markdown, so a rebuilt model's numbers can be compared with (or
pasted over) the card's without retyping.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = [("fer_val", "FER2013 val (faces)"), ("ravdess_17_20", "RAVDESS actors 17-20 (voice)"),
        ("emodb_03_08", "EmoDB speakers 03, 08 (voice)"), ("crema_d", "CREMA-D samples (6 video, 6 audio)")]
HEADS = ("emotion", "valence", "arousal")


def _ece(m: dict) -> str:
    # JSON from before calibration existed (session 9 and earlier) has no ECE.
    return f"{m['ece']:.3f}" if "ece" in m else "-"


def _balanced(m: dict) -> str:
    # JSON from before session 18 has no intervals.
    ci = m.get("ci95", {}).get("balanced_accuracy")
    return f"{m['balanced_accuracy']:.3f}" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "")


def per_set(d: Path) -> list[str]:
    out = ["| data | head | n | accuracy | balanced acc. [95% over people] | macro-F1 | ECE |",
           "|---|---|---|---|---|---|---|"]
    f1 = []
    for key, name in SETS:
        p = d / f"{key}.json"
        if not p.exists():
            continue
        doc = json.loads(p.read_text())
        for h in HEADS:
            if h in doc:
                m = doc[h]
                out.append(f"| {name} | {h} | {m['n']} | {m['accuracy']:.3f} | {_balanced(m)} "
                           f"| {m['macro_f1']:.3f} | {_ece(m)} |")
        if "emotion" in doc:
            cls = ", ".join(f"{c} {v:.2f}" for c, v in doc["emotion"]["per_class_f1"].items() if v is not None)
            f1.append(f"- {key} emotion per-class F1: {cls}")
    return out + [""] + f1


def pairs(d: Path) -> list[str]:
    p = d / "pairs.json"
    if not p.exists():
        return []
    doc = json.loads(p.read_text())
    out = [f"| {doc['pairs']} label-matched pairs | emotion acc. | emotion bal. acc. | emotion macro-F1 "
           "| emotion ECE | valence acc. | arousal acc. |", "|---|---|---|---|---|---|---|"]
    for key, name in (("fusion", "face + voice (fusion)"), ("face_only", "face only"), ("voice_only", "voice only")):
        e, v, a = (doc[key][h] for h in HEADS)
        out.append(f"| {name} | {e['accuracy']:.3f} | {e['balanced_accuracy']:.3f} | {e['macro_f1']:.3f} "
                   f"| {_ece(e)} | {v['accuracy']:.3f} (n={v['n']}) | {a['accuracy']:.3f} (n={a['n']}) |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path, help="the folder `build_default.sh eval` wrote (RUNS/eval)")
    d = ap.parse_args(argv).eval_dir
    if not d.is_dir():
        raise SystemExit(f"no eval folder at {d}: run train/recipes/build_default.sh eval first")
    print("\n".join(per_set(d) + [""] + pairs(d)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
