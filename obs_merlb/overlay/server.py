"""The overlay server: static page over HTTP and live events over a WebSocket, on one port.

The live engine runs in ordinary threads; this server runs its own asyncio loop
in its own thread so the engine never has to be async. The engine talks to it
through two thread-safe calls: `publish(event)` (fire and forget, never blocks
the analysis loop) and `on_command(callback)` (client commands back to the
engine).

Why one port for both: a browser source URL is the one thing a streamer pastes
into OBS, and the page can then open `ws://<same host>/ws` without being told
where the events live.

Security posture (the server runs on a streamer's desktop next to their browser):
- bind to loopback unless explicitly asked otherwise, and refuse non-loopback
  peers unless `allow_remote=True`;
- check the `Host` header (DNS rebinding: a hostile page whose name resolves to
  127.0.0.1 would otherwise read our pages) and the WebSocket `Origin` (any web
  page the streamer visits may open a WebSocket to 127.0.0.1 and send commands
  such as `reload_model`);
- serve only regular files inside the asset folder, GET only, no listings.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import http
import ipaddress
import json
import logging
import mimetypes
import posixpath
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
WS_PATH = "/ws"
DEFAULT_PORT = 8765
SCHEMA_VERSION = 1

# Events every client gets unless it asks otherwise; `preview` carries a JPEG
# at ~2 Hz, so only clients that subscribe to it receive it.
DEFAULT_TOPICS = frozenset({"hello", "state", "health", "tag", "highlight", "session", "error"})
OPT_IN_TOPICS = frozenset({"preview"})
# The commands a WebSocket client may send (README, docs/ARCHITECTURE.md). The
# worker's stdin also takes `stop` and `session` from the OBS script; here they
# would let any local program end the worker (exit 0, which the script does not
# restart) or split the session log away from the recording.
WS_COMMANDS = frozenset({"tag", "set", "pause", "resume", "subscribe", "unsubscribe", "reload_model",
                         "reset_baseline", "ping"})

# Per-client backlog. A browser source that stalls (OBS hides the scene and
# throttles it) must not make the worker's memory grow over a many-hour
# stream: the oldest messages are dropped, newest kept, since every `state`
# supersedes the previous one.
CLIENT_BACKLOG = 64
MAX_COMMAND_BYTES = 64 * 1024
# Any web page can send requests here in a loop: a kind of refusal is logged
# once per period and counted meanwhile, so the worker's log cannot be grown
# from outside.
WARN_PERIOD_S = 60.0

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}

CommandCallback = Callable[[dict[str, Any]], Any]


class OverlayServerError(RuntimeError):
    """The overlay server could not start (port in use, bad host, missing assets)."""


def is_loopback_address(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.0.0.1)."""
    host = host.strip("[]")
    if "%" in host:  # IPv6 scope id, e.g. fe80::1%eth0
        host = host.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _host_is_loopback_name(host: str) -> bool:
    return host.lower() in ("localhost", "localhost.") or is_loopback_address(host)


# RFC 9110 `Host` / RFC 6454 origin authority: reg-name or IPv4, or [IPv6], then
# an optional numeric port. No userinfo (`127.0.0.1:80@evil.example` once
# passed as loopback), no path, nothing else.
_AUTHORITY = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+(?:%[\w.~-]+)?)\]|(?P<name>[A-Za-z0-9._~-]+))"
                        r"(?::(?P<port>[0-9]{0,5}))?")


def parse_authority(value: str) -> tuple[str, int | None] | None:
    """'127.0.0.1:8765' -> ('127.0.0.1', 8765), '[::1]' -> ('::1', None); None when malformed."""
    m = _AUTHORITY.fullmatch(value.strip())
    if m is None:
        return None
    port = m.group("port")
    if port and int(port) > 65535:
        return None
    return m.group("v6") or m.group("name"), int(port) if port else None


class _QuietLog:
    """One warning per kind of refusal and period; the rest are counted into the next one."""

    def __init__(self, period_s: float = WARN_PERIOD_S) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._muted: collections.Counter[str] = collections.Counter()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.period_s) < self.period_s:
            self._muted[kind] += 1
            return
        self._last[kind] = now
        muted = self._muted.pop(kind, 0)
        suffix = f" (and {muted} more like it since the last report)" if muted else ""
        log.warning(message + suffix, *args)


class _DebugRequests(logging.LoggerAdapter):
    """websockets logs two INFO lines per HTTP request ("HTTP response sent", "connection
    closed"); any web page could then grow worker.log without limit. They go to DEBUG."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


class _Client:
    """One WebSocket client: a bounded backlog drained by its own sender task."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.topics: set[str] = set(DEFAULT_TOPICS)
        self.backlog: collections.deque[str] = collections.deque(maxlen=CLIENT_BACKLOG)
        self.wakeup = asyncio.Event()
        self.dropped = 0

    def push(self, topic: str, message: str) -> None:
        if topic not in self.topics:
            return
        if len(self.backlog) == self.backlog.maxlen:
            self.dropped += 1
        self.backlog.append(message)
        self.wakeup.set()


class OverlayServer:
    """HTTP (static overlay) + WebSocket (/ws) server in a background thread.

    Usage from the engine::

        srv = OverlayServer(port=8765).start()   # srv.url -> paste into OBS
        srv.on_command(handle_command)           # runs on the server thread
        srv.publish({"v": 1, "type": "state", ...})
        srv.stop()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        static_dir: str | Path | None = None,
        *,
        allow_remote: bool = False,
        server_name: str = "obs-merlb",
        version: str | None = None,
    ) -> None:
        if not allow_remote and not _host_is_loopback_name(host):
            # No command-line option opens it: the one reader is OBS on this PC.
            raise OverlayServerError(
                f"refusing to bind the overlay server to {host!r}: it is not a loopback "
                "address. Viewers never reach this server (OBS loads the overlay on this PC "
                "and streams the picture), so use --host 127.0.0.1, the default."
            )
        if not 0 <= int(port) <= 65535:
            raise OverlayServerError(f"overlay port must be 0-65535, got {port}")
        self.host = host
        self._requested_port = int(port)
        self.static_dir = Path(static_dir) if static_dir is not None else STATIC_DIR
        self.allow_remote = allow_remote
        self.server_name = server_name
        self.version = version
        self._lock = threading.Lock()
        self._callbacks: list[CommandCallback] = []
        self._last: dict[str, str] = {}  # topic -> JSON of the last hello/state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._stopping: asyncio.Event | None = None
        self._clients: set[_Client] = set()
        # Read from other threads (has_subscribers, client_count); replaced, never mutated.
        self._clients_view: tuple[_Client, ...] = ()
        self._static_root = self.static_dir.resolve()
        self._port: int | None = None
        self.dropped = 0  # messages dropped for slow clients, over the server's life
        self._quiet = _QuietLog()

    # ---------------------------------------------------------------- public API

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return self._port if self._port is not None else self._requested_port

    @property
    def url(self) -> str:
        """What the streamer pastes into an OBS browser source."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/overlay.html"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1).rsplit("/", 1)[0] + WS_PATH

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def client_count(self) -> int:
        return len(self._clients_view)

    def has_subscribers(self, topic: str) -> bool:
        """Lets the engine skip work (e.g. JPEG previews) nobody is listening to."""
        return any(topic in c.topics for c in self._clients_view)

    def on_command(self, callback: CommandCallback) -> None:
        """Register `callback(command_dict)`; it runs on the server's thread, so keep it short."""
        with self._lock:
            self._callbacks.append(callback)

    def start(self, timeout: float = 10.0) -> "OverlayServer":
        if self.running:
            return self
        index = self.static_dir / "overlay.html"
        if not index.is_file():
            raise OverlayServerError(f"overlay assets not found: {index} is missing")
        self._static_root = self.static_dir.resolve()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name="merlb-overlay", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise OverlayServerError(f"overlay server did not start within {timeout:.0f} s")
        if failure:
            self._thread.join(timeout)
            self._thread = None
            raise failure[0]
        log.info("overlay at %s (events on %s)", self.url, self.ws_url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._stopping is not None:
            try:
                loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # loop already closed
                pass
        thread.join(timeout)
        self._thread = None
        self._loop = None

    def publish(self, event: dict[str, Any]) -> None:
        """Queue an event for every interested client. Thread-safe, never blocks.

        Before `start()` (or between restarts) the last `hello` and `state` are
        still remembered, so the first client sees the current state at once.
        """
        topic = str(event.get("type", ""))
        if not topic:
            raise ValueError("an event needs a 'type'")
        if "v" not in event:  # without touching the caller's dict
            event = {"v": SCHEMA_VERSION, **event}
        message = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if topic in ("hello", "state"):
            self._last[topic] = message
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._broadcast, topic, message)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def __enter__(self) -> "OverlayServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- loop thread

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready, failure))
        except BaseException as exc:  # surfaced to start() if it happens before ready
            if not ready.is_set():
                failure.append(exc)
                ready.set()
            else:
                log.exception("overlay server crashed")
        finally:
            self._loop = None
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._stopping = asyncio.Event()
        # A restart keeps the port it had (even when first asked for 0): the
        # browser source URL in OBS points at it.
        port = self._port if self._port is not None else self._requested_port
        try:
            server = await serve(
                self._handle_ws,
                self.host,
                port,
                process_request=self._process_request,
                server_header=None,
                logger=_DebugRequests(logging.getLogger("websockets.server"), {}),
                max_size=MAX_COMMAND_BYTES,
                # Compression costs CPU per message on a machine already
                # encoding a stream, for messages of a few hundred bytes.
                compression=None,
                ping_interval=20,
                ping_timeout=20,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE or "address already in use" in str(exc).lower():
                failure.append(OverlayServerError(
                    f"overlay port {port} on {self.host} is already in use "
                    "(another merlb worker, or another program). Stop it or choose another "
                    "port in the settings (0 picks a free one)."
                ))
            elif isinstance(exc, socket.gaierror):
                failure.append(OverlayServerError(f"cannot resolve overlay host {self.host!r}: {exc}"))
            else:
                failure.append(OverlayServerError(f"cannot start the overlay server on {self.host}:{port}: {exc}"))
            ready.set()
            return
        self._server = server
        sockets = list(server.sockets)
        self._port = sockets[0].getsockname()[1] if sockets else port
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close(close_connections=True)
            await server.wait_closed()
            self._clients.clear()
            self._clients_view = ()
            self._server = None

    def _broadcast(self, topic: str, message: str) -> None:
        for client in self._clients:
            before = client.dropped
            client.push(topic, message)
            self.dropped += client.dropped - before

    # ---------------------------------------------------------------- HTTP side

    def peer_allowed(self, remote_address: Any) -> bool:
        """Whether a peer may talk to us: loopback only unless allow_remote."""
        if self.allow_remote:
            return True
        if not remote_address:
            return False
        host = remote_address[0] if isinstance(remote_address, (tuple, list)) else str(remote_address)
        return is_loopback_address(str(host))

    def host_header_allowed(self, host_header: str | None) -> bool:
        """Refuse DNS-rebinding names: only a well-formed loopback authority unless allow_remote."""
        if self.allow_remote:
            return True
        authority = parse_authority(host_header) if host_header else None
        return authority is not None and _host_is_loopback_name(authority[0])

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """WebSocket origins: none (native clients) or our own pages."""
        if origin is None:
            return True  # the panel and the engine's tests are not browsers
        scheme, sep, netloc = origin.partition("://")
        authority = parse_authority(netloc) if sep else None
        if scheme.lower() not in ("http", "https") or authority is None:
            return False  # also "null" (sandboxed pages, file://) and anything with a path or userinfo
        if host_header and netloc.lower() == host_header.strip().lower():
            return True
        return not self.allow_remote and _host_is_loopback_name(authority[0]) and authority[1] == self.port

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        try:
            return self._check_request(conn, request)
        except Exception as exc:  # a request we did not foresee: one line, not a traceback per request
            self._quiet.warning("failed", "overlay: %s %s failed: %r", request.method,
                                request.path[:200], exc)
            return _response(400, "Bad Request\n")

    def _check_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if not self.peer_allowed(conn.remote_address):
            self._quiet.warning("peer", "overlay: refused non-loopback peer %s", conn.remote_address)
            return _response(403, "Forbidden: the overlay server only answers this computer.\n")
        try:
            host_header = request.headers.get("Host")
            origin = request.headers.get("Origin")
        except MultipleValuesError as exc:
            self._quiet.warning("repeated", "overlay: refused a request with a repeated %s header", exc)
            return _response(400, "Bad Request: a header that must appear once appears twice.\n")
        if not self.host_header_allowed(host_header):
            self._quiet.warning("host", "overlay: refused Host header %r", (host_header or "")[:200])
            return _response(403, "Forbidden: unexpected Host header.\n")
        path = urlsplit(request.path).path
        if path == WS_PATH:
            if request.method != "GET":
                return _response(405, "Method Not Allowed\n", {"Allow": "GET"})
            if not self.origin_allowed(origin, host_header):
                self._quiet.warning("origin", "overlay: refused WebSocket from origin %r", origin[:200])
                return _response(403, "Forbidden: WebSocket origin not allowed.\n")
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return _response(426, "Upgrade Required: this endpoint speaks WebSocket.\n",
                                 {"Upgrade": "websocket"})
            return None  # let websockets complete the handshake
        if request.method not in ("GET", "HEAD"):
            return _response(405, "Method Not Allowed\n", {"Allow": "GET, HEAD"})
        file = self.resolve_static(request.path)
        if file is None:
            return _response(404, "Not Found\n")
        body = file.read_bytes()
        ctype = _CONTENT_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] \
            or "application/octet-stream"
        headers = {
            "Content-Type": ctype,
            # OBS caches browser sources hard; no-cache makes an updated
            # overlay show up on the next refresh instead of after a restart.
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if file.suffix.lower() == ".html":
            headers["Content-Security-Policy"] = (
                "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                "style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'self'; "
                "base-uri 'none'; form-action 'none'"
            )
        return _response(200, body, headers, head_only=request.method == "HEAD")

    def resolve_static(self, raw_path: str) -> Path | None:
        """Map a request path to a regular file inside the asset folder, else None.

        Decodes percent-escapes once, then refuses any `..`, backslash, NUL or
        absolute component, and finally checks the resolved path (symlinks
        followed) is still under the asset folder.
        """
        try:
            path = unquote(urlsplit(raw_path).path, errors="strict") if raw_path else "/"
        except (UnicodeDecodeError, ValueError):
            return None
        if path in ("", "/"):
            path = "/overlay.html"
        if "\x00" in path or "\\" in path or not path.startswith("/"):
            return None
        parts = path.split("/")[1:]
        if any(p.startswith(".") for p in parts):
            return None  # `..`, `.`, and dotfiles (editor swap files, .DS_Store)
        rel = posixpath.normpath("/".join(parts))
        if rel.startswith("/") or rel.startswith(".."):
            return None
        root = self._static_root
        try:
            candidate = (root / rel).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    # ---------------------------------------------------------------- WebSocket side

    async def _handle_ws(self, conn: ServerConnection) -> None:
        client = _Client(conn)
        for topic in ("hello", "state"):
            if topic in self._last:
                client.push(topic, self._last[topic])
        self._clients.add(client)
        self._clients_view = tuple(self._clients)
        sender = asyncio.create_task(self._sender(client))
        try:
            async for raw in conn:
                self._handle_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            self._clients_view = tuple(self._clients)
            sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, ConnectionClosed):
                pass

    async def _sender(self, client: _Client) -> None:
        while True:
            await client.wakeup.wait()
            client.wakeup.clear()
            while client.backlog:
                await client.conn.send(client.backlog.popleft())

    def _handle_message(self, client: _Client, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._reply_error(client, "message is not JSON")
            return
        except RecursionError:
            # A few kB of brackets exhaust the parser's stack; a command is one flat object.
            self._reply_error(client, "message is nested too deeply")
            return
        if not isinstance(msg, dict) or msg.get("type") != "command" or not isinstance(msg.get("cmd"), str):
            self._reply_error(client, 'expected {"v": 1, "type": "command", "cmd": ...}')
            return
        if msg.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
            self._reply_error(client, f"unsupported schema version {msg.get('v')!r}; this server speaks v{SCHEMA_VERSION}")
            return
        if msg["cmd"] not in WS_COMMANDS:
            self._reply_error(client, f"unknown command {msg['cmd'][:50]!r}; "
                                      f"the commands are {', '.join(sorted(WS_COMMANDS))}")
            return
        if msg["cmd"] in ("subscribe", "unsubscribe"):
            topics = msg.get("topics")
            if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
                self._reply_error(client, f"{msg['cmd']} needs 'topics': a list of event types")
                return
            known = DEFAULT_TOPICS | OPT_IN_TOPICS
            if msg["cmd"] == "subscribe":
                client.topics.update(t for t in topics if t in known)
            else:
                client.topics.difference_update(topics)
        with self._lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb(msg)
            except Exception as exc:  # a bad command must not take the server down
                log.exception("overlay: command handler failed for %r", msg.get("cmd"))
                self._reply_error(client, f"command {msg['cmd']!r} failed: {exc}")

    def _reply_error(self, client: _Client, message: str) -> None:
        client.push("error", json.dumps({"v": SCHEMA_VERSION, "type": "error",
                                         "message": message, "where": "overlay.command"}))


def _response(status: int, body: str | bytes, headers: dict[str, str] | None = None,
              *, head_only: bool = False) -> Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    h = Headers()
    if isinstance(body, str):
        h["Content-Type"] = "text/plain; charset=utf-8"
    for k, v in (headers or {}).items():
        if k in h:
            del h[k]
        h[k] = v
    h["Content-Length"] = str(len(data))
    # websockets closes the TCP connection after any non-101 answer; say so,
    # so browsers do not try to reuse it.
    h["Connection"] = "close"
    return Response(status, http.HTTPStatus(status).phrase, h, b"" if head_only else data)

