"""What a run shows the streamer: the review of the data (counts, contact sheet), the
before/after plots, the report (Markdown and HTML) and the result table."""
from __future__ import annotations

import html as H
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from rich.table import Table

from .features import RecordingSteps, step_range
from .progress import Progress
from .windows import USER, Session, Window

matplotlib.use("Agg")       # files only: no window, and no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def label_name(w: Window) -> str:
    main = w.labels.get(USER) or w.labels.get("emotion") or w.labels.get("behaviour") or "/".join(
        f"{h}:{c}" for h, c in w.labels.items())
    return main if (w.tag == main or not w.tag) else f"{w.tag} ({main})"


def review(sessions: Sequence[Session], steps: Sequence[RecordingSteps | None], windows: Sequence[Window],
           out: Path, step_s: float, rare: dict[str, int], per_label: int = 8) -> dict[str, Any]:
    """Counts per label and split, and a contact sheet of face crops per label (PNG)."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for w in windows:
        c = counts.setdefault(label_name(w), {"train": 0, "val": 0})
        c[w.split] = c.get(w.split, 0) + 1
    heads: dict[str, dict[str, int]] = {}
    for w in windows:
        for h, c in w.labels.items():
            heads.setdefault(h, Counter())[c] += 1  # type: ignore[arg-type]
    labels = sorted(counts)
    faces: dict[str, list[np.ndarray]] = {k: [] for k in labels}
    for w in windows:
        bucket = faces[label_name(w)]
        rs = steps[w.session]
        if len(bucket) >= per_label or rs is None or "face" not in rs.arrays:
            continue
        a, b = step_range(w, step_s, rs.n)
        present = [i for i in range(a, b) if rs.arrays["mask"][i, 0] > 0]
        if present:
            bucket.append(rs.arrays["face"][present[len(present) // 2]][0])
    rows = max(1, len(labels))
    fig, axes = plt.subplots(rows, per_label + 1, figsize=(1.1 * (per_label + 1) + 1.5, 1.15 * rows + 0.4),
                             squeeze=False)
    for r, lab in enumerate(labels):
        ax = axes[r][0]
        ax.axis("off")
        n = counts[lab]
        ax.text(1.0, 0.5, f"{lab}\n{n['train']} train / {n['val']} val",
                ha="right", va="center", fontsize=8, transform=ax.transAxes)
        for c in range(per_label):
            ax = axes[r][c + 1]
            ax.axis("off")
            if c < len(faces[lab]):
                ax.imshow(faces[lab][c], cmap="gray", vmin=0, vmax=255)
    fig.suptitle("face crops per label (middle of each window)", fontsize=10)
    fig.tight_layout()
    sheet = out / "contact_sheet.png"
    fig.savefig(sheet, dpi=90)
    plt.close(fig)
    doc = {"labels": counts, "heads": {h: dict(c) for h, c in heads.items()}, "rare_tags": rare,
           "sessions": [{"recording": str(s.recording), "log": str(s.log) if s.log else None, "tags": len(s.tags)}
                        for s in sessions],
           "contact_sheet": str(sheet)}
    (out / "review.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def print_review(progress: Progress, doc: dict[str, Any]) -> None:
    t = Table(title="labelled windows")
    for c in ("label", "train", "val"):
        t.add_column(c, justify="left" if c == "label" else "right")
    for lab, n in sorted(doc["labels"].items()):
        t.add_row(lab, str(n.get("train", 0)), str(n.get("val", 0)))
    progress.console.print(t)
    if doc["rare_tags"]:
        progress.message("too rare to learn (left out): " +
                         ", ".join(f"{k} ({v})" for k, v in doc["rare_tags"].items()))
    progress.message(f"contact sheet: {doc['contact_sheet']}")


def f1_bars_png(before: dict[str, Any], after: dict[str, Any], path: Path) -> Path:
    cols = [(h, c) for h, m in after.items() for c, v in m["per_class_f1"].items() if v is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(cols) + 1.5), 3.2))
    x = np.arange(len(cols))
    b = [(before.get(h, {}).get("per_class_f1", {}).get(c) or 0.0) for h, c in cols]
    a = [after[h]["per_class_f1"][c] for h, c in cols]
    ax.bar(x - 0.2, b, 0.4, label="current model", color="#8a8f98")
    ax.bar(x + 0.2, a, 0.4, label="candidate", color="#4c9be8")
    ax.set_xticks(x, [f"{h[:3]}:{c}" for h, c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 on held-out windows")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_png(history: Sequence[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], "o-", ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(d: Path, info: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> tuple[Path, Path]:
    """report.md and report.html: the gate, per-class F1 before/after, confusions, data, rare tags."""
    g = info["gate"]
    lines = [f"# Personalized model {info['version']}", "",
             f"Decision: **{info['status']}** ({'; '.join(g['reasons']) or 'beats the current model'})", "",
             f"Held-out windows: {info['data']['val']} ({info['split']['mode']} split). Mean macro-F1: candidate "
             f"{g['candidate_score']:.3f}, current model ({info['active_before']}) {g['active_score']:.3f}, "
             f"chance test p = {g['p_value']:.3f}"
             + (f", better-than-current test p = {g['p_better']:.3f}." if g.get("p_better") is not None else "."), "",
             "| head | class | current F1 | candidate F1 | support |", "|---|---|---|---|---|"]
    for h, m in after.items():
        for c, v in m["per_class_f1"].items():
            if v is None:
                continue
            b = before.get(h, {}).get("per_class_f1", {}).get(c)
            lines.append(f"| {h} | {c} | {'–' if b is None else f'{b:.3f}'} | {v:.3f} | {m['support'][c]} |")
    lines += ["", "| head | current macro-F1 | candidate macro-F1 |", "|---|---|---|"]
    for h in g["heads"]:
        lines.append(f"| {h} | {g['active_per_head'][h]:.3f} | {g['candidate_per_head'][h]:.3f} |")
    rare = info["data"]["rare_tags"]
    lines += ["", "## Data", "", f"Sessions: {len(info['data']['sessions'])}; windows: "
              f"{info['data']['windows']} ({info['data']['train']} train, {info['data']['val']} held out, "
              f"{info['data']['pseudo']} pseudo-labelled).", "",
              "Too rare to learn (fewer than %d examples, left out): %s" %
              (info["data"]["min_examples"], ", ".join(f"{k} ({v})" for k, v in rare.items()) or "none"), ""]
    imgs = ["f1_before_after.png", "training_loss.png", "contact_sheet.png"] + \
        sorted(p.name for p in d.glob("confusion_*.png"))
    lines += [f"![{i}]({i})" for i in imgs if (d / i).is_file()]
    md = d / "report.md"
    md.write_text("\n".join(lines) + "\n")
    body = []
    in_table = False
    for ln in lines:
        if ln.startswith("|"):
            cells = [c.strip() for c in ln.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{H.escape(c)}</th>" for c in cells) + "</tr>")
                continue
            body.append("<tr>" + "".join(f"<td>{H.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if ln.startswith("# "):
            body.append(f"<h1>{H.escape(ln[2:])}</h1>")
        elif ln.startswith("## "):
            body.append(f"<h2>{H.escape(ln[3:])}</h2>")
        elif ln.startswith("!["):
            src = ln[ln.index("(") + 1:-1]
            body.append(f'<img src="{H.escape(src)}" alt="{H.escape(src)}">')
        elif ln:
            body.append(f"<p>{H.escape(ln).replace('**', '')}</p>")
    if in_table:
        body.append("</table>")
    page = ("<!doctype html><meta charset='utf-8'><title>obs-merlb personalization</title>"
            "<style>body{font:14px system-ui;margin:2em;max-width:70em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%;margin:8px 0}</style>" + "\n".join(body))
    page_path = d / "report.html"
    page_path.write_text(page)
    return md, page_path


def print_result(progress: Progress, result: dict[str, Any], after: dict[str, Any], before: dict[str, Any]) -> None:
    t = Table(title=f"held-out per-class F1: current vs {result['version']}")
    for c in ("head", "class", "current", "candidate", "n"):
        t.add_column(c, justify="left" if c in ("head", "class") else "right")
    for h, m in after.items():
        for c, v in m["per_class_f1"].items():
            if v is None:
                continue
            b = before.get(h, {}).get("per_class_f1", {}).get(c)
            t.add_row(h, c, "–" if b is None else f"{b:.2f}", f"{v:.2f}", str(m["support"][c]))
    progress.console.print(t)
    verdict = {"accepted": "[green]accepted[/]", "forced": "[yellow]forced[/]", "rejected": "[red]rejected[/]"}
    progress.message(f"{result['version']}: {verdict[result['status']]} - mean macro-F1 "
                     f"{result['candidate_score']:.3f} vs current {result['active_score']:.3f} "
                     f"(p = {result['p_value']:.3f}) {'; '.join(result['reasons'])}")
    if result["activated"]:
        progress.message(f"active model: {result['version']}. {result['worker']}")
    progress.message(f"report: {result['report']}")
