"""VTube Studio: expressions on triggers, valence and arousal as live parameters.

Its public plugin API (github.com/DenchiSoft/VTubeStudio), a WebSocket on
ws://localhost:8001. Every message carries `apiName` "VTubeStudioPublicAPI",
`apiVersion` "1.0", a `requestID` and a `messageType`; answers have the
same `requestID` and a `data` object, errors `messageType` "APIError" with
`data.errorID` and `data.message`.

Authentication, once per machine: `AuthenticationTokenRequest` makes VTube
Studio ask the user to allow the plugin; the token it answers is saved in
the config (`[vtube_studio] token`, the file is user-only, 0600). Every
connection then sends `AuthenticationRequest` with it. A refused request
(errorID 50) or a revoked token is said once; the plugin does not ask the
user again during this run (no popup storm).

Then: `ExpressionActivationRequest` (an `.exp3.json` on, off on release),
`ParameterCreationRequest` for MerlbValence / MerlbArousal (in [-1, 1]),
and `InjectParameterDataRequest` with both, at most `rate_hz` times a
second (VTube Studio resets an injected parameter after about a second
without data, so the runner keeps sending while it has state).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

from obs_merlb.triggers.wsclient import JsonSocket, PeerError

DEFAULT_URL = "ws://localhost:8001"
API_NAME, API_VERSION = "VTubeStudioPublicAPI", "1.0"
PLUGIN_NAME, PLUGIN_DEVELOPER = "obs-merlb", "obs-merlb"
PARAMETERS = (("MerlbValence", "valence", "The streamer's valence from obs-merlb (-1 negative, 1 positive)"),
              ("MerlbArousal", "arousal", "The streamer's arousal from obs-merlb (-1 calm, 1 excited)"))
DENIED = 50                      # ErrorID.UserDeniedAuthentication (also sent once access is revoked)
APPROVE_TIMEOUT_S = 60.0         # the user has to click "Allow" in VTube Studio
HINT = ("is VTube Studio running, with Settings > Start API (allow plugins) on, at this port? "
        "(the config's [vtube_studio] url)")


class VtsClient:
    """`save_token(token)` stores a new token (the runner passes config.update_section)."""

    def __init__(self, url: str = DEFAULT_URL, token: str = "", *, parameters: bool = False,
                 rate_hz: float = 5.0, save_token: Callable[[str], None] | None = None,
                 timeout_s: float = 3.0, approve_timeout_s: float = APPROVE_TIMEOUT_S) -> None:
        self.sock = JsonSocket(url or DEFAULT_URL, "VTube Studio", timeout_s)
        self.token = token or ""
        self.parameters = parameters
        self.rate_hz = max(0.5, min(float(rate_hz), 30.0))
        self.save_token = save_token
        self.approve_timeout_s = approve_timeout_s
        self.refused: str | None = None     # set once the user refused or revoked access: no more popups
        self._ids = itertools.count(1)
        self._created = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any], save_token: Callable[[str], None] | None) -> "VtsClient":
        return cls(str(section.get("url") or DEFAULT_URL), str(section.get("token") or ""),
                   parameters=bool(section.get("parameters", False)),
                   rate_hz=float(section.get("rate_hz", 5.0)), save_token=save_token)

    # ------------------------------------------------------------ protocol
    def _request(self, kind: str, data: Mapping[str, Any] | None = None,
                 timeout_s: float | None = None) -> dict[str, Any]:
        rid = f"merlb-{next(self._ids)}"
        self.sock.send({"apiName": API_NAME, "apiVersion": API_VERSION, "requestID": rid,
                        "messageType": kind, "data": dict(data or {})})
        answer = self.sock.receive(lambda m: m.get("requestID") == rid, kind, timeout_s)
        body = answer.get("data") if isinstance(answer.get("data"), dict) else {}
        if answer.get("messageType") == "APIError":
            if body.get("errorID") == DENIED:
                self._refuse("VTube Studio denied obs-merlb access (the request was refused, or access "
                             "was revoked in VTube Studio's plugin settings): allow obs-merlb there, then "
                             "restart merlb live")
            raise PeerError(f"VTube Studio refused {kind}: {body.get('message') or body.get('errorID')}")
        return body

    def _refuse(self, why: str) -> None:
        self.refused = why
        self.sock.close()
        raise PeerError(why)

    def _connect(self) -> None:
        if self.refused:
            raise PeerError(self.refused)
        if self.sock.connected:
            return
        self.sock.open(HINT)
        try:
            self._authenticate()
        except BaseException:
            self.sock.close()   # never keep a connection that is not authenticated
            raise
        self._created = False
        self.sock.succeeded()

    def _authenticate(self) -> None:
        plugin = {"pluginName": PLUGIN_NAME, "pluginDeveloper": PLUGIN_DEVELOPER}
        if self.token:
            ok = self._request("AuthenticationRequest", {**plugin, "authenticationToken": self.token})
            if not ok.get("authenticated"):
                # Revoked (or from another install): ask the user once more, as the API docs suggest.
                self.token = ""
        if not self.token:
            got = self._request("AuthenticationTokenRequest", plugin, timeout_s=self.approve_timeout_s)
            token = str(got.get("authenticationToken") or "")
            if not token:
                self._refuse("VTube Studio gave no authentication token; allow obs-merlb in VTube Studio")
            self.token = token
            if self.save_token is not None:
                self.save_token(token)
            ok = self._request("AuthenticationRequest", {**plugin, "authenticationToken": token})
            if not ok.get("authenticated"):
                self._refuse(f"VTube Studio did not accept the token it just gave: {ok.get('reason', '')}")

    def expression(self, file: str, active: bool) -> str:
        self._connect()
        self._request("ExpressionActivationRequest", {"expressionFile": file, "active": bool(active)})
        return f"VTube Studio expression {file!r} {'on' if active else 'off'}"

    def inject(self, valence: float, arousal: float) -> None:
        """Send both parameters (creating them once per connection)."""
        self._connect()
        if not self._created:
            for name, _key, explanation in PARAMETERS:
                self._request("ParameterCreationRequest", {"parameterName": name, "explanation": explanation,
                                                           "min": -1.0, "max": 1.0, "defaultValue": 0.0})
            self._created = True
        values = {"valence": valence, "arousal": arousal}
        self._request("InjectParameterDataRequest", {
            "faceFound": False, "mode": "set",
            "parameterValues": [{"id": name, "value": round(float(values[key]), 4)} for name, key, _ in PARAMETERS]})

    def close(self) -> None:
        self.sock.close()
