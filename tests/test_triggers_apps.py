"""Streamer.bot and VTube Studio triggers.

Neither app runs here (Windows/macOS applications), so these tests talk to local WebSocket
stand-ins written from their public API documentation (tests/standins/streamerbot.py,
tests/standins/vtube_studio.py). The stand-ins check every request's shape (`problems`)
and answer as documented: Streamer.bot's hello/authentication and DoAction, VTube Studio's
token flow (the user approves once; the token is saved with user-only permissions), a
refused token, a revoked token, expressions and injected parameters.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from obs_merlb.config import read_config, save_config
from obs_merlb.triggers.actions import Executor
from obs_merlb.triggers.rules import parse_rules
from obs_merlb.triggers.runner import TriggerRunner, build_runner, executor_from_config
from obs_merlb.triggers.runner import test_rule as run_test_rule
from obs_merlb.triggers.streamerbot import StreamerBotClient
from obs_merlb.triggers.vtube_studio import VtsClient
from obs_merlb.triggers.wsclient import PeerError
from tests.obs_standin import free_port
from tests.standins.streamerbot import StreamerBotStandIn
from tests.standins.vtube_studio import VtsStandIn
from tests.test_triggers import collect, rule_table, state, wait_for

pytestmark = pytest.mark.triggers

CTX = {"emotion": "happy", "confidence": 0.8, "valence": 0.5, "arousal": 0.7, "rule": "hype", "t": 1.0}


@pytest.mark.parametrize("password", [None, "sb-secret"])
def test_streamerbot_do_action_by_name_and_id(password: str | None) -> None:
    with StreamerBotStandIn({"a1b2": "Hype"}, password=password) as sb:
        client = StreamerBotClient(sb.url, password or "")
        try:
            assert "run" in client.do_action("Hype", "", CTX)
            assert "run" in client.do_action("", "a1b2", CTX)
            with pytest.raises(PeerError, match="did not run action 'Nope'.*Action not found"):
                client.do_action("Nope", "", CTX)
        finally:
            client.close()
    assert sb.problems == []
    assert [r["name"] for r in sb.run] == ["Hype", "Hype"]
    assert sb.run[0]["args"] == {"emotion": "happy", "confidence": 0.8, "valence": 0.5, "arousal": 0.7, "rule": "hype"}
    assert sb.connections == 1     # one connection kept for all requests


def test_streamerbot_wrong_or_missing_password_is_clear() -> None:
    with StreamerBotStandIn({"a": "Hype"}, password="right") as sb:
        for pw, words in (("wrong", "rejected the WebSocket password"), ("", "asks for a WebSocket password")):
            client = StreamerBotClient(sb.url, pw)
            with pytest.raises(PeerError, match=words):
                client.do_action("Hype", "", CTX)
            client.close()
        assert sb.run == []


def test_unreachable_streamerbot_is_said_once_and_other_rules_keep_working() -> None:
    events, errors, publish, on_error = collect()
    url = f"ws://127.0.0.1:{free_port()}/"
    rules, _ = parse_rules([
        rule_table(name="bot", for_s=0.0, cooldown_s=0.0, release_s=0.0,
                   actions=[{"type": "streamerbot", "action": "Hype"}]),
        rule_table(name="other", for_s=0.0, cooldown_s=0.0, release_s=0.0, actions=[{"type": "chapter"}])])
    ex = Executor(streamerbot=StreamerBotClient(url))
    runner = TriggerRunner(rules, ex, publish=publish, on_error=on_error)
    try:
        for i in range(20):
            runner(state(i / 15, "happy" if i % 2 else "neutral"))
        wait_for(lambda: len([e for e in events if e["rule"] == "bot" and e["event"] == "fire"]) >= 5)
    finally:
        runner.close()
    bot = [e for e in errors if "'bot'" in e]
    assert len(bot) == 1 and "cannot reach Streamer.bot at " + url in bot[0] and "WebSocket Server" in bot[0]
    assert any(e["rule"] == "other" and e["event"] == "fire" for e in events)   # the other rule still runs


def test_vts_token_flow_saves_the_token_user_only_and_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_config({"obs": {"password": "x"}, "vtube_studio": {"url": ""}}, path)
    with VtsStandIn(["happy.exp3.json"]) as vts:
        cfg = {"vtube_studio": {"url": vts.url},
               "triggers": [rule_table(actions=[{"type": "vts_expression", "file": "happy.exp3.json"}])]}
        ex = executor_from_config(cfg, None, config_path=str(path))
        assert "on" in ex.vts.expression("happy.exp3.json", True)
        assert vts.popups == 1 and vts.active == {"happy.exp3.json": True}
        saved = read_config(path)
        assert saved["vtube_studio"]["token"] == "token-1" and saved["obs"]["password"] == "x"
        assert (path.stat().st_mode & 0o777) == 0o600
        ex.vts.close()
        # A new run (new connection) authenticates with the saved token: no second popup.
        cfg["vtube_studio"] = saved["vtube_studio"] | {"url": vts.url}
        again = executor_from_config(cfg, None, config_path=str(path))
        assert again.vts.token == "token-1"
        assert "off" in again.vts.expression("happy.exp3.json", False)
        again.vts.close()
    assert vts.popups == 1 and vts.active == {"happy.exp3.json": False} and vts.problems == []


def test_vts_refused_token_is_one_clear_message_and_no_popup_storm() -> None:
    events, errors, publish, on_error = collect()
    with VtsStandIn(["happy.exp3.json"], approve=False) as vts:
        rules, _ = parse_rules([rule_table(for_s=0.0, cooldown_s=0.0, release_s=0.0,
                                           actions=[{"type": "vts_expression", "file": "happy.exp3.json"}])])
        runner = TriggerRunner(rules, Executor(vts=VtsClient(vts.url)), publish=publish, on_error=on_error)
        try:
            for i in range(20):
                runner(state(i / 15, "happy" if i % 2 else "neutral"))
            wait_for(lambda: len([e for e in events if e["event"] == "fire"]) >= 5)
        finally:
            runner.close()
    assert vts.popups == 1, "the user was asked more than once"
    denied = [e for e in errors if "denied obs-merlb access" in e]
    assert len(denied) == 1 and "allow obs-merlb there" in denied[0]
    assert vts.problems == []


def test_vts_revoked_token_asks_once_again_then_says_so(tmp_path: Path) -> None:
    with VtsStandIn(["happy.exp3.json"]) as vts:
        vts.tokens.add("old-token")
        client = VtsClient(vts.url, "old-token")
        client.expression("happy.exp3.json", True)
        assert vts.popups == 0
        vts.revoke()            # revoked while connected: the next request is refused (errorID 50)
        with pytest.raises(PeerError, match="denied obs-merlb access"):
            client.expression("happy.exp3.json", False)
        client.close()
        # A saved token that was revoked: one new approval is asked (the user refuses it here).
        vts.approve = False
        fresh = VtsClient(vts.url, "old-token")
        with pytest.raises(PeerError, match="denied obs-merlb access"):
            fresh.expression("happy.exp3.json", True)
        with pytest.raises(PeerError, match="denied"):
            fresh.expression("happy.exp3.json", True)
        assert vts.popups == 1
    assert vts.problems == []


def test_vts_expression_on_fire_off_on_release_and_parameters_streamed(tmp_path: Path) -> None:
    events, errors, publish, on_error = collect()
    with VtsStandIn(["happy.exp3.json"]) as vts:
        cfg = {"vtube_studio": {"url": vts.url, "parameters": True, "rate_hz": 10},
               "triggers": [rule_table(for_s=0.2, release_s=0.2, actions=[
                   {"type": "vts_expression", "file": "happy.exp3.json"},
                   {"type": "vts_expression", "file": "missing.exp3.json"}])]}
        runner = build_runner(cfg, obs=None, publish=publish, on_error=on_error, config_path=str(tmp_path / "c.toml"))
        assert runner is not None
        try:
            t0 = time.monotonic()
            for i in range(45):
                runner(state(i / 15, "happy" if i < 20 else "neutral", valence=0.25, arousal=-0.5))
                time.sleep(1 / 15)
            wait_for(lambda: any(e["event"] == "release" for e in events))
            elapsed = time.monotonic() - t0
        finally:
            runner.close()
        fire = [e for e in events if e["event"] == "fire"][0]["results"]
        assert fire[0]["ok"] and not fire[1]["ok"] and "missing.exp3.json" in fire[1]["detail"]
        assert vts.active == {"happy.exp3.json": False}           # deactivated on release
        assert set(vts.parameters) == {"MerlbValence", "MerlbArousal"}
        assert vts.injected and vts.injected[-1] == {"MerlbValence": 0.25, "MerlbArousal": -0.5}
        # Capped: at most rate_hz per second (plus one), however fast the states came.
        assert len(vts.injected) <= 10 * elapsed + 1, (len(vts.injected), elapsed)
        assert len([e for e in errors if "missing.exp3.json" in e]) == 1
    assert vts.problems == []


def test_test_rule_fires_once_and_releases(tmp_path: Path) -> None:
    with VtsStandIn(["happy.exp3.json"]) as vts, StreamerBotStandIn({"x": "Hype"}) as sb:
        rules, _ = parse_rules([rule_table(actions=[{"type": "vts_expression", "file": "happy.exp3.json"},
                                                    {"type": "streamerbot", "action": "Hype"}])])
        ex = Executor(vts=VtsClient(vts.url), streamerbot=StreamerBotClient(sb.url))
        seen: list[Any] = []
        results = run_test_rule(ex, rules[0], state(1.0, "happy"), hold_s=0.1, sleep=seen.append)
        ex.vts.close()
        ex.streamerbot.close()
    assert seen == [0.1] and [r.ok for r in results] == [True, True, True]
    assert "off" in results[2].detail and vts.active == {"happy.exp3.json": False} and len(sb.run) == 1
