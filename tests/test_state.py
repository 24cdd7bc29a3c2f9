"""StateTracker with scripted probability sequences (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from obs_merlb.labels import EMOTIONS
from obs_merlb.state import (UNCERTAIN, StateConfig, StateTracker, contributions_from_deltas, head_threshold,
                             modality_contributions)


def probs_for(label: str, p: float = 0.9) -> dict[str, list[float]]:
    e = np.full(len(EMOTIONS), (1 - p) / (len(EMOTIONS) - 1))
    e[EMOTIONS.index(label)] = p
    return {"emotion": e.tolist(), "valence": [0.1, 0.2, 0.7], "arousal": [0.6, 0.3, 0.1]}


def run(tracker: StateTracker, script: list[tuple[float, str | None, bool]], rate: float = 15.0):
    """script: (duration_s, label or None for nothing observed, face_present)."""
    events, t = [], 0.0
    for dur, label, face in script:
        for _ in range(int(round(dur * rate))):
            events.append(tracker.update(t, probs_for(label) if label else None,
                                         face_present=face, speech=False))
            t += 1.0 / rate
    return events


def test_event_schema_fields() -> None:
    ev = StateTracker().update(0.0, probs_for("happy"), face_present=True, speech=True,
                               contributions={"face": 0.7, "voice": 0.3}, latency_ms=12.3)
    assert ev["v"] == 1 and ev["type"] == "state"
    for key in ("seq", "t", "wall", "face_present", "speech", "visible", "label", "confidence", "probs",
                "valence", "arousal", "valence_score", "arousal_score", "contributions", "latency_ms", "heads"):
        assert key in ev
    assert set(ev["probs"]) == set(EMOTIONS)
    assert -1 <= ev["valence_score"] <= 1 and -1 <= ev["arousal_score"] <= 1
    assert ev["valence_score"] == pytest.approx(0.6, abs=1e-3)
    assert ev["arousal_score"] == pytest.approx(-0.5, abs=1e-3)
    assert set(ev["contributions"]) == {"face", "voice", "body", "scene"}


def test_dwell_prevents_flicker() -> None:
    tr = StateTracker(StateConfig(smoothing=0.0, threshold=0.3, min_dwell_s=1.0))
    # 2 s happy, then alternate sad/happy every 2 ticks for 2 s: never 1 s of sad in a row.
    script = [(2.0, "happy", True)] + [(2 / 15, "sad", True), (2 / 15, "happy", True)] * 7
    labels = [e["label"] for e in run(tr, script)]
    assert labels[-1] == "happy"
    assert "sad" not in labels
    shown = [lab for lab in labels if lab != UNCERTAIN]
    changes = sum(1 for a, b in zip(shown, shown[1:]) if a != b)
    assert changes == 0


def test_label_changes_after_dwell() -> None:
    tr = StateTracker(StateConfig(smoothing=0.0, threshold=0.3, min_dwell_s=1.0))
    ev = run(tr, [(2.0, "happy", True), (2.0, "angry", True)])
    first_angry = next(e for e in ev if e["label"] == "angry")
    assert first_angry["t"] == pytest.approx(3.0, abs=0.1)  # 2 s switch + 1 s dwell


def test_smoothing_delays_and_rate_invariant() -> None:
    # The same real time at 15 Hz and 5 Hz gives about the same smoothed value.
    out = {}
    for rate in (15.0, 5.0):
        tr = StateTracker(StateConfig(smoothing=0.8, threshold=0.0, min_dwell_s=0.0))
        ev = run(tr, [(1.0, "happy", True), (0.6, "sad", True)], rate=rate)
        out[rate] = ev[-1]["probs"]["sad"]
    assert out[15.0] == pytest.approx(out[5.0], abs=0.05)
    assert out[15.0] < 0.9  # smoothed, not the raw 0.9


def test_uncertain_below_threshold() -> None:
    tr = StateTracker(StateConfig(smoothing=0.0, threshold=0.5, min_dwell_s=0.5))
    ev = []
    for i in range(30):
        ev.append(tr.update(i / 15, probs_for("fear", p=0.3), face_present=True, speech=False))
    assert all(e["label"] == UNCERTAIN for e in ev)
    assert ev[-1]["confidence"] < 0.5


def test_hidden_without_face() -> None:
    tr = StateTracker(StateConfig(smoothing=0.5, threshold=0.3, min_dwell_s=0.5, hide_after_s=2.0))
    ev = run(tr, [(2.0, "happy", True), (3.0, None, False)])
    at = {round(e["t"], 2): e for e in ev}
    assert at[1.93]["visible"]
    assert at[3.0]["visible"]          # 1 s without face: still shown
    assert not ev[-1]["visible"]       # 3 s without face: hidden
    assert ev[-1]["label"] == UNCERTAIN  # nothing observed decays to uncertain
    assert not ev[-1]["face_present"]


def test_hidden_when_never_a_face() -> None:
    tr = StateTracker()
    ev = run(tr, [(3.0, None, False)])
    assert not any(e["visible"] for e in ev)
    assert all(e["label"] == UNCERTAIN for e in ev)


def test_hidden_after_long_uncertainty_even_with_face() -> None:
    tr = StateTracker(StateConfig(smoothing=0.0, threshold=0.5, min_dwell_s=0.5, hide_after_s=1.0))
    ev = []
    for i in range(45):
        ev.append(tr.update(i / 15, probs_for("fear", p=0.25), face_present=True, speech=False))
    assert ev[5]["visible"] and not ev[-1]["visible"]


def test_set_validates() -> None:
    cfg = StateConfig()
    cfg.set("threshold", "0.6")
    assert cfg.threshold == 0.6
    for key, value in (("smoothing", 1.0), ("threshold", -1), ("nope", 1), ("min_dwell_s", float("nan"))):
        with pytest.raises(ValueError):
            cfg.set(key, value)


def test_contributions_by_occlusion() -> None:
    # A fake sequence model that only listens to voice, batched over masks as the backend is.
    calls = []

    def seq(masks: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(masks.shape)
        voice = masks[:, :, 1].mean(axis=1)
        e = np.full((len(masks), 7), 0.1)
        e[:, 3] += 0.5 * voice
        return {"emotion": e / e.sum(axis=1, keepdims=True)}

    mask = np.ones((8, 4), np.float32)
    mask[:, 3] = 0  # no game source
    probs, c = modality_contributions(seq, mask)
    assert calls == [(4, 8, 4)]   # the window plus face, voice and body occluded, in one call
    assert probs["emotion"].argmax() == 3
    assert c["voice"] == pytest.approx(1.0)
    assert c["face"] == 0.0 and c["scene"] == 0.0
    even = contributions_from_deltas({}, {"face": True, "voice": True})
    assert even["face"] == even["voice"] == 0.5


def test_extra_heads_smoothed_and_dwelled_like_emotion() -> None:
    # A personalized model: the streamer's own "user" classes beside the usual heads.
    # An untrained (empty) behaviour head has no output and is left out.
    tr = StateTracker(StateConfig(smoothing=0.8, threshold=0.5, min_dwell_s=1.0),
                      extra={"user": ["hyped", "tilted"], "behaviour": [], "emotion": list(EMOTIONS)})
    assert list(tr.extra) == ["user"]

    def tick(t: float, user: list[float] | None, emotion: str = "happy") -> dict:
        probs = None if user is None else {**probs_for(emotion), "user": user}
        return tr.update(t, probs, face_present=user is not None, speech=False)

    rate, t, ev = 15.0, 0.0, []
    for _ in range(30):                         # 2 s hyped
        ev.append(tick(t, [0.9, 0.1]))
        t += 1 / rate
    for _ in range(30):                         # 2 s tilted
        ev.append(tick(t, [0.1, 0.9]))
        t += 1 / rate
    user = [e["heads"]["user"] for e in ev]
    assert set(user[0]) == {"label", "confidence", "probs"} and set(user[0]["probs"]) == {"hyped", "tilted"}
    # Same dwell as the emotion label: "hyped" shows once its smoothed share has
    # been above the (2-class) threshold for 1 s.
    sure = head_threshold(0.5, 2)
    crossed = next(i for i, u in enumerate(user) if u["probs"]["hyped"] >= sure)
    first_hyped = next(i for i, u in enumerate(user) if u["label"] == "hyped")
    assert (first_hyped - crossed) / rate == pytest.approx(1.0, abs=0.1)
    # Smoothed: one tick after the switch the EMA still favours hyped, below the raw 0.9 / 0.1.
    assert 0.5 < user[31]["probs"]["hyped"] < 0.9
    assert user[31]["label"] == "hyped"
    # The switch to tilted shows once the smoothed tilted has led for min_dwell_s.
    crossed = next(i for i, u in enumerate(user) if i >= 30 and u["probs"]["tilted"] >= sure)
    first_tilted = next(i for i, u in enumerate(user) if u["label"] == "tilted")
    assert (first_tilted - crossed) / rate == pytest.approx(1.0, abs=0.1)
    assert user[-1]["confidence"] == pytest.approx(user[-1]["probs"]["tilted"], abs=1e-4)
    # Below the threshold: uncertain (after dwelling), with the top probability as confidence.
    for _ in range(30):
        ev.append(tick(t, [0.25, 0.75]))       # 0.75 >= head_threshold(0.5, 2) = 0.71 ...
        t += 1 / rate
    assert ev[-1]["heads"]["user"]["label"] == "tilted"
    tr.config.threshold = 0.6                   # ... but not >= head_threshold(0.6, 2) = 0.77
    for _ in range(30):
        ev.append(tick(t, [0.25, 0.75]))
        t += 1 / rate
    assert ev[-1]["heads"]["user"]["label"] == UNCERTAIN
    assert ev[-1]["heads"]["user"]["confidence"] == pytest.approx(0.75, abs=0.01)
    # Nothing observed: decays towards uniform and goes uncertain, like the emotion.
    for _ in range(45):
        ev.append(tick(t, None))
        t += 1 / rate
    assert ev[-1]["heads"]["user"]["label"] == UNCERTAIN
    assert ev[-1]["heads"]["user"]["probs"]["hyped"] == pytest.approx(0.5, abs=0.01)
    # The emotion fields are unchanged by the extra head.
    assert ev[29]["label"] == "happy" and set(ev[29]["probs"]) == set(EMOTIONS)


def test_extra_heads_survive_a_model_swap_only_when_unchanged() -> None:
    tr = StateTracker(StateConfig(smoothing=0.0, threshold=0.5, min_dwell_s=0.0))
    assert tr.update(0.0, probs_for("happy"), face_present=True, speech=False)["heads"] == {}
    tr.set_extra_heads({"user": ("hyped", "tilted")})
    ev = tr.update(0.1, {**probs_for("happy"), "user": [0.8, 0.2]}, face_present=True, speech=False)
    assert ev["heads"]["user"]["label"] == "hyped"
    tr.set_extra_heads({"user": ["hyped", "tilted"]})          # same classes: state kept
    assert tr.extra["user"].label == "hyped"
    tr.set_extra_heads({"user": ["hyped", "tilted", "clutch"]})  # retrained with a new class: fresh
    assert tr.extra["user"].label == UNCERTAIN
    tr.set_extra_heads({"emotion": list(EMOTIONS)})            # a model without it: gone
    assert tr.update(0.2, probs_for("happy"), face_present=True, speech=False)["heads"] == {}


def test_threshold_scales_with_the_number_of_classes() -> None:
    # The threshold is stated for 7 emotions; a head keeps its place between chance and certainty.
    assert head_threshold(0.4, 7) == pytest.approx(0.4)
    assert head_threshold(0.4, 3) == pytest.approx(1 / 3 + (0.4 - 1 / 7) / (6 / 7) * (2 / 3))
    assert head_threshold(0.4, 2) == pytest.approx(0.65, abs=0.01)
    assert head_threshold(0.0, 2) == 0.0 and head_threshold(1.0, 2) == 1.0

    # With the default 0.4: a 7-class emotion at 0.45 is shown, a 2-class head at 0.6
    # (barely above its coin flip) is "uncertain", at 0.8 it is shown.
    tr = StateTracker(StateConfig(smoothing=0.0, min_dwell_s=0.0), extra={"user": ["hyped", "calm"]})
    ev = tr.update(0.0, {**probs_for("happy", 0.45), "user": [0.6, 0.4]}, face_present=True, speech=False)
    assert ev["label"] == "happy" and ev["heads"]["user"]["label"] == UNCERTAIN
    ev = tr.update(0.1, {**probs_for("happy", 0.45), "user": [0.8, 0.2]}, face_present=True, speech=False)
    assert ev["heads"]["user"]["label"] == "hyped"
