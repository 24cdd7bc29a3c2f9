"""Output state and the event schema (v=1) shared by the engine, overlay and panel.

The model's raw per-tick probabilities jump around; viewers should see a calm
label. `StateTracker` turns the raw stream into what the overlay shows:

* EMA smoothing of every head's probabilities. `smoothing` is the share of the
  old value kept per 1/15 s; the weight is rescaled by the real time between
  ticks so the response time stays the same when the engine lowers its rate to
  protect the stream.
* A label that changes only after the new candidate has led for `min_dwell_s`
  (minimum dwell time), so a one-tick blip never reaches the overlay.
* `"uncertain"` when the smoothed top probability is below `threshold`, or when
  nothing is observed (no face, no speech): then the probabilities decay
  towards uniform instead of freezing on the last guess.
* `visible`: the overlay hides after `hide_after_s` without a face, or after
  `hide_after_s` of continuous uncertainty.

Event schema, version 1. Every message is a JSON object with `"v": 1` and a
`"type"`:

========== ==============================================================
type       fields
========== ==============================================================
hello      server, version, config (current engine settings)
state      seq, t (stream s), wall (unix s), face_present, speech, visible,
           label (emotion or "uncertain"), confidence, probs {emotion: p},
           valence {negative|neutral|positive: p}, arousal {low|neutral|high: p},
           valence_score, arousal_score (in [-1, 1]: p(pos)-p(neg), p(high)-p(low)),
           contributions {face|voice|body|scene: share, summing to 1 over the
           present modalities}, latency_ms (frame capture -> event)
health     fps, target_fps, latency_ms_p50, latency_ms_p95, cpu_percent,
           backend, dropped, last_error, obs (latest GetStats subset or null)
preview    jpeg (base64), size [w, h], box [x, y, w, h] | null, landmarks
tag        t, name, source (hotkey | panel | api | stdin)
highlight  t, kind (arousal_peak | emotion_change), score, label,
           replay_saved, chapter_added
session    event (open | close), path, recording
error      message, where
========== ==============================================================

Clients send `{"v": 1, "type": "command", "cmd": ...}`; see
docs/ARCHITECTURE.md for the commands.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from obs_merlb.labels import AROUSAL, EMOTIONS, MODALITIES, VALENCE

SCHEMA_VERSION = 1
UNCERTAIN = "uncertain"
# Reference tick rate for the meaning of `smoothing` (see module docstring).
_REF_RATE_HZ = 15.0


@dataclass
class StateConfig:
    """Settings a client can change live with the `set` command."""

    smoothing: float = 0.75      # share of the old EMA value kept per 1/15 s, in [0, 1)
    threshold: float = 0.40      # smoothed top probability below this -> "uncertain"
    min_dwell_s: float = 1.0     # a new label must lead this long before it is shown
    hide_after_s: float = 2.0    # hide the overlay after this long with no face / uncertain

    def set(self, key: str, value: Any) -> None:
        """Validate and apply one setting; raises ValueError on a bad key or value."""
        if key not in ("smoothing", "threshold", "min_dwell_s", "hide_after_s"):
            raise ValueError(f"unknown state setting {key!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{key} must be a finite number")
        if key == "smoothing" and not 0.0 <= v < 1.0:
            raise ValueError("smoothing must be in [0, 1)")
        if key == "threshold" and not 0.0 <= v <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        if key in ("min_dwell_s", "hide_after_s") and v < 0:
            raise ValueError(f"{key} must be >= 0")
        setattr(self, key, v)


def _as_dist(p: Any, n: int) -> np.ndarray:
    """A probability vector of length n from a list/array (batch dim allowed)."""
    a = np.asarray(p, dtype=np.float64).reshape(-1)
    if a.size != n:
        raise ValueError(f"expected {n} probabilities, got {a.size}")
    a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, None)
    s = a.sum()
    return a / s if s > 0 else np.full(n, 1.0 / n)


def va_score(dist: Mapping[str, float], low: str, high: str) -> float:
    """p(high end) - p(low end): a score in [-1, 1] from a 3-way distribution."""
    return float(np.clip(dist.get(high, 0.0) - dist.get(low, 0.0), -1.0, 1.0))


def contributions_from_deltas(deltas: Mapping[str, float], present: Mapping[str, bool]) -> dict[str, float]:
    """Normalise per-modality effects into shares summing to 1 over present modalities.

    A modality that is absent contributes 0. When every present modality has
    no measurable effect (e.g. a model that ignores its inputs) the shares are
    split evenly, so the overlay still shows what was observed.
    """
    out = {m: 0.0 for m in MODALITIES}
    live = [m for m in MODALITIES if present.get(m)]
    if not live:
        return out
    total = sum(max(0.0, float(deltas.get(m, 0.0))) for m in live)
    for m in live:
        out[m] = (max(0.0, float(deltas.get(m, 0.0))) / total) if total > 1e-9 else 1.0 / len(live)
    return out


def modality_contributions(
    run_sequence: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    mask: np.ndarray,
    base_emotion: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-modality share of the emotion prediction, by occlusion.

    For each present modality, run the (tiny) sequence model with that
    modality masked out and measure the total-variation distance of the
    emotion distribution from the full prediction. Cheap because only the
    sequence part runs; the cached per-step embeddings are reused.

    run_sequence(mask) -> {"emotion": probs, ...}; mask is (T, 4).
    """
    mask = np.asarray(mask, dtype=np.float32)
    present = {m: bool(mask[:, i].any()) for i, m in enumerate(MODALITIES)}
    if base_emotion is None:
        base_emotion = np.asarray(run_sequence(mask)["emotion"]).reshape(-1)
    deltas: dict[str, float] = {}
    for i, m in enumerate(MODALITIES):
        if not present[m]:
            continue
        occluded = mask.copy()
        occluded[:, i] = 0.0
        p = np.asarray(run_sequence(occluded)["emotion"]).reshape(-1)
        deltas[m] = 0.5 * float(np.abs(p - base_emotion).sum())
    return contributions_from_deltas(deltas, present)


# ---------------------------------------------------------------- event builders

def _ev(type_: str, **fields: Any) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": type_, **fields}


def hello_event(server: str, version: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return _ev("hello", server=server, version=version, config=dict(config))


def health_event(*, fps: float, target_fps: float, latency_ms_p50: float | None,
                 latency_ms_p95: float | None, cpu_percent: float, backend: str,
                 dropped: int, last_error: str | None, obs: Mapping[str, Any] | None) -> dict[str, Any]:
    return _ev("health", fps=round(float(fps), 2), target_fps=round(float(target_fps), 2),
               latency_ms_p50=None if latency_ms_p50 is None else round(float(latency_ms_p50), 2),
               latency_ms_p95=None if latency_ms_p95 is None else round(float(latency_ms_p95), 2),
               cpu_percent=round(float(cpu_percent), 1), backend=backend, dropped=int(dropped),
               last_error=last_error, obs=None if obs is None else dict(obs))


def tag_event(t: float, name: str, source: str) -> dict[str, Any]:
    return _ev("tag", t=round(float(t), 3), name=str(name), source=str(source), wall=time.time())


def highlight_event(t: float, kind: str, score: float, label: str,
                    replay_saved: bool, chapter_added: bool) -> dict[str, Any]:
    return _ev("highlight", t=round(float(t), 3), kind=kind, score=round(float(score), 3),
               label=label, replay_saved=bool(replay_saved), chapter_added=bool(chapter_added),
               wall=time.time())


def session_event(event: str, path: str | None, recording: str | None, t: float | None = None) -> dict[str, Any]:
    return _ev("session", event=event, path=path, recording=recording,
               t=None if t is None else round(float(t), 3), wall=time.time())


def error_event(message: str, where: str) -> dict[str, Any]:
    return _ev("error", message=str(message), where=str(where), wall=time.time())


def preview_event(jpeg_b64: str, size: tuple[int, int], box: list[float] | None,
                  landmarks: list[list[float]] | None) -> dict[str, Any]:
    return _ev("preview", jpeg=jpeg_b64, size=[int(size[0]), int(size[1])],
               box=None if box is None else [round(float(x), 1) for x in box],
               landmarks=[] if landmarks is None else [[round(float(x), 1), round(float(y), 1)]
                                                     for x, y in landmarks])


# ---------------------------------------------------------------- tracker

@dataclass
class _Heads:
    emotion: np.ndarray = field(default_factory=lambda: np.full(len(EMOTIONS), 1.0 / len(EMOTIONS)))
    valence: np.ndarray = field(default_factory=lambda: np.full(len(VALENCE), 1.0 / len(VALENCE)))
    arousal: np.ndarray = field(default_factory=lambda: np.full(len(AROUSAL), 1.0 / len(AROUSAL)))


class StateTracker:
    """Turns raw per-tick probabilities into the `state` event stream."""

    def __init__(self, config: StateConfig | None = None,
                 emotions: tuple[str, ...] = EMOTIONS,
                 valence: tuple[str, ...] = VALENCE,
                 arousal: tuple[str, ...] = AROUSAL) -> None:
        self.config = config or StateConfig()
        self.emotions, self.valence_names, self.arousal_names = emotions, valence, arousal
        self.reset()

    def reset(self) -> None:
        self.seq = 0
        self._ema = _Heads(np.full(len(self.emotions), 1.0 / len(self.emotions)),
                           np.full(len(self.valence_names), 1.0 / len(self.valence_names)),
                           np.full(len(self.arousal_names), 1.0 / len(self.arousal_names)))
        self._primed = False           # first observation replaces the uniform prior
        self._last_t: float | None = None
        self.label: str = UNCERTAIN
        self._candidate: str | None = None
        self._candidate_since = 0.0
        self._last_face_t: float | None = None
        self._uncertain_since: float | None = None

    def config_dict(self) -> dict[str, float]:
        return asdict(self.config)

    def _alpha(self, dt: float) -> float:
        s = self.config.smoothing
        if s <= 0.0:
            return 0.0
        return float(s ** max(0.0, dt * _REF_RATE_HZ))

    def _blend(self, old: np.ndarray, new: np.ndarray, a: float) -> np.ndarray:
        return a * old + (1.0 - a) * new

    def update(self, t: float, probs: Mapping[str, Any] | None, *, face_present: bool,
               speech: bool, contributions: Mapping[str, float] | None = None,
               latency_ms: float | None = None, wall: float | None = None) -> dict[str, Any]:
        """Feed one tick at stream time t; returns the `state` event for it.

        probs: {"emotion": 7 probs, "valence": 3, "arousal": 3} from the model,
        or None when nothing was observed this tick (no face, no speech, no pose,
        no game): then the smoothed values decay towards uniform.
        """
        cfg = self.config
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        if probs is not None:
            new = _Heads(_as_dist(probs["emotion"], len(self.emotions)),
                         _as_dist(probs["valence"], len(self.valence_names)),
                         _as_dist(probs["arousal"], len(self.arousal_names)))
            a = self._alpha(dt) if self._primed else 0.0
            self._primed = True
        else:
            new = _Heads(np.full(len(self.emotions), 1.0 / len(self.emotions)),
                         np.full(len(self.valence_names), 1.0 / len(self.valence_names)),
                         np.full(len(self.arousal_names), 1.0 / len(self.arousal_names)))
            a = self._alpha(dt)
        self._ema = _Heads(self._blend(self._ema.emotion, new.emotion, a),
                           self._blend(self._ema.valence, new.valence, a),
                           self._blend(self._ema.arousal, new.arousal, a))

        top = int(np.argmax(self._ema.emotion))
        confidence = float(self._ema.emotion[top])
        observed = probs is not None
        candidate = self.emotions[top] if (observed and confidence >= cfg.threshold) else UNCERTAIN

        # Dwell: the candidate must lead continuously for min_dwell_s. Going to
        # "uncertain" also dwells, so a single weak tick does not blank the label.
        if candidate != self._candidate:
            self._candidate, self._candidate_since = candidate, t
        if candidate != self.label and (t - self._candidate_since) >= cfg.min_dwell_s - 1e-9:
            self.label = candidate

        if face_present:
            self._last_face_t = t
        if candidate == UNCERTAIN:
            if self._uncertain_since is None:
                self._uncertain_since = t
        else:
            self._uncertain_since = None
        no_face_for = math.inf if self._last_face_t is None else t - self._last_face_t
        uncertain_for = 0.0 if self._uncertain_since is None else t - self._uncertain_since
        visible = no_face_for <= cfg.hide_after_s and uncertain_for <= cfg.hide_after_s

        valence = {n: round(float(p), 4) for n, p in zip(self.valence_names, self._ema.valence)}
        arousal = {n: round(float(p), 4) for n, p in zip(self.arousal_names, self._ema.arousal)}
        contrib = {m: 0.0 for m in MODALITIES}
        if contributions:
            contrib.update({m: round(float(v), 4) for m, v in contributions.items()})
        self.seq += 1
        return _ev(
            "state", seq=self.seq, t=round(float(t), 3), wall=time.time() if wall is None else wall,
            face_present=bool(face_present), speech=bool(speech), visible=bool(visible),
            label=self.label,
            confidence=round(float(self._ema.emotion[self.emotions.index(self.label)])
                             if self.label in self.emotions else confidence, 4),
            probs={n: round(float(p), 4) for n, p in zip(self.emotions, self._ema.emotion)},
            valence=valence, arousal=arousal,
            valence_score=round(va_score(valence, self.valence_names[0], self.valence_names[-1]), 4),
            arousal_score=round(va_score(arousal, self.arousal_names[0], self.arousal_names[-1]), 4),
            contributions=contrib,
            latency_ms=None if latency_ms is None else round(float(latency_ms), 2),
        )
