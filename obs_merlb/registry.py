"""The model registry: personalized models in the user data folder, one version each.

Layout (`platformdirs.user_data_dir("obs-merlb")/models/`, or `MERLB_MODELS`):

    models/
      active.json        {"version": "v0003", "since": wall, "history": [...]}
      v0001/             config.json, model.safetensors, ONNX files,
      v0002/             candidate.json (data summary, metrics, gate), report.md, PNGs
      .tmp-<pid>-<rand>/ a candidate still being written (never read)

Crash safety is the point of the layout. A candidate is written into a
`.tmp-*` folder and renamed to its version name only when complete, so a
killed `merlb personalize` leaves at most a temp folder, which nothing reads
and `clean_stale` removes later. `active.json` is replaced atomically
(write, fsync, rename) and only after the validation gate, so the running
worker and the next start always find either the old or the new pointer,
never half of one. Without `active.json` (or after rolling back past the
first version) the shipped default model is used.

Model-folder lookup for every command lives here too (`default_model_dir`,
`resolve_model_dir`, and `shipped_path` for what the package ships: the
repo's `assets/`, installed as the package data `obs_merlb.assets`), so
training and the panel find the model without importing the live engine.
Standard library only: `merlb live` imports it at start.
"""
from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obs_merlb.files import write_atomic

ACTIVE_FILE = "active.json"
CANDIDATE_FILE = "candidate.json"
TMP_PREFIX = ".tmp-"
VERSION_RE = re.compile(r"^v(\d{4,})$")
DEFAULT = "default"
ASSETS_PACKAGE = "obs_merlb.assets"   # the repo's assets/ (pyproject package-dir)

log = logging.getLogger(__name__)
_warned: set[str] = set()   # active.json is read several times per command: say each problem once


def models_dir() -> Path:
    """The registry folder; `MERLB_MODELS` overrides it (portable installs, tests)."""
    override = os.environ.get("MERLB_MODELS")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("obs-merlb", appauthor=False)) / "models"


def _root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root) if root is not None else models_dir()


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Replace `path` so a reader (or a crash) sees the old file or the new one, nothing between."""
    write_atomic(path, json.dumps(doc, indent=1) + "\n")
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    # The rename is durable only once the folder entry is on disk (POSIX); Windows has no dir fds.
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Version:
    name: str
    path: Path
    info: dict[str, Any]

    @property
    def number(self) -> int:
        m = VERSION_RE.match(self.name)
        return int(m.group(1)) if m else -1

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    @property
    def score(self) -> float | None:
        gate = self.info.get("gate") or {}
        v = gate.get("candidate_score")
        return float(v) if isinstance(v, (int, float)) else None


def versions(root: str | os.PathLike[str] | None = None) -> list[Version]:
    """Complete versions, oldest first (temp folders and foreign entries are skipped)."""
    r = _root(root)
    if not r.is_dir():
        return []
    out = []
    for p in r.iterdir():
        if not p.is_dir() or not VERSION_RE.match(p.name) or not (p / "config.json").is_file():
            continue
        try:
            info = json.loads((p / CANDIDATE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        out.append(Version(p.name, p, info))
    out.sort(key=lambda v: v.number)
    return out


def get_version(name: str, root: str | os.PathLike[str] | None = None) -> Version:
    name = normalize_version(name)
    for v in versions(root):
        if v.name == name:
            return v
    raise KeyError(f"no model version {name!r} in {_root(root)}")


def normalize_version(name: str | int) -> str:
    """'3', 3, 'v3', 'v0003' -> 'v0003'."""
    s = str(name).strip().lower()
    if s == DEFAULT:
        return DEFAULT
    s = s[1:] if s.startswith("v") else s
    if not s.isdigit():
        raise KeyError(f"not a version name: {name!r} (use e.g. v0003, 3, or 'default')")
    return f"v{int(s):04d}"


def read_active(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The pointer document; {} when there is none or it is unreadable.

    Checked, not trusted: `version` and each `history` entry's version must
    be 'default' or a version folder's name, never a path (`../x` or an
    absolute path would have loaded any folder as the model). What fails is
    left out, with one warning: the default model, and a rollback over the
    history that is left.
    """
    p = _root(root) / ACTIVE_FILE
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    problems = []
    if doc.get("version") is not None and not _is_version_name(doc["version"]):
        problems.append(f"version {str(doc.pop('version'))[:80]!r} is not a version name")
    history = doc.get("history")
    if history is not None:
        entries = history if isinstance(history, list) else []
        good = [h for h in entries if isinstance(h, dict) and _is_version_name(h.get("version"))]
        if len(good) != len(entries) or not isinstance(history, list):
            problems.append("history is not a list of {\"version\": ...} entries; the bad ones are ignored")
        doc["history"] = good
    message = f"model registry {p}: " + "; ".join(problems)
    if problems and message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
    return doc


def _is_version_name(value: Any) -> bool:
    return isinstance(value, str) and (value == DEFAULT or VERSION_RE.match(value) is not None)


def active_version(root: str | os.PathLike[str] | None = None) -> str | None:
    v = read_active(root).get("version")
    return str(v) if v and v != DEFAULT else None


def active_model_dir(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The active personalized model's folder, or None (use the shipped default).

    A pointer to a folder that vanished (deleted by hand) falls back to the
    default rather than stopping the worker.
    """
    name = active_version(root)
    if not name:
        return None
    d = _root(root) / name
    return d if (d / "config.json").is_file() else None


def shipped_path(name: str) -> Path:
    """A file or folder the package ships (`model`, `demo.mp4`, ...), wherever it is installed."""
    try:
        root = importlib.resources.files(ASSETS_PACKAGE)
    except ModuleNotFoundError:
        # A checkout on sys.path without an install, or an editable install
        # made before assets/ was mapped into the package: its own folder.
        return Path(__file__).resolve().parent.parent / "assets" / name
    # A wheel installs real files, which onnxruntime and PyAV need: a path.
    return Path(str(root / name))


def default_model_dir() -> Path | None:
    """The shipped model (the package's assets/model), or None in a checkout without one."""
    d = shipped_path("model")
    return d if (d / "config.json").is_file() else None


def resolve_model_dir(model: str | None) -> Path:
    """The folder `--model` names, else the active personalized model, else the shipped one."""
    if model:
        p = Path(model).expanduser()
        if not (p / "config.json").is_file():
            raise SystemExit(f"merlb: {p} is not a saved model folder (no config.json)")
        return p
    # The streamer's personalized model (`merlb personalize`) wins over the shipped one.
    d = active_model_dir() or default_model_dir()
    if d is None:
        raise SystemExit("merlb: no model given and no shipped model (assets/model); "
                         "pass --model DIR (a folder written by `merlb train` or save_model)")
    return d


def set_active(name: str, reason: str, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Point `active.json` at version `name` (or 'default'); keeps a history for rollback.

    Activating the version that is already active changes nothing, the file
    included: the history holds only real switches, so `rollback` still
    returns to the version that was active before this one.
    """
    r = _root(root)
    name = normalize_version(name)
    if name != DEFAULT:
        get_version(name, r)   # raises for an unknown or incomplete version
    doc = read_active(r)
    prev = doc.get("version") or DEFAULT
    if prev == name:
        return doc
    history = list(doc.get("history") or [])
    history.append({"version": prev, "until": time.time()})
    new = {"version": name, "since": time.time(), "reason": reason, "previous": prev,
           "history": history[-50:]}
    write_json_atomic(r / ACTIVE_FILE, new)
    return new


def previous_active(root: str | os.PathLike[str] | None = None) -> str:
    """What `rollback` without a version returns to: the last other active version still present."""
    r = _root(root)
    doc = read_active(r)
    current = doc.get("version") or DEFAULT
    present = {v.name for v in versions(r)}
    for h in reversed(doc.get("history") or []):
        v = h.get("version") or DEFAULT
        if v != current and (v == DEFAULT or v in present):
            return v
    return DEFAULT


def new_temp_dir(root: str | os.PathLike[str] | None = None) -> Path:
    r = _root(root)
    r.mkdir(parents=True, exist_ok=True)
    d = r / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    d.mkdir()
    return d


def commit_temp_dir(tmp: Path, root: str | os.PathLike[str] | None = None) -> Version:
    """Rename a finished temp folder to the next free version name (atomic on one filesystem)."""
    r = _root(root)
    n = max([v.number for v in versions(r)] + [_max_number_on_disk(r), 0]) + 1
    while True:
        target = r / f"v{n:04d}"
        try:
            # os.rename onto a missing name is atomic; a concurrent run that took
            # the name first makes it fail, and we take the next one.
            os.rename(tmp, target)
            break
        except OSError:
            if not target.exists():
                raise
            n += 1
    _fsync_dir(r)
    info = json.loads((target / CANDIDATE_FILE).read_text()) if (target / CANDIDATE_FILE).is_file() else {}
    return Version(target.name, target, info)


def _max_number_on_disk(r: Path) -> int:
    # Incomplete-looking version folders still hold their number: never reuse it.
    nums = [int(m.group(1)) for p in r.iterdir() if (m := VERSION_RE.match(p.name))] if r.is_dir() else []
    return max(nums, default=0)


def update_info(target: Version, **changes: Any) -> None:
    """Merge `changes` into a version's candidate.json (status after activation or rollback)."""
    info = {**target.info, **changes}
    write_json_atomic(target.path / CANDIDATE_FILE, info)
    target.info = info


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove temp folders of runs that died (their process is gone); returns what was removed."""
    import shutil

    r = _root(root)
    removed = []
    if not r.is_dir():
        return removed
    for p in r.iterdir():
        if not (p.is_dir() and p.name.startswith(TMP_PREFIX)):
            continue
        try:
            pid = int(p.name[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            pid = -1
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
