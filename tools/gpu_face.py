"""The GPU face recipe on a lent GPU machine: pack here, train there, score here.

A lent machine (the workplace's `device` tool) gets a copy of the repository
and nothing beside it: no `../shared/data`, and a Python with torch but not
this project's capture and UI packages. So:

    python tools/gpu_face.py pack                 # here: FER2013 train and val as tars in .device/
    # device call 1 (carry .device/fer_train.tar.gz):
    python3 tools/gpu_face.py unpack train
    # device call 2, at once, while the machine is warm (carry .device/fer_val.tar.gz, .device/whl):
    python3 tools/gpu_face.py unpack val && python3 tools/gpu_face.py train
    # here, on the files that came back:
    merlb eval ../shared/data/fer2013/val --model <them> --json

`pack` prints the two calls in full. The split is forced by the 64 MiB a call
carries: the tracked tree (~21 MB) and FER2013 train with its votes (~45 MB)
fill one, val (~6 MB) comes with the second. Extracted data lands in
`.device/data` (ignored, so it stays on the warm machine between calls).
`train` installs the project and the two pure-Python packages the machine
lacks (platformdirs, tomli-w, carried as wheels) into /tmp/site, runs
`merlb train --config train/recipes/default_face_gpu.toml --init assets/model`
on the GPU, and copies the model files, summary and training curve to $OUT.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Overridable so a test can play the machine in temporary folders (tests/test_gpu_face.py).
WORK = Path(os.environ.get("GPU_FACE_WORK", ROOT / ".device"))
DATA = WORK / "data" / "fer2013"
WHEELS = WORK / "whl"
SITE = Path(os.environ.get("GPU_FACE_SITE", "/tmp/site"))
RECIPE = ROOT / "train" / "recipes" / "default_face_gpu.toml"
CARRY_LIMIT = 64 * 2**20                # bytes one device call carries, tree included
DEVICE_WHEELS = ("platformdirs", "tomli-w")     # the project's imports the machine's Python lacks
DEVICE_PYTHON = "3.12"
MODEL_FILES = ("model.safetensors", "config.json", "merlb.onnx", "sequence.onnx", "face_encoder.onnx")


def tree_bytes() -> int:
    """What a device call carries of the checkout: tracked files and untracked ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout
    return sum((ROOT / f).stat().st_size for f in set(files.decode().split("\0")) if f and (ROOT / f).is_file())


def pack(data: Path) -> int:
    fer = data / "fer2013"
    missing = [p for p in (fer / "train", fer / "val", fer / "ferplus_votes.csv") if not p.exists()]
    if missing:
        print(f"gpu_face pack: {', '.join(map(str, missing))} not found (name the data folder with --data)",
              file=sys.stderr)
        return 2
    try:
        WORK.mkdir(exist_ok=True)
        with tarfile.open(WORK / "fer_train.tar.gz", "w:gz") as t:
            t.add(fer / "train", "train")
            t.add(fer / "ferplus_votes.csv", "ferplus_votes.csv")
        with tarfile.open(WORK / "fer_val.tar.gz", "w:gz") as t:
            t.add(fer / "val", "val")
    except OSError as e:
        print(f"gpu_face pack: could not write the tars in {WORK}: {e}", file=sys.stderr)
        return 2
    shutil.rmtree(WHEELS, ignore_errors=True)
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                          "--python-version", DEVICE_PYTHON, "--implementation", "py", "-d", str(WHEELS),
                          *DEVICE_WHEELS], capture_output=True, text=True)
    if got.returncode != 0:
        last = (got.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"gpu_face pack: could not fetch the wheels {', '.join(DEVICE_WHEELS)} the machine lacks "
              f"(pip: {last})", file=sys.stderr)
        return 2
    tree, wheels = tree_bytes(), sum(p.stat().st_size for p in WHEELS.iterdir())
    calls = {"train": (WORK / "fer_train.tar.gz", 0), "val": (WORK / "fer_val.tar.gz", wheels)}
    for part, (tar, extra) in calls.items():
        total = tree + extra + tar.stat().st_size
        print(f"call {part}: tree {tree / 2**20:.1f} MiB + wheels {extra / 2**20:.2f} MiB + "
              f"{tar.name} {tar.stat().st_size / 2**20:.1f} MiB = {total / 2**20:.1f} MiB of 64")
        if total > CARRY_LIMIT:
            print(f"gpu_face pack: call {part} would carry {total / 2**20:.1f} MiB, over the 64 MiB a call "
                  f"carries", file=sys.stderr)
            return 2
    print("\nthe two device calls, one straight after the other:\n"
          "  run(command='python3 tools/gpu_face.py unpack train', carry=['.device/fer_train.tar.gz'],"
          " timeout_s=300)\n"
          "  run(command='python3 tools/gpu_face.py unpack val && python3 tools/gpu_face.py train',"
          " carry=['.device/fer_val.tar.gz', '.device/whl'], timeout_s=600)")
    return 0


def unpack(part: str) -> int:
    tar = WORK / f"fer_{part}.tar.gz"
    if not tar.is_file():
        print(f"gpu_face unpack: {tar} did not come with this call (carry it)", file=sys.stderr)
        return 2
    DATA.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar) as t:
        t.extractall(DATA, filter="data")
    print(f"{part}: {sum(1 for _ in (DATA / part).rglob('*.jpg'))} images in {DATA / part}")
    return 0


def install() -> None:
    """The project and the wheels it lacks there, into SITE (the machine's own torch and numpy stay)."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(SITE)]
    wheels = sorted(WHEELS.glob("*.whl"))
    if wheels:
        subprocess.run([*pip, *map(str, wheels)], check=True)
    subprocess.run([*pip, "--no-build-isolation", str(ROOT)], check=True)


def train(out: Path, device: str, extra: list[str]) -> int:
    for part in ("train", "val"):
        if not (DATA / part).is_dir():
            print(f"gpu_face train: {DATA / part} is missing (run `unpack {part}` first)", file=sys.stderr)
            return 2
    install()
    env = {**os.environ, "PYTHONPATH": f"{SITE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    run = WORK / "run"
    cmd = [sys.executable, "-m", "obs_merlb.cli", "train", "--config", str(RECIPE), "--init",
           str(ROOT / "assets" / "model"), "--device", device, "--out", str(run), "--cache", str(WORK / "cache"),
           "--set", f'data=["{DATA / "train"}"]', "--set", f'val_data=["{DATA / "val"}"]', *extra]
    code = subprocess.run(cmd, env=env, cwd="/tmp").returncode
    if code != 0:
        return code
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(run / "model" / name, out / name)
    for name in ("summary.json", "training_curve.png"):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    print(f"model files in {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pack", help="here: FER2013 train/val as tars and the wheels the machine lacks")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    u = sub.add_parser("unpack", help="there: one tar into .device/data")
    u.add_argument("part", choices=("train", "val"))
    t = sub.add_parser("train", help="there: the recipe on the GPU, its model files to $OUT")
    t.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", WORK / "out")))
    t.add_argument("--device", default="cuda")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed on to merlb train (e.g. for a short trial)")
    a = ap.parse_args(argv)
    if a.what == "pack":
        return pack(a.data)
    if a.what == "unpack":
        return unpack(a.part)
    return train(a.out, a.device, [x for s in a.set for x in ("--set", s)])


if __name__ == "__main__":
    raise SystemExit(main())
