"""How each label looks, in every view: one colour and one emoji per class.

The panel, the HTML report and the native OBS overlay's badges read these;
the browser overlay (overlay/static/overlay.js, which loads before any
worker answers and also previews with none) spells the same table out in
JavaScript, and tests/test_palette.py holds the two equal. The colours are
the browser overlay's, picked to read on a dark stream and on white.
"""
from __future__ import annotations

EMOTION_COLORS: dict[str, str] = {
    "angry": "#ff4d6d", "disgust": "#5dd39e", "fear": "#b794f4", "happy": "#ffc93c",
    "neutral": "#a0aec0", "sad": "#5b9cff", "surprise": "#ff9f43",
}
# "uncertain" is no class: the label a view shows while no class is sure enough.
UNCERTAIN_COLOR = "#64748b"

EMOJI: dict[str, str] = {
    "angry": "😠", "disgust": "🤢", "fear": "😨", "happy": "😄",
    "neutral": "😐", "sad": "😢", "surprise": "😲",
}

# The paper's gameplay behaviours, when a model has a trained `behaviour` head.
# A streamer's own `user` classes have no emoji: a guessed one could say
# something they did not mean, so views show their initial instead.
BEHAVIOUR_COLORS: dict[str, str] = {
    "routing": "#22d3ee", "procurement": "#5dd39e", "respawning": "#a0aec0", "exploring": "#5b9cff",
    "fighting": "#ff4d6d", "punching": "#ff9f43", "defending": "#b794f4", "defeated": "#718096",
}
BEHAVIOUR_EMOJI: dict[str, str] = {
    "routing": "🧭", "procurement": "🛒", "respawning": "🔁", "exploring": "🔭",
    "fighting": "🤺", "punching": "👊", "defending": "🛡️", "defeated": "💀",
}


def rgb(hex_color: str) -> tuple[int, int, int]:
    """"#rrggbb" -> (r, g, b)."""
    n = int(hex_color.lstrip("#"), 16)
    return (n >> 16) & 255, (n >> 8) & 255, n & 255
