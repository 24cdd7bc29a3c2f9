"""The webhook action: HTTP POST of the state as JSON to a URL the streamer sets.

Standard library only. One try per firing with a timeout, never a retry:
after a failure the URL rests (obs_merlb.obs_client.Backoff, 2 s doubling
to 60 s) and firings meanwhile are reported as skipped, so a dead endpoint
costs one timeout per backoff step, not one per firing. It runs on the
trigger worker thread, never on the analysis thread.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Mapping
from urllib.parse import urlsplit

from obs_merlb import __version__
from obs_merlb.obs_client import Backoff
from obs_merlb.triggers.wsclient import PeerError


class WebhookPoster:
    def __init__(self) -> None:
        self._rest: dict[str, tuple[Backoff, str]] = {}

    def post(self, url: str, payload: Mapping[str, Any], timeout_s: float = 2.0) -> str:
        if urlsplit(url).scheme not in ("http", "https"):
            raise PeerError(f"webhook URL {url!r} must start with http:// or https://")
        rest = self._rest.get(url)
        if rest is not None and rest[0].remaining() > 0:
            raise PeerError(rest[1])
        body = json.dumps({"source": "obs-merlb", **dict(payload)}).encode()
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"obs-merlb/{__version__}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            self._failed(url, f"webhook {url} answered HTTP {e.code} {e.reason}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            what = f"timed out (timeout {timeout_s:g} s)" if "timed out" in str(reason) else f"failed ({reason})"
            self._failed(url, f"webhook {url} {what}")
        if rest is not None:
            rest[0].succeeded()
        return f"webhook answered HTTP {status}"

    def _failed(self, url: str, problem: str) -> None:
        backoff = self._rest.get(url, (Backoff(2.0, 60.0), ""))[0]
        backoff.failed()
        # Firings while it rests say the same words, so the problem is reported once.
        problem += "; not retried for a while (2 s, doubling up to 60 s)"
        self._rest[url] = (backoff, problem)
        raise PeerError(problem)
