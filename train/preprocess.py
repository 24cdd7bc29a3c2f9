"""`merlb preprocess`: datasets -> cached per-step features (compressed shards).

Every item becomes a run of time steps on the grid of docs/ARCHITECTURE.md,
computed by `obs_merlb.perception`, the same code the live engine runs, so
training sees exactly the features it will see live.

* Images (FER-style) are one step (T=1) holding only a face. A pre-cropped
  face (at most `precropped_max` px on its short side, FER2013 is 48x48) is
  resized straight to the face crop size: mediapipe's detector needs context
  around a face and finds nothing in a 48x48 crop that is all face, and the
  live crop is framed like FER2013 anyway (the face fills the crop). A larger
  image (a photo) goes through the live face path (detection, mesh, eye
  alignment).
* Audio and video files go through `perception.steps.clip_steps`: decoded in
  sync through PyAV, audio resampled to 16 kHz, and per step the face crop,
  log-mel voice patch with its VAD mask, pose landmarks and scene thumbnail.

Shards are `np.savez_compressed` files (read back with allow_pickle=False),
named by a key made of the member files' content hashes, the item's time
range and a hash of the feature settings: unchanged data is never decoded
twice, a changed file or setting is, and an interrupted run resumes where it
stopped. A recording streams into its shard in flat memory, whatever its
length: its steps are appended to spool files under `partial/<key>/` as
they are made, with a checkpoint every minute of media, so an interrupted
recording continues from its last checkpoint; the shard is assembled from
the spools at the end (the same file `np.savez_compressed` writes). A file that cannot be read is reported by name and skipped (the
failure is cached too, so a rerun does not decode it again; `--retry-failed`
tries again).

Storage: faces and scenes as uint8 (the crops come from 8-bit video; the
rounding is below 1/255), voice, pitch and pose as float16 (log-mel values
are within about +-20, pitch within 0-40 semitones, where float16 keeps 3
significant digits). A modality with
no present step in an item is not stored at all.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import io
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import platformdirs

from obs_merlb.cli import positive_float, positive_int, refuse
from obs_merlb.config import APP_NAME
from obs_merlb.files import check_writable, write_atomic
from obs_merlb.labels import FACE, MODALITIES
from obs_merlb.perception.voice import PITCH_FRAMES

from .datasets import FORMATS, VOTES_HELP, DatasetError, Item, detect_format, load_items, parse_votes

log = logging.getLogger(__name__)

FEATURE_VERSION = 2          # bump when the stored features change meaning (2: voice steps carry pitch)
IMAGE_CHUNK = 256            # images per shard: FER2013 would be 28k tiny files otherwise
CHECKPOINT_EVERY_S = 60.0    # media seconds between checkpoints of a recording's partial shard
STEP_SHAPES = {"face": (1, 64, 64), "voice": (1, 64, 100), "body": (132,), "scene": (3, 128, 128)}
# Per-step voice data beside the log-mel, name -> shape of one step: speech probability and energy
# (key-segment selection per training window) and the pitch track (the voice reader).
PER_STEP = {"speech_prob": (), "energy": (), "pitch": (2, PITCH_FRAMES)}
STORE_DTYPE = {"face": np.uint8, "voice": np.float16, "body": np.float16, "scene": np.uint8}


@dataclass(frozen=True)
class FeatureSettings:
    """Everything that changes the features; its hash is part of every shard key."""

    step_s: float = 0.25
    face_size: int = 64
    precropped_max: int = 128
    body: bool = False             # pose costs ~15 ms a frame; public sets have no body labels
    scene: bool = False            # public sets have no gameplay; thumbnails cost 48 KB a step
    version: int = FEATURE_VERSION

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- keys


def file_digest(path: str | os.PathLike, cache: dict[str, list[Any]] | None = None) -> str:
    """Content hash of a file; `cache` (path -> [size, mtime_ns, hash]) skips re-reading unchanged files."""
    p = os.fspath(path)
    st = os.stat(p)
    if cache is not None:
        hit = cache.get(p)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if cache is not None:
        cache[p] = [st.st_size, st.st_mtime_ns, digest]
    return digest


def item_key(content: str, item: Item, settings_digest: str) -> str:
    raw = f"{content}|{item.start}|{item.end}|{item.kind}|{settings_digest}"
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- features


def _empty_steps(n: int) -> dict[str, np.ndarray]:
    return {"mask": np.zeros((n, len(MODALITIES)), np.uint8)}


def image_steps(path: str, settings: FeatureSettings) -> dict[str, np.ndarray]:
    """One step holding the face of an image file."""
    import cv2

    grey = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if grey is None or grey.size == 0:
        raise ValueError("not an image OpenCV can read")
    size = settings.face_size
    h, w = grey.shape
    if min(h, w) <= settings.precropped_max:
        crop = cv2.resize(grey, (size, size),
                          interpolation=cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR)
    else:
        crop = _detect_face(path, size)
    out = _empty_steps(1)
    out["face"] = crop.reshape(1, 1, size, size).astype(np.uint8)
    out["mask"][0, FACE] = 1
    return out


def _detect_face(path: str, size: int) -> np.ndarray:
    """The live face path on a photo: detection, mesh, eye-aligned grey crop (uint8)."""
    import cv2

    from obs_merlb.perception import face as face_mod

    rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with face_mod.FaceCropper(static=True) as cropper:
        res = cropper(rgb)
    crop = None if res is None else getattr(res, "crop", res)
    if crop is None:
        raise ValueError("no face found in the image")
    crop = np.asarray(crop)
    if crop.dtype != np.uint8:
        crop = np.clip(np.round(crop * 255.0), 0, 255).astype(np.uint8)
    return crop.reshape(size, size)


_PERCEIVERS: dict[str, Any] = {}


def _perceiver(settings: FeatureSettings):
    """One Perceiver per process and settings: mediapipe and VAD models load once, not per file."""
    from obs_merlb.perception import steps as steps_mod

    key = settings.digest()
    if key not in _PERCEIVERS:
        _PERCEIVERS[key] = steps_mod.Perceiver(face=True, voice=True, body=settings.body,
                                               scene=settings.scene, static=True)
    return _PERCEIVERS[key]


def stored(modality: str, steps: np.ndarray) -> np.ndarray:
    """Float32 step arrays of one modality as a shard keeps them (see Storage above)."""
    arr = np.asarray(steps, dtype=np.float32).reshape(-1, *STEP_SHAPES[modality])
    if STORE_DTYPE[modality] == np.uint8:
        arr = np.clip(np.round(arr * 255.0), 0, 255)
    return arr.astype(STORE_DTYPE[modality])


def compute_steps(item: Item, settings: FeatureSettings) -> dict[str, np.ndarray]:
    """An image item's steps (media items stream into their shard: `media_shard`)."""
    return image_steps(item.path, settings)


# --------------------------------------------------------------------------- long media


class _Spools:
    """Per-array append-only files of one item's steps (storage dtypes), truncatable to a checkpoint."""

    def __init__(self, folder: Path, names: Sequence[str], sizes: dict[str, int] | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.files = {}
        for name in names:
            path = folder / f"{name}.bin"
            if sizes is not None:
                os.truncate(path, sizes[name])
            self.files[name] = open(path, "ab" if sizes is not None else "wb")

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        for name, fh in self.files.items():
            fh.write(np.ascontiguousarray(arrays[name]).tobytes())

    def sizes(self) -> dict[str, int]:
        for fh in self.files.values():
            fh.flush()
        return {name: fh.tell() for name, fh in self.files.items()}

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def _spool_layout(settings: FeatureSettings) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Array name -> (storage dtype, shape of one step)."""
    layout: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
        "mask": (np.dtype(np.uint8), (len(MODALITIES),)),
        **{k: (np.dtype(np.float16), shape) for k, shape in PER_STEP.items()}}
    for m, on in (("face", True), ("voice", True), ("body", settings.body), ("scene", settings.scene)):
        if on:
            layout[m] = (np.dtype(STORE_DTYPE[m]), STEP_SHAPES[m])
    return layout


def media_shard(key: str, item: Item, settings: FeatureSettings, shard_path: Path,
                partial_root: Path, on_progress: Callable[[float], None] | None = None,
                on_note: Callable[[str], None] | None = None) -> int:
    """Stream a media item's steps into its shard (resumable); returns its number of steps.

    Key-segment selection is not applied here: it is per window (the live
    engine selects within each T-step window), so training applies it to
    each window it cuts, from the stored speech probability and energy.
    """
    from obs_merlb import resume
    from obs_merlb.capture.file import probe, undeclared_length_note
    from obs_merlb.perception import steps as steps_mod

    folder = partial_root / key
    layout = _spool_layout(settings)
    job = {"key": key, "layout": sorted(layout), "version": 1}
    ckpt = resume.load(folder / "checkpoint.json", job)
    spools = _Spools(folder, list(layout), ckpt["sizes"] if ckpt else None)
    done = ckpt["steps"] if ckpt else 0                      # clip steps already spooled (selected or not)
    present = np.array(ckpt["present"] if ckpt else [False] * len(MODALITIES))
    next_save = (done * settings.step_s) + CHECKPOINT_EVERY_S
    try:
        for block in steps_mod.iter_clip_steps(item.path, step_s=settings.step_s, face=True, voice=True,
                                               body=settings.body, scene=settings.scene,
                                               perceiver=_perceiver(settings), from_step=done,
                                               on_progress=on_progress, on_warning=on_note):
            sel = np.ones(len(block.times), dtype=bool)
            if item.start is not None:
                sel &= block.times >= item.start - 1e-6
            if item.end is not None:
                sel &= block.times + settings.step_s <= item.end + 1e-6
            mask = (np.asarray(block.mask)[sel] > 0).astype(np.uint8)
            present |= mask.any(axis=0).astype(bool)
            arrays = {"mask": mask, **{k: np.asarray(getattr(block, k), np.float16)[sel] for k in PER_STEP}}
            arrays.update({m: stored(m, np.asarray(getattr(block, m))[sel]) for m in layout if m in STEP_SHAPES})
            spools.append(arrays)
            done += len(block.times)
            if done * settings.step_s >= next_save:
                resume.save(folder / "checkpoint.json", {"job": job, "steps": done, "sizes": spools.sizes(),
                                                         "present": present.tolist()})
                next_save = done * settings.step_s + CHECKPOINT_EVERY_S
        sizes = spools.sizes()
    finally:
        spools.close()
    cut = undeclared_length_note(probe(item.path), done * settings.step_s)
    if cut is not None and on_note is not None:
        on_note(cut)
    n = sizes["mask"] // len(MODALITIES)
    if n == 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise ValueError("no time steps (clip shorter than one step)")
    small = {"keys": np.array([key], dtype="U32"), "offsets": np.array([0, n], np.int64),
             "failed": np.zeros(0, "U32"), "errors": np.zeros(0, "U1")}
    # A modality with no present step is not stored (see Storage above).
    spooled = {name: (folder / f"{name}.bin", dt, shape) for name, (dt, shape) in layout.items()
               if name not in STEP_SHAPES or present[MODALITIES.index(name)]}
    write_shard_streamed(shard_path, small, spooled, n)
    shutil.rmtree(folder, ignore_errors=True)
    return n


# --------------------------------------------------------------------------- shards


def _pack(keys: Sequence[str], results: Sequence[dict[str, np.ndarray]],
          failed: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Samples concatenated along steps, with offsets; zeros for absent modalities."""
    lengths = [r["mask"].shape[0] for r in results]
    offsets = np.zeros(len(results) + 1, np.int64)
    offsets[1:] = np.cumsum(lengths)
    arrays: dict[str, np.ndarray] = {
        "keys": np.array(list(keys), dtype="U32"), "offsets": offsets,
        "failed": np.array([k for k, _ in failed], dtype="U32"),
        "errors": np.array([e for _, e in failed], dtype=str) if failed else np.zeros(0, "U1"),
        "mask": (np.concatenate([r["mask"] for r in results]) if results
                 else np.zeros((0, len(MODALITIES)), np.uint8)),
    }
    for k in PER_STEP:
        if any(k in r for r in results):
            arrays[k] = np.concatenate([r[k] if k in r else np.zeros((r["mask"].shape[0], *PER_STEP[k]), np.float16)
                                        for r in results])
    for m in MODALITIES:
        if any(m in r for r in results):
            arrays[m] = np.concatenate([
                r[m] if m in r else np.zeros((r["mask"].shape[0], *STEP_SHAPES[m]), STORE_DTYPE[m])
                for r in results])
    return arrays


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Write then rename (to a temporary name of its own): an interrupted run
    # never leaves a half shard behind, and two runs filling one cache never
    # write into each other's file.
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue(), durable=False)


def write_shard_streamed(path: Path, small: dict[str, np.ndarray],
                         spooled: dict[str, tuple[Path, np.dtype, tuple[int, ...]]], n: int) -> None:
    """`write_shard` for arrays too big to hold: each spooled array (raw rows of one
    dtype and step shape) is copied into the .npz in blocks, never loaded whole."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for name, arr in small.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
            for name, (src, dtype, shape) in spooled.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as fh, open(src, "rb") as raw:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                              "shape": (n, *shape)}
                    np.lib.format.write_array_header_2_0(fh, header)
                    shutil.copyfileobj(raw, fh, 1 << 20)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def shard_index(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A shard's keys, failed keys and errors, without loading its steps (hours of a
    recording's steps are hundreds of MB)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in ("keys", "failed", "errors")}


def unpack(shard: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """key -> per-item arrays, features back to float32 in their live ranges."""
    out: dict[str, dict[str, np.ndarray]] = {}
    off = shard["offsets"]
    for i, key in enumerate(shard["keys"].tolist()):
        a, b = int(off[i]), int(off[i + 1])
        rec = {"mask": shard["mask"][a:b].astype(np.float32)}
        for k in PER_STEP:
            if k in shard:
                rec[k] = shard[k][a:b].astype(np.float32)
        for m in MODALITIES:
            if m in shard:
                x = shard[m][a:b].astype(np.float32)
                rec[m] = x / 255.0 if STORE_DTYPE[m] == np.uint8 else x
        out[key] = rec
    return out


def _failure(e: Exception) -> str:
    return getattr(e, "reason", None) or str(e) or type(e).__name__


def _run_media(key: str, item: Item, settings: FeatureSettings, shard_path: Path,
               on_progress: Callable[[float], None] | None,
               on_note: Callable[[str], None] | None) -> tuple[str, str | None, int]:
    """One recording into its shard; a file that cannot be read gets a shard saying so."""
    try:
        return key, None, media_shard(key, item, settings, shard_path, shard_path.parents[2] / "partial",
                                      on_progress, on_note)
    except (ImportError, MemoryError):
        raise  # an environment problem, not this file's: stop the run and say so
    except Exception as e:  # noqa: BLE001 - any decoder error means "this file is unreadable"
        shutil.rmtree(shard_path.parents[2] / "partial" / key, ignore_errors=True)
        msg = _failure(e)
        write_shard(shard_path, _pack([], [], [(key, msg)]))
        return key, msg, 0


def _run_chunk(tasks: list[tuple[str, Item]], settings: FeatureSettings, shard_path: str,
               on_progress: Callable[[float], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> list[tuple[str, str | None, int]]:
    """Compute a chunk's items and write its shard; (key, error or None, n_steps) per item.

    Runs in a worker process: only the small summary travels back.
    """
    if len(tasks) == 1 and tasks[0][1].kind != "image":
        return [_run_media(*tasks[0], settings, Path(shard_path), on_progress, on_note)]
    keys, results, failed, summary = [], [], [], []
    for key, item in tasks:
        try:
            res = compute_steps(item, settings)
            if res["mask"].shape[0] == 0:
                raise ValueError("no time steps (clip shorter than one step)")
        except (ImportError, MemoryError):
            raise  # an environment problem, not this file's: stop the run and say so
        except Exception as e:  # noqa: BLE001 - any decoder error means "this file is unreadable"
            msg = _failure(e)
            failed.append((key, msg))
            summary.append((key, msg, 0))
            continue
        keys.append(key)
        results.append(res)
        summary.append((key, None, int(res["mask"].shape[0])))
    write_shard(Path(shard_path), _pack(keys, results, failed))
    return summary


# --------------------------------------------------------------------------- the run


@dataclass
class Prepared:
    """The preprocessed form of one dataset: items with where their steps live."""

    items: list[Item]
    shards: list[str]              # shard file per item (parallel to items)
    keys: list[str]
    failed: dict[str, str] = field(default_factory=dict)   # path -> reason
    manifest: Path | None = None

    def load(self) -> list[dict[str, np.ndarray]]:
        """Per item, its arrays (`mask` and every stored modality), in item order."""
        by_shard: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        out = []
        for shard, key in zip(self.shards, self.keys):
            if shard not in by_shard:
                by_shard[shard] = unpack(read_shard(shard))
            out.append(by_shard[shard][key])
        return out


def _console():
    from rich.console import Console
    return Console(stderr=True)


def _progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[failed]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=False, disable=not console.is_terminal and not os.environ.get("MERLB_PROGRESS"))


class _RecordingProgress:
    """Progress of one recording computed in this process: media time done, speed and ETA,
    as a row under the files bar on a terminal, else a log line now and then."""

    def __init__(self, path: str, progress: Any, console: Any, quiet: bool) -> None:
        from obs_merlb.capture.file import MediaError, probe
        from obs_merlb.jobprogress import MediaProgress

        try:
            self.duration = probe(path).duration
        except MediaError:
            self.duration = None
        self.name, self.progress, self.console, self.quiet = Path(path).name, progress, console, quiet
        self.on_bar = not quiet and not progress.disable
        self.media = MediaProgress(f"preprocess {self.name}", self.duration, stream=console.file,
                                   enabled=not quiet and not self.on_bar)
        self.row: Any = None
        self._last = 0.0

    def __enter__(self) -> "_RecordingProgress":
        if self.on_bar:
            self.row = self.progress.add_task(self.name, total=self.duration or 1.0, rate="", failed="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.row is not None:
            self.progress.remove_task(self.row)

    def update(self, t: float) -> None:
        self.media.update(t)
        if self.row is not None and time.monotonic() - self._last > 0.2:
            self._last = time.monotonic()
            self.progress.update(self.row, completed=min(t, self.duration or t), rate=self.media.line(short=True))

    def note(self, text: str) -> None:
        log.warning("%s", text)
        if not self.quiet:
            self.console.print(f"[yellow]note[/] {text}")


def _manifest_name(src: Path, fmt: str, settings: FeatureSettings, votes: Path | bool = True) -> str:
    # The labels differ with the votes, the features do not: only the manifest tells them apart.
    which = "" if votes is True else f"|votes={votes if votes is False else Path(votes).resolve()}"
    h = hashlib.sha1(f"{src.resolve()}|{fmt}|{settings.digest()}{which}".encode()).hexdigest()[:10]
    return f"{src.name or 'data'}-{fmt}-{h}.json"


def prepare(path: str | os.PathLike, cache: str | os.PathLike, *, fmt: str | None = None,
            settings: FeatureSettings | None = None, workers: int = 1,
            items: Sequence[Item] | None = None, retry_failed: bool = False,
            limit: int | None = None, quiet: bool = False, votes: Path | bool = True) -> Prepared:
    """Preprocess the dataset at `path` into `cache` (work already done is reused).

    `votes` (datasets.parse_votes) picks the FER+ votes of image folders; the
    features do not depend on it, so the cached shards serve every choice.
    """
    settings = settings or FeatureSettings()
    src = Path(path)
    fmt = fmt or detect_format(src)
    if items is None:
        items = load_items(src, fmt, votes)
    items = list(items)[:limit] if limit else list(items)
    cache = Path(cache)
    (cache / "shards").mkdir(parents=True, exist_ok=True)
    hash_file = cache / "hashes.json"
    hashes: dict[str, list[Any]] = json.loads(hash_file.read_text()) if hash_file.exists() else {}
    console = _console()
    sdig = settings.digest()

    # Items whose file cannot even be read for hashing fail here, by name.
    failed: dict[str, str] = {}
    keyed: list[tuple[str, Item]] = []
    for it in items:
        try:
            keyed.append((item_key(file_digest(it.path, hashes), it, sdig), it))
        except OSError as e:
            failed[it.path] = f"cannot read ({e.strerror or e})"
    # Atomic: a second run preprocessing into the same cache may read it right now.
    write_atomic(hash_file, json.dumps(hashes), durable=False)

    # Chunks: media one per shard (resume granularity = one clip), images by IMAGE_CHUNK.
    chunks: list[list[tuple[str, Item]]] = []
    images = [kv for kv in keyed if kv[1].kind == "image"]
    chunks += [[kv] for kv in keyed if kv[1].kind != "image"]
    chunks += [images[i:i + IMAGE_CHUNK] for i in range(0, len(images), IMAGE_CHUNK)]

    def shard_of(chunk: list[tuple[str, Item]]) -> Path:
        if len(chunk) == 1:
            name = chunk[0][0]
        else:
            name = hashlib.blake2b("".join(k for k, _ in chunk).encode(), digest_size=16).hexdigest()
        return cache / "shards" / name[:2] / f"{name}.npz"

    shard_paths = [shard_of(c) for c in chunks]
    todo = []
    for chunk, sp in zip(chunks, shard_paths):
        if sp.exists() and retry_failed and len(shard_index(sp)["failed"]):
            sp.unlink()
        if not sp.exists():
            sp.parent.mkdir(parents=True, exist_ok=True)
            todo.append((chunk, sp))

    n_todo = sum(len(c) for c, _ in todo)
    t0 = time.perf_counter()
    done = 0
    n_failed_new = 0
    with _progress(console) as progress:
        task = progress.add_task(f"preprocess {src.name}", total=n_todo, rate="-", failed="")

        def finished(chunk: list[tuple[str, Item]], summary: list[tuple[str, str | None, int]]) -> None:
            nonlocal done, n_failed_new
            by_key = {k: it for k, it in chunk}
            for key, err, _ in summary:
                if err is not None:
                    n_failed_new += 1
                    msg = f"skipped {by_key[key].path}: {err}"
                    # One channel, not both: the console keeps the line above a live progress bar.
                    if quiet:
                        log.warning(msg)
                    else:
                        console.print(f"[yellow]warning[/] {msg}")
            done += len(chunk)
            dt = max(time.perf_counter() - t0, 1e-6)
            progress.update(task, advance=len(chunk), rate=f"{done / dt:.1f} files/s",
                            failed=f"{n_failed_new} failed" if n_failed_new else "")

        if workers <= 1 or len(todo) <= 1:
            for chunk, sp in todo:
                if len(chunk) == 1 and chunk[0][1].kind != "image":
                    with _RecordingProgress(chunk[0][1].path, progress, console, quiet) as rp:
                        finished(chunk, _run_chunk(chunk, settings, str(sp), rp.update, rp.note))
                else:
                    finished(chunk, _run_chunk(chunk, settings, str(sp)))
        else:
            # spawn: mediapipe and torch do not survive fork() in a process that has threads.
            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                        initializer=_worker_init) as pool:
                futures = {pool.submit(_run_chunk, chunk, settings, str(sp)): chunk for chunk, sp in todo}
                for fut in cf.as_completed(futures):
                    finished(futures[fut], fut.result())
    elapsed = time.perf_counter() - t0

    # Assemble the result from the shards (new and old alike).
    out_items, out_shards, out_keys = [], [], []
    for chunk, sp in zip(chunks, shard_paths):
        shard = shard_index(sp)
        present = set(shard["keys"].tolist())
        errors = dict(zip(shard["failed"].tolist(), shard["errors"].tolist()))
        for key, it in chunk:
            if key in present:
                out_items.append(it)
                out_shards.append(str(sp))
                out_keys.append(key)
            else:
                failed[it.path] = errors.get(key, "failed")
    for p, reason in failed.items():
        if n_todo == 0 or not any(p == it.path for c, _ in todo for _, it in c):
            # Failures from earlier runs are still named, so nobody wonders where a file went.
            log.warning("skipped %s: %s", p, reason)

    manifest = cache / "manifests" / _manifest_name(src, fmt, settings, votes)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "source": str(src.resolve()), "format": fmt, "settings": asdict(settings),
        "items": [{**asdict(it), "shard": os.path.relpath(s, cache), "key": k}
                  for it, s, k in zip(out_items, out_shards, out_keys)],
        "failed": failed,
    }, indent=1))
    if not quiet:
        rate = n_todo / elapsed if n_todo and elapsed > 0 else 0.0
        console.print(f"[green]{len(out_items)}[/] items ready in {cache} "
                      f"({n_todo} computed at {rate:.1f} files/s, {len(items) - n_todo - len(failed) + n_failed_new} cached, "
                      f"{len(failed)} skipped)")
    return Prepared(out_items, out_shards, out_keys, failed, manifest)


def load_manifest(path: str | os.PathLike) -> Prepared:
    """A Prepared from a manifest file written by `prepare` (no source data needed)."""
    path = Path(path)
    doc = json.loads(path.read_text())
    cache = path.parent.parent
    items, shards, keys = [], [], []
    for rec in doc["items"]:
        shards.append(str(cache / rec.pop("shard")))
        keys.append(rec.pop("key"))
        items.append(Item(**rec))
    return Prepared(items, shards, keys, doc.get("failed", {}), path)


def _worker_init() -> None:
    # Each worker is one process on one core: no thread pools fighting the other workers.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass


def default_cache() -> Path:
    env = os.environ.get("MERLB_CACHE")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "features"


def default_workers() -> int:
    return max(1, min(2, (os.cpu_count() or 1) - 1))


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="dataset folder or CSV (layout detected; see --format)")
    parser.add_argument("--out", "--cache", dest="cache", default=None,
                        help=f"feature cache folder (default $MERLB_CACHE or {default_cache()})")
    parser.add_argument("--format", choices=FORMATS, default=None, help="override layout detection")
    parser.add_argument("--workers", "-j", type=positive_int, default=default_workers(),
                        help="parallel processes (default %(default)s)")
    parser.add_argument("--step-s", type=positive_float, default=FeatureSettings.step_s)
    parser.add_argument("--body", action="store_true", help="also store pose landmarks")
    parser.add_argument("--scene", action="store_true", help="also store gameplay thumbnails")
    parser.add_argument("--limit", type=positive_int, default=None, help="first N items only (quick looks)")
    parser.add_argument("--votes", default="auto", metavar="auto|none|CSV", help=VOTES_HELP)
    parser.add_argument("--retry-failed", action="store_true",
                        help="try files that failed in an earlier run again")


def settings_from_args(args: argparse.Namespace) -> FeatureSettings:
    return FeatureSettings(step_s=args.step_s, body=bool(args.body), scene=bool(args.scene))


def run(args: argparse.Namespace) -> int:
    cache = Path(args.cache) if args.cache else default_cache()
    settings = settings_from_args(args)
    check_writable(cache, "--out")
    for p in args.paths:
        try:
            fmt = args.format or detect_format(p)
            votes = parse_votes(args.votes)
            items = load_items(p, fmt, votes)
            if not items:   # a forced --format, or a label CSV with no rows
                raise DatasetError(f"{p}: no items in the {fmt} layout")
            prep = prepare(p, cache, fmt=fmt, settings=settings, workers=args.workers,
                           items=items, retry_failed=args.retry_failed, limit=args.limit, votes=votes)
        except DatasetError as e:
            return refuse("preprocess", str(e))
        _console().print(f"manifest: {prep.manifest}")
    # Skipped files are warnings, not errors: the run finished on the rest.
    return 0

