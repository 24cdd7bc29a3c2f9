"""Streamer.bot: run an action through its WebSocket server (`DoAction`).

Protocol, from Streamer.bot's WebSocket server documentation
(docs.streamer.bot/api/websocket): on connect the server sends
`{"request": "Hello", "info": {...}, "authentication": {"salt", "challenge"}}`
(`authentication` only when the server asks for a password). The client
then sends `{"request": "Authenticate", "id", "authentication": A}` with
A = base64(sha256(base64(sha256(password + salt)) + challenge)). A request
is `{"request": "DoAction", "id", "action": {"id"|"name"}, "args": {...}}`;
the answer carries the same `id` and `"status": "ok"`, or `"status":
"error"` with `"error"`.

Config: `[streamerbot] url` (default ws://127.0.0.1:8080/), `password`.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
from typing import Any, Mapping

from obs_merlb.triggers.wsclient import JsonSocket, PeerError

DEFAULT_URL = "ws://127.0.0.1:8080/"
HINT = ("is Streamer.bot running, with Servers/Clients > WebSocket Server started on this address? "
        "(the config's [streamerbot] url)")
ARGS = ("emotion", "confidence", "valence", "arousal", "rule")


def auth_response(password: str, salt: str, challenge: str) -> str:
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest()).decode()
    return base64.b64encode(hashlib.sha256((secret + challenge).encode()).digest()).decode()


class StreamerBotClient:
    def __init__(self, url: str = DEFAULT_URL, password: str = "", timeout_s: float = 3.0) -> None:
        self.sock = JsonSocket(url or DEFAULT_URL, "Streamer.bot", timeout_s)
        self._password = password or ""
        self._ids = itertools.count(1)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "StreamerBotClient":
        return cls(str(section.get("url") or DEFAULT_URL), str(section.get("password") or ""))

    def _connect(self) -> None:
        if self.sock.connected:
            return
        self.sock.open(HINT)
        hello = self.sock.receive(lambda m: m.get("request") == "Hello", "the hello")
        auth = hello.get("authentication")
        if isinstance(auth, dict) and auth.get("challenge"):
            if not self._password:
                self.sock.fail("Streamer.bot asks for a WebSocket password: set [streamerbot] password "
                               "in the config (Servers/Clients > WebSocket Server > Authentication)")
            rid = f"merlb-auth-{next(self._ids)}"
            self.sock.send({"request": "Authenticate", "id": rid,
                            "authentication": auth_response(self._password, str(auth.get("salt", "")),
                                                            str(auth["challenge"]))})
            answer = self.sock.receive(lambda m: m.get("id") == rid, "the authentication")
            if answer.get("status") != "ok":
                self.sock.fail("Streamer.bot rejected the WebSocket password: check [streamerbot] password "
                               "in the config")

    def do_action(self, name: str | None, action_id: str | None, ctx: Mapping[str, Any]) -> str:
        """Run the action by id (preferred when given) or name; returns what happened, PeerError if not."""
        self._connect()
        rid = f"merlb-{next(self._ids)}"
        action = {"id": action_id} if action_id else {"name": name}
        args = {k: ctx[k] for k in ARGS if k in ctx}
        self.sock.send({"request": "DoAction", "id": rid, "action": action, "args": args})
        answer = self.sock.receive(lambda m: m.get("id") == rid, "DoAction")
        self.sock.succeeded()
        if answer.get("status") != "ok":
            raise PeerError(f"Streamer.bot did not run action {action_id or name!r}: "
                            f"{answer.get('error') or 'no reason given'} (check the name or id in the rule)")
        return f"Streamer.bot action {action_id or name!r} run"

    def close(self) -> None:
        self.sock.close()
