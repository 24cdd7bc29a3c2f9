"""obs_merlb.obs_client: error mapping, the silenced library logger, backoff,
the lock and reconnecting, against the real obsws-python library talking to
a local obs-websocket stand-in (tests/obs_standin.py)."""
from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import pytest
from obsws_python.error import OBSSDKError, OBSSDKRequestError, OBSSDKTimeoutError
from websocket import WebSocketConnectionClosedException

from obs_merlb import obs_client
from obs_merlb.obs_client import (Backoff, ObsAuthError, ObsError, ObsLink, ObsRequestFailed,
                                  ObsSourceNotFound, ObsUnavailable, ObsUnreachable, connect_error,
                                  obs_password, open_client, request_error)
from tests.obs_standin import ObsStandIn, Refuse, free_port

pytest.importorskip("websockets.sync.server")

PW = "pw-Zq81-secret"
WHERE = "ws://127.0.0.1:4455"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_error_hierarchy_and_connect_mapping() -> None:
    assert issubclass(ObsUnreachable, ObsUnavailable) and issubclass(ObsAuthError, ObsUnavailable)
    assert issubclass(ObsSourceNotFound, ObsRequestFailed) and issubclass(ObsUnavailable, ObsError)
    assert issubclass(ObsError, RuntimeError)   # callers that catch RuntimeError keep working
    cases = [
        (ConnectionRefusedError(111, "Connection refused"), ObsUnreachable, "is OBS running"),
        (TimeoutError("timed out"), ObsUnreachable, "is OBS running"),
        (OSError(113, "No route to host"), ObsUnreachable, "No route to host"),
        (OBSSDKError("authentication enabled but no password provided"), ObsAuthError, "none was given"),
        (OBSSDKError("failed to identify client with the server"), ObsAuthError, "rejected the WebSocket password"),
        (WebSocketConnectionClosedException("socket is already closed."), ObsAuthError, "most likely wrong"),
        (ValueError("Expecting value: line 1"), ObsUnreachable, "ValueError"),
    ]
    for exc, kind, text in cases:
        err = connect_error(exc, WHERE, PW)
        assert type(err) is kind and text in str(err) and WHERE in str(err), (exc, err)


def test_request_mapping() -> None:
    assert type(request_error(OBSSDKRequestError("GetSourceScreenshot", 600, "No source was found"),
                              "GetSourceScreenshot", WHERE)) is ObsSourceNotFound
    refused = request_error(OBSSDKRequestError("CreateRecordChapter", 501, "not supported"),
                            "CreateRecordChapter", WHERE)
    assert type(refused) is ObsRequestFailed and refused.code == 501 and "CreateRecordChapter" in str(refused)
    assert type(request_error(OBSSDKTimeoutError("Timeout"), "GetStats", WHERE)) is ObsUnreachable
    assert type(request_error(BrokenPipeError(32, "Broken pipe"), "GetStats", WHERE)) is ObsUnreachable
    assert type(request_error(KeyError("d"), "GetStats", WHERE)) is ObsUnreachable   # a garbled answer
    # never the password, even when a library puts it in a message
    assert PW not in str(request_error(RuntimeError(f"password='{PW}'"), "GetStats", WHERE, PW))


def test_library_logger_is_silenced_once() -> None:
    for name in ("obsws_python", "obsws_python.baseclient.ObsClient", "obsws_python.reqs.ReqClient"):
        assert not logging.getLogger(name).isEnabledFor(logging.CRITICAL), name
    # One home: no other module sets that logger's level (two did, to two levels).
    root = Path(obs_client.__file__).parent
    setters = [p for p in root.rglob("*.py") if re.search(r"getLogger\(\s*[\"']obsws", p.read_text())]
    assert setters == [], setters


def test_no_password_in_logs_or_messages(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)   # the root at DEBUG: obsws-python's records still never made
    with ObsStandIn(PW, {"GetVersion": {"obsVersion": "30.2.3", "obsWebSocketVersion": "5.5.0"}}) as obs:
        errors: list[str] = []
        bad = ObsLink(port=obs.port, password="wrong-" + PW, on_error=errors.append)
        with pytest.raises(ObsAuthError, match="password"):
            bad.request("GetVersion")
        good = ObsLink(port=obs.port, password=PW)
        assert good.version() == ((30, 2, 3), "5.5.0")
        assert PW not in repr(good) and PW not in repr(bad)
        good.close()
    assert errors and all(PW not in e for e in errors)
    assert "connected to OBS" in caplog.text          # our own records do get through
    assert PW not in caplog.text and "Connecting with parameters" not in caplog.text


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    clock = FakeClock()
    b = Backoff(0.5, 4.0, clock)
    assert [b.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.remaining() == 4.0
    clock.t += 3.0
    assert b.remaining() == 1.0
    b.succeeded()
    assert b.remaining() == 0.0 and b.failed() == 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_link_waits_out_its_backoff_between_attempts() -> None:
    clock = FakeClock()
    tries: list[float] = []

    def refuse(**_: object) -> None:
        tries.append(clock.t)
        raise ConnectionRefusedError(111, "Connection refused")

    errors: list[str] = []
    link = ObsLink(client_factory=refuse, on_error=errors.append, max_backoff_s=4.0, clock=clock)
    for _ in range(40):   # 10 s of calls every 0.25 s: tries at 0, 1, 3, 7 (waits 1, 2, 4)
        with pytest.raises(ObsUnreachable):
            link.request("GetStats")
        clock.t += 0.25
    assert [t - 1000.0 for t in tries] == [0.0, 1.0, 3.0, 7.0]
    assert link.attempts == 4 and len(errors) == 4    # each try reported, none in between
    assert [e.rsplit("; ", 1)[1] for e in errors] == [f"retrying in {w} s" for w in (1, 2, 4, 4)]
    assert 0 < link.retry_in() <= 4.0


def test_auth_failure_keeps_its_type_during_the_backoff() -> None:
    clock = FakeClock()

    def wrong(**_: object) -> None:
        raise OBSSDKError("failed to identify client with the server")

    link = ObsLink(client_factory=wrong, clock=clock)
    with pytest.raises(ObsAuthError):
        link.request("GetStats")
    with pytest.raises(ObsAuthError, match="next retry"):   # no new try, the same problem
        link.request("GetStats")
    assert link.attempts == 1


def test_request_refusals_and_missing_sources(caplog: pytest.LogCaptureFixture) -> None:
    def shot(data: dict) -> dict:
        raise Refuse(600, f"No source was found by the name of `{data['sourceName']}`.")

    with ObsStandIn(PW, {"GetSourceScreenshot": shot, "GetStats": {"cpuUsage": 1.0}}) as obs:
        link = ObsLink(port=obs.port, password=PW)
        with pytest.raises(ObsSourceNotFound, match="Webcam"):
            link.request("GetSourceScreenshot", {"sourceName": "Webcam"})
        with pytest.raises(ObsRequestFailed) as refused:
            link.request("SaveReplayBuffer")
        assert refused.value.code == 204
        assert link.connected and link.request("GetStats") == {"cpuUsage": 1.0}
        assert link.connections == 1      # OBS refusing a request is not a broken connection
        link.close()


def test_reconnects_after_obs_restarts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=obs_client.__name__)
    obs = ObsStandIn(PW, {"GetStats": {"cpuUsage": 2.0}}).start()
    errors: list[str] = []
    link = ObsLink(port=obs.port, password=PW, timeout_s=2.0, initial_backoff_s=0.2,
                   on_error=errors.append)
    try:
        assert link.request("GetStats") == {"cpuUsage": 2.0} and link.connections == 1
        obs.stop()                                      # OBS closed
        with pytest.raises(ObsUnreachable):
            link.request("GetStats")
        assert not link.connected and errors
        with pytest.raises(ObsUnreachable, match="next retry"):
            link.request("GetStats")                    # inside the backoff: no new try
        time.sleep(0.25)
        with pytest.raises(ObsUnreachable, match="cannot reach"):
            link.request("GetStats")                    # a new try, refused: the same outage
        # OBS closing is named once (it was: the lost connection, then the refused one).
        warned = [r.getMessage() for r in caplog.records
                  if r.name == obs_client.__name__ and r.levelno >= logging.WARNING]
        assert len(warned) == 1 and "lost the connection" in warned[0], warned
        obs = ObsStandIn(PW, {"GetStats": {"cpuUsage": 3.0}}, port=obs.port).start()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert link.request("GetStats") == {"cpuUsage": 3.0}
                break
            except ObsUnavailable:
                assert time.monotonic() < deadline, "never reconnected"
                time.sleep(0.05)
        assert link.connections == 2 and link.last_error is None
    finally:
        link.close()
        obs.stop()


def test_lock_keeps_answers_with_their_requests() -> None:
    """obsws-python reads the next message as the answer: without the lock two
    threads take each other's answers."""
    with ObsStandIn(PW, {"Echo": lambda d: {"n": d["n"]}}) as obs:
        link = ObsLink(port=obs.port, password=PW)
        wrong: list[tuple[int, object]] = []

        def worker(k: int) -> None:
            for i in range(25):
                n = k * 1000 + i
                got = link.request("Echo", {"n": n}).get("n")
                if got != n:
                    wrong.append((n, got))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        link.close()
    assert wrong == [] and obs.requests.count("Echo") == 100


def test_open_client_and_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    with pytest.raises(ObsUnreachable, match=f"ws://127.0.0.1:{port}.*is OBS running"):
        open_client("127.0.0.1", port, PW, timeout=1)
    link = ObsLink.from_config({"password": PW})
    assert (link.host, link.port) == (obs_client.DEFAULT_HOST, obs_client.DEFAULT_PORT)
    monkeypatch.setenv(obs_client.PASSWORD_ENV, "from-env")
    assert obs_password() == "from-env" and obs_password("given") == "given"
