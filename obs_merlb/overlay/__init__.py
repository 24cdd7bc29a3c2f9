"""The on-stream overlay: a local HTTP + WebSocket server and the web page it serves.

`OverlayServer` serves `static/overlay.html` (the OBS browser source) and
pushes engine events to it; `native.NativeTextOverlay` feeds an OBS text
source instead, for OBS builds without a browser source.
"""
from obs_merlb.overlay.native import NativeTextOverlay, format_state
from obs_merlb.overlay.server import (
    DEFAULT_PORT,
    STATIC_DIR,
    OverlayServer,
    OverlayServerError,
    is_loopback_address,
)

__all__ = ["DEFAULT_PORT", "STATIC_DIR", "NativeTextOverlay", "OverlayServer", "OverlayServerError",
           "format_state", "is_loopback_address"]
