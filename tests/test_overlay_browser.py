"""The overlay page in real headless Chromium (Debian's chromium + chromedriver via Selenium).

Events travel the real path: OverlayServer.publish -> WebSocket -> overlay.js.
The theme screenshots for docs/img/ are taken here (written there only by
`make screenshots`; see tests/screenshots.py).
"""
from __future__ import annotations

import base64
import io
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from obs_merlb.overlay import OverlayServer
from tests.screenshots import screenshot_path

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1920,1080", "--force-device-scale-factor=1"]


def _state(label: str = "happy", conf: float = 0.82, v: float = 0.5, a: float = 0.3,
           **kw: Any) -> dict[str, Any]:
    ev = {"type": "state", "seq": 0, "t": 0.0, "wall": time.time(), "face_present": True,
          "speech": True, "visible": True, "label": label, "confidence": conf,
          "valence_score": v, "arousal_score": a, "latency_ms": 40.0}
    ev.update(kw)
    return ev


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("browser tests need Debian's chromium and chromium-driver "
                    "(as root: apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser tests need selenium (pip install selenium, or the test extras)")
    profile = tempfile.mkdtemp(prefix="merlb-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    # The viewport exactly as OBS's browser source renders it.
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[OverlayServer]:
    srv = OverlayServer(port=0).start()
    yield srv
    srv.stop()


def _wait(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s")


def _js(drv: Any, expr: str) -> Any:
    return drv.execute_script(f"return {expr};")


def _open(drv: Any, srv: OverlayServer, query: str = "", connected: bool = True) -> None:
    drv.get(srv.url + (f"?{query}" if query else ""))
    _wait(lambda: _js(drv, "window.__merlb && window.__merlb.settings !== null"), what="overlay boot")
    if connected:
        _wait(lambda: _js(drv, "window.__merlb.connected") and srv.client_count >= 1,
              what="WebSocket connection")


def _png(drv: Any, clip: dict[str, float] | None = None, transparent: bool = True) -> Any:
    from PIL import Image

    if transparent:
        drv.execute_cdp_cmd("Emulation.setDefaultBackgroundColorOverride",
                            {"color": {"r": 0, "g": 0, "b": 0, "a": 0}})
    params: dict[str, Any] = {"format": "png", "captureBeyondViewport": False}
    if clip:
        params["clip"] = {**clip, "scale": 1}
    data = drv.execute_cdp_cmd("Page.captureScreenshot", params)["data"]
    drv.execute_cdp_cmd("Emulation.setDefaultBackgroundColorOverride", {})
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA")


def _card_rect(drv: Any) -> dict[str, float]:
    return _js(drv, "(() => { const r = document.querySelector('.card').getBoundingClientRect();"
                    " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")


def _feed(srv: OverlayServer, story: list[tuple[str, float, float, float]], seconds: float,
          rate: float = 20.0) -> None:
    """Publish a smooth little story of states: (label, conf, valence, arousal) waypoints."""
    n = int(seconds * rate)
    for i in range(n):
        pos = i / max(1, n - 1) * (len(story) - 1)
        k = min(int(pos), len(story) - 2)
        f = pos - k
        (l0, c0, v0, a0), (l1, c1, v1, a1) = story[k], story[k + 1]
        wobble = 0.06 * math.sin(i / 3.0)
        srv.publish(_state(l0 if f < 0.5 else l1, c0 + (c1 - c0) * f, v0 + (v1 - v0) * f + wobble,
                           a0 + (a1 - a0) * f - wobble, seq=i, t=i / rate))
        time.sleep(1.0 / rate)


def test_page_background_is_transparent(driver: Any, server: OverlayServer) -> None:
    _open(driver, server, "theme=badge")
    for el in ("document.documentElement", "document.body"):
        assert _js(driver, f"getComputedStyle({el}).backgroundColor") in ("rgba(0, 0, 0, 0)", "transparent")
    assert _js(driver, "[innerWidth, innerHeight]") == [1920, 1080]
    img = _png(driver)
    assert img.size == (1920, 1080)
    # Nothing published yet: the whole frame is see-through.
    assert img.getextrema()[3] == (0, 0)
    server.publish(_state("happy", 0.9))
    _wait(lambda: _js(driver, "window.__merlb.visible"), what="badge shown")
    time.sleep(0.8)  # fade-in transition
    img = _png(driver)
    rect = _card_rect(driver)
    cx, cy = int(rect["x"] + rect["width"] / 2), int(rect["y"] + rect["height"] / 2)
    assert img.getpixel((cx, cy))[3] > 150, "the badge itself should be drawn"
    assert img.getpixel((1900, 20))[3] == 0 and img.getpixel((960, 540))[3] == 0, \
        "outside the widget the page must stay transparent"


def test_shows_label_and_meter_for_events(driver: Any, server: OverlayServer) -> None:
    _open(driver, server, "theme=full&hide_after=2")
    assert not _js(driver, "window.__merlb.visible")
    server.publish(_state("surprise", 0.77, v=0.5, a=0.75))
    _wait(lambda: _js(driver, "window.__merlb.shown") == "surprise", what="label shown")
    assert _js(driver, "window.__merlb.visible") is True
    assert _js(driver, "document.getElementById('label').textContent") == "surprise"
    assert _js(driver, "document.getElementById('label').innerText") == "Surprise"
    assert _js(driver, "document.getElementById('conf-pct').textContent") == "77%"
    assert _js(driver, "document.getElementById('emoji').textContent") == "😲"
    assert _js(driver, "window.__merlb.lastState.label") == "surprise"
    # The dot sits at valence 0.5 (right of centre), arousal 0.75 (upper part).
    time.sleep(0.8)  # movement transition
    x, y, w = _js(driver, "(() => { const d = document.getElementById('dot').getBoundingClientRect();"
                          " const p = document.getElementById('plane').getBoundingClientRect();"
                          " return [(d.x + d.width / 2 - p.x) / p.width, (d.y + d.height / 2 - p.y) / p.height, p.width]; })()")
    assert w > 100
    assert abs(x - (0.5 + 0.5 * 0.44)) < 0.03 and abs(y - (0.5 - 0.75 * 0.44)) < 0.03, (x, y)
    server.publish(_state("sad", 0.6, v=-0.6, a=-0.5))
    _wait(lambda: _js(driver, "window.__merlb.shown") == "sad", what="label change")
    assert _js(driver, "document.getElementById('line1').getAttribute('points').split(' ').length") >= 2
    assert _js(driver, "getComputedStyle(document.getElementById('dot')).backgroundColor") != ""


def _user(label: str, conf: float) -> dict[str, Any]:
    """The `heads` field of a personalized model's state event."""
    other = "tilted" if label == "hyped" else "hyped"
    return {"user": {"label": label, "confidence": conf, "probs": {label: conf, other: round(1 - conf, 4)}}}


def test_head_user_shows_the_streamers_own_label(driver: Any, server: OverlayServer) -> None:
    _open(driver, server, "theme=badge&head=user&hide_after=5")
    assert _js(driver, "window.__merlb.settings.head") == "user"
    server.publish(_state("happy", 0.9, heads=_user("hyped", 0.74)))
    _wait(lambda: _js(driver, "window.__merlb.shown") == "hyped", what="user label shown")
    assert _js(driver, "window.__merlb.visible") is True and _js(driver, "window.__merlb.head") == "user"
    assert _js(driver, "document.getElementById('label').textContent") == "hyped"
    assert _js(driver, "document.getElementById('conf-pct').textContent") == "74%"   # the head's confidence
    # No emoji for a streamer's own class: its initial, styled as such.
    assert _js(driver, "document.getElementById('emoji').textContent") == "H"
    assert _js(driver, "document.getElementById('emoji').classList.contains('initial')")
    # A change animates as an emotion change does.
    driver.execute_script("document.getElementById('emoji').classList.remove('pop')")
    server.publish(_state("happy", 0.9, heads=_user("tilted", 0.66)))
    _wait(lambda: _js(driver, "window.__merlb.shown") == "tilted", what="user label change")
    assert _js(driver, "document.getElementById('emoji').textContent") == "T"
    assert _js(driver, "document.getElementById('emoji').classList.contains('pop')")
    assert _js(driver, "document.getElementById('label').classList.contains('swap')")
    # The user head unsure: the badge dims as for an unsure emotion, whatever the emotion says.
    server.publish(_state("happy", 0.9, heads={"user": {"label": "uncertain", "confidence": 0.3, "probs": {}}}))
    _wait(lambda: _js(driver, "document.getElementById('widget').classList.contains('is-unsure')"),
          what="unsure user head")
    # A model without a user head (or an older worker): the emotion, with its emoji.
    server.publish(_state("surprise", 0.8))
    _wait(lambda: _js(driver, "window.__merlb.shown") == "surprise", what="fallback to emotion")
    assert _js(driver, "window.__merlb.head") == "emotion"
    assert _js(driver, "document.getElementById('emoji').textContent") == "😲"
    assert not _js(driver, "document.getElementById('emoji').classList.contains('initial')")


def test_hides_on_no_face_and_comes_back(driver: Any, server: OverlayServer) -> None:
    _open(driver, server, "theme=badge&hide_after=1")
    server.publish(_state("happy", 0.9))
    _wait(lambda: _js(driver, "window.__merlb.visible"), what="shown")
    # No face: the last label stays (dimmed) for hide_after, then the badge hides.
    t0 = time.monotonic()
    server.publish(_state("uncertain", 0.2, face_present=False))
    time.sleep(0.3)
    assert _js(driver, "window.__merlb.visible") is True
    assert _js(driver, "document.getElementById('widget').classList.contains('is-unsure')")
    _wait(lambda: not _js(driver, "window.__merlb.visible"), timeout=5, what="hidden")
    assert time.monotonic() - t0 >= 0.9
    time.sleep(0.7)
    assert float(_js(driver, "getComputedStyle(document.getElementById('widget')).opacity")) < 0.05
    # Face back.
    server.publish(_state("neutral", 0.8))
    _wait(lambda: _js(driver, "window.__merlb.visible"), what="shown again")
    # The engine's own `visible: false` hides at once, without waiting.
    server.publish(_state("neutral", 0.8, visible=False))
    _wait(lambda: not _js(driver, "window.__merlb.visible"), timeout=0.6, what="hidden at once")


def test_recovers_after_server_restart(driver: Any) -> None:
    srv = OverlayServer(port=0).start()
    port = srv.port
    try:
        _open(driver, srv, "theme=badge&hide_after=30")
        srv.publish(_state("happy", 0.9))
        _wait(lambda: _js(driver, "window.__merlb.shown") == "happy", what="first label")
        srv.stop()
        _wait(lambda: not _js(driver, "window.__merlb.connected"), what="disconnect noticed")
        time.sleep(1.5)  # let it retry (and fail) a couple of times
        assert _js(driver, "window.__merlb.reconnects") >= 1
        srv = OverlayServer(port=port).start()  # a new worker on the same port
        _wait(lambda: _js(driver, "window.__merlb.connected"), timeout=15, what="reconnect")
        srv.publish(_state("surprise", 0.7))
        _wait(lambda: _js(driver, "window.__merlb.shown") == "surprise", what="label after restart")
        assert _js(driver, "window.__merlb.visible") is True
    finally:
        srv.stop()


def test_settings_page_builds_form_and_url(driver: Any, server: OverlayServer, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    driver.get(server.url.replace("overlay.html", "settings.html"))
    _wait(lambda: _js(driver, "document.getElementById('url').value"), what="settings page")
    assert _js(driver, "document.getElementById('url').value") == server.url  # all defaults: no query
    Select(driver.find_element("id", "f-theme")).select_by_value("meter")
    Select(driver.find_element("id", "f-position")).select_by_value("top-right")
    url = _wait(lambda: (u := _js(driver, "document.getElementById('url').value")) and "meter" in u and u,
                what="URL update")
    assert url == f"{server.url}?theme=meter&position=top-right"
    # The preview (simulated events) follows the settings without reloading.
    driver.switch_to.frame(driver.find_element("id", "frame"))
    try:
        _wait(lambda: _js(driver, "window.__merlb && window.__merlb.settings && window.__merlb.settings.theme")
              == "meter", what="preview theme")
        assert _js(driver, "window.__merlb.settings.demo") is True
        _wait(lambda: _js(driver, "window.__merlb.visible"), what="preview shows demo events")
    finally:
        driver.switch_to.default_content()
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    try:
        time.sleep(1.0)
        _png(driver, transparent=False).convert("RGB").save(screenshot_path("overlay-settings.png", tmp_path))
    finally:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": False})


STORY = [("neutral", 0.7, 0.05, -0.15), ("happy", 0.84, 0.7, 0.35), ("happy", 0.9, 0.8, 0.5),
         ("surprise", 0.76, 0.35, 0.85), ("happy", 0.88, 0.65, 0.55)]


@pytest.mark.parametrize("theme", ["badge", "meter", "timeline", "full"])
def test_theme_screenshot(driver: Any, server: OverlayServer, theme: str, tmp_path: Path) -> None:
    """Screenshots for the README: each theme on a dark checkerboard (= transparent)."""
    _open(driver, server, f"theme={theme}&position=center&timeline_seconds=10&hide_after=10")
    _feed(server, STORY, seconds=5.0 if theme in ("timeline", "full") else 2.5)
    _wait(lambda: _js(driver, "window.__merlb.visible"), what="theme shown")
    time.sleep(1.0)  # let transitions settle
    assert _js(driver, "window.__merlb.shown") == "happy"
    driver.execute_script(
        "document.body.style.background = 'repeating-conic-gradient(#2b2f3b 0% 25%, #1f222c 0% 50%) 0 0 / 32px 32px'")
    rect = _card_rect(driver)
    pad = 40
    clip = {"x": max(0, rect["x"] - pad), "y": max(0, rect["y"] - pad),
            "width": rect["width"] + 2 * pad, "height": rect["height"] + 2 * pad}
    img = _png(driver, clip, transparent=False).convert("RGB")
    driver.execute_script("document.body.style.background = ''")
    out = screenshot_path(f"overlay-{theme}.png", tmp_path)
    img.save(out)
    assert out.stat().st_size > 5000
    # Not a blank frame: the widget adds many colours over the two checker tones.
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 200
