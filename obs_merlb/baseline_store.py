"""Where a streamer's voice baseline lives between runs: one file per profile.

A model that carries a population prior (`MERLBConfig.voice_prior`) hears
each voice step through the person's baseline (perception/baseline.py,
obs_merlb/analyzer.py); a model folder that carries a voice reader reads
each window's speech against the person's voice functionals
(obs_merlb/person_reader.py). What the live engine has learned of the
person, for either or both, is kept in `<config folder>/baselines/<profile>.json`
(beside config.toml, so `MERLB_CONFIG` moves it too), saved atomically
every `SAVE_EVERY_S` of speech heard and at a clean stop, and read at the
next start. A model with neither keeps no file.

Live, each voice step adds its whole second of log-mel frames and steps
are `step_s` apart, so a second of speech adds N_FRAMES / step_s frames
(400 at 0.25 s); the reader's statistics gain a window every T speech
steps. The `seconds` this store reports (and saves by) are the speech
actually heard.

Each part belongs to what it was learned for: the band statistics to a
model's prior (the file records the prior's digest), the functionals to a
reader's population (its digest). A part learned for another is not used
(learning starts afresh, and the part is replaced at the first save); a
part this model has no use for (the band part, for a model with only a
reader) is written back as it was read. A file that cannot be read, in
any part, is moved aside, never written over, and learning starts afresh.
`reset` forgets every part.

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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from obs_merlb.config import config_path
from obs_merlb.files import write_atomic
from obs_merlb.perception.baseline import FORMAT, BandStats, Prior, VoiceBaseline
from obs_merlb.perception.functionals import LEARNED_WINDOWS, PersonStats, Population
from obs_merlb.perception.voice import N_FRAMES
from obs_merlb.person_reader import ReaderStats
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


@dataclass
class _Saved:
    """What a profile's file holds: each part with what it was learned for, and the document."""
    band: BandStats
    prior: str | None             # the digest of the prior the band statistics were learned for
    person: PersonStats | None
    population: str | None        # the digest of the reader population the functionals were gathered for
    doc: dict[str, Any]


def _read(path: Path) -> _Saved:
    """The profile's file, every part checked; ValueError (with the reason) for one that is not one."""
    band, doc = VoiceBaseline.read(path)
    part = doc.get("reader")
    person = population = None
    if part is not None:
        try:
            population = part["population"]
            if not isinstance(population, str):
                raise ValueError(f"the reader population must be a digest, not {population!r}")
            person = PersonStats.from_dict(part["stats"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"the reader part: {e or type(e).__name__}") from None
    prior = doc.get("prior")
    return _Saved(band, prior if isinstance(prior, str) else None, person, population, doc)


def _peek(path: Path) -> _Saved | None:
    """The file, else None; only read (another worker keeps the file)."""
    try:
        return _read(path)
    except ValueError:
        return None


class BaselineStore:
    """One profile's live baseline and voice functionals and their file: load, periodic and final
    saves, reset.

    Open with `open`. The baseline and the reader's statistics are the objects the analyzer
    updates; `save` and `reset` may run on other threads (the control loop, a command), so the
    file is only ever written under this store's lock.
    """

    def __init__(self, path: Path, baseline: VoiceBaseline | None, profile: str, step_s: float, *,
                 person: ReaderStats | None = None, steps: int = 8, writable: bool = True,
                 held: bool = True) -> None:
        """`baseline`, `person`: the parts the model uses (at least one); `steps`: its window, T;
        `held`: whether this process keeps the profile (another worker's file is never written)."""
        self.path, self.baseline, self.person, self.profile = path, baseline, person, profile
        self.frames_per_s = N_FRAMES / step_s        # frames one second of speech adds, live
        self.window_s = steps * step_s               # speech a reader window stands for: one per T speech steps
        self.digest = None if baseline is None else prior_digest(baseline.prior)
        self.reader_digest = None if person is None else person.digest
        self.kept: dict[str, Any] = {}               # the file's parts this model has no use for
        self.held = held
        self.writable = writable and held   # False when a file we could not read must stay where it is
        self.saved: tuple[float, int] | None = self._counts()
        self._lock = threading.Lock()
        self._failed: tuple[float, int] | None = None

    @classmethod
    def open(cls, prior: Prior | None, profile: str, step_s: float, *, population: Population | None = None,
             steps: int = 8, root: Path | None = None,
             reset: bool = False) -> tuple["BaselineStore", list[str], list[str]]:
        """The profile's stored baseline for `prior` and functionals for a reader of `population`
        (a model with T = `steps` steps `step_s` apart), else fresh ones; (store, problems, notes).

        Problems (a damaged file) deserve an `error` event, notes (a part learned for another
        model, a reset) a log line; each is one line.
        """
        path = baseline_path(profile, root)
        problems: list[str] = []
        notes: list[str] = []

        def fresh(**kw: Any) -> "BaselineStore":
            return cls(path, None if prior is None else VoiceBaseline(prior), profile, step_s,
                       person=None if population is None else ReaderStats(population), steps=steps, **kw)

        busy = _hold(path)
        if busy:
            problems.append(f"voice baseline of profile {profile!r}: {busy}; this run starts from the saved "
                            f"baseline but saves nothing")
            store = fresh(held=False)
            saved = None if reset else _peek(path)
            if saved is not None:
                store._take(saved)
            return store, problems, notes
        if reset:
            store = fresh()
            notes.append(f"voice baseline of profile {profile!r} reset (--reset-baseline): learning your voice afresh")
            err = store.reset()
            if err:
                problems.append(err)
            return store, problems, notes
        if not path.exists():
            return fresh(), problems, notes
        try:
            saved = _read(path)
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
            return fresh(writable=writable), problems, notes
        store = fresh()
        for part in store._take(saved):
            notes.append(f"{part} in {path} was learned for another model; learning your voice afresh "
                         f"for this one (the file is replaced after {SAVE_EVERY_S:.0f} s of speech)")
        return store, problems, notes

    def _take(self, saved: _Saved) -> list[str]:
        """Continue the saved parts learned for this model, keep the ones it has no use for; the
        names of the parts learned for another model."""
        foreign = []
        if self.baseline is None:
            self.kept.update({k: saved.doc[k] for k in ("prior", "stats") if k in saved.doc})
        elif saved.prior == self.digest:
            self.baseline.stats = saved.band
        elif saved.prior is not None:
            foreign.append("the voice baseline")
        if self.person is None:
            self.kept.update({"reader": saved.doc["reader"]} if "reader" in saved.doc else {})
        elif saved.person is not None and saved.population == self.reader_digest:
            self.person.stats = saved.person
        elif saved.person is not None:
            foreign.append("the voice reader's statistics")
        self.saved = self._counts()
        return foreign

    def _counts(self) -> tuple[float, int]:
        return (0.0 if self.baseline is None else self.baseline.stats.n,
                0 if self.person is None else self.person.stats.n)

    def _heard(self, counts: tuple[float, int]) -> float:
        """Seconds of speech behind these counts (the band's, when the model has one: it counts every step)."""
        return counts[0] / self.frames_per_s if self.baseline is not None else counts[1] * self.window_s

    def status(self) -> dict[str, Any]:
        """What the `health` event and the status file say about it."""
        if self.baseline is not None:
            b = self.baseline
            return {"profile": self.profile, "seconds": round(self._heard(self._counts()), 1),
                    "learning": b.learning, "progress": round(b.progress, 3)}
        n = self.person.stats.n if self.person is not None else 0
        return {"profile": self.profile, "seconds": round(self._heard(self._counts()), 1),
                "learning": n < LEARNED_WINDOWS, "progress": round(min(1.0, n / LEARNED_WINDOWS), 3)}

    def due(self) -> bool:
        """Another SAVE_EVERY_S of speech heard since the last save (or failed try)."""
        since = max((self._heard(c) for c in (self.saved, self._failed) if c is not None), default=0.0)
        return self.writable and self._heard(self._counts()) - since >= SAVE_EVERY_S

    def changed(self) -> bool:
        return self.writable and self._counts() != self.saved

    def save(self) -> str | None:
        """Write the file atomically; None, or one line saying why it could not be written."""
        if not self.writable:
            return None
        with self._lock:
            # Each statistics object is replaced, never changed in place: a consistent snapshot.
            band = None if self.baseline is None else self.baseline.stats
            person = None if self.person is None else self.person.stats
            counts = (0.0 if band is None else band.n, 0 if person is None else person.n)
            doc: dict[str, Any] = {"format": FORMAT, "profile": self.profile, **self.kept}
            if band is not None:
                doc.update(prior=self.digest, stats=band.to_dict())
            doc.setdefault("stats", BandStats().to_dict())     # the band part every reader of the format expects
            if person is not None:
                doc["reader"] = {"population": self.reader_digest, "stats": person.to_dict()}
            try:
                write_atomic(self.path, json.dumps(doc))
            except OSError as e:
                self._failed = counts
                return f"cannot save the voice baseline {self.path}: {e.strerror or e}"
            self.saved, self._failed = counts, None
        return None

    def reset(self) -> str | None:
        """Forget what was learned, every part, on disk too; None or why the file could not be written.

        The caller holds off the analyzer's updates meanwhile (Engine's lock).
        """
        if self.baseline is not None:
            self.baseline.reset()
        if self.person is not None:
            self.person.reset()
        self.kept = {}
        self.writable = self.held      # asked to forget: whatever file is there may be replaced, if ours
        self.saved = None
        return self.save()
