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
  towards uniform instead of freezing on the last guess. `threshold` is
  stated for the 7-class emotion head; a head with k classes uses the point
  the same share of the way from chance (1/k) to certainty (`head_threshold`),
  so a 2-class head is not "sure" at 0.4, below chance.
* `visible`: the overlay hides after `hide_after_s` without a face, or after
  `hide_after_s` of continuous uncertainty.

Event schema, version 1. Every message is a JSON object with `"v": 1` and a
`"type"`:

========== ==============================================================
type       fields
========== ==============================================================
hello      server, version, config (current engine settings; config.heads
           {name: [classes]} lists the extra heads `state` carries)
state      seq, t (stream s), wall (unix s), face_present, speech, visible,
           label (emotion or "uncertain"), confidence, probs {emotion: p},
           valence {negative|neutral|positive: p}, arousal {low|neutral|high: p},
           valence_score, arousal_score (in [-1, 1]: p(pos)-p(neg), p(high)-p(low)),
           contributions {face|voice|body|scene: share, summing to 1 over the
           present modalities}, latency_ms (frame capture -> event),
           heads {name: {label (class or "uncertain"), confidence,
           probs {class: p}}} for the model's heads beyond emotion, valence
           and arousal (a personalized model's "user" classes, "behaviour"
           when trained); {} when it has none. Smoothed, thresholded and
           dwelled exactly like the emotion label. Added within v=1:
           clients must ignore fields they do not know.
health     fps, target_fps, latency_ms_p50, latency_ms_p95, cpu_percent,
           backend, dropped, last_error, obs (latest GetStats subset or null),
           baseline {profile, seconds (of speech heard), learning, progress
           (0-1)}: only when the model adapts to the person's voice (a voice
           prior), absent otherwise. Added within v=1.
preview    jpeg (base64), size [w, h], box [x, y, w, h] | null, landmarks
tag        t, name, source (hotkey | panel | api | stdin)
highlight  t, kind (arousal_peak | emotion_change), score, label,
           replay_saved, chapter_added
session    event (open | close), path, recording
trigger    rule, event (fire | release | skipped), t, wall, ok, results (one per
           action: what was done or why not); obs_merlb/triggers
error      message, where
========== ==============================================================

Clients send `{"v": 1, "type": "command", "cmd": ...}`; see
docs/ARCHITECTURE.md for the commands.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from obs_merlb.labels import AROUSAL, EMOTIONS, MODALITIES, VALENCE
from obs_merlb.settings import check_setting

SCHEMA_VERSION = 1
UNCERTAIN = "uncertain"
# Heads with their own fields in the `state` event; any other head goes to `heads`.
CORE_HEADS = ("emotion", "valence", "arousal")
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
        """Validate (obs_merlb.settings, the one range table) and apply one setting; ValueError if bad."""
        if key not in ("smoothing", "threshold", "min_dwell_s", "hide_after_s"):
            raise ValueError(f"unknown state setting {key!r}")
        setattr(self, key, check_setting(key, value))


def _as_dist(p: Any, n: int) -> np.ndarray:
    """A probability vector of length n from a list/array (batch dim allowed)."""
    a = np.asarray(p, dtype=np.float64).reshape(-1)
    if a.size != n:
        raise ValueError(f"expected {n} probabilities, got {a.size}")
    a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, None)
    s = a.sum()
    return a / s if s > 0 else np.full(n, 1.0 / n)


def head_threshold(threshold: float, n_classes: int, reference: int = len(EMOTIONS)) -> float:
    """`threshold` (stated for `reference` classes) moved to a head with `n_classes`.

    Keeps its position between chance and certainty: with the default 0.40 for
    7 classes, a 3-class head needs 0.53 and a 2-class head 0.65.
    """
    chance, ref_chance = 1.0 / max(n_classes, 1), 1.0 / reference
    if threshold <= ref_chance:     # below chance: 0 stays 0 ("never uncertain")
        return float(chance * max(threshold, 0.0) / ref_chance)
    share = (threshold - ref_chance) / (1.0 - ref_chance)
    return float(min(chance + share * (1.0 - chance), 1.0))


def _uniform(n: int) -> np.ndarray:
    """What an unobserved head decays towards: no class preferred."""
    return np.full(n, 1.0 / n)


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
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The window's prediction and each modality's share of it, by occlusion.

    For each present modality, the (tiny) sequence model runs with that
    modality masked out, and the share is the total-variation distance of
    the emotion distribution from the full prediction. All variants go in
    one batched call: ``run_sequence(masks)`` takes ``(N, T, 4)`` masks (row
    0 the window's own, then one per present modality) and returns
    ``{head: (N, C)}`` probabilities. Cheap because only the sequence part
    runs on the cached per-step embeddings.

    Returns (the full window's probabilities per head, the shares).
    """
    mask = np.asarray(mask, dtype=np.float32)
    present = [j for j in range(len(MODALITIES)) if mask[:, j].any()]
    masks = np.repeat(mask[None], 1 + len(present), axis=0)
    for n, j in enumerate(present, start=1):
        masks[n, :, j] = 0.0
    out = run_sequence(masks)
    probs = {h: v[0] for h, v in out.items()}
    deltas = {MODALITIES[j]: 0.5 * float(np.abs(out["emotion"][n] - out["emotion"][0]).sum())
              for n, j in enumerate(present, start=1)}
    return probs, contributions_from_deltas(deltas, {MODALITIES[j]: True for j in present})


# ---------------------------------------------------------------- event builders

def _ev(type_: str, **fields: Any) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": type_, **fields}


def hello_event(server: str, version: str, config: Mapping[str, Any]) -> dict[str, Any]:
    return _ev("hello", server=server, version=version, config=dict(config))


def health_event(*, fps: float, target_fps: float, latency_ms_p50: float | None,
                 latency_ms_p95: float | None, cpu_percent: float, backend: str,
                 dropped: int, last_error: str | None, obs: Mapping[str, Any] | None,
                 baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    ev = _ev("health", fps=round(float(fps), 2), target_fps=round(float(target_fps), 2),
             latency_ms_p50=None if latency_ms_p50 is None else round(float(latency_ms_p50), 2),
             latency_ms_p95=None if latency_ms_p95 is None else round(float(latency_ms_p95), 2),
             cpu_percent=round(float(cpu_percent), 1), backend=backend, dropped=int(dropped),
             last_error=last_error, obs=None if obs is None else dict(obs))
    if baseline is not None:
        ev["baseline"] = dict(baseline)
    return ev


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

def extra_heads(labels: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """The heads of a model (name -> class names) that `state` publishes under `heads`.

    A head without classes is one the model was never trained on (the shipped
    model's empty `behaviour`): it has no output and is left out.
    """
    return {name: tuple(classes) for name, classes in labels.items()
            if name not in CORE_HEADS and len(classes) > 0}


class _LabelledHead:
    """One classification head's smoothed distribution and its dwelled label.

    The emotion head and every extra head run through this one class, so a
    streamer's own classes get exactly the smoothing, threshold and dwell
    time the emotion label gets.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.ema = self.uniform()
        self.label: str = UNCERTAIN
        self.candidate: str | None = None
        self.candidate_since = 0.0

    def uniform(self) -> np.ndarray:
        return _uniform(len(self.names))

    def step(self, new: np.ndarray, a: float, t: float, observed: bool, cfg: StateConfig) -> str:
        """Blend in one tick's distribution (weight a on the old value); returns this tick's candidate."""
        self.ema = a * self.ema + (1.0 - a) * new
        top = int(np.argmax(self.ema))
        sure = float(self.ema[top]) >= head_threshold(cfg.threshold, len(self.names))
        candidate = self.names[top] if (observed and sure) else UNCERTAIN
        # Dwell: the candidate must lead continuously for min_dwell_s. Going to
        # "uncertain" also dwells, so a single weak tick does not blank the label.
        if candidate != self.candidate:
            self.candidate, self.candidate_since = candidate, t
        if candidate != self.label and (t - self.candidate_since) >= cfg.min_dwell_s - 1e-9:
            self.label = candidate
        return candidate

    def confidence(self) -> float:
        """The shown label's smoothed probability; the top one while "uncertain"."""
        if self.label in self.names:
            return float(self.ema[self.names.index(self.label)])
        return float(self.ema.max())

    def probs(self) -> dict[str, float]:
        return {n: round(float(p), 4) for n, p in zip(self.names, self.ema)}

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": round(self.confidence(), 4), "probs": self.probs()}


class StateTracker:
    """Turns raw per-tick probabilities into the `state` event stream."""

    def __init__(self, config: StateConfig | None = None,
                 emotions: tuple[str, ...] = EMOTIONS,
                 valence: tuple[str, ...] = VALENCE,
                 arousal: tuple[str, ...] = AROUSAL,
                 extra: Mapping[str, Sequence[str]] | None = None) -> None:
        self.config = config or StateConfig()
        self.emotions, self.valence_names, self.arousal_names = emotions, valence, arousal
        self.extra: dict[str, _LabelledHead] = {}
        self.reset()
        if extra:
            self.set_extra_heads(extra)

    def reset(self) -> None:
        self.seq = 0
        self._emotion = _LabelledHead(self.emotions)
        self._valence = _uniform(len(self.valence_names))
        self._arousal = _uniform(len(self.arousal_names))
        self.extra = {name: _LabelledHead(h.names) for name, h in self.extra.items()}
        self._primed = False           # first observation replaces the uniform prior
        self._last_t: float | None = None
        self._last_face_t: float | None = None
        self._uncertain_since: float | None = None

    @property
    def label(self) -> str:
        """The emotion label on screen."""
        return self._emotion.label

    def set_extra_heads(self, heads: Mapping[str, Sequence[str]]) -> None:
        """Track these heads (name -> classes) besides emotion/valence/arousal.

        Called when a model is loaded or swapped. A head whose classes did not
        change keeps its smoothed state (a reloaded model must not make the
        overlay flicker); a new or changed head starts from uniform and
        "uncertain", a head the model no longer has disappears from `heads`.
        """
        wanted = extra_heads(heads)
        self.extra = {name: (self.extra[name] if name in self.extra and self.extra[name].names == names
                             else _LabelledHead(names))
                      for name, names in wanted.items()}

    def config_dict(self) -> dict[str, float]:
        return asdict(self.config)

    def _alpha(self, dt: float) -> float:
        s = self.config.smoothing
        if s <= 0.0:
            return 0.0
        return float(s ** max(0.0, dt * _REF_RATE_HZ))

    def update(self, t: float, probs: Mapping[str, Any] | None, *, face_present: bool,
               speech: bool, contributions: Mapping[str, float] | None = None,
               latency_ms: float | None = None, wall: float | None = None) -> dict[str, Any]:
        """Feed one tick at stream time t; returns the `state` event for it.

        probs: {"emotion": 7 probs, "valence": 3, "arousal": 3, plus one entry
        per extra head} from the model, or None when nothing was observed this
        tick (no face, no speech, no pose, no game): then the smoothed values
        decay towards uniform. An extra head missing from probs decays the same way.
        """
        cfg = self.config
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        observed = probs is not None
        if probs is not None:
            a = self._alpha(dt) if self._primed else 0.0
            self._primed = True
        else:
            a = self._alpha(dt)

        def dist(name: str, head_names: Sequence[str]) -> np.ndarray | None:
            if probs is None or probs.get(name) is None:
                return None
            return _as_dist(probs[name], len(head_names))

        emo = dist("emotion", self.emotions)
        candidate = self._emotion.step(_uniform(len(self.emotions)) if emo is None else emo, a, t, observed, cfg)
        val = dist("valence", self.valence_names)
        aro = dist("arousal", self.arousal_names)
        self._valence = a * self._valence + (1.0 - a) * (_uniform(len(self.valence_names)) if val is None else val)
        self._arousal = a * self._arousal + (1.0 - a) * (_uniform(len(self.arousal_names)) if aro is None else aro)
        for name, head in self.extra.items():
            new = dist(name, head.names)
            head.step(head.uniform() if new is None else new, a, t, new is not None, cfg)

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

        valence = {n: round(float(p), 4) for n, p in zip(self.valence_names, self._valence)}
        arousal = {n: round(float(p), 4) for n, p in zip(self.arousal_names, self._arousal)}
        contrib = {m: 0.0 for m in MODALITIES}
        if contributions:
            contrib.update({m: round(float(v), 4) for m, v in contributions.items()})
        self.seq += 1
        return _ev(
            "state", seq=self.seq, t=round(float(t), 3), wall=time.time() if wall is None else wall,
            face_present=bool(face_present), speech=bool(speech), visible=bool(visible),
            label=self._emotion.label, confidence=round(self._emotion.confidence(), 4),
            probs=self._emotion.probs(),
            valence=valence, arousal=arousal,
            valence_score=round(va_score(valence, self.valence_names[0], self.valence_names[-1]), 4),
            arousal_score=round(va_score(arousal, self.arousal_names[0], self.arousal_names[-1]), 4),
            contributions=contrib,
            latency_ms=None if latency_ms is None else round(float(latency_ms), 2),
            heads={name: head.summary() for name, head in self.extra.items()},
        )
