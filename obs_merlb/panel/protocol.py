"""The worker's WebSocket as its clients speak it: where it is, what a command looks like,
and one blocking request for command-line tools.

The panel's `WorkerClient` (client.py) is a Qt object with its own thread and
reconnect loop, right for a window that stays open; a command-line run such as
`merlb personalize` needs one request and one answer, without Qt. Both build
their URL and their messages here, so they cannot drift apart.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from obs_merlb.overlay.server import DEFAULT_PORT, SCHEMA_VERSION, WS_PATH


def worker_url(config: Mapping[str, Any]) -> str:
    """The local worker's events WebSocket: the port of config.toml's [overlay] or [engine], else the default."""
    for section in ("overlay", "engine"):
        sec = config.get(section)
        if isinstance(sec, dict) and isinstance(sec.get("port"), int) and sec["port"] > 0:
            return f"ws://127.0.0.1:{sec['port']}{WS_PATH}"
    return f"ws://127.0.0.1:{DEFAULT_PORT}{WS_PATH}"


def command(cmd: str, **fields: Any) -> dict[str, Any]:
    """A client command in the v1 schema."""
    return {"v": SCHEMA_VERSION, "type": "command", "cmd": cmd, **fields}


def request_reload(url: str, model_dir: Path | None, timeout: float = 20.0) -> tuple[bool, str]:
    """Ask a running worker to `reload_model` and wait for its new `hello`; (confirmed, message).

    No worker is not an error: the engine loads the active model when it next starts.
    """
    target = str(model_dir) if model_dir is not None else None
    try:
        with connect(url, open_timeout=3, close_timeout=1) as ws:
            ws.send(json.dumps(command("reload_model", **({"path": target} if target else {}))))
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                try:
                    ev = json.loads(ws.recv(timeout=max(0.1, end - time.monotonic())))
                except TimeoutError:
                    break
                if ev.get("type") == "hello" and (target is None or ev.get("config", {}).get("model") == target):
                    return True, f"the running worker switched to {target or 'its model'}"
                if ev.get("type") == "error" and ev.get("where") == "reload_model":
                    return False, f"the worker could not load it: {ev.get('message')}"
            return False, "reload sent; the worker did not confirm in time"
    except (OSError, TimeoutError) as e:
        return False, f"no worker at {url} ({e.__class__.__name__}); it loads the active model at its next start"
    except (WebSocketException, ValueError) as e:     # a bad URL, a refused handshake, a dropped connection
        return False, f"could not reach the worker at {url}: {e}"
