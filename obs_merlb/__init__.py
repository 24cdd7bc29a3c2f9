"""obs-merlb: multimodal emotion recognition for live streamers (MERLB)."""

__version__ = "0.1.0"
