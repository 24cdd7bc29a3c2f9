"""One palette: the browser overlay's JavaScript copy equals obs_merlb/palette.py."""
from __future__ import annotations

import re

from obs_merlb import palette
from obs_merlb.labels import BEHAVIOURS, EMOTIONS
from obs_merlb.overlay.server import STATIC_DIR

ENTRY = re.compile(r'^\s*(\w+):\s*\{\s*emoji:\s*"([^"]+)",\s*color:\s*"(#[0-9a-fA-F]{6})"', re.M)


def _js_table(name: str) -> dict[str, tuple[str, str]]:
    js = (STATIC_DIR / "overlay.js").read_text(encoding="utf-8")
    block = re.search(rf"const {name} = \{{(.*?)\n  \}};", js, re.S)
    assert block, f"overlay.js has no `const {name} = {{...}};`"
    return {label: (emoji, colour.lower()) for label, emoji, colour in ENTRY.findall(block.group(1))}


def test_overlay_js_palette_is_the_python_one() -> None:
    assert _js_table("EMOTIONS") == {e: (palette.EMOJI[e], palette.EMOTION_COLORS[e]) for e in EMOTIONS}
    assert _js_table("BEHAVIOURS") == {b: (palette.BEHAVIOUR_EMOJI[b], palette.BEHAVIOUR_COLORS[b])
                                       for b in BEHAVIOURS}


def test_overlay_css_starts_from_the_neutral_colour() -> None:
    """Before the first label the page is tinted neutral, as the JS would set it."""
    css = (STATIC_DIR / "overlay.css").read_text(encoding="utf-8")
    neutral = palette.EMOTION_COLORS["neutral"]
    r, g, b = palette.rgb(neutral)
    assert re.search(rf"@property --emo \{{[^}}]*initial-value: {neutral};", css)
    assert re.search(rf"\n\s*--emo: {neutral};", css)
    assert css.count(f"rgba({r}, {g}, {b},") == 3     # --emo-soft, --emo-faint, --emo-glow
