"""Trigger rules: parsing (and malformed rules), firing without flapping, the runner's worker
thread (never blocking the analysis thread), OBS actions against the obs-websocket stand-in
(tests/obs_standin.py), and the webhook against a local HTTP server with a slow endpoint."""
from __future__ import annotations

import http.server
import json
import re
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest

from obs_merlb.config import read_config, save_config
from obs_merlb.obs_client import ObsLink
from obs_merlb.triggers.actions import Executor
from obs_merlb.triggers.rules import RuleState, parse_rule, parse_rules, rule_to_table, save_triggers
from obs_merlb.triggers.runner import TriggerRunner, build_runner
from obs_merlb.triggers.webhook import WebhookPoster
from tests.obs_standin import ObsStandIn, Refuse

pytestmark = pytest.mark.triggers


def state(t: float, label: str = "neutral", p: float = 0.9, *, arousal: float = 0.0, valence: float = 0.0,
          face: bool = True, speech: bool = False) -> dict[str, Any]:
    probs = {e: 0.0 for e in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")}
    probs[label] = p
    return {"v": 1, "type": "state", "t": t, "label": label, "confidence": p, "probs": probs,
            "valence_score": valence, "arousal_score": arousal, "face_present": face, "speech": speech,
            "heads": {"user": {"label": "hyped", "confidence": 0.8, "probs": {"hyped": 0.8, "calm": 0.2}}}}


def rule_table(**kw: Any) -> dict[str, Any]:
    base = {"name": "r", "when": "emotion", "label": "happy", "min_confidence": 0.6, "for_s": 1.0,
            "cooldown_s": 10.0, "actions": [{"type": "scene", "scene": "Hype"}]}
    return {**base, **kw}


def run_states(rs: RuleState, states: list[dict[str, Any]]) -> list[tuple[float, str]]:
    out = []
    for s in states:
        v = rs.on_event(s)
        if v:
            out.append((s["t"], v))
    return out


# ---------------------------------------------------------------- parsing

def test_parse_every_condition_and_action_and_round_trip() -> None:
    tables = [
        rule_table(name="happy"),
        rule_table(name="hyped", head="user", label="hyped"),
        {"name": "loud", "when": "arousal", "above": 0.5, "for_s": 2, "only_while": "streaming",
         "actions": [{"type": "show_source", "scene": "Main", "source": "Confetti", "for_s": 5},
                     {"type": "text", "source": "Mood", "template": "{emotion} {confidence:.0%}"},
                     {"type": "filter", "source": "Cam", "filter": "Glow", "enabled": False},
                     {"type": "hotkey", "hotkey": "OBSBasic.Screenshot"}, {"type": "replay_buffer"},
                     {"type": "chapter"}, {"type": "obs_event"}, {"type": "scene_switcher"},
                     {"type": "streamerbot", "action": "Hype"}, {"type": "vts_expression", "file": "a.exp3.json"},
                     {"type": "webhook", "url": "http://127.0.0.1:1/x", "timeout_s": 1}],
         "release": [{"type": "scene", "scene": "Main"}]},
        {"name": "sad", "when": "valence", "below": -0.4, "actions": [{"type": "obs_event"}]},
        {"name": "peak", "when": "highlight", "kind": "arousal_peak", "actions": [{"type": "replay_buffer"}]},
        {"name": "tagged", "when": "tag", "tag": "hype", "actions": [{"type": "obs_event"}]},
        *({"name": w, "when": w, "actions": [{"type": "obs_event"}]}
          for w in ("face_lost", "face_found", "speech_started", "speech_stopped")),
    ]
    rules, problems = parse_rules(tables)
    assert problems == [] and [r.name for r in rules][:3] == ["happy", "hyped", "loud"] and len(rules) == 10
    loud = rules[2]
    assert loud.only_while == "streaming" and loud.actions[0].for_s == 5.0 and loud.release[0].get("scene") == "Main"
    for r in rules:   # what the panel saves reads back as the same rule
        assert parse_rule(rule_to_table(r)) == r


@pytest.mark.parametrize("table, words", [
    (rule_table(cooldown_s="soon"), ["trigger 'r'", "cooldown_s", "number"]),
    (rule_table(when="smile"), ["trigger 'r'", "when", "unknown"]),
    (rule_table(label=""), ["trigger 'r'", "label"]),
    ({"name": "a", "when": "arousal", "actions": [{"type": "obs_event"}]}, ["'a'", "above"]),
    (rule_table(actions=[{"type": "scene"}]), ["trigger 'r'", "action scene", "scene is required"]),
    (rule_table(actions=[{"type": "teleport"}]), ["trigger 'r'", "teleport", "unknown"]),
    (rule_table(actions=[{"type": "text", "source": "T", "template": "{mood}"}]), ["{mood}", "known"]),
    (rule_table(actions=[]), ["no actions"]),
    (rule_table(actions=[{"type": "streamerbot"}]), ["Streamer.bot", "name"]),
    (rule_table(only_while="live"), ["only_while"]),
    (rule_table(colour="red"), ["unknown field 'colour'"]),
    ({"when": "emotion"}, ["trigger #1", "name is required"]),
])
def test_malformed_rule_is_one_line_and_the_others_work(table: dict[str, Any], words: list[str]) -> None:
    rules, problems = parse_rules([table, rule_table(name="good")])
    assert [r.name for r in rules] == ["good"]
    assert len(problems) == 1 and "\n" not in problems[0]
    assert all(w in problems[0] for w in words), problems[0]


def test_duplicate_names_and_a_non_list() -> None:
    rules, problems = parse_rules([rule_table(), rule_table()])
    assert len(rules) == 1 and "unique" in problems[0]
    assert parse_rules({"name": "x"})[1] and parse_rules(None) == ([], [])


# ---------------------------------------------------------------- firing

def test_emotion_fires_after_for_s_and_releases_after_release_s() -> None:
    rs = RuleState(parse_rule(rule_table(for_s=1.0, release_s=0.5)))
    seq = [state(t / 10, "happy" if 5 <= t < 40 else "neutral") for t in range(0, 60)]
    got = run_states(rs, seq)
    assert got == [(1.5, "fire"), (4.5, "release")]


def test_flapping_emotion_fires_at_most_once_per_cooldown() -> None:
    """A label that alternates every 0.3 s for a minute: at most one firing per 10 s cool-down."""
    rs = RuleState(parse_rule(rule_table(for_s=0.2, cooldown_s=10.0, release_s=0.5)))
    seq = [state(t / 15, "happy" if (t // 5) % 2 == 0 else "sad") for t in range(0, 60 * 15)]
    fires = [t for t, v in run_states(rs, seq) if v == "fire"]
    assert fires, "the rule never fired"
    assert all(b - a >= 10.0 for a, b in zip(fires, fires[1:])), fires
    # Slower flapping (2 s on, 2 s off) ends episodes, and still fires at most once per cool-down.
    rs = RuleState(parse_rule(rule_table(for_s=0.2, cooldown_s=10.0, release_s=0.5)))
    seq = [state(t / 15, "happy" if (t // 30) % 2 == 0 else "sad") for t in range(0, 60 * 15)]
    fires = [t for t, v in run_states(rs, seq) if v == "fire"]
    assert 4 <= len(fires) <= 7 and all(b - a >= 10.0 for a, b in zip(fires, fires[1:])), fires


def test_other_conditions() -> None:
    def fires(table: dict[str, Any], events: list[dict[str, Any]]) -> list[tuple[float, str]]:
        return run_states(RuleState(parse_rule({"name": "x", "actions": [{"type": "obs_event"}], **table})), events)

    up = [state(t / 10, arousal=0.8 if t >= 10 else 0.0) for t in range(40)]
    assert fires({"when": "arousal", "above": 0.5, "for_s": 1.0}, up)[0] == (2.0, "fire")
    down = [state(t / 10, valence=-0.6) for t in range(20)]
    assert fires({"when": "valence", "below": -0.5, "for_s": 0.5}, down) == [(0.5, "fire")]
    user = [state(t / 10) for t in range(20)]
    assert fires({"when": "emotion", "head": "user", "label": "hyped", "min_confidence": 0.7, "for_s": 0.5}, user)
    lost = [state(t / 10, face=t < 5) for t in range(40)]
    assert fires({"when": "face_lost", "for_s": 2.0}, lost) == [(2.5, "fire")]
    talk = [state(t / 10, speech=5 <= t < 15) for t in range(40)]
    assert fires({"when": "speech_started", "for_s": 0.0, "release_s": 0.5}, talk) == [(0.5, "fire"), (2.0, "release")]
    tag = [{"type": "tag", "t": 1.0, "name": "funny"}, {"type": "tag", "t": 1.5, "name": "hype"},
           state(3.0), state(6.6), {"type": "tag", "t": 7.0, "name": "hype"}]
    assert fires({"when": "tag", "tag": "hype", "hold_s": 5.0, "cooldown_s": 10.0}, tag) == [(1.5, "fire"), (6.6, "release")]
    peak = [{"type": "highlight", "t": 2.0, "kind": "emotion_change"}, {"type": "highlight", "t": 3.0, "kind": "arousal_peak"}]
    assert fires({"when": "highlight", "kind": "arousal_peak"}, peak) == [(3.0, "fire")]


# ---------------------------------------------------------------- the runner and OBS (stand-in)

class ObsRecorder:
    """obs-websocket answers (for ObsStandIn) that keep every request's data and a tiny OBS state."""

    def __init__(self, version: str = "29.0.2") -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.scene = "Main"
        self.items = {("Main", "Confetti"): [7, False]}
        self.version = version
        self.delay_s = 0.0

    def _rec(self, name: str, fn: Any) -> Any:
        def answer(data: dict[str, Any]) -> Any:
            time.sleep(self.delay_s)
            self.calls.append((name, data))
            return fn(data)
        return answer

    def answers(self) -> dict[str, Any]:
        def set_scene(d: dict[str, Any]) -> dict[str, Any]:
            if d["sceneName"] not in ("Main", "Hype"):
                raise Refuse(600, f"No source was found by the name of `{d['sceneName']}`.")
            self.scene = d["sceneName"]
            return {}

        def item_id(d: dict[str, Any]) -> dict[str, Any]:
            item = self.items.get((d["sceneName"], d["sourceName"]))
            if item is None:
                raise Refuse(600, "No scene items were found in the specified scene by that name.")
            return {"sceneItemId": item[0]}

        def set_enabled(d: dict[str, Any]) -> dict[str, Any]:
            for key, item in self.items.items():
                if key[0] == d["sceneName"] and item[0] == d["sceneItemId"]:
                    item[1] = d["sceneItemEnabled"]
            return {}

        def vendor(d: dict[str, Any]) -> dict[str, Any]:
            raise Refuse(600, "No vendor was found by that name.")

        plain = {"GetVersion": lambda d: {"obsVersion": self.version, "obsWebSocketVersion": "5.1.0"},
                 "SetCurrentProgramScene": set_scene, "GetSceneItemId": item_id, "SetSceneItemEnabled": set_enabled,
                 "BroadcastCustomEvent": lambda d: {}, "CallVendorRequest": vendor,
                 "GetStreamStatus": lambda d: {"outputActive": False},
                 "GetRecordStatus": lambda d: {"outputActive": True}}
        return {k: self._rec(k, v) for k, v in plain.items()}


@pytest.fixture()
def obs() -> Iterator[tuple[ObsRecorder, ObsLink]]:
    rec = ObsRecorder()
    with ObsStandIn("pw", rec.answers()) as server:
        link = ObsLink(port=server.port, password="pw")
        yield rec, link
        link.close()


def collect() -> tuple[list[dict[str, Any]], list[str], Any, Any]:
    events: list[dict[str, Any]] = []
    errors: list[str] = []
    return events, errors, events.append, lambda m, where: errors.append(f"{where}: {m}")


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def feed_flapping(runner: TriggerRunner, ticks: int, pace_s: float) -> float:
    """Feed a label that changes every tick, as the analysis thread would; returns the slowest call."""
    worst = 0.0
    for i in range(ticks):
        t0 = time.perf_counter()
        runner(state(i / 15, "happy" if i % 2 else "neutral"))
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(pace_s)
    return worst


def test_runner_acts_on_obs_releases_and_reports_missing_names_once(obs: tuple[ObsRecorder, ObsLink]) -> None:
    rec, link = obs
    events, errors, publish, on_error = collect()
    rules, _ = parse_rules([
        rule_table(name="hype", release_s=0.2, actions=[
            {"type": "scene", "scene": "Hype"}, {"type": "show_source", "scene": "Main", "source": "Confetti"},
            {"type": "obs_event"}, {"type": "scene_switcher", "template": "{emotion}!"}],
            release=[{"type": "scene", "scene": "Main"}]),
        rule_table(name="typo", cooldown_s=0.0, release_s=0.2, actions=[{"type": "scene", "scene": "Hpye"}]),
        rule_table(name="gated", only_while="streaming", actions=[{"type": "scene", "scene": "Hype"}]),
    ])
    runner = TriggerRunner(rules, Executor(obs=link), publish=publish, on_error=on_error)
    try:
        t = 0.0
        for _ in range(3):   # three happy episodes: 'typo' fires each time, 'hype' once (cool-down)
            for label in ["happy"] * 20 + ["neutral"] * 10:
                runner(state(t, label))
                t += 0.1
        wait_for(lambda: len([e for e in events if e["rule"] == "typo" and e["event"] == "fire"]) == 3)
        wait_for(lambda: any(e["rule"] == "hype" and e["event"] == "release" for e in events))
    finally:
        runner.close()
    hype = [e for e in events if e["rule"] == "hype"]
    assert [e["event"] for e in hype] == ["fire", "release"]
    fire = hype[0]["results"]
    assert [r["ok"] for r in fire] == [True, True, True, False]
    assert "Advanced Scene Switcher is not installed" in fire[3]["detail"]
    assert ("SetCurrentProgramScene", {"sceneName": "Hype"}) in rec.calls
    assert rec.scene == "Main" and rec.items[("Main", "Confetti")][1] is False   # released: hidden, scene back
    assert any(n == "SetSceneItemEnabled" and d["sceneItemEnabled"] for n, d in rec.calls)
    custom = [d for n, d in rec.calls if n == "BroadcastCustomEvent"][0]["eventData"]
    assert custom["emotion"] == "happy" and custom["rule"] == "hype" and custom["source"] == "obs-merlb"
    typo = [e for e in errors if "Hpye" in e]
    assert len(typo) == 1 and "OBS has no scene 'Hpye'" in typo[0] and typo[0].startswith("trigger: trigger 'typo'")
    assert len([e for e in errors if "Advanced Scene Switcher" in e]) == 1
    gated = [e for e in events if e["rule"] == "gated"]
    assert gated[0]["event"] == "skipped" and "not streaming" in gated[0]["results"][0]["detail"]
    assert [n for n, _ in rec.calls].count("CallVendorRequest") == 1   # asked once per OBS connection


def test_sink_never_blocks_on_a_slow_obs_and_the_queue_is_bounded(obs: tuple[ObsRecorder, ObsLink]) -> None:
    rec, link = obs
    rec.delay_s = 0.5
    events, errors, publish, on_error = collect()
    rules, _ = parse_rules([rule_table(name=f"r{i}", for_s=0.0, cooldown_s=0.0, release_s=0.0,
                                       actions=[{"type": "obs_event"}]) for i in range(4)])
    runner = TriggerRunner(rules, Executor(obs=link), publish=publish, on_error=on_error, queue_size=4,
                           max_per_minute=1000)
    try:
        worst = feed_flapping(runner, 200, pace_s=0.0)
    finally:
        runner.close(timeout_s=1.0)
    assert worst < 0.05, f"the analysis thread waited {worst * 1000:.0f} ms in the trigger sink"
    assert runner.dropped > 0 and len([e for e in errors if "queue is full" in e]) == 1


def test_rate_limit_is_said_once() -> None:
    events, errors, publish, on_error = collect()
    rules, _ = parse_rules([rule_table(for_s=0.0, cooldown_s=0.0, release_s=0.0, actions=[{"type": "obs_event"}])])
    runner = TriggerRunner(rules, Executor(obs=None), publish=publish, on_error=on_error, max_per_minute=3)
    try:
        for i in range(40):
            runner(state(i, "happy" if i % 2 else "neutral"))
        wait_for(lambda: len(events) >= 3)
    finally:
        runner.close()
    assert runner.fired == 3 and len([e for e in errors if "more than 3 times" in e]) == 1
    assert "needs OBS" in events[0]["results"][0]["detail"]


def test_build_runner_reports_malformed_rules_and_keeps_the_rest(tmp_path: Path) -> None:
    cfg = {"triggers": [rule_table(name="ok"), rule_table(name="bad", for_s=-1)]}
    events, errors, publish, on_error = collect()
    runner = build_runner(cfg, obs=None, publish=publish, on_error=on_error)
    assert runner is not None and [r.name for r in runner.rules] == ["ok"]
    runner.close()
    assert len(errors) == 1 and "trigger 'bad'" in errors[0] and "for_s" in errors[0]
    assert build_runner({}, obs=None) is None


# ---------------------------------------------------------------- webhook

class SlowHandler(http.server.BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    started = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        SlowHandler.started += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/slow":
            time.sleep(3.0)
        SlowHandler.bodies.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture()
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    SlowHandler.bodies, SlowHandler.started = [], 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_webhook_posts_state_and_a_slow_endpoint_times_out_without_blocking(http_server: str) -> None:
    poster = WebhookPoster()
    assert "204" in poster.post(http_server + "/ok", {"emotion": "happy", "rule": "r"}, 2.0)
    assert SlowHandler.bodies[0] == {"source": "obs-merlb", "emotion": "happy", "rule": "r"}

    events, errors, publish, on_error = collect()
    rules, _ = parse_rules([rule_table(for_s=0.0, cooldown_s=0.0, release_s=0.0, actions=[
        {"type": "webhook", "url": http_server + "/slow", "timeout_s": 0.5}])])
    runner = TriggerRunner(rules, Executor(webhook=WebhookPoster()), publish=publish, on_error=on_error)
    try:
        worst = feed_flapping(runner, 60, pace_s=1 / 15)
        wait_for(lambda: len([e for e in events if e["event"] == "fire"]) >= 2)
    finally:
        runner.close()
    assert worst < 0.05
    fires = [e["results"][0] for e in events if e["event"] == "fire"]
    assert not fires[0]["ok"] and "timed out" in fires[0]["detail"] and "0.5 s" in fires[0]["detail"]
    assert all(not r["ok"] and r["detail"] == fires[0]["detail"] for r in fires)
    # No retry storm: ~4 s of firings reached the endpoint at most twice (the backoff starts at 2 s).
    assert len(fires) >= 10 and SlowHandler.started - 1 <= 2, (len(fires), SlowHandler.started)
    assert len([e for e in errors if "timed out" in e]) == 1


def test_config_round_trip_keeps_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_config({"obs": {"password": "secret"}, "engine": {"rate": 10.0}}, path)
    rules, _ = parse_rules([rule_table(name="a"), rule_table(name="b", when="tag", tag="hype")])
    broken = rule_table(name="c", when="smile")
    save_triggers([rule_to_table(r) for r in rules] + [broken], path)
    cfg = read_config(path)
    assert cfg["obs"]["password"] == "secret" and cfg["engine"]["rate"] == 10.0
    assert parse_rules(cfg["triggers"])[0] == rules and cfg["triggers"][2] == broken   # kept as written
    assert (path.stat().st_mode & 0o777) == 0o600


def test_readme_examples_are_valid_rules() -> None:
    """Every TOML block of README "Make the stream react" parses, without a problem, into rules."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Make the stream react", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    for block in blocks:
        rules, problems = parse_rules(tomllib.loads(block)["triggers"])
        assert problems == [] and len(rules) == 1
