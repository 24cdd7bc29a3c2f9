"""Scores and the paper's table: per-class F1, accuracy, balanced accuracy, macro-F1.

The table follows the MERLB paper's layout: one row per fusion type x task,
columns Rou Pro Res Exp Fig Pun Def Dft (behaviours), VNeg VNeut VPos
(valence), ALow ANeut AHigh (arousal), then the 7 emotions. A head the data
has no labels for is left blank, never scored as zero.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from obs_merlb import labels as L
from obs_merlb.calibration import ece, reliability
from obs_merlb.labels import IGNORE

from .datasets import HEAD_CLASSES, HEADS

# Bootstrap of the interval `merlb eval` reports around each score: resamples of the people scored
# (clusters, since a new person is what the scores ask about), 2.5th to 97.5th percentile.
RESAMPLES = 1000
CI_SEED = 0
CI_MIN_PEOPLE = 4     # two people allow three distinct resamples: no interval worth the name
CI_CHUNK = 100        # resamples drawn at once: 30,000 images' draws stay ~24 MB

VA_ABBREV = {("valence", "negative"): "VNeg", ("valence", "neutral"): "VNeut", ("valence", "positive"): "VPos",
             ("arousal", "low"): "ALow", ("arousal", "neutral"): "ANeut", ("arousal", "high"): "AHigh"}
EMOTION_ABBREV = {"angry": "Ang", "disgust": "Dis", "fear": "Fea", "happy": "Hap",
                  "neutral": "Neu", "sad": "Sad", "surprise": "Sur"}


def columns() -> list[tuple[str, str, str]]:
    """(column label, head, class) in the paper's order, then the emotions."""
    cols = [(L.BEHAVIOUR_ABBREV[b], "behaviour", b) for b in L.BEHAVIOURS]
    cols += [(VA_ABBREV[("valence", c)], "valence", c) for c in L.VALENCE]
    cols += [(VA_ABBREV[("arousal", c)], "arousal", c) for c in L.AROUSAL]
    cols += [(EMOTION_ABBREV[e], "emotion", e) for e in L.EMOTIONS]
    return cols


def head_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                 classes: Sequence[str]) -> dict[str, Any] | None:
    """Scores of one head over its labelled samples; None when none is labelled.

    Macro-F1 and balanced accuracy average over the classes present in the
    labels (a class absent from the data has no defined recall); per-class F1
    of an absent class is reported as None.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    keep = y_true != IGNORE
    y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.size == 0:
        return None
    k = len(classes)
    present = sorted(set(y_true.tolist()))
    f1 = f1_score(y_true, y_pred, labels=list(range(k)), average=None, zero_division=0)
    recall = [float(np.mean(y_pred[y_true == c] == c)) for c in present]
    return {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(recall)),
        "macro_f1": float(np.mean([f1[c] for c in present])),
        "per_class_f1": {classes[c]: (float(f1[c]) if c in present else None) for c in range(k)},
        "support": {classes[c]: int(np.sum(y_true == c)) for c in range(k)},
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist(),
        "classes": list(classes),
    }


def confusion_scores(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of confusion matrices (..., K, K), true in rows,
    as head_metrics defines them: averages over the classes present in the labels."""
    conf = np.asarray(conf, np.float64)
    diag = np.diagonal(conf, axis1=-2, axis2=-1)
    true_n, pred_n = conf.sum(-1), conf.sum(-2)
    present = true_n > 0
    n_present = np.maximum(present.sum(-1), 1)
    recall = np.where(present, diag / np.maximum(true_n, 1e-12), 0.0)
    f1 = np.where(present, 2 * diag / np.maximum(true_n + pred_n, 1e-12), 0.0)
    return {"accuracy": diag.sum(-1) / np.maximum(true_n.sum(-1), 1e-12),
            "balanced_accuracy": recall.sum(-1) / n_present,
            "macro_f1": f1.sum(-1) / n_present}


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[str], k: int,
                 resamples: int = RESAMPLES, seed: int = CI_SEED) -> dict[str, list[float]]:
    """95% intervals of accuracy, balanced accuracy and macro-F1 over resamples of the people.

    Each resample draws as many people as were scored, with replacement, and
    keeps all of a drawn person's items: four validation actors give a wide
    interval, as they should. Items without a person each count as one.
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    named = [str(g) if g else f"\0item {i}" for i, g in enumerate(groups)]    # no person: an item alone
    names, person = np.unique(np.array(named, dtype=object).astype(str), return_inverse=True)
    per_person = np.zeros((len(names), k * k))
    np.add.at(per_person, (person, y_true * k + y_pred), 1.0)
    rng, share = np.random.default_rng(seed), np.full(len(names), 1.0 / len(names))
    conf = np.concatenate([rng.multinomial(len(names), share, size=n) @ per_person     # (n, K*K)
                           for n in np.diff(np.r_[0:resamples:CI_CHUNK, resamples])])
    scores = confusion_scores(conf.reshape(resamples, k, k))
    return {name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for name, v in scores.items()}


def score(probs: Mapping[str, np.ndarray], targets: np.ndarray,
          class_names: Mapping[str, Sequence[str]] | None = None,
          groups: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per head that has both model outputs and labels.

    Besides the argmax scores: log-loss (`nll`), expected calibration error
    (`ece`) and reliability bins (mean confidence, accuracy, count), which
    say whether a shown confidence of 0.8 is right 80% of the time. With
    each item's person (`groups`), `ci95` holds bootstrap intervals of the
    argmax scores (bootstrap_ci) when at least CI_MIN_PEOPLE people are scored.
    """
    out = {}
    for head, p in probs.items():
        if head not in HEADS:
            continue
        names = (class_names or {}).get(head) or HEAD_CLASSES[head]
        y = targets[:, HEADS.index(head)]
        m = head_metrics(y, p.argmax(axis=1), names)
        if m is not None:
            keep = y != IGNORE
            pk, yk = np.asarray(p, np.float64)[keep], y[keep]
            m["nll"] = float(-np.log(np.clip(pk[np.arange(len(yk)), yk], 1e-12, None)).mean())
            m["ece"] = ece(pk, yk)
            m["reliability"] = reliability(pk, yk)
            people = None if groups is None else np.asarray(groups, dtype=object)[keep]
            if people is not None and len({g for g in people if g}) + sum(not g for g in people) >= CI_MIN_PEOPLE:
                m["ci95"] = bootstrap_ci(yk, pk.argmax(axis=1), people, len(names))
            out[head] = m
    return out


def mean_macro_f1(metrics: Mapping[str, Mapping[str, Any]]) -> float:
    vals = [m["macro_f1"] for m in metrics.values()]
    return float(np.mean(vals)) if vals else 0.0


def table_row(metrics: Mapping[str, Mapping[str, Any]], **keys: str) -> dict[str, Any]:
    """One row of the paper's table: `keys` (dataset, fusion, task) then F1 per column."""
    row: dict[str, Any] = dict(keys)
    for label, head, cls in columns():
        f1 = metrics.get(head, {}).get("per_class_f1", {}).get(cls)
        row[label] = None if f1 is None else round(float(f1), 3)
    for head in HEADS:
        if head in metrics:
            row[f"{head}_macro_f1"] = round(metrics[head]["macro_f1"], 3)
            row[f"{head}_accuracy"] = round(metrics[head]["accuracy"], 3)
    return row


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _used_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    paper = [c for c, _, _ in columns()]
    # Keep the paper's columns even when blank (the layout is the point), drop
    # empty summary columns.
    return [k for k in keys if k in paper or any(r.get(k) is not None for r in rows)]


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, name: str = "results") -> dict[str, Path]:
    """CSV, Markdown and JSON of the table rows; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = _used_columns(rows)
    paths = {"csv": out / f"{name}.csv", "md": out / f"{name}.md", "json": out / f"{name}.json"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in cols])
    md = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    paths["md"].write_text("\n".join(md) + "\n")
    paths["json"].write_text(json.dumps(list(rows), indent=1) + "\n")
    return paths


def rich_table(rows: Sequence[Mapping[str, Any]], title: str = "per-class F1"):
    from rich.table import Table

    # On screen only the columns that hold a value (the files keep the full layout).
    cols = [c for c in _used_columns(rows) if any(r.get(c) is not None for r in rows)]
    t = Table(title=title, show_lines=False, pad_edge=False)
    for c in cols:
        t.add_column(c, justify="left" if c in ("dataset", "fusion", "task", "model") else "right")
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in cols))
    return t


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_png(metrics: Mapping[str, Any], path: str | Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion"], dtype=np.float64)
    classes = metrics["classes"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.55 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nacc {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}", fontsize=9)
    return _save(fig, path)


def reliability_png(metrics: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Confidence vs accuracy per bin: on the diagonal when the probabilities are calibrated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = metrics["reliability"]
    conf = [b[0] for b in bins]
    acc = [b[1] for b in bins]
    share = np.array([b[2] for b in bins], np.float64) / max(sum(b[2] for b in bins), 1)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    ax.scatter(conf, acc, s=20 + 400 * share, color="tab:blue", alpha=0.7, label="bins (area: share)")
    ax.plot(conf, acc, color="tab:blue", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title}\nECE {metrics['ece']:.3f}  n={metrics['n']}", fontsize=9)
    return _save(fig, path)


def heatmap_png(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "per-class F1") -> Path:
    """The table as a heatmap: rows fusion x task, columns the paper's (blank = no labels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c, _, _ in columns() if any(r.get(c) is not None for r in rows)] or [columns()[0][0]]
    data = np.array([[np.nan if r.get(c) is None else float(r[c]) for c in cols] for r in rows], dtype=float)
    labels = [" ".join(str(r.get(k, "")) for k in ("dataset", "fusion", "task") if r.get(k)) for r in rows]
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * len(cols), 1.0 + 0.4 * len(rows)))
    ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if data[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels)
    ax.set_title(title)
    return _save(fig, path)
