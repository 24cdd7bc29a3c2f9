"""The weights file of a saved model folder, checked without torch and without reading the weights.

A safetensors file is an 8-byte header length, a JSON header naming every
tensor's dtype, shape and byte range, then the tensors' bytes. Checking that
the header parses and that its ranges exactly cover the rest of the file
catches what actually damages these files (a copy or a download cut short, a
disk that filled up mid-save, a file overwritten with something else) for
the cost of reading the header: a few kB, where hashing the file would read
all of it at every start. A flipped bit inside the tensor bytes goes
unnoticed; nothing here writes those in place.

The ONNX files need no such check: the live backend loads every one of them
at start anyway, and obs_merlb/inference.py turns a failed load into the
same one-line error.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from .config import WEIGHTS, ModelFolderError

# safetensors refuses headers over 100 MB; a larger length means a damaged first 8 bytes.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def check_weights(directory: str | Path) -> None:
    """Raise ModelFolderError naming model.safetensors if its header or size is not sane."""
    path = Path(directory) / WEIGHTS
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelFolderError(f"{path} is damaged or incomplete ({size} bytes, "
                                       "no safetensors header)")
            header_bytes = fh.read(n)
    except FileNotFoundError:
        raise ModelFolderError(f"{path} is missing") from None
    except OSError as e:
        raise ModelFolderError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise ModelFolderError(f"{path} is damaged: its header is not JSON") from None
    problem = _ranges_problem(header, size - 8 - n)
    if problem:
        raise ModelFolderError(f"{path} is damaged or incomplete: {problem}")


def _ranges_problem(header: Any, data_bytes: int) -> str | None:
    """Why the tensors' byte ranges do not tile the data part exactly, or None."""
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} has no valid dtype, shape and data_offsets"
        if not 0 <= begin <= stop:
            return f"tensor {name!r} has byte range {begin}-{stop}"
        if dtype in DTYPE_BYTES and stop - begin != DTYPE_BYTES[dtype] * math.prod(shape):
            return f"tensor {name!r} ({dtype} {shape}) does not fit its {stop - begin} bytes"
        end = max(end, stop)
    if end != data_bytes:
        return f"the header describes {end} bytes of tensors, the file holds {data_bytes}"
    return None
