"""Peak detector on scripted arousal, and the OBS side with a fake obs-websocket client."""
from __future__ import annotations

import math

import numpy as np
import pytest
from obsws_python.error import OBSSDKRequestError

from obs_merlb.highlights import HighlightActor, Highlight, PeakDetector
from obs_merlb.obs_client import ObsLink, ObsUnavailable, parse_version


def feed(det: PeakDetector, xs, labels=None, rate: float = 15.0):
    out = []
    for i, x in enumerate(xs):
        lab = labels[i] if labels is not None else "neutral"
        out += det.update(i / rate, x, lab, 0.9)
    return out


def test_peak_fires_once_with_refractory() -> None:
    rng = np.random.default_rng(0)
    xs = list(-0.3 + 0.03 * rng.standard_normal(15 * 40))      # 40 s calm
    xs += [0.8] * 30                                              # 2 s burst
    xs += list(-0.3 + 0.03 * rng.standard_normal(15 * 5))       # 5 s calm
    xs += [0.8] * 30                                              # burst inside the refractory period
    peaks = [h for h in feed(PeakDetector(refractory_s=20), xs) if h.kind == "arousal_peak"]
    assert len(peaks) == 1
    assert peaks[0].t == pytest.approx(40.0, abs=0.2)
    assert peaks[0].score >= 2.5


def test_no_peak_on_noise_or_during_warmup() -> None:
    rng = np.random.default_rng(1)
    xs = list(0.05 * rng.standard_normal(15 * 120))
    assert not [h for h in feed(PeakDetector(), xs) if h.kind == "arousal_peak"]
    xs = [0.0] * 15 * 2 + [0.9] * 15
    assert not feed(PeakDetector(warmup_s=10), xs)


def test_slow_drift_is_not_a_peak() -> None:
    xs = list(np.linspace(-0.5, 0.5, 15 * 200))
    assert not [h for h in feed(PeakDetector(), xs) if h.kind == "arousal_peak"]


def test_emotion_change() -> None:
    labels = ["neutral"] * 15 * 12 + ["uncertain"] * 5 + ["happy"] * 15 * 3 + ["angry"] * 15 * 3
    hs = [h for h in feed(PeakDetector(change_refractory_s=15), [0.0] * len(labels), labels)
          if h.kind == "emotion_change"]
    assert [h.label for h in hs] == ["happy"]  # angry comes within the refractory period


def test_memory_is_bounded() -> None:
    det = PeakDetector(baseline_s=60, sample_hz=4)
    feed(det, [0.0] * 15 * 600)
    assert len(det._base) == 240


class FakeObs:
    """Stands in for obsws_python.ReqClient (no OBS here): records requests."""

    def __init__(self, version="30.2.0", replay=True, recording=True, chapter_ok=True, **_):
        self.version, self.replay, self.recording, self.chapter_ok = version, replay, recording, chapter_ok
        self.calls: list[str] = []

    def send(self, name, data=None, raw=False):
        self.calls.append(name)
        if name == "GetVersion":
            return {"obsVersion": self.version, "obsWebSocketVersion": "5.5.0"}
        if name == "GetReplayBufferStatus":
            return {"outputActive": self.replay}
        if name == "GetRecordStatus":
            return {"outputActive": self.recording}
        if name == "CreateRecordChapter" and not self.chapter_ok:
            raise OBSSDKRequestError(name, 501, "not supported by the output format")
        return {}

    def disconnect(self):
        pass


@pytest.mark.parametrize("version,replay,chapter_ok,expect", [
    ("30.2.3", True, True, (True, True)),
    ("29.0.2", True, True, (True, False)),    # no chapters before 30.2
    ("30.2.0", False, False, (False, False)),  # no replay buffer running; MKV refuses chapters
])
def test_actor_uses_obs(version, replay, chapter_ok, expect) -> None:
    fake = FakeObs(version=version, replay=replay, chapter_ok=chapter_ok)
    link = ObsLink(client_factory=lambda **kw: fake)
    actor = HighlightActor(publish=lambda e: None, obs=link)
    assert actor.act(Highlight(1.0, "arousal_peak", 3.0, "happy")) == expect
    assert ("SaveReplayBuffer" in fake.calls) == replay
    assert ("CreateRecordChapter" in fake.calls) == (version >= "30.2")
    actor.close()


def test_actor_publishes_event_when_obs_unreachable() -> None:
    events, errors = [], []

    def refuse(**_):
        raise ConnectionRefusedError(111, "Connection refused")

    link = ObsLink(port=1, client_factory=refuse, on_error=errors.append, password="s3cret")
    actor = HighlightActor(publish=events.append, obs=link)
    actor.fire(Highlight(5.0, "arousal_peak", 4.0, "surprise"))
    actor.close()
    assert events and events[0]["type"] == "highlight"
    assert events[0]["replay_saved"] is False and events[0]["chapter_added"] is False
    assert errors and "cannot reach OBS" in errors[0] and "s3cret" not in errors[0]
    assert "s3cret" not in repr(link)
    with pytest.raises(ObsUnavailable, match="cannot reach OBS.*next retry"):
        link.request("GetStats")  # inside the backoff: no reconnect storm


def test_parse_version() -> None:
    assert parse_version("30.2.3") == (30, 2, 3) and parse_version("29.0.2-rc1") >= (29, 0)
    assert math.isfinite(parse_version("31")[0])
