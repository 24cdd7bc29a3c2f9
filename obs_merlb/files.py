"""Atomic file replacement (the config, the registry, status files and caches) and the check of an output folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, durable: bool = True) -> Path:
    """Replace `path` so that a reader, or a crash, sees the old file or the new one, never half.

    The temporary file comes from mkstemp, which creates it 0600: a secret
    (the obs-websocket password in the config) is never readable by others,
    not even before the rename. `durable` fsyncs the data first; skip it for
    files rewritten every second, where the next write repairs a lost one.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def check_writable(folder: Path, flag: str) -> None:
    """Refuse a folder that cannot take files before any work (`eval` writes its results only at the end).

    SystemExit with one line naming `flag`, the command-line option that gave the folder. Folders made for the trial are removed again, so a run refused later leaves none behind.
    """
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"{flag} {folder}: is a file, not a folder")
    made = [p for p in (folder, *folder.parents) if not p.exists()]     # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SystemExit(f"{flag} {folder}: cannot write there ({e.strerror or e})") from None
    finally:
        for p in made:
            try:
                p.rmdir()
            except OSError:
                break
