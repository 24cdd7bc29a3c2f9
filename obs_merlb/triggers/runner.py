"""TriggerRunner: an engine sink that evaluates the rules and runs their actions off the analysis thread.

`runner(event)` is called for every event the engine publishes, on the
analysis thread (state events) or the highlight / command threads. It only
updates each rule's `RuleState` and puts jobs in a bounded queue
(`put_nowait`): it never waits on OBS, a socket or a web server. One
worker thread runs the jobs in order:

* a firing runs the rule's actions (after the `only_while` check) and
  schedules the undo of actions with their own `for_s`; a release undoes
  the rest (hide what was shown, deactivate the expression) and runs the
  rule's `release` actions;
* firings are rate-limited (`max_per_minute` over all rules) and a full
  queue drops the job: both are said once, never silently;
* VTube Studio's MerlbValence / MerlbArousal are injected from the latest
  state at the client's capped rate.

Every firing, release or skip is published as a `trigger` event
(`rule`, `event`, `ok`, `results` [{action, ok, detail}]), which the
session log keeps; a failed action also goes to `on_error` (the engine's
`error`, so the panel's health line shows it), each distinct problem once
per rule and action until that action works again.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from obs_merlb.config import ConfigError, update_section
from obs_merlb.obs_client import ObsError, ObsLink
from obs_merlb.state import SCHEMA_VERSION
from obs_merlb.triggers.actions import ActionResult, Executor, context
from obs_merlb.triggers.rules import REVERTIBLE, Action, Rule, RuleState, rules_from_config
from obs_merlb.triggers.streamerbot import StreamerBotClient
from obs_merlb.triggers.vtube_studio import VtsClient
from obs_merlb.triggers.webhook import WebhookPoster
from obs_merlb.triggers.wsclient import PeerError

log = logging.getLogger(__name__)

QUEUE_SIZE = 32
MAX_PER_MINUTE = 30
TEST_HOLD_S = 3.0       # "test this rule": how long until the release runs
WHERE = "trigger"


@dataclass(order=True)
class _Timer:
    due: float
    seq: int
    rule: str = field(compare=False)
    action: Action = field(compare=False)
    ctx: dict[str, Any] = field(compare=False)


@dataclass
class _Job:
    kind: str            # fire | release
    rule: Rule
    ctx: dict[str, Any]


def trigger_event(rule: str, kind: str, t: float, results: list[ActionResult]) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": "trigger", "rule": rule, "event": kind, "t": round(float(t), 3),
            "wall": time.time(), "ok": all(r.ok for r in results),
            "results": [r.as_dict() for r in results]}


def fire_actions(executor: Executor, rule: Rule, ctx: Mapping[str, Any]) -> list[ActionResult]:
    return [executor.run(a, ctx) for a in rule.actions]


def release_actions(executor: Executor, rule: Rule, ctx: Mapping[str, Any],
                    include_timed: bool = False) -> list[ActionResult]:
    """Undo what waits for the release (timed undos too when `include_timed`), then the release list."""
    undo = [executor.revert(a, ctx) for a in rule.actions
            if a.type in REVERTIBLE and (include_timed or a.for_s <= 0)]
    return undo + [executor.run(a, ctx) for a in rule.release]


def test_rule(executor: Executor, rule: Rule, state: Mapping[str, Any] | None = None,
              hold_s: float = TEST_HOLD_S, sleep: Callable[[float], None] = time.sleep) -> list[ActionResult]:
    """Fire a rule's actions once, ignoring its condition, gate and cool-down, and release after `hold_s`."""
    ctx = context(state, rule.name)
    results = fire_actions(executor, rule, ctx)
    if any(a.type in REVERTIBLE for a in rule.actions) or rule.release:
        sleep(hold_s)
        results += release_actions(executor, rule, ctx, include_timed=True)
    return results


class TriggerRunner:
    def __init__(self, rules: list[Rule], executor: Executor, *,
                 publish: Callable[[dict[str, Any]], None] | None = None,
                 on_error: Callable[[str, str], None] | None = None,
                 queue_size: int = QUEUE_SIZE, max_per_minute: int = MAX_PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = list(rules)
        self.executor = executor
        self.publish = publish
        self.on_error = on_error
        self.max_per_minute = max_per_minute
        self.clock = clock
        self.states = {r.name: RuleState(r) for r in self.rules}
        self.fired = 0
        self.dropped = 0
        self._q: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._recent: deque[float] = deque()
        self._ran: set[str] = set()             # rules whose firing ran and await their release
        self._reported: dict[tuple[str, str], str] = {}
        self._latest: dict[str, Any] | None = None
        self._next_inject = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="merlb-triggers", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the sink (analysis thread)
    def __call__(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        if etype not in ("state", "tag", "highlight") or self._stop.is_set():
            return
        if etype == "state":
            self._latest = event
        for st in self.states.values():
            verdict = st.on_event(event)
            if verdict is None:
                continue
            ctx = context(self._latest, st.rule.name)
            ctx["t"] = float(event.get("t") or ctx["t"])
            if verdict == "fire" and not self._allow_fire():
                continue
            try:
                self._q.put_nowait(_Job(verdict, st.rule, ctx))
            except queue.Full:
                self.dropped += 1
                self._report(("*", "queue"), "trigger firings dropped: the trigger queue is full "
                                             "(OBS or an app is answering slowly)")

    def _allow_fire(self) -> bool:
        now = self.clock()
        while self._recent and now - self._recent[0] > 60.0:
            self._recent.popleft()
        if len(self._recent) >= self.max_per_minute:
            self.dropped += 1
            self._report(("*", "rate"), f"triggers fired more than {self.max_per_minute} times in a minute; "
                                        "firings are dropped until it calms down (raise cooldown_s)")
            return False
        self._reported.pop(("*", "rate"), None)
        self._recent.append(now)
        return True

    # ------------------------------------------------------------ the worker thread
    def _loop(self) -> None:
        while True:
            try:
                job: _Job | None = self._q.get(timeout=self._wait_s())
            except queue.Empty:
                job = None
            if self._stop.is_set() and job is None:
                break
            try:
                if job is not None:
                    self._run(job)
                if self._q.empty():
                    self._reported.pop(("*", "queue"), None)   # caught up: a new backlog is news again
                self._due_timers()
                self._inject()
            except Exception:   # never let one bad job end the worker
                log.exception("trigger worker")
        self._release_all()

    def _wait_s(self) -> float:
        wait = 0.5
        if self._timers:
            wait = min(wait, self._timers[0].due - self.clock())
        if self._inject_enabled() and self._latest is not None:
            wait = min(wait, self._next_inject - self.clock())
        return max(0.005, wait)

    def _run(self, job: _Job) -> None:
        rule, ctx = job.rule, job.ctx
        if job.kind == "fire":
            if rule.only_while:
                try:
                    active = self.executor.outputs_active(rule.only_while)
                except (ObsError, PeerError, RuntimeError) as e:
                    self._finish(rule, "skipped", ctx, [ActionResult("only_while", False,
                                 f"cannot tell whether OBS is {rule.only_while}: {e}")])
                    return
                if not active:
                    self._finish(rule, "skipped", ctx, [ActionResult(
                        "only_while", True, f"OBS is not {rule.only_while}; actions not run")])
                    return
            results = fire_actions(self.executor, rule, ctx)
            for a in rule.actions:
                if a.type in REVERTIBLE and a.for_s > 0:
                    heapq.heappush(self._timers, _Timer(self.clock() + a.for_s, next(self._seq), rule.name, a, ctx))
            self._ran.add(rule.name)
            self.fired += 1
            self._finish(rule, "fire", ctx, results)
        elif rule.name in self._ran:
            self._ran.discard(rule.name)
            self._finish(rule, "release", ctx, release_actions(self.executor, rule, ctx))

    def _due_timers(self) -> None:
        while self._timers and self._timers[0].due <= self.clock():
            tm = heapq.heappop(self._timers)
            result = self.executor.revert(tm.action, tm.ctx)
            self._finish_named(tm.rule, "release", tm.ctx, [result])

    def _release_all(self) -> None:
        """At shutdown: undo what is still shown, so a stopped worker leaves the stream as it was."""
        for rule in self.rules:
            if rule.name in self._ran:
                self._run(_Job("release", rule, context(self._latest, rule.name)))
        while self._timers:
            tm = heapq.heappop(self._timers)
            self.executor.revert(tm.action, tm.ctx)

    def _inject_enabled(self) -> bool:
        vts = self.executor.vts
        return vts is not None and vts.parameters and not vts.refused

    def _inject(self) -> None:
        if not self._inject_enabled() or self._latest is None or self.clock() < self._next_inject:
            return
        vts = self.executor.vts
        self._next_inject = self.clock() + 1.0 / vts.rate_hz
        state = self._latest
        try:
            vts.inject(float(state.get("valence_score") or 0.0), float(state.get("arousal_score") or 0.0))
        except (PeerError, OSError) as e:
            self._report(("vtube_studio", "parameters"), f"VTube Studio parameters: {e}")
            return
        self._reported.pop(("vtube_studio", "parameters"), None)

    # ------------------------------------------------------------ reporting
    def _finish(self, rule: Rule, kind: str, ctx: Mapping[str, Any], results: list[ActionResult]) -> None:
        self._finish_named(rule.name, kind, ctx, results)

    def _finish_named(self, rule: str, kind: str, ctx: Mapping[str, Any], results: list[ActionResult]) -> None:
        for r in results:
            key = (rule, r.action)
            if r.ok:
                self._reported.pop(key, None)
            else:
                self._report(key, f"trigger {rule!r}: {r.action}: {r.detail}")
        log.info("trigger %r %s: %s", rule, kind, "; ".join(f"{r.action} {'ok' if r.ok else 'FAILED'} {r.detail}"
                                                           for r in results))
        if self.publish is not None:
            self.publish(trigger_event(rule, kind, float(ctx.get("t") or 0.0), results))

    def _report(self, key: tuple[str, str], message: str) -> None:
        """Each distinct problem once per (rule, action) until that action works again."""
        if self._reported.get(key) == message:
            return
        self._reported[key] = message
        log.warning("%s", message)
        if self.on_error is not None:
            try:
                self.on_error(message, WHERE)
            except Exception:
                log.exception("trigger on_error callback failed")

    # ------------------------------------------------------------ life
    def close(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        for client in (self.executor.streamerbot, self.executor.vts):
            if client is not None:
                client.close()


def build_runner(config: Mapping[str, Any], *, obs: ObsLink | None,
                 publish: Callable[[dict[str, Any]], None] | None = None,
                 on_error: Callable[[str, str], None] | None = None,
                 config_path: str | None = None) -> TriggerRunner | None:
    """The runner for the config's `[[triggers]]` (None when there is nothing to do).

    Malformed rules are reported through `on_error`, one line each; the
    others run. Streamer.bot and VTube Studio clients exist only when a rule
    or `[vtube_studio] parameters` needs them.
    """
    rules, problems = rules_from_config(config)
    for p in problems:
        if on_error is not None:
            on_error(p, WHERE)
    executor = executor_from_config(config, obs, on_error, config_path)
    if not rules and not (executor.vts is not None and executor.vts.parameters):
        return None
    return TriggerRunner(rules, executor, publish=publish, on_error=on_error)


def executor_from_config(config: Mapping[str, Any], obs: ObsLink | None,
                         on_error: Callable[[str, str], None] | None = None,
                         config_path: str | None = None) -> Executor:
    """An Executor with the clients the config's rules and tables need (also used by the panel's test)."""
    rules, _ = rules_from_config(config)
    types = {a.type for r in rules for a in r.actions + r.release}
    sb_cfg = _table(config, "streamerbot")
    vts_cfg = _table(config, "vtube_studio")
    streamerbot = StreamerBotClient.from_config(sb_cfg) if "streamerbot" in types else None
    vts = None
    if "vts_expression" in types or vts_cfg.get("parameters"):
        def save_token(token: str) -> None:
            try:
                update_section("vtube_studio", {"token": token}, config_path)
            except (ConfigError, OSError) as e:
                if on_error is not None:
                    on_error(f"VTube Studio token not saved ({e}); it will ask again next time", WHERE)
        try:
            vts = VtsClient.from_config(vts_cfg, save_token)
        except (TypeError, ValueError):
            if on_error is not None:
                on_error(f"[vtube_studio] rate_hz = {vts_cfg.get('rate_hz')!r} is not a number; "
                         "VTube Studio is off", WHERE)
    return Executor(obs=obs, streamerbot=streamerbot, vts=vts, webhook=WebhookPoster())


def _table(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    t = config.get(name)
    return dict(t) if isinstance(t, dict) else {}


