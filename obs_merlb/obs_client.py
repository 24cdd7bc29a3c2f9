"""The one obs-websocket v5 client of the worker and the panel.

Everything that talks to OBS (screenshots of a source, GetStats and
highlights, the native text overlay, the panel's source lists and buttons)
goes through here, so these hold in one place:

* the address defaults (`DEFAULT_HOST`, `DEFAULT_PORT`) and where the
  password comes from (`obs_password`);
* one error hierarchy, each message saying what to fix and never holding the
  password::

      ObsError
      +-- ObsUnavailable       cannot talk to OBS now; retried with backoff
      |   +-- ObsUnreachable   nothing answers, or the connection dropped
      |   +-- ObsAuthError     the password is missing or wrong
      +-- ObsRequestFailed     OBS answered but refused (``.code``)
          +-- ObsSourceNotFound  no source by that name (code 600)

* obsws-python's logger silenced once, at import: it logs the connection
  parameters, password included, at INFO, and a traceback for every refused
  request at ERROR;
* `ObsLink`: a lock around the client (obsws-python is synchronous and does
  not match request ids, so two threads would read each other's answers) and
  reconnecting with exponential backoff (`Backoff`), because obsws-python
  never reconnects by itself.

obsws-python is imported only when a connection is made, so importing this
module is cheap (the installer and the panel import it at start).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Mapping, TypeVar

from obs_merlb.config import get_section

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4455          # obs-websocket's own default
DEFAULT_TIMEOUT_S = 3.0
PASSWORD_ENV = "MERLB_OBS_PASSWORD"
NOT_FOUND = 600              # obs-websocket RequestStatus.ResourceNotFound
LIBRARY_LOGGER = "obsws_python"

# Above every level obsws-python uses: none of its records is ever made.
logging.getLogger(LIBRARY_LOGGER).setLevel(logging.CRITICAL + 1)

SETUP_HINT = ("is OBS running, with Tools > WebSocket Server Settings > Enable WebSocket server "
              "on, and this port?")


class ObsError(RuntimeError):
    """Base of every OBS error; the message says what to fix."""


class ObsUnavailable(ObsError):
    """OBS cannot be used right now (a link retries on its own)."""


class ObsUnreachable(ObsUnavailable):
    """Nothing answers at the address, or OBS closed the connection."""


class ObsAuthError(ObsUnavailable):
    """OBS asks for a password and the one given is missing or wrong."""


class ObsRequestFailed(ObsError):
    """OBS answered, but refused the request (bad state, unsupported, no such thing)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ObsSourceNotFound(ObsRequestFailed):
    """OBS has no source (input, scene, scene item) by that name."""


def url(host: str, port: int) -> str:
    return f"ws://{host}:{port}"


def obs_password(explicit: str | None = None) -> str:
    """From MERLB_OBS_PASSWORD, else the project config's [obs] password; never logged."""
    if explicit:
        return explicit
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    try:
        return str(get_section("obs").get("password", "") or "")
    except Exception:  # an unreadable config: connect without, OBS then says it wants one
        return ""


def _text(e: BaseException, password: str) -> str:
    text = str(e).strip() or type(e).__name__
    if password:
        text = text.replace(password, "***")
    return text[:200]


def connect_error(e: BaseException, where: str, password: str = "") -> ObsError:
    """What a failed connection attempt means, as one of our errors."""
    if isinstance(e, ObsError):
        return e
    msg = _text(e, password)
    if isinstance(e, (ConnectionRefusedError, TimeoutError)) or type(e).__name__ in (
            "WebSocketTimeoutException", "OBSSDKTimeoutError"):
        return ObsUnreachable(f"cannot reach OBS at {where} ({type(e).__name__}): {SETUP_HINT}")
    if type(e).__name__ == "OBSSDKError":
        if "no password" in msg:
            return ObsAuthError(f"OBS at {where} asks for a WebSocket password and none was given: "
                                "copy it from Tools > WebSocket Server Settings")
        return ObsAuthError(f"OBS at {where} rejected the WebSocket password: check it in "
                            "Tools > WebSocket Server Settings > Show Connect Info")
    if type(e).__name__.startswith("WebSocket"):
        # OBS closes the socket right after the identify message when the
        # password is wrong (close code 4009); any other close is a drop.
        if "4009" in msg or "closed" in msg.lower():
            return ObsAuthError(f"OBS at {where} closed the connection while identifying: the "
                                "WebSocket password is most likely wrong")
        return ObsUnreachable(f"OBS at {where}: WebSocket error ({type(e).__name__}: {msg})")
    if isinstance(e, OSError):
        return ObsUnreachable(f"cannot reach OBS at {where} ({e.strerror or msg}): {SETUP_HINT}")
    return ObsUnreachable(f"cannot reach OBS at {where} ({type(e).__name__}: {msg}): {SETUP_HINT}")


def request_error(e: BaseException, what: str, where: str, password: str = "") -> ObsError:
    """What an exception during a request means. Anything that carries an
    obs-websocket status code is OBS refusing; the rest is the connection."""
    if isinstance(e, ObsError):
        return e
    msg = _text(e, password)
    code = getattr(e, "code", None)
    if isinstance(code, int) and not isinstance(e, OSError):
        if code == NOT_FOUND:
            return ObsSourceNotFound(f"OBS at {where} found nothing by that name for {what} ({msg})",
                                     code)
        return ObsRequestFailed(f"OBS at {where} refused {what}: {msg}", code)
    if type(e).__name__ in ("OBSSDKTimeoutError", "WebSocketTimeoutException"):
        return ObsUnreachable(f"OBS at {where} stopped answering during {what} ({msg})")
    return ObsUnreachable(f"lost the connection to OBS at {where} during {what} "
                          f"({type(e).__name__}: {msg})")


def open_client(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, password: str = "",
                timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """An authenticated obsws-python ``ReqClient`` (no lock, no reconnect), or an ObsError.

    For one thread that owns it (tests, one-shot tools); shared use goes through ObsLink.
    """
    try:
        import obsws_python as obsws
    except ImportError as e:  # a broken install, not a user error
        raise ObsUnreachable(f"obsws-python is not installed ({e}): reinstall obs-merlb") from None
    try:
        # host, port and password always given: obsws-python otherwise reads
        # a config.toml from the working folder or home.
        return obsws.ReqClient(host=host, port=int(port), password=password or "", timeout=timeout)
    except Exception as e:
        raise connect_error(e, url(host, port), password) from None


class Backoff:
    """Exponential backoff: `initial_s`, doubled after each failure up to `max_s`.

    `clock` is injectable so tests can step time instead of sleeping.
    """

    def __init__(self, initial_s: float = 1.0, max_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"backoff needs 0 < initial ({initial_s}) <= max ({max_s})")
        self.initial_s, self.max_s, self.clock = initial_s, max_s, clock
        self._next = initial_s
        self._until = 0.0

    def failed(self) -> float:
        """Record a failure; returns how long to wait before the next try."""
        wait = self._next
        self._until = self.clock() + wait
        self._next = min(self.max_s, self._next * 2)
        return wait

    def succeeded(self) -> None:
        self._next = self.initial_s
        self._until = 0.0

    def remaining(self) -> float:
        """Seconds until the next try is due (0: now)."""
        return max(0.0, self._until - self.clock())


class ObsLink:
    """A lock-protected, self-reconnecting obs-websocket v5 request client.

    Each failed try is given to `on_error`, each distinct problem logged once;
    while the backoff runs, calls fail at once with ObsUnavailable instead of
    trying again, so a closed OBS costs no reconnect storm.
    `client_factory(host=, port=, password=, timeout=)` replaces obsws-python
    (tests); `connections` counts successful connects, so a caller sees when
    it talks to a fresh (perhaps restarted) OBS.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, password: str = "",
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 on_error: Callable[[str], None] | None = None, max_backoff_s: float = 30.0,
                 client_factory: Callable[..., Any] | None = None, *,
                 initial_backoff_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.port = host, int(port)
        self._password = password or ""
        self.timeout_s = timeout_s
        self.on_error = on_error
        self._factory = client_factory or open_client
        self._client: Any = None
        self._lock = threading.Lock()
        self.backoff = Backoff(initial_backoff_s, max(initial_backoff_s, max_backoff_s), clock)
        self.attempts = 0
        self.connections = 0
        self.last_error: str | None = None
        self._last_failure: ObsError | None = None
        self._outage_kind: type | None = None   # the kind of problem this outage was logged as
        self._version: tuple[tuple[int, ...], str] | None = None

    @classmethod
    def from_config(cls, obs_cfg: Mapping[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S,
                    **kw: Any) -> "ObsLink":
        """A link for the config file's [obs] table (host, port, password)."""
        return cls(str(obs_cfg.get("host") or DEFAULT_HOST), int(obs_cfg.get("port") or DEFAULT_PORT),
                   str(obs_cfg.get("password") or ""), timeout_s, **kw)

    @property
    def url(self) -> str:
        return url(self.host, self.port)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def __repr__(self) -> str:  # never show the password
        return f"ObsLink({self.url}, connected={self.connected})"

    def retry_in(self) -> float:
        """Seconds until a reconnect may be tried (0 when connected or due)."""
        return 0.0 if self._client is not None else self.backoff.remaining()

    def connect(self) -> int:
        """Connect unless connected; returns `connections` (it changes on each new connect)."""
        with self._lock:
            self._client_locked()
            return self.connections

    def call(self, fn: Callable[[Any], T], what: str) -> T:
        """Run `fn(client)` under the lock; `fn` holds only OBS calls (any exception it
        raises is mapped as OBS's). Raises ObsUnavailable (and schedules a reconnect)
        or ObsRequestFailed."""
        with self._lock:
            client = self._client_locked()
            try:
                return fn(client)
            except Exception as e:
                err = request_error(e, what, self.url, self._password)
                if isinstance(err, ObsUnavailable):
                    # Socket-level trouble: drop the client; the next call reconnects.
                    self._drop_locked()
                    self._last_failure = err
                    self._report(err, self.backoff.failed())
                raise err from None

    def request(self, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; returns its responseData (a dict, possibly empty)."""
        out = self.call(lambda c: c.send(name, data, raw=True), name)
        return out if isinstance(out, dict) else {}

    def version(self) -> tuple[tuple[int, ...], str]:
        """(OBS version tuple, obs-websocket version string), cached per connection."""
        if self._version is None:
            v = self.request("GetVersion")
            self._version = (parse_version(v.get("obsVersion", "0")), str(v.get("obsWebSocketVersion", "")))
        return self._version

    def close(self) -> None:
        with self._lock:
            self._drop_locked()

    def _client_locked(self) -> Any:
        if self._client is not None:
            return self._client
        wait = self.backoff.remaining()
        if wait > 0:
            # The last problem again (same type: a wrong password stays one), not a new try.
            kind = type(self._last_failure) if self._last_failure else ObsUnreachable
            raise kind(f"{self._last_failure or f'OBS at {self.url} not reachable'}; "
                       f"next retry in {wait:.1f} s")
        self.attempts += 1
        try:
            client = self._factory(host=self.host, port=self.port, password=self._password,
                                   timeout=self.timeout_s)
        except Exception as e:  # refused, timeout, auth, protocol: all mean "not now"
            err = connect_error(e, self.url, self._password)
            self._last_failure = err
            self._report(err, self.backoff.failed())
            raise err from None
        self._client = client
        self.connections += 1
        self.backoff.succeeded()
        if self.last_error is not None or self.connections == 1:
            log.info("connected to OBS at %s", self.url)
        self.last_error = None
        self._last_failure = None
        self._outage_kind = None
        return client

    def _drop_locked(self) -> None:
        client, self._client = self._client, None
        self._version = None
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # the socket is already gone; nothing to release
                pass

    def _report(self, error: ObsError, wait: float) -> None:
        """`on_error` hears every failed try; the log names an outage once, and again only when
        its kind changes (OBS gone, then back with another password). OBS closing reads as a
        lost connection, then as refused connections: one outage, one line."""
        problem = str(error)
        message = f"{problem}; retrying in {wait:.0f} s"
        log.log(logging.DEBUG if type(error) is self._outage_kind else logging.WARNING, "%s", message)
        self._outage_kind = type(error)
        self.last_error = problem
        notify(self.on_error, message)


def notify(on_error: Callable[[str], None] | None, message: str) -> None:
    """Hand a problem to a caller's callback; a failing callback is logged, never raised."""
    if on_error is None:
        return
    try:
        on_error(message)
    except Exception:
        log.exception("OBS: on_error callback failed")


def parse_version(text: str) -> tuple[int, ...]:
    """"30.2.3" -> (30, 2, 3); stops at the first part without digits."""
    parts = []
    for p in str(text).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)
