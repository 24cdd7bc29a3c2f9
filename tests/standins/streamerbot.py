"""A Streamer.bot WebSocket server stand-in, written from Streamer.bot's public documentation
(docs.streamer.bot/api/websocket: Hello, Authenticate, DoAction). Streamer.bot is a Windows
application and cannot run here; this checks each request's shape and answers as documented.
"""
from __future__ import annotations

import base64
import hashlib
from typing import Any

from tests.standins.base import JsonServer

SALT, CHALLENGE = "c2FsdC1zYg==", "Y2hhbGxlbmdlLXNi"


class StreamerBotStandIn(JsonServer):
    """`actions` {id: name} that exist; `password` None = no authentication."""

    def __init__(self, actions: dict[str, str], password: str | None = None, port: int | None = None) -> None:
        super().__init__(port)
        self.actions = dict(actions)
        self.password = password
        self.run: list[dict[str, Any]] = []      # DoAction requests that ran: {"id", "name", "args"}
        self._authed: set[int] = set()

    def greet(self, ws: Any) -> None:
        hello: dict[str, Any] = {"request": "Hello", "info": {"instanceId": "standin", "name": "Streamer.bot",
                                                              "os": "windows", "version": "0.2.6",
                                                              "source": "websocketServer"},
                                 "timestamp": "2025-01-01T00:00:00Z", "session": "standin-session"}
        if self.password is not None:
            hello["authentication"] = {"salt": SALT, "challenge": CHALLENGE}
        self.send(ws, hello)

    def _expected(self) -> str:
        secret = base64.b64encode(hashlib.sha256((self.password + SALT).encode()).digest()).decode()
        return base64.b64encode(hashlib.sha256((secret + CHALLENGE).encode()).digest()).decode()

    def answer(self, ws: Any, msg: dict[str, Any]) -> dict[str, Any] | None:
        rid = msg.get("id")
        if not isinstance(msg.get("request"), str) or not isinstance(rid, str) or not rid:
            self.problems.append(f"a request needs 'request' and a non-empty string 'id': {msg}")
            return {"id": rid, "status": "error", "error": "malformed request"}
        if msg["request"] == "Authenticate":
            if msg.get("authentication") == self._expected():
                self._authed.add(id(ws))
                return {"id": rid, "status": "ok"}
            return {"id": rid, "status": "error", "error": "Authentication failed"}
        if self.password is not None and id(ws) not in self._authed:
            return {"id": rid, "status": "error", "error": "Not authenticated"}
        if msg["request"] != "DoAction":
            return {"id": rid, "status": "error", "error": f"unknown request {msg['request']}"}
        action, args = msg.get("action"), msg.get("args", {})
        if not isinstance(action, dict) or not (action.get("id") or action.get("name")) or not isinstance(args, dict):
            self.problems.append(f"DoAction needs action {{id|name}} and args {{}}: {msg}")
            return {"id": rid, "status": "error", "error": "malformed DoAction"}
        found = [(i, n) for i, n in self.actions.items() if action.get("id") == i or action.get("name") == n]
        if not found:
            return {"id": rid, "status": "error", "error": "Action not found"}
        self.run.append({"id": found[0][0], "name": found[0][1], "args": args})
        return {"id": rid, "status": "ok"}
