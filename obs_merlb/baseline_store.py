"""Where a streamer's voice baseline lives between runs: one file per profile.

A model that carries a population prior (`MERLBConfig.voice_prior`) hears
each voice step through the person's baseline (perception/baseline.py,
obs_merlb/analyzer.py). What the live engine has learned of the person is
kept in `<config folder>/baselines/<profile>.json` (beside config.toml, so
`MERLB_CONFIG` moves it too), saved atomically every `SAVE_EVERY_S` of
speech heard and at a clean stop, and read at the next start.

Live, each voice step adds its whole second of log-mel frames and steps
are `step_s` apart, so a second of speech adds N_FRAMES / step_s frames
(400 at 0.25 s); the `seconds` this store reports (and saves by) are the
speech actually heard.

A baseline belongs to a model's prior: the file records the prior's digest,
and one learned against another prior is not used (learning starts afresh,
and the file is replaced at the first save). A file that cannot be read is
moved aside, never written over, and learning starts afresh.

One worker at a time keeps a profile: the first holds `<profile>.lock`
(obs_merlb/runlock.py) until it exits. A second worker on the same
profile starts from the saved baseline but saves nothing, and says so:
each would otherwise write its own learning over the other's.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import IO, Any

from obs_merlb.config import config_path
from obs_merlb.perception.baseline import BandStats, Prior, VoiceBaseline
from obs_merlb.perception.voice import N_FRAMES
from obs_merlb.runlock import try_hold

BASELINE_DIR = "baselines"
SAVE_EVERY_S = 30.0            # speech heard between saves

# The profiles this process holds: an engine that reloads its model reopens its own profile.
_HELD: dict[Path, IO[bytes]] = {}


def prior_digest(prior: Prior) -> str:
    """What tells one model's prior from another's (the rounded values `Prior.to_dict` keeps)."""
    return hashlib.sha256(json.dumps(prior.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def baseline_path(profile: str, root: Path | None = None) -> Path:
    """The profile's file; `profile` must have passed settings.check_profile (it names a file).

    Profile names ignore case: on Windows and macOS "Alice" and "alice" name one
    file, so they name one person everywhere, and a config moved between systems
    keeps its baselines.
    """
    return (root if root is not None else config_path().parent / BASELINE_DIR) / f"{profile.lower()}.json"


def _hold(path: Path) -> str | None:
    """Hold the profile of baseline file `path` for this process; None, or why it is not held."""
    lock = path.with_suffix(".lock")
    if lock in _HELD:
        return None
    try:
        held = try_hold(lock)
    except OSError as e:
        return f"cannot create {lock} ({e.strerror or e})"
    if held is None:
        return "another merlb live uses this profile (give each worker its own --profile)"
    _HELD[lock] = held
    return None


def _aside(path: Path) -> Path:
    """A free name beside `path` for a damaged file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(100):
        cand = path.with_name(f"{path.stem}.damaged-{stamp}{f'-{i}' if i else ''}{path.suffix}")
        if not cand.exists():
            return cand
    raise OSError(f"no free name beside {path}")


def _peek(path: Path, prior: Prior) -> BandStats | None:
    """The saved statistics learned for `prior`, else None; only read (another worker keeps the file)."""
    try:
        stats, doc = VoiceBaseline.read(path)
    except ValueError:
        return None
    return stats if doc.get("prior") == prior_digest(prior) else None


class BaselineStore:
    """One profile's live baseline and its file: load, periodic and final saves, reset.

    Open with `open`. The baseline object is the one the analyzer updates;
    `save` and `reset` may run on other threads (the control loop, a
    command), so the file is only ever written under this store's lock.
    """

    def __init__(self, path: Path, baseline: VoiceBaseline, profile: str, step_s: float, *,
                 writable: bool = True, held: bool = True) -> None:
        """`held`: whether this process keeps the profile (another worker's file is never written)."""
        self.path, self.baseline, self.profile = path, baseline, profile
        self.frames_per_s = N_FRAMES / step_s        # frames one second of speech adds, live
        self.digest = prior_digest(baseline.prior)
        self.held = held
        self.writable = writable and held   # False when a file we could not read must stay where it is
        self.saved_n = baseline.stats.n
        self._lock = threading.Lock()
        self._failed_at: float | None = None

    @classmethod
    def open(cls, prior: Prior, profile: str, step_s: float, *, root: Path | None = None,
             reset: bool = False) -> tuple["BaselineStore", list[str], list[str]]:
        """The profile's stored baseline for `prior` (a model with steps `step_s` apart), else a
        fresh one; (store, problems, notes).

        Problems (a damaged file) deserve an `error` event, notes (a baseline
        of another model, a reset) a log line; each is one line.
        """
        path = baseline_path(profile, root)
        problems: list[str] = []
        notes: list[str] = []
        busy = _hold(path)
        if busy:
            problems.append(f"voice baseline of profile {profile!r}: {busy}; this run starts from the saved "
                            f"baseline but saves nothing")
            stats = None if reset else _peek(path, prior)
            return cls(path, VoiceBaseline(prior, stats), profile, step_s, held=False), problems, notes
        if reset:
            store = cls(path, VoiceBaseline(prior), profile, step_s)
            notes.append(f"voice baseline of profile {profile!r} reset (--reset-baseline): learning your voice afresh")
            err = store.reset()
            if err:
                problems.append(err)
            return store, problems, notes
        if not path.exists():
            return cls(path, VoiceBaseline(prior), profile, step_s), problems, notes
        try:
            stats, doc = VoiceBaseline.read(path)
        except ValueError as e:
            writable = True
            try:
                moved = _aside(path)
                path.rename(moved)
                where = f"moved aside to {moved.name}"
            except OSError as move_err:
                writable = False
                where = f"left in place ({move_err.strerror or move_err}), and this run's learning is not saved"
            problems.append(f"voice baseline {path} is damaged ({e}); {where}; learning your voice afresh")
            return cls(path, VoiceBaseline(prior), profile, step_s, writable=writable), problems, notes
        digest = prior_digest(prior)
        if doc.get("prior") != digest:
            notes.append(f"voice baseline {path} was learned for another model; learning your voice afresh "
                         f"for this one (the file is replaced after {SAVE_EVERY_S:.0f} s of speech)")
            return cls(path, VoiceBaseline(prior), profile, step_s), problems, notes
        return cls(path, VoiceBaseline(prior, stats), profile, step_s), problems, notes

    def status(self) -> dict[str, Any]:
        """What the `health` event and the status file say about it."""
        b = self.baseline
        return {"profile": self.profile, "seconds": round(b.stats.n / self.frames_per_s, 1),
                "learning": b.learning, "progress": round(b.progress, 3)}

    def due(self) -> bool:
        """Another SAVE_EVERY_S of speech heard since the last save (or failed try)."""
        since = self.saved_n if self._failed_at is None else max(self.saved_n, self._failed_at)
        return self.writable and self.baseline.stats.n - since >= SAVE_EVERY_S * self.frames_per_s

    def changed(self) -> bool:
        return self.writable and self.baseline.stats.n != self.saved_n

    def save(self) -> str | None:
        """Write the file atomically; None, or one line saying why it could not be written."""
        if not self.writable:
            return None
        with self._lock:
            stats = self.baseline.stats      # replaced, never changed in place: a consistent snapshot
            snap = VoiceBaseline(self.baseline.prior, stats)
            try:
                snap.save(self.path, {"profile": self.profile, "prior": self.digest})
            except OSError as e:
                self._failed_at = stats.n
                return f"cannot save the voice baseline {self.path}: {e.strerror or e}"
            self.saved_n, self._failed_at = stats.n, None
        return None

    def reset(self) -> str | None:
        """Forget what was learned, on disk too; None or why the file could not be written.

        The caller holds off the analyzer's updates meanwhile (Engine's lock).
        """
        self.baseline.reset()
        self.writable = self.held      # asked to forget: whatever file is there may be replaced, if ours
        self.saved_n = -1.0
        return self.save()
