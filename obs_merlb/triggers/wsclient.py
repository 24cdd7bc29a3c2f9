"""A small synchronous JSON-over-WebSocket client with backoff, for Streamer.bot and VTube Studio.

Both speak JSON requests that carry an id and answer with the same id, with
unrelated messages (events) in between. The trigger worker thread is the
only user, so the client is plain blocking code (the `websockets` package's
sync client) with timeouts; after a failure, calls fail at once until the
backoff (obs_merlb.obs_client.Backoff) allows the next try, so a closed app
costs one connection attempt per backoff step, not one per firing.
"""
from __future__ import annotations

import inspect
import json
import time
from typing import Any, Callable

from websockets.exceptions import InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from obs_merlb.obs_client import Backoff

# websockets >= 17 wants `with connect(...)` unless told this long-lived connection is meant.
_DIRECT = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


def open_websocket(url: str, timeout_s: float) -> ClientConnection:
    """A long-lived synchronous connection (closed by the caller)."""
    return connect(url, open_timeout=timeout_s, close_timeout=1.0, max_size=2 ** 22, **_DIRECT)


class PeerError(RuntimeError):
    """The app cannot be used now; the message says what to do."""


class JsonSocket:
    """One connection at a time to `url`; `name` is the app's name for messages."""

    def __init__(self, url: str, name: str, timeout_s: float = 3.0, max_backoff_s: float = 30.0) -> None:
        self.url, self.name, self.timeout_s = url, name, timeout_s
        self.backoff = Backoff(1.0, max_backoff_s)
        self.ws: ClientConnection | None = None
        self.last_problem: str | None = None

    @property
    def connected(self) -> bool:
        return self.ws is not None

    def open(self, hint: str) -> ClientConnection:
        """Connect unless connected; PeerError (with `hint`) when it cannot."""
        if self.ws is not None:
            return self.ws
        wait = self.backoff.remaining()
        if wait > 0:
            raise PeerError(self._retrying())
        try:
            self.ws = open_websocket(self.url, self.timeout_s)
        except InvalidURI:
            self.fail(f"{self.name} address {self.url!r} is not a ws:// URL: fix it in the config")
        except (OSError, TimeoutError, WebSocketException) as e:
            self.fail(f"cannot reach {self.name} at {self.url} ({type(e).__name__}): {hint}")
        return self.ws  # type: ignore[return-value]

    def fail(self, problem: str) -> None:
        """Drop the connection, start the backoff and raise PeerError(problem)."""
        self.close()
        self.last_problem = problem
        self.backoff.failed()
        raise PeerError(self._retrying())

    def _retrying(self) -> str:
        # The same words for the failure and for the calls refused during its backoff,
        # so a caller that reports each problem once reports it once.
        return f"{self.last_problem or f'{self.name} is not reachable'} (retrying with backoff)"

    def succeeded(self) -> None:
        self.backoff.succeeded()
        self.last_problem = None

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.open("").send(json.dumps(message))
        except (OSError, WebSocketException) as e:
            self.fail(f"lost the connection to {self.name} at {self.url} ({type(e).__name__})")

    def receive(self, match: Callable[[dict[str, Any]], bool], what: str,
                timeout_s: float | None = None) -> dict[str, Any]:
        """The next message that `match`es (others, such as events, are skipped)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail(f"{self.name} at {self.url} did not answer {what} in time")
            try:
                raw = self.open("").recv(timeout=left)
            except TimeoutError:
                continue
            except (OSError, WebSocketException) as e:
                self.fail(f"{self.name} at {self.url} closed the connection during {what} ({type(e).__name__})")
            try:
                msg = json.loads(raw)
            except (TypeError, ValueError):
                continue
            if isinstance(msg, dict) and match(msg):
                return msg

    def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # already gone; nothing to release
                pass
