"""`merlb bench`: where the time goes, measured in one run.

`merlb bench` (what = model): CPU latency at batch 1 of each model part
(each encoder on one step, the Bi-LSTM part, the fusion, the heads, the
whole sequence part and the whole model) in eager torch and in onnxruntime
with one thread and with its default threads; then TT fusion against the
seed's materialized outer product at the seed's sizes (three modalities of
[1, 128], 129^3 = 2.1 M values), as a ratio from the same run; and the
person voice baseline's update + normalise per voice step (numpy, one
thread: what a model with a voice prior adds to each step); and the voice
reader's work per voice step (the step into its window, the window's
functionals, z-scored against the person and mixed into the emotion: what
a model folder with voice_reader.safetensors adds to each step), and the
pitch track perception computes for each speech step (what the reader reads
beside the log-mel).

`merlb bench live --video FILE` runs the live path (obs_merlb.live_bench).
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from obs_merlb.cli import positive_int
from obs_merlb.model.config import FUSIONS

# The seed's TT layer: input [1,h]^3 with h = 128, output 384 values
# (its output modes were [2,4,4,4,3]), ranks up to 4.
SEED_DIMS = [128, 128, 128]
SEED_OUT_MODES = [8, 8, 6]
SEED_RANK = 4


def _live_module() -> ModuleType | None:
    try:
        return importlib.import_module("obs_merlb.live_bench")
    except ModuleNotFoundError as e:
        if e.name != "obs_merlb.live_bench":
            raise
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="model", choices=["model", "live"],
                        help="model: per-part latency and TT vs outer product (default); live: the live path")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--model", help="saved model folder (default: a fresh model; latency does not depend on weights)")
    parser.add_argument("--fusion", default="tt", choices=list(FUSIONS), help="fusion type of a fresh model (default tt)")
    parser.add_argument("--repeat", type=positive_int, default=50, help="timed runs per measurement (median is reported)")
    live = parser.add_argument_group("live")
    live.add_argument("--video", help="video file to replay through the live path (bench live)")
    module = _live_module()
    if module is not None and hasattr(module, "add_arguments"):
        module.add_arguments(live)


def time_ms(fn: Callable[[], Any], repeat: int, budget_s: float = 3.0) -> float:
    """Median wall time of fn in ms, after warm-up; stops early past budget_s."""
    for _ in range(3):
        fn()
    times = []
    end = time.perf_counter() + budget_s
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() > end and len(times) >= 5:
            break
    return 1000.0 * statistics.median(times)


def interleaved_ms(fns: dict[str, Callable[[], Any]], rounds: int, budget_s: float = 6.0) -> dict[str, float]:
    """Median ms of each fn, run in alternating rounds so that load from other
    processes hits every fn alike and their ratio stays meaningful."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    end = time.perf_counter() + budget_s
    for _ in range(max(1, rounds)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        if time.perf_counter() > end and len(times[next(iter(fns))]) >= 5:
            break
    return {k: 1000.0 * statistics.median(v) for k, v in times.items()}


def bench_baseline(prior: dict[str, list[float]] | None, repeat: int) -> float:
    """Median ms of one live voice step's baseline work: `update` then `normalise` (analyzer.py).

    With the model's prior when it has one, else the population's shape
    made up (the cost does not depend on the values); the baseline has
    already heard speech, so `normalise` does its whole transform.
    """
    import numpy as np
    from obs_merlb.perception.baseline import Prior, VoiceBaseline
    from obs_merlb.perception.voice import N_FRAMES, N_MELS

    p = Prior.from_dict(prior) if prior is not None else Prior(np.zeros(N_MELS), np.ones(N_MELS))
    rng = np.random.default_rng(0)
    logmel = (rng.standard_normal((1, N_MELS, N_FRAMES)) * 2.0 - 8.0).astype(np.float32)
    baseline = VoiceBaseline(p)
    baseline.update(logmel, 1.0)

    def step() -> None:
        baseline.update(logmel, 1.0)
        baseline.normalise(logmel)

    return time_ms(step, max(repeat, 200))


def bench_reader(model_dir: str | None, steps: int, step_s: float, repeat: int) -> tuple[float, bool]:
    """(median ms of one live voice step's reader work, whether the model folder has a reader).

    Each step is speech, so each changes the window and its functionals are computed afresh
    (ticks between steps reuse them); one step in `steps` also adds a window to the person's
    statistics, as live. Without a reader in the folder, one with made-up weights of the same
    shape (the cost does not depend on the values).
    """
    import numpy as np
    from obs_merlb.labels import EMOTIONS, VOICE
    from obs_merlb.model.voice_reader import VoiceReader, load_reader
    from obs_merlb.perception.functionals import N_FUNCTIONALS, Population
    from obs_merlb.perception.steps import VoiceStep
    from obs_merlb.perception.voice import N_FRAMES, N_MELS
    from obs_merlb.person_reader import ReaderStats, SpeechWindow, fused

    reader = load_reader(model_dir) if model_dir else None
    shipped = reader is not None
    rng = np.random.default_rng(0)
    if reader is None:
        ones, zeros = np.ones(N_FUNCTIONALS), np.zeros(N_FUNCTIONALS)
        reader = VoiceReader(Population(zeros, ones), zeros, ones, rng.normal(size=(len(EMOTIONS), N_FUNCTIONALS)),
                             np.zeros(len(EMOTIONS)), tuple(EMOTIONS), 0.5)
    window = SpeechWindow(reader, ReaderStats(reader.population), steps, step_s)
    voice_only = np.zeros((steps, 4), np.float32)
    voice_only[:, VOICE] = 1.0
    probs = {"emotion": np.full(len(EMOTIONS), 1.0 / len(EMOTIONS), np.float32)}
    logmels = (rng.standard_normal((steps + 1, 1, N_MELS, N_FRAMES)) * 2.0 - 8.0).astype(np.float32)
    k = 0

    def step() -> None:
        nonlocal k
        window.put(k, VoiceStep(logmels[k % len(logmels)], 0.9, 0.1, True))
        fused(reader, probs, window.read(k, voice_only))
        k += 1

    return time_ms(step, max(repeat, 200)), shipped


def bench_pitch(repeat: int) -> float:
    """Median ms of one speech step's pitch track (perception/voice.py `pitch_track`, numpy, one
    thread), on noise: YIN's work does not depend on the signal."""
    import numpy as np
    from obs_merlb.perception.voice import NEEDED, pitch_track

    window = np.random.default_rng(0).standard_normal(NEEDED).astype(np.float32)
    return time_ms(lambda: pitch_track(window), max(repeat, 200))


def bench_tt(repeat: int, batch: int = 1) -> dict[str, float]:
    """TT fusion vs the materialized outer product: same layer, same inputs, one thread."""
    import torch
    from obs_merlb.model.tt import TTFusion
    torch.manual_seed(0)
    tt = TTFusion(SEED_DIMS, SEED_OUT_MODES, SEED_RANK).eval()
    # Unit-scale inputs, like the layer-normalised summaries the model fuses.
    vs = [torch.randn(batch, d) for d in SEED_DIMS]
    with torch.inference_mode():
        fast = tt(vs)
        slow = tt.forward_materialized(vs)

        def tt_many() -> None:
            # Ten TT calls per round: one is too short to time against the clock's overhead.
            for _ in range(10):
                tt(vs)

        ms = interleaved_ms({"tt": tt_many, "materialized": lambda: tt.forward_materialized(vs)}, repeat)
    tt64 = TTFusion(SEED_DIMS, SEED_OUT_MODES, SEED_RANK).double()
    tt64.load_state_dict(tt.state_dict())
    with torch.no_grad():
        vs64 = [v.double() for v in vs]
        diff64 = float((tt64(vs64) - tt64.forward_materialized(vs64)).abs().max())
    tt_ms = ms["tt"] / 10
    return {"tt_ms": tt_ms, "materialized_ms": ms["materialized"], "tt_speedup": ms["materialized"] / tt_ms,
            "tt_max_abs_diff": float((fast - slow).abs().max()), "tt_max_abs_diff_float64": diff64,
            "tt_output_scale": float(fast.abs().max()), "tt_batch": batch,
            "materialized_values": float((SEED_DIMS[0] + 1) ** len(SEED_DIMS))}


def _parts(model: Any) -> dict[str, tuple[Any, tuple, list[str]]]:
    """name -> (module, example inputs, input names) for every timed part at batch 1."""
    import torch
    from torch import nn
    from obs_merlb.model.export import _Sequence, _Whole, example_inputs
    cfg = model.cfg
    ex = example_inputs(model, batch=1)
    mods = model.modalities
    heads = model.head_names
    fusion = model.fusion
    mask = ex["mask"][..., model.mask_cols]
    with torch.no_grad():
        embs = [model.encode(m, ex[m][0]).unsqueeze(0) for m in mods]
        presence = mask.amax(dim=1)
        h = fusion.temporal(embs, mask)
        z = fusion.fuse(h, presence)

    class Stage(nn.Module):
        """One fusion stage as a module (the fusion registered inside, so export sees its weights)."""

        def __init__(self, stage: str) -> None:
            super().__init__()
            self.fusion = fusion
            self.stage = stage

        def forward(self, *a: torch.Tensor) -> Any:
            if self.stage == "temporal":
                return self.fusion.temporal(list(a[:-1]), a[-1])
            if self.stage == "fuse":
                return self.fusion.fuse(*a)
            out = self.fusion.classify(*a)
            return tuple(out[k] for k in heads)

    parts: dict[str, tuple[Any, tuple, list[str]]] = {}
    for m in mods:
        label = f"{m} encoder" + (" (1 s audio)" if m == "voice" else "")
        parts[label] = (model.encoders[m], (ex[m][0, :1],), ["x"])
    parts[f"Bi-LSTM x{len(mods)} (T={cfg.steps})" if cfg.fusion != "early" else f"Bi-LSTM (T={cfg.steps})"] = (
        Stage("temporal"), tuple(embs) + (mask,), [f"e{i}" for i in range(len(mods))] + ["mask"])
    parts[f"fusion ({cfg.fusion})"] = (Stage("fuse"), (h, presence), ["h", "presence"])
    parts["heads"] = (Stage("classify"), (z, presence), ["z", "presence"])
    seq_in = tuple(embs) + (ex["mask"],)
    parts["sequence (LSTM+fusion+heads)"] = (_Sequence(model), seq_in, [f"{m}_e" for m in mods] + ["mask"])
    parts[f"whole model (T={cfg.steps})"] = (_Whole(model), tuple(ex[m] for m in mods) + (ex["mask"],),
                                            mods + ["mask"])
    return parts


def bench_model(model: Any, repeat: int) -> dict[str, dict[str, float]]:
    import onnxruntime as ort
    import torch
    from obs_merlb.model.export import export_module

    def session(path: Path, threads: int) -> Any:
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    results: dict[str, dict[str, float]] = {}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            for i, (name, (module, inputs, names)) in enumerate(_parts(model).items()):
                module.eval()
                torch_ms = time_ms(lambda: module(*inputs), repeat)
                path = Path(tmp) / f"part{i}.onnx"
                outs = module(*inputs)
                n_out = len(outs) if isinstance(outs, tuple) else 1
                export_module(module, inputs, names, [f"y{j}" for j in range(n_out)], {}, path)
                # Constant inputs are folded away by the exporter; feed only what the graph kept.
                feed_all = {n: x.numpy() for n, x in zip(names, inputs)}
                row = {"torch_ms": torch_ms}
                for key, threads in (("ort_1thread_ms", 1), ("ort_default_ms", 0)):
                    s = session(path, threads)
                    feed = {i.name: feed_all[i.name] for i in s.get_inputs()}
                    row[key] = time_ms(lambda: s.run(None, feed), repeat)
                results[name] = row
    finally:
        torch.set_num_threads(torch_threads)
    return results


def _print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    t = Table(title=f"MERLB CPU latency at batch 1 (fusion={report['fusion']}, ms, median)")
    for col in ("part", "torch eager 1 thread", "onnxruntime 1 thread", "onnxruntime default", "ORT speedup"):
        t.add_column(col, justify="right" if col != "part" else "left")
    for name, row in report["components"].items():
        t.add_row(name, f"{row['torch_ms']:.3f}", f"{row['ort_1thread_ms']:.3f}", f"{row['ort_default_ms']:.3f}",
                  f"{row['torch_ms'] / row['ort_1thread_ms']:.1f}x")
    console.print(t)
    tt = Table(title="TT fusion vs materialized outer product (seed sizes: 3 x [1,128], 129^3 = 2.1 M values)")
    for col in ("path", "ms", ""):
        tt.add_column(col)
    tt.add_row("materialized outer product + TT layer (seed)", f"{report['materialized_ms']:.3f}", "")
    tt.add_row("TT contracted mode by mode (ours)", f"{report['tt_ms']:.4f}",
               f"{report['tt_speedup']:.0f}x faster (batch 1)")
    tt.add_row("", "", f"{report['tt_speedup_batch8']:.0f}x faster (batch 8)")
    tt.add_row("max |difference| float32 / float64",
               f"{report['tt_max_abs_diff']:.2e} / {report['tt_max_abs_diff_float64']:.2e}",
               f"outputs up to {report['tt_output_scale']:.2f}")
    console.print(tt)
    console.print(f"person voice baseline, update + normalise: {report['baseline_ms_per_step']:.3f} ms per voice "
                  "step (numpy, one thread" + ("" if report["voice_prior"] else "; this model has no voice prior, "
                                               "so it does not run live") + ")")
    console.print(f"voice reader, step + functionals + read: {report['reader_ms_per_step']:.3f} ms per voice step "
                  "(numpy, one thread" + ("" if report["voice_reader"] else "; this model folder has no voice "
                                          "reader, so it does not run live") + ")")
    console.print(f"pitch track (perception, each speech step): {report['pitch_ms_per_step']:.3f} ms per voice step "
                  "(numpy, one thread)")


def run(args: argparse.Namespace) -> int:
    if args.what == "live":
        module = _live_module()
        if module is None:
            print("merlb bench live: the live benchmark (obs_merlb.live_bench) is not part of this "
                  "installation yet; `merlb bench` (model) works.")
            return 2
        return int(module.run(args) or 0)

    import onnxruntime as ort
    import torch
    from obs_merlb.model import MERLB, MERLBConfig, load_model
    if args.model:
        model = load_model(args.model)
    else:
        torch.manual_seed(0)
        model = MERLB(MERLBConfig(fusion=args.fusion)).eval()
    report: dict[str, Any] = {"fusion": model.cfg.fusion, "steps": model.cfg.steps,
                              "torch": torch.__version__, "onnxruntime": ort.__version__}
    report["components"] = bench_model(model, args.repeat)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report.update(bench_tt(args.repeat))
        # Per sample, batching only widens the gap (the outer product grows with the batch).
        report["tt_speedup_batch8"] = bench_tt(5, batch=8)["tt_speedup"]
        report["voice_prior"] = model.cfg.voice_prior is not None
        report["baseline_ms_per_step"] = bench_baseline(model.cfg.voice_prior, args.repeat)
        report["reader_ms_per_step"], report["voice_reader"] = bench_reader(
            args.model, model.cfg.steps, model.cfg.step_s, args.repeat)
        report["pitch_ms_per_step"] = bench_pitch(args.repeat)
    finally:
        torch.set_num_threads(torch_threads)
    comps = report["components"]
    report["face_ms_ort_1thread"] = comps["face encoder"]["ort_1thread_ms"] if "face encoder" in comps else None
    voice = comps.get("voice encoder (1 s audio)")
    report["voice_ms_per_s_audio_ort_1thread"] = voice["ort_1thread_ms"] if voice else None
    if args.json:
        print(json.dumps(report))
    else:
        _print_tables(report)
    return 0
