"""A JSON-over-WebSocket server on 127.0.0.1 for the app stand-ins (Streamer.bot, VTube Studio).

A subclass answers each parsed message in `answer(ws, msg)` and may greet in
`greet(ws)`; `problems` collects every request whose shape the real app's
documentation does not allow, so a test asserts it stays empty.
"""
from __future__ import annotations

import json
from typing import Any

from tests.obs_standin import ObsStandIn


class JsonServer(ObsStandIn):
    """ObsStandIn's server life (start, stop, `with`, a free port) around another protocol."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(None, {}, port)
        self.received: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.connections = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def greet(self, ws: Any) -> None:
        """Called once per connection before any message."""

    def answer(self, ws: Any, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to one request; a stand-in that knows no requests records each as a problem."""
        self.problems.append(f"unexpected request {msg!r}")
        return None

    def send(self, ws: Any, msg: dict[str, Any]) -> None:
        ws.send(json.dumps(msg))

    def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connections += 1
        try:
            self.greet(ws)
            for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    self.problems.append(f"not JSON: {raw!r}")
                    continue
                if not isinstance(msg, dict):
                    self.problems.append(f"not a JSON object: {raw!r}")
                    continue
                self.received.append(msg)
                out = self.answer(ws, msg)
                if out is not None:
                    self.send(ws, out)
        except ConnectionClosed:
            return

