"""Checkpoints that let an interrupted long job continue where it stopped.

A checkpoint is a small JSON file written atomically beside the job's
partial output: which input and settings it belongs to (a rerun with a
changed file or setting starts afresh), how far the output is complete, and
the state needed to continue identically. Objects such as the state tracker
are stored as plain JSON (`snapshot` / `restore`), never pickled: a
checkpoint is data, and loading one runs no code. Only the classes a caller
names may be rebuilt.
"""
from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from obs_merlb.files import write_atomic


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What tells a recording from a changed one, cheaply (size and modification time)."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def save(path: str | os.PathLike, doc: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(doc), durable=True)


def load(path: str | os.PathLike, expect: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at `path` when its `job` equals `expect`; None when absent, unreadable or stale."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("job") == json.loads(json.dumps(expect)) else None


def remove(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def snapshot(obj: Any) -> Any:
    """`obj` as JSON-able data: numbers, strings, lists, dicts, arrays, deques and plain objects."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return {"~f": repr(obj)}          # keeps inf and nan, and every bit of the rest
    if isinstance(obj, np.generic):
        return {"~np": obj.dtype.str, "v": snapshot(obj.item())}
    if isinstance(obj, np.ndarray):
        return {"~arr": obj.dtype.str, "shape": list(obj.shape), "v": [snapshot(x) for x in obj.ravel().tolist()]}
    if isinstance(obj, deque):
        return {"~deque": [snapshot(x) for x in obj], "maxlen": obj.maxlen}
    if isinstance(obj, tuple):
        return {"~tuple": [snapshot(x) for x in obj]}
    if isinstance(obj, list):
        return [snapshot(x) for x in obj]
    if isinstance(obj, dict):
        return {"~dict": [[snapshot(k), snapshot(v)] for k, v in obj.items()]}
    if hasattr(obj, "__dict__"):
        return {"~obj": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "v": {k: snapshot(v) for k, v in vars(obj).items()}}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def restore(data: Any, classes: Iterable[type]) -> Any:
    """The object `snapshot` saved; plain objects only of the given classes."""
    allowed = {f"{c.__module__}.{c.__qualname__}": c for c in classes}

    def back(d: Any) -> Any:
        if d is None or isinstance(d, (bool, int, str)):
            return d
        if isinstance(d, list):
            return [back(x) for x in d]
        if "~f" in d:
            return float(d["~f"])
        if "~np" in d:
            return np.dtype(d["~np"]).type(back(d["v"]))
        if "~arr" in d:
            return np.array([back(x) for x in d["v"]], dtype=np.dtype(d["~arr"])).reshape(d["shape"])
        if "~deque" in d:
            return deque((back(x) for x in d["~deque"]), maxlen=d["maxlen"])
        if "~tuple" in d:
            return tuple(back(x) for x in d["~tuple"])
        if "~dict" in d:
            return {back(k): back(v) for k, v in d["~dict"]}
        if "~obj" in d:
            cls = allowed.get(d["~obj"])
            if cls is None:
                raise ValueError(f"a checkpoint may not create a {d['~obj']}")
            obj = cls.__new__(cls)
            obj.__dict__.update({k: back(v) for k, v in d["v"].items()})
            return obj
        raise ValueError("not a checkpoint snapshot")

    return back(data)
