"""Trigger rules: what the config's `[[triggers]]` tables say, and when a rule fires.

A rule is "when CONDITION, do ACTIONS", with a cool-down, an optional gate
(only while streaming / recording) and a release (what happens when the
condition ends). In config.toml::

    [[triggers]]
    name = "hype scene"
    when = "arousal"          # emotion | valence | arousal | highlight | tag |
    above = 0.5               # face_lost | face_found | speech_started | speech_stopped
    for_s = 1.5
    cooldown_s = 60
    only_while = "streaming"  # "" | streaming | recording | either

    [[triggers.actions]]
    type = "scene"
    scene = "Hype"

`parse_rules` turns the tables into `Rule`s; a malformed rule becomes one
line naming the rule and the field, and the other rules keep working.

`RuleState` decides firing from the event stream, in stream time (the
events' `t`), so a recorded session replays the same firings:

* state conditions (emotion, valence, arousal, face, speech) start an
  *episode* once they have held for `for_s`; an episode fires at most once,
  and only `cooldown_s` after the last firing (an episode that starts during
  the cool-down fires when it ends, if it still holds);
* an episode ends after the condition has been false for `release_s`
  (hysteresis), which runs the release; a label that flickers faster than
  that stays one episode, so a flapping emotion never flaps the stream;
* event conditions (highlight, tag) fire on the event and release `hold_s`
  later.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from obs_merlb.config import read_config, save_config

STATE_CONDITIONS = ("emotion", "valence", "arousal", "face_lost", "face_found",
                    "speech_started", "speech_stopped")
EVENT_CONDITIONS = ("highlight", "tag")
CONDITIONS = STATE_CONDITIONS + EVENT_CONDITIONS
GATES = ("", "streaming", "recording", "either")

# Action type -> (required string fields, optional fields with their defaults).
ACTION_FIELDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "scene": (("scene",), {}),
    "show_source": (("scene", "source"), {"for_s": 0.0}),
    "hide_source": (("scene", "source"), {"for_s": 0.0}),
    "filter": (("source", "filter"), {"enabled": True, "for_s": 0.0}),
    "text": (("source", "template"), {}),
    "hotkey": (("hotkey",), {}),
    "replay_buffer": ((), {}),
    "chapter": ((), {"template": "MERLB {rule}: {emotion}"}),
    "obs_event": ((), {}),
    "scene_switcher": ((), {"template": "{emotion}"}),
    "streamerbot": ((), {"action": "", "id": ""}),
    "vts_expression": (("file",), {"for_s": 0.0}),
    "webhook": (("url",), {"timeout_s": 2.0}),
}
# Actions that are undone on release (or after their own for_s).
REVERTIBLE = ("show_source", "hide_source", "filter", "vts_expression")
TEMPLATE_KEYS = ("emotion", "confidence", "valence", "arousal", "rule", "t")

RULE_DEFAULTS: dict[str, Any] = {
    "enabled": True, "head": "emotion", "label": "", "min_confidence": 0.5, "above": None,
    "below": None, "for_s": 1.0, "kind": "", "tag": "", "cooldown_s": 30.0, "only_while": "",
    "release_s": 1.0, "hold_s": 5.0,
}


class RuleError(ValueError):
    """One malformed rule; the message names the rule and the field."""


@dataclass(frozen=True)
class Action:
    type: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.params.get(key, ACTION_FIELDS[self.type][1].get(key))

    @property
    def for_s(self) -> float:
        return float(self.params.get("for_s") or 0.0)

    def describe(self) -> str:
        main = [str(self.params[k]) for k in ("scene", "source", "filter", "hotkey", "file", "action",
                                              "id", "url") if self.params.get(k)]
        return f"{self.type}({', '.join(main)})" if main else self.type


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    actions: tuple[Action, ...]
    release: tuple[Action, ...] = ()
    enabled: bool = True
    head: str = "emotion"
    label: str = ""
    min_confidence: float = 0.5
    above: float | None = None
    below: float | None = None
    for_s: float = 1.0
    kind: str = ""
    tag: str = ""
    cooldown_s: float = 30.0
    only_while: str = ""
    release_s: float = 1.0
    hold_s: float = 5.0

    @property
    def is_event(self) -> bool:
        return self.when in EVENT_CONDITIONS

    def holds(self, state: Mapping[str, Any]) -> bool:
        """Whether a state condition is true in this `state` event."""
        w = self.when
        if w == "emotion":
            probs = state.get("probs") if self.head == "emotion" else \
                (state.get("heads", {}).get(self.head) or {}).get("probs")
            return float((probs or {}).get(self.label, 0.0)) >= self.min_confidence
        if w in ("valence", "arousal"):
            score = float(state.get(f"{w}_score") or 0.0)
            return (self.above is None or score > self.above) and (self.below is None or score < self.below)
        if w == "face_lost":
            return not state.get("face_present")
        if w == "face_found":
            return bool(state.get("face_present"))
        if w == "speech_started":
            return bool(state.get("speech"))
        if w == "speech_stopped":
            return not state.get("speech")
        return False

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether an event condition is met by this `highlight` / `tag` event."""
        if self.when == "highlight":
            return event.get("type") == "highlight" and (not self.kind or event.get("kind") == self.kind)
        if self.when == "tag":
            return event.get("type") == "tag" and event.get("name") == self.tag
        return False


# ---------------------------------------------------------------- parsing

def _rule_name(table: Any, index: int) -> str:
    name = table.get("name") if isinstance(table, Mapping) else None
    return f"trigger {name!r}" if isinstance(name, str) and name.strip() else f"trigger #{index + 1}"


def _number(where: str, key: str, value: Any, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuleError(f"{where}: {key} must be a number, not {value!r}")
    if minimum is not None and value < minimum:
        raise RuleError(f"{where}: {key} must be >= {minimum:g}, not {value!r}")
    return float(value)


def _string(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RuleError(f"{where}: {key} must be text, not {value!r}")
    return value


def _typed(where: str, key: str, value: Any, default: Any) -> Any:
    """`value` checked against the type of the field's default (bool, number >= 0, text)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RuleError(f"{where}: {key} must be true or false, not {value!r}")
        return value
    if isinstance(default, float):
        return _number(where, key, value)
    return _string(where, key, value)


def parse_action(where: str, table: Any) -> Action:
    if not isinstance(table, Mapping):
        raise RuleError(f"{where}: each action must be a table ([[triggers.actions]]), not {table!r}")
    kind = table.get("type")
    if kind not in ACTION_FIELDS:
        raise RuleError(f"{where}: action type {kind!r} is unknown (known: {', '.join(ACTION_FIELDS)})")
    required, optional = ACTION_FIELDS[kind]
    here = f"{where}, action {kind}"
    params: dict[str, Any] = {}
    for key in required:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RuleError(f"{here}: {key} is required (text)")
        params[key] = value
    for key, default in optional.items():
        if key not in table:
            continue
        params[key] = _typed(here, key, table[key], default)
    unknown = sorted(set(table) - set(required) - set(optional) - {"type"})
    if unknown:
        raise RuleError(f"{here}: unknown field {unknown[0]!r}")
    if kind == "streamerbot" and not (params.get("action") or params.get("id")):
        raise RuleError(f"{here}: give the Streamer.bot action's name (action = ...) or its id (id = ...)")
    if "template" in params:
        check_template(here, params["template"])
    return Action(kind, params)


def check_template(where: str, template: str) -> None:
    """A template may use only TEMPLATE_KEYS; a typo is found when the config is read, not on stream."""
    sample = {k: (0.5 if k in ("confidence", "valence", "arousal", "t") else "x") for k in TEMPLATE_KEYS}
    try:
        template.format_map(sample)
    except KeyError as e:
        raise RuleError(f"{where}: template {template!r} uses {{{e.args[0]}}}; "
                        f"known: {', '.join('{' + k + '}' for k in TEMPLATE_KEYS)}") from None
    except (ValueError, IndexError, AttributeError) as e:
        raise RuleError(f"{where}: template {template!r} is not valid ({e})") from None


def parse_rule(table: Any, index: int = 0) -> Rule:
    """One `[[triggers]]` table as a Rule; RuleError names the rule and the field."""
    where = _rule_name(table, index)
    if not isinstance(table, Mapping):
        raise RuleError(f"{where}: must be a table ([[triggers]]), not {table!r}")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RuleError(f"{where}: name is required (text)")
    when = table.get("when")
    if when not in CONDITIONS:
        raise RuleError(f"{where}: when = {when!r} is unknown (known: {', '.join(CONDITIONS)})")
    kw: dict[str, Any] = {}
    for key, default in RULE_DEFAULTS.items():
        if key not in table:
            continue
        value = table[key]
        if key in ("above", "below"):
            value = _number(where, key, value, minimum=-1.0)
            if value > 1.0:
                raise RuleError(f"{where}: {key} must be between -1 and 1 (a {when} score), not {value!r}")
        else:
            value = _typed(where, key, value, default)
        kw[key] = value
    if when == "emotion" and not kw.get("label"):
        raise RuleError(f"{where}: when = \"emotion\" needs label = \"happy\" (or a class of head = ...)")
    if when == "emotion" and not 0.0 <= kw.get("min_confidence", 0.5) <= 1.0:
        raise RuleError(f"{where}: min_confidence must be between 0 and 1, not {kw['min_confidence']!r}")
    if when in ("valence", "arousal") and kw.get("above") is None and kw.get("below") is None:
        raise RuleError(f"{where}: when = {when!r} needs above = LEVEL or below = LEVEL (-1 to 1)")
    if when == "tag" and not kw.get("tag"):
        raise RuleError(f"{where}: when = \"tag\" needs tag = \"hype\" (the tag's name)")
    if kw.get("only_while", "") not in GATES:
        raise RuleError(f"{where}: only_while = {kw['only_while']!r} is unknown (known: streaming, recording, either)")
    known = set(RULE_DEFAULTS) | {"name", "when", "actions", "release"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise RuleError(f"{where}: unknown field {unknown[0]!r}")
    lists: dict[str, tuple[Action, ...]] = {}
    for key in ("actions", "release"):
        items = table.get(key, [])
        if not isinstance(items, list):
            raise RuleError(f"{where}: {key} must be a list of tables ([[triggers.{key}]])")
        lists[key] = tuple(parse_action(f"{where}, {key}[{i}]", a) for i, a in enumerate(items))
    if not lists["actions"]:
        raise RuleError(f"{where}: no actions: add at least one [[triggers.actions]] table")
    return Rule(name=name.strip(), when=when, actions=lists["actions"], release=lists["release"], **kw)


def parse_rules(tables: Any) -> tuple[list[Rule], list[str]]:
    """Rules from the config's `triggers` list, and one problem line per rule left out."""
    if tables is None:
        return [], []
    if not isinstance(tables, list):
        return [], ["[triggers] must be a list of [[triggers]] tables; no trigger is active"]
    rules: list[Rule] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        try:
            rule = parse_rule(table, i)
        except RuleError as e:
            problems.append(f"{e}; this rule is off, the others work")
            continue
        if rule.name in seen:
            problems.append(f"trigger {rule.name!r}: a second rule with this name is off (names must be unique)")
            continue
        seen.add(rule.name)
        rules.append(rule)
    return rules, problems


def rules_from_config(config: Mapping[str, Any]) -> tuple[list[Rule], list[str]]:
    return parse_rules(config.get("triggers"))


# ---------------------------------------------------------------- evaluation

class RuleState:
    """When one rule fires and releases, from events in stream time (see the module docstring)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.since: float | None = None          # condition true continuously since
        self.false_since: float | None = None    # condition false since (during an episode)
        self.episode = False
        self.fired = False
        self.last_fire = -math.inf
        self.hold_until = math.inf

    def _cool(self, t: float) -> bool:
        return t - self.last_fire >= self.rule.cooldown_s - 1e-9

    def _fire(self, t: float) -> str:
        self.fired = True
        self.last_fire = t
        return "fire"

    def on_event(self, event: Mapping[str, Any]) -> str | None:
        """'fire', 'release' or None for one event."""
        rule = self.rule
        if not rule.enabled:
            return None
        t = event.get("t")
        if not isinstance(t, (int, float)):
            return None
        etype = event.get("type")
        if rule.is_event:
            if rule.matches(event) and not self.fired and self._cool(t):
                self.hold_until = t + rule.hold_s
                return self._fire(t)
            if etype == "state" and self.fired and t >= self.hold_until:
                self.fired = False
                return "release"
            return None
        if etype != "state":
            return None
        if rule.holds(event):
            self.false_since = None
            if self.since is None:
                self.since = t
            if not self.episode and t - self.since >= rule.for_s - 1e-9:
                self.episode = True
            if self.episode and not self.fired and self._cool(t):
                return self._fire(t)
            return None
        self.since = None
        if self.episode:
            if self.false_since is None:
                self.false_since = t
            if t - self.false_since >= rule.release_s - 1e-9:
                self.episode = False
                if self.fired:
                    self.fired = False
                    return "release"
        return None


# ---------------------------------------------------------------- writing back

def rule_to_table(rule: Rule) -> dict[str, Any]:
    """The `[[triggers]]` table for a rule: only what differs from the defaults, so the file stays short."""
    out: dict[str, Any] = {"name": rule.name, "when": rule.when}
    for key, default in RULE_DEFAULTS.items():
        value = getattr(rule, key)
        if value != default and value is not None:
            out[key] = value
    out["actions"] = [{"type": a.type, **dict(a.params)} for a in rule.actions]
    if rule.release:
        out["release"] = [{"type": a.type, **dict(a.params)} for a in rule.release]
    return out


def save_triggers(tables: list[dict[str, Any]], path: str | os.PathLike[str] | None = None) -> None:
    """Write `tables` as the config's `[[triggers]]`, keeping every other table.

    Tables, not Rules, so a rule the reader could not parse is written back
    as the user left it rather than lost. Raises ConfigError, writing
    nothing, when the file cannot be read (see obs_merlb/config.py).
    """
    cfg = read_config(path)
    cfg["triggers"] = list(tables)
    save_config(cfg, path)
