"""Triggers acting on a real OBS Studio under Xvfb (tests/obs_harness.py).

The camera is a media source playing the demo clip; the rules are fed synthetic `state`
events (the analysis is tested elsewhere, and synthetic states make firing times exact),
and their actions go to the real OBS through obs-websocket. What happened is observed the
way another tool would see it: GetCurrentProgramScene, GetSceneItemEnabled, and a second
obs-websocket client that receives the CustomEvent.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import pytest

from obs_merlb.obs_client import ObsLink
from obs_merlb.triggers.actions import Executor
from obs_merlb.triggers.rules import parse_rules
from obs_merlb.triggers.runner import TriggerRunner
from obs_merlb.triggers.streamerbot import auth_response
from obs_merlb.triggers.wsclient import open_websocket
from tests.obs_harness import SCENE, ObsProcess, default_clip, running_obs
from tests.test_triggers import collect, rule_table, state, wait_for

pytestmark = [pytest.mark.triggers, pytest.mark.obs, pytest.mark.slow]

SOURCE = "Confetti"


class EventListener:
    """A second obs-websocket client (raw protocol, General events) that keeps every CustomEvent."""

    def __init__(self, port: int, password: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.ws = open_websocket(f"ws://127.0.0.1:{port}", 10.0)
        hello = json.loads(self.ws.recv(timeout=10))["d"]
        ident: dict[str, Any] = {"rpcVersion": 1, "eventSubscriptions": 1}   # 1 = General (CustomEvent)
        auth = hello.get("authentication")
        if auth:
            ident["authentication"] = auth_response(password, auth["salt"], auth["challenge"])
        self.ws.send(json.dumps({"op": 1, "d": ident}))
        assert json.loads(self.ws.recv(timeout=10))["op"] == 2, "identify failed"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("op") == 5 and msg["d"].get("eventType") == "CustomEvent":
                    self.events.append(msg["d"]["eventData"])
        except Exception:  # closed at the end of the test
            return

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObsProcess]:
    clip = default_clip()
    assert clip is not None, "no demo clip (assets/demo.mp4) for the media source"
    with running_obs(tmp_path_factory.mktemp("obs-triggers"), media=clip) as proc:
        proc.client.send("CreateScene", {"sceneName": "Hype"}, raw=True)
        proc.client.send("CreateInput", {"sceneName": SCENE, "inputName": SOURCE, "inputKind": "color_source_v3",
                                         "inputSettings": {"color": 4278255360}, "sceneItemEnabled": False}, raw=True)
        yield proc


def program_scene(obs: ObsProcess) -> str:
    return obs.client.send("GetCurrentProgramScene", raw=True)["currentProgramSceneName"]


def shown(obs: ObsProcess) -> bool:
    item = obs.client.send("GetSceneItemId", {"sceneName": SCENE, "sourceName": SOURCE}, raw=True)["sceneItemId"]
    return bool(obs.client.send("GetSceneItemEnabled", {"sceneName": SCENE, "sceneItemId": item},
                                raw=True)["sceneItemEnabled"])


def test_rule_switches_scene_shows_source_releases_and_respects_cooldown(obs: ObsProcess) -> None:
    port, password = obs.home.websocket()
    assert password is not None
    listener = EventListener(port, password)
    events, errors, publish, on_error = collect()
    rules, problems = parse_rules([
        rule_table(name="hype", for_s=0.5, cooldown_s=20.0, release_s=0.3, actions=[
            {"type": "scene", "scene": "Hype"}, {"type": "show_source", "scene": SCENE, "source": SOURCE},
            {"type": "obs_event"}], release=[{"type": "scene", "scene": SCENE}]),
        rule_table(name="typo", for_s=0.5, cooldown_s=0.0, release_s=0.3, actions=[
            {"type": "scene", "scene": "Nowhere"}, {"type": "show_source", "scene": SCENE, "source": "Nothing"}]),
        rule_table(name="switcher", for_s=0.5, cooldown_s=0.0, release_s=0.3, actions=[
            {"type": "scene_switcher", "template": "{emotion}"}, {"type": "chapter"}]),
    ])
    assert problems == []
    link = ObsLink(port=port, password=password)
    runner = TriggerRunner(rules, Executor(obs=link), publish=publish, on_error=on_error)
    t = 0.0

    def feed(label: str, seconds: float) -> None:
        nonlocal t
        for _ in range(int(seconds * 15)):
            runner(state(t, label))
            t += 1 / 15

    try:
        assert program_scene(obs) == SCENE and not shown(obs)
        feed("happy", 1.0)
        wait_for(lambda: program_scene(obs) == "Hype" and shown(obs), timeout=15)
        wait_for(lambda: listener.events, timeout=10)
        custom = listener.events[0]
        assert custom["source"] == "obs-merlb" and custom["rule"] == "hype" and custom["emotion"] == "happy"
        assert custom["confidence"] == pytest.approx(0.9)

        feed("neutral", 1.0)       # the condition ends: source hidden, release scene back
        wait_for(lambda: program_scene(obs) == SCENE and not shown(obs), timeout=15)

        feed("happy", 2.0)         # within the 20 s cool-down: nothing happens
        feed("neutral", 1.0)
        wait_for(lambda: len([e for e in events if e["rule"] == "typo" and e["event"] == "fire"]) == 2)
        time.sleep(1.0)            # the worker ran the typo rule after it; hype had its chance
        assert [e["event"] for e in events if e["rule"] == "hype"] == ["fire", "release"]
        assert program_scene(obs) == SCENE and not shown(obs)

        t += 20.0                  # past the cool-down: it fires again
        feed("happy", 1.0)
        wait_for(lambda: program_scene(obs) == "Hype" and shown(obs), timeout=15)
        feed("neutral", 1.0)
        wait_for(lambda: program_scene(obs) == SCENE and not shown(obs), timeout=15)
        wait_for(lambda: len(listener.events) == 2)
    finally:
        runner.close()
        link.close()
        listener.close()

    # Names that do not exist: one clear line each, the other rules kept working.
    assert len([e for e in errors if "OBS has no scene 'Nowhere'" in e]) == 1
    assert len([e for e in errors if "OBS has no source 'Nothing' in scene 'Scene'" in e]) == 1
    # Debian's OBS 29 has neither Advanced Scene Switcher nor record chapters: said once each.
    assert len([e for e in errors if "Advanced Scene Switcher is not installed" in e]) == 1
    assert len([e for e in errors if "record chapters need OBS 30.2" in e]) == 1
    assert all(e.startswith("trigger: trigger '") for e in errors), errors
