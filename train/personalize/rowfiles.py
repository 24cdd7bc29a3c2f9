"""A recording's per-step arrays read by step range from disk, never whole.

A shard keeps a recording's steps compressed, and a compressed member can
only be read from its start: an hour of face crops and log-mels is ~240 MB
once loaded. Personalizing reads a few seconds around each tag, and runs the
frozen encoders over a recording block by block, so each large array (face,
voice, pose, scene) is unpacked once into an uncompressed `.npy` file under
the cache (`UNPACKED`, named by the shard's content key: a changed recording
or setting gets a new one) and read by rows from there. The small per-step
arrays (mask, speech probability, energy) stay in memory (~16 bytes a step).
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from obs_merlb.labels import MODALITIES

UNPACKED = "unpacked"        # folder in the features cache
RUN_GAP = 64                 # rows: an index list is read as runs no further apart than this
RUN_ROWS = 256               # and no longer than this (a voice row is 12.8 KB)


class RowFile:
    """Rows ``start..stop`` of a .npy file, read on demand: ``x[a:b]``, ``x[i]``, ``x[indices]``."""

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            self._offset = fh.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not read by rows")
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(shape[1:])
        self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._start = start
        self.shape = ((shape[0] if stop is None else stop) - start, *self.row_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, a: int, b: int) -> np.ndarray:
        out = np.empty((max(0, b - a), *self.row_shape), self.dtype)
        if b > a:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset + (self._start + a) * self._row_bytes)
                if fh.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise OSError(f"{self.path} is shorter than its header says")
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            a, b, step = key.indices(n)
            if step != 1:
                raise IndexError("RowFile reads contiguous rows only")
            return self._read(a, max(a, b))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {key} of {n}")
            return self._read(i, i + 1)[0]
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"rows out of range 0..{n}")
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        # Nearby rows in one read: a run skips at most RUN_GAP rows at a time and spans at most RUN_ROWS.
        j = 0
        while j < len(srt):
            lo = int(srt[j])
            e = j + 1
            while e < len(srt) and srt[e] - srt[e - 1] <= RUN_GAP and srt[e] - lo < RUN_ROWS:
                e += 1
            out[order[j:e]] = self._read(lo, int(srt[e - 1]) + 1)[srt[j:e] - lo]
            j = e
        return out


def _unpack(shard: Path, member: str, dst: Path) -> None:
    """Copy one array of a shard out, decompressed, in blocks (written then renamed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")     # a name per process: two runs never mix
    try:
        with zipfile.ZipFile(shard) as zf, zf.open(member + ".npy") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def recording_arrays(shard: str | os.PathLike, key: str, cache: str | os.PathLike,
                     small: tuple[str, ...]) -> dict[str, Any]:
    """The arrays of item ``key`` in ``shard``: ``mask`` and the ``small`` per-step arrays
    in memory, each present modality as a `RowFile`."""
    shard = Path(shard)
    with np.load(shard, allow_pickle=False) as z:
        i = z["keys"].tolist().index(key)
        a, b = (int(x) for x in z["offsets"][i:i + 2])
        arrays: dict[str, Any] = {"mask": z["mask"][a:b]}
        for name in small:
            if name in z.files:
                arrays[name] = z[name][a:b]
        big = [m for m in MODALITIES if m in z.files and arrays["mask"][:, MODALITIES.index(m)].any()]
    for m in big:
        path = Path(cache) / UNPACKED / f"{shard.stem}.{m}.npy"
        if not path.is_file():
            _unpack(shard, m, path)
        arrays[m] = RowFile(path, a, b)
    return arrays
