"""What a fired rule does: OBS requests, Streamer.bot, VTube Studio, a webhook.

`Executor.run(action, ctx)` performs one action and returns an
`ActionResult`; it never raises, so one broken action (a renamed scene, a
closed Streamer.bot) is a line in the `trigger` event and the others still
run. Everything here is called from the trigger worker thread
(runner.py), never from the analysis thread.

OBS goes through the engine's `ObsLink` (obs_merlb/obs_client.py).
Capabilities OBS may lack are found once per OBS connection and then said,
not asked again on every firing: record chapters (OBS >= 30.2) and the
Advanced Scene Switcher vendor (not packaged with Debian's OBS).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

from obs_merlb.highlights import CHAPTERS_SINCE
from obs_merlb.obs_client import ObsError, ObsLink, ObsRequestFailed, ObsSourceNotFound, ObsUnavailable
from obs_merlb.triggers.rules import Action
from obs_merlb.triggers.wsclient import PeerError

log = logging.getLogger(__name__)

SCENE_SWITCHER_VENDOR = "AdvancedSceneSwitcher"
SCENE_SWITCHER_REQUEST = "AdvancedSceneSwitcherMessage"
OUTPUTS_CACHE_S = 2.0     # GetStreamStatus/GetRecordStatus answers reused this long
EVENT_SOURCE = "obs-merlb"


class ActionError(RuntimeError):
    """An action that could not be done; the message says what to fix."""


@dataclass
class ActionResult:
    action: str
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "ok": self.ok, "detail": self.detail}


def context(state: Mapping[str, Any] | None, rule: str) -> dict[str, Any]:
    """What templates and payloads see: the state's label, confidence, valence and arousal scores."""
    s = state or {}
    return {"emotion": str(s.get("label", "uncertain")), "confidence": float(s.get("confidence") or 0.0),
            "valence": float(s.get("valence_score") or 0.0), "arousal": float(s.get("arousal_score") or 0.0),
            "rule": rule, "t": float(s.get("t") or 0.0)}


def render(template: str, ctx: Mapping[str, Any]) -> str:
    try:
        return template.format_map(dict(ctx))
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        raise ActionError(f"template {template!r} cannot be filled ({type(e).__name__}: {e})") from None


class Executor:
    """Runs actions; `obs`, `streamerbot`, `vts` and `webhook` are optional clients."""

    def __init__(self, obs: ObsLink | None = None, streamerbot: Any = None, vts: Any = None,
                 webhook: Any = None) -> None:
        self.obs, self.streamerbot, self.vts, self.webhook = obs, streamerbot, vts, webhook
        self._missing: dict[str, tuple[int, str]] = {}     # capability -> (OBS connection, why)
        self._outputs: tuple[float, dict[str, bool]] | None = None

    # ------------------------------------------------------------ entry points
    def run(self, action: Action, ctx: Mapping[str, Any]) -> ActionResult:
        return self._guard(action, lambda: self._do(action, ctx))

    def revert(self, action: Action, ctx: Mapping[str, Any]) -> ActionResult:
        """Undo a revertible action (hide what was shown, deactivate the expression)."""
        return self._guard(action, lambda: self._undo(action))

    def _guard(self, action: Action, fn: Any) -> ActionResult:
        name = action.describe()
        try:
            return ActionResult(name, True, fn() or "")
        except (ActionError, ObsError, PeerError) as e:
            return ActionResult(name, False, str(e))
        except Exception as e:  # an action must never take the worker down
            log.exception("trigger action %s failed", name)
            return ActionResult(name, False, f"{type(e).__name__}: {e}")

    def outputs_active(self, gate: str) -> bool:
        """Whether OBS is streaming / recording as the rule's `only_while` asks (cached briefly)."""
        now = time.monotonic()
        if self._outputs is None or now - self._outputs[0] > OUTPUTS_CACHE_S:
            obs = self._need_obs()
            self._outputs = (now, {"streaming": bool(obs.request("GetStreamStatus").get("outputActive")),
                                   "recording": bool(obs.request("GetRecordStatus").get("outputActive"))})
        active = self._outputs[1]
        if gate == "either":
            return active["streaming"] or active["recording"]
        return active.get(gate, True)

    # ------------------------------------------------------------ doing
    def _do(self, a: Action, ctx: Mapping[str, Any]) -> str:
        t = a.type
        if t == "scene":
            self._obs("SetCurrentProgramScene", {"sceneName": a.get("scene")}, f"scene {a.get('scene')!r}")
            return f"program scene is now {a.get('scene')!r}"
        if t in ("show_source", "hide_source"):
            self._item_enabled(a, t == "show_source")
            return f"{a.get('source')!r} {'shown' if t == 'show_source' else 'hidden'} in {a.get('scene')!r}"
        if t == "filter":
            self._filter(a, bool(a.get("enabled")))
            return f"filter {a.get('filter')!r} {'on' if a.get('enabled') else 'off'}"
        if t == "text":
            text = render(a.get("template"), ctx)
            self._obs("SetInputSettings", {"inputName": a.get("source"), "inputSettings": {"text": text},
                                           "overlay": True}, f"text source {a.get('source')!r}")
            return f"text set to {text!r}"
        if t == "hotkey":
            self._obs("TriggerHotkeyByName", {"hotkeyName": a.get("hotkey")}, f"hotkey {a.get('hotkey')!r}")
            return f"hotkey {a.get('hotkey')!r} triggered"
        if t == "replay_buffer":
            if not self._need_obs().request("GetReplayBufferStatus").get("outputActive"):
                raise ActionError("the replay buffer is not running: start it in OBS (Controls > "
                                  "Start Replay Buffer) to save replays")
            self._need_obs().request("SaveReplayBuffer")
            return "replay saved"
        if t == "chapter":
            return self._chapter(render(a.get("template"), ctx))
        if t == "obs_event":
            self._need_obs().request("BroadcastCustomEvent",
                                     {"eventData": {"source": EVENT_SOURCE, **dict(ctx)}})
            return "custom event broadcast"
        if t == "scene_switcher":
            return self._scene_switcher(render(a.get("template"), ctx))
        if t == "streamerbot":
            if self.streamerbot is None:
                raise ActionError("Streamer.bot is not set up ([streamerbot] url in the config)")
            return self.streamerbot.do_action(a.get("action"), a.get("id"), ctx)
        if t == "vts_expression":
            return self._vts().expression(a.get("file"), True)
        if t == "webhook":
            if self.webhook is None:
                raise ActionError("webhooks are off in this run")
            return self.webhook.post(a.get("url"), dict(ctx), float(a.get("timeout_s")))
        raise ActionError(f"unknown action {t!r}")

    def _undo(self, a: Action) -> str:
        t = a.type
        if t in ("show_source", "hide_source"):
            self._item_enabled(a, t != "show_source")
            return f"{a.get('source')!r} {'hidden' if t == 'show_source' else 'shown'} again"
        if t == "filter":
            self._filter(a, not a.get("enabled"))
            return f"filter {a.get('filter')!r} back {'off' if a.get('enabled') else 'on'}"
        if t == "vts_expression":
            return self._vts().expression(a.get("file"), False)
        return ""

    # ------------------------------------------------------------ OBS helpers
    def _need_obs(self) -> ObsLink:
        if self.obs is None:
            raise ActionError("this action needs OBS, and no obs-websocket connection is set up")
        return self.obs

    def _obs(self, request: str, data: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            return self._need_obs().request(request, data)
        except ObsSourceNotFound:
            raise ActionError(f"OBS has no {what}: check the name in the rule (names are case-sensitive)") from None

    def _item_enabled(self, a: Action, enabled: bool) -> None:
        scene, source = a.get("scene"), a.get("source")
        found = self._obs("GetSceneItemId", {"sceneName": scene, "sourceName": source},
                          f"source {source!r} in scene {scene!r}")
        self._obs("SetSceneItemEnabled", {"sceneName": scene, "sceneItemId": found.get("sceneItemId"),
                                          "sceneItemEnabled": enabled}, f"scene {scene!r}")

    def _filter(self, a: Action, enabled: bool) -> None:
        self._obs("SetSourceFilterEnabled", {"sourceName": a.get("source"), "filterName": a.get("filter"),
                                             "filterEnabled": enabled},
                  f"filter {a.get('filter')!r} on source {a.get('source')!r}")

    def _known_missing(self, capability: str) -> str | None:
        """Why a capability is missing, if found on this same OBS connection."""
        seen = self._missing.get(capability)
        obs = self._need_obs()
        obs.connect()
        return seen[1] if seen and seen[0] == obs.connections else None

    def _mark_missing(self, capability: str, why: str) -> None:
        self._missing[capability] = (self._need_obs().connections, why)
        raise ActionError(why)

    def _chapter(self, name: str) -> str:
        why = self._known_missing("chapters")
        if why:
            raise ActionError(why)
        obs = self._need_obs()
        version, _ = obs.version()
        if version < CHAPTERS_SINCE:
            self._mark_missing("chapters", f"record chapters need OBS {'.'.join(map(str, CHAPTERS_SINCE))} "
                                           f"or newer (this is OBS {'.'.join(map(str, version))})")
        if not obs.request("GetRecordStatus").get("outputActive"):
            raise ActionError("no chapter: OBS is not recording")
        try:
            obs.request("CreateRecordChapter", {"chapterName": name})
        except ObsRequestFailed as e:
            raise ActionError(f"OBS refused the chapter (only Hybrid MP4 recordings have chapters): {e}") from None
        return f"chapter {name!r} added"

    def _scene_switcher(self, message: str) -> str:
        why = self._known_missing("scene_switcher")
        if why:
            raise ActionError(why)
        try:
            self._need_obs().request("CallVendorRequest", {
                "vendorName": SCENE_SWITCHER_VENDOR, "requestType": SCENE_SWITCHER_REQUEST,
                "requestData": {"message": message}})
        except ObsUnavailable:
            raise
        except ObsRequestFailed as e:
            # obs-websocket answers 600 ("no vendor") when the plugin is not loaded.
            if e.code == 600 or "vendor" in str(e).lower():
                self._mark_missing("scene_switcher",
                                   "Advanced Scene Switcher is not installed in this OBS (obs-websocket has no "
                                   f"{SCENE_SWITCHER_VENDOR!r} vendor): install the plugin or remove this action")
            raise
        return f"Advanced Scene Switcher message {message!r} sent"

    def _vts(self) -> Any:
        if self.vts is None:
            raise ActionError("VTube Studio is not set up ([vtube_studio] in the config)")
        return self.vts
