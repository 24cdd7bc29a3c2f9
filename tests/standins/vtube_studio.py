"""A VTube Studio plugin-API stand-in, written from its public API documentation
(github.com/DenchiSoft/VTubeStudio: AuthenticationTokenRequest, AuthenticationRequest,
ExpressionActivationRequest, ParameterCreationRequest, InjectParameterDataRequest, APIError).
VTube Studio is a Windows/macOS application and cannot run here; this checks each request's
shape and answers as documented, including the user's approval, a refusal and a revoked token.
"""
from __future__ import annotations

import re
import threading
from typing import Any

from tests.standins.base import JsonServer

API = {"apiName": "VTubeStudioPublicAPI", "apiVersion": "1.0"}
NEEDS_AUTH, DENIED, NOT_FOUND = 8, 50, 400
PARAM_NAME = re.compile(r"^[A-Za-z0-9]{4,32}$")
OPEN = ("APIStateRequest", "AuthenticationTokenRequest", "AuthenticationRequest")


class VtsStandIn(JsonServer):
    """`approve`: what the user clicks on a token popup; `expressions`: the model's .exp3.json files."""

    def __init__(self, expressions: list[str], approve: bool = True, port: int | None = None) -> None:
        super().__init__(port)
        self.expressions = set(expressions)
        self.approve = approve
        self.tokens: set[str] = set()
        self.popups = 0
        self.active: dict[str, bool] = {}
        self.parameters: dict[str, dict[str, Any]] = {}
        self.injected: list[dict[str, float]] = []
        self._authed: set[int] = set()
        self._lock = threading.Lock()

    def revoke(self) -> None:
        """The user removes the plugin's access in VTube Studio."""
        with self._lock:
            self.tokens.clear()

    def _reply(self, msg: dict[str, Any], kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {**API, "timestamp": 1625405710728, "requestID": msg.get("requestID"), "messageType": kind,
                "data": data}

    def _error(self, msg: dict[str, Any], code: int, text: str) -> dict[str, Any]:
        return self._reply(msg, "APIError", {"errorID": code, "message": text})

    def answer(self, ws: Any, msg: dict[str, Any]) -> dict[str, Any] | None:
        rid, kind, data = msg.get("requestID"), msg.get("messageType"), msg.get("data") or {}
        if msg.get("apiName") != API["apiName"] or msg.get("apiVersion") != API["apiVersion"] \
                or not isinstance(rid, str) or not 1 <= len(rid) <= 64 or not rid.isascii() \
                or not isinstance(kind, str) or not isinstance(data, dict):
            self.problems.append(f"malformed request: {msg}")
            return self._error(msg, 2, "malformed request")
        plugin_ok = 3 <= len(str(data.get("pluginName", ""))) <= 32 and 3 <= len(str(data.get("pluginDeveloper", ""))) <= 32
        if kind == "AuthenticationTokenRequest":
            if not plugin_ok:
                self.problems.append(f"plugin name/developer must be 3-32 characters: {data}")
            self.popups += 1
            if not self.approve:
                return self._error(msg, DENIED, "User has denied API access for your plugin.")
            token = f"token-{self.popups}"
            with self._lock:
                self.tokens.add(token)
            return self._reply(msg, "AuthenticationTokenResponse", {"authenticationToken": token})
        if kind == "AuthenticationRequest":
            if not plugin_ok or not data.get("authenticationToken"):
                self.problems.append(f"AuthenticationRequest needs pluginName, pluginDeveloper, token: {data}")
            with self._lock:
                ok = data.get("authenticationToken") in self.tokens
            if ok:
                self._authed.add(id(ws))
            return self._reply(msg, "AuthenticationResponse", {
                "authenticated": ok, "reason": "Token valid." if ok else "Token invalid or access revoked."})
        if id(ws) not in self._authed:
            return self._error(msg, NEEDS_AUTH, "This request requires authentication.")
        with self._lock:
            revoked = not self.tokens
        if revoked:
            return self._error(msg, DENIED, "User has denied API access for your plugin.")
        if kind == "ExpressionActivationRequest":
            file, active = data.get("expressionFile"), data.get("active")
            if not isinstance(file, str) or not isinstance(active, bool):
                self.problems.append(f"ExpressionActivationRequest needs expressionFile and active: {data}")
            if file not in self.expressions:
                return self._error(msg, NOT_FOUND, f"Expression {file!r} not found in the current model.")
            self.active[file] = bool(active)
            return self._reply(msg, "ExpressionActivationResponse", {})
        if kind == "ParameterCreationRequest":
            name = str(data.get("parameterName", ""))
            if not PARAM_NAME.match(name) or not all(isinstance(data.get(k), (int, float))
                                                     for k in ("min", "max", "defaultValue")):
                self.problems.append(f"ParameterCreationRequest malformed: {data}")
            self.parameters[name] = dict(data)
            return self._reply(msg, "ParameterCreationResponse", {"parameterName": name})
        if kind == "InjectParameterDataRequest":
            values = data.get("parameterValues")
            if not isinstance(values, list) or data.get("mode", "set") not in ("set", "add") \
                    or not all(isinstance(v, dict) and v.get("id") in self.parameters
                               and isinstance(v.get("value"), (int, float)) for v in values):
                self.problems.append(f"InjectParameterDataRequest malformed or unknown parameter: {data}")
                return self._error(msg, NOT_FOUND, "parameter not found")
            self.injected.append({v["id"]: float(v["value"]) for v in values})
            return self._reply(msg, "InjectParameterDataResponse", {})
        return self._error(msg, 1, f"unknown messageType {kind}")
