"""A minimal obs-websocket v5 server on a real socket, for tests without OBS.

It speaks the protocol obsws-python speaks (hello with an auth challenge,
identify, requests), so the real client library runs against it:

    with ObsStandIn("pw", {"GetVersion": {"obsVersion": "30.2.0"}}) as obs:
        ObsLink(port=obs.port, password="pw").request("GetVersion")

`answers` maps a request type to its responseData, or to a callable
(requestData -> responseData) that may raise `Refuse(code, comment)`;
unknown requests are refused with 204 (unknown request type), as OBS does.
`stop()` and `start()` simulate OBS closing and coming back on the same port.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from typing import Any, Callable

SALT, CHALLENGE = "c2FsdA==", "Y2hhbGxlbmdl"


class Refuse(Exception):
    def __init__(self, code: int, comment: str = "") -> None:
        super().__init__(comment)
        self.code, self.comment = code, comment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ObsStandIn:
    def __init__(self, password: str | None,
                 answers: dict[str, Any | Callable[[dict[str, Any]], Any]] | None = None,
                 port: int | None = None) -> None:
        self.password = password
        self.answers = answers or {}
        self.port = port or free_port()
        self.requests: list[str] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None
        if password:
            secret = base64.b64encode(hashlib.sha256((password + SALT).encode()).digest())
            self._expected = base64.b64encode(
                hashlib.sha256(secret + CHALLENGE.encode()).digest()).decode()

    def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        hello: dict[str, Any] = {"obsWebSocketVersion": "5.1.0", "rpcVersion": 1}
        if self.password:
            hello["authentication"] = {"salt": SALT, "challenge": CHALLENGE}
        try:
            ws.send(json.dumps({"op": 0, "d": hello}))
            ident = json.loads(ws.recv())
            if self.password and ident["d"].get("authentication") != self._expected:
                ws.close(4009, "Authentication failed.")
                return
            ws.send(json.dumps({"op": 2, "d": {"negotiatedRpcVersion": 1}}))
            for msg in ws:
                req = json.loads(msg)["d"]
                ws.send(json.dumps({"op": 7, "d": self._answer(req)}))
        except ConnectionClosed:  # the client left (or was refused)
            return

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["requestType"]
        self.requests.append(name)
        out = {"requestType": name, "requestId": req["requestId"]}
        answer = self.answers.get(name)
        try:
            if answer is None:
                raise Refuse(204, f"Your request type is not valid: {name}")
            data = answer(req.get("requestData") or {}) if callable(answer) else answer
        except Refuse as e:
            return {**out, "requestStatus": {"result": False, "code": e.code, "comment": e.comment}}
        return {**out, "requestStatus": {"result": True, "code": 100}, "responseData": data}

    def start(self) -> "ObsStandIn":
        from websockets.sync.server import serve

        # obsws-python leaves its socket open after a failed identify: a
        # short close timeout keeps shutdown from waiting 10 s on it.
        self._server = serve(self._handle, "127.0.0.1", self.port, close_timeout=0.2)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "ObsStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
