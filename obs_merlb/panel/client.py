"""WebSocket client for the worker's event stream, living in its own thread.

The panel's GUI thread must never wait on the network: a worker that is
starting, restarting (OBS restarts it after a crash) or gone must leave the
window responsive. So the client runs an asyncio loop in a daemon thread and
hands every event to Qt through signals, which Qt delivers on the GUI thread
(queued connection, because the emitter lives on another thread).

It reconnects on its own with exponential backoff (0.5 s doubling to 5 s),
re-sends its topic subscription after each connect (the server forgets it
with the connection), and drops commands sent while disconnected instead of
queueing them: a threshold change or a tag from a minute ago must not land
late on a fresh worker.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from PyQt5.QtCore import QObject, pyqtSignal

from obs_merlb.panel.protocol import command

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 5.0


class WorkerClient(QObject):
    """Connects to ws://127.0.0.1:PORT/ws and emits one signal per event."""

    # (connected, human-readable detail: the URL, or why the last try failed)
    connection_changed = pyqtSignal(bool, str)
    # every event, as the decoded JSON object
    event_received = pyqtSignal(dict)

    def __init__(self, url: str, topics: list[str] | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.url = url
        self.topics = list(topics or [])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ws: Any = None
        self._ready = threading.Event()
        self.connected = False
        self.sent = 0
        self.received = 0

    # ------------------------------------------------------------ GUI-thread API

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="merlb-panel-ws", daemon=True)
        self._thread.start()
        self._ready.wait(2.0)

    def stop(self, timeout: float = 3.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a command for the worker; False when not connected (it is dropped)."""
        loop = self._loop
        if loop is None or not self.connected:
            return False
        text = json.dumps(message, separators=(",", ":"))
        try:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._send(text)))
        except RuntimeError:
            return False
        return True

    def send_command(self, cmd: str, **fields: Any) -> bool:
        return self.send(command(cmd, **fields))

    # ------------------------------------------------------------ loop thread

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:  # never let the thread die silently
            log.exception("panel WebSocket client crashed")
        finally:
            self._loop = None
            loop.close()

    async def _main(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        self._stop = asyncio.Event()
        self._ready.set()
        backoff = BACKOFF_START_S
        stop_task = asyncio.ensure_future(self._stop.wait())
        while not self._stop.is_set():
            reason = ""
            try:
                # max_size: preview JPEGs are tens of kB; a generous cap still
                # bounds memory if something misbehaves.
                async with connect(self.url, open_timeout=3, max_size=4 * 1024 * 1024,
                                   compression=None, ping_interval=10, ping_timeout=10) as ws:
                    self._ws = ws
                    self.connected = True
                    backoff = BACKOFF_START_S
                    self.connection_changed.emit(True, self.url)
                    if self.topics:
                        await ws.send(json.dumps(command("subscribe", topics=self.topics)))
                    reason = await self._pump(ws, stop_task)
            except InvalidURI as e:
                reason = f"bad worker URL: {e}"
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as e:
                reason = _why(e)
            except ConnectionClosed as e:
                reason = f"connection closed ({e.rcvd.code if e.rcvd else 'no close frame'})"
            finally:
                was = self.connected
                self.connected = False
                self._ws = None
            if self._stop.is_set():
                break
            self.connection_changed.emit(False, reason or "disconnected")
            if was:
                backoff = BACKOFF_START_S
            try:
                await asyncio.wait_for(asyncio.shield(stop_task), timeout=backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(BACKOFF_MAX_S, backoff * 2)
        stop_task.cancel()
        self.connection_changed.emit(False, "closed")

    async def _pump(self, ws: Any, stop_task: asyncio.Future[Any]) -> str:
        from websockets.exceptions import ConnectionClosed

        while True:
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if stop_task in done:
                recv.cancel()
                return "closed"
            try:
                raw = recv.result()
            except ConnectionClosed as e:
                return f"worker closed the connection ({e.rcvd.code if e.rcvd else 'no close frame'})"
            try:
                event = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                log.warning("ignoring a non-JSON message from the worker")
                continue
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                self.received += 1
                self.event_received.emit(event)

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(text)
            self.sent += 1
        except Exception as e:  # the receive side notices the drop and reconnects
            log.debug("command not sent: %s", e)


def _why(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "worker not running (connection refused)"
    if isinstance(e, asyncio.TimeoutError):
        return "worker did not answer (timeout)"
    text = str(e) or type(e).__name__
    return text
