"""Capture sources: files (PyAV), cameras (OpenCV), OBS source screenshots
(obs-websocket) and microphones (sounddevice).

One small interface: a video source has ``read_latest()`` (the newest frame,
latest-frame-wins, never a queue) and ``close()``; an audio source has
``read(seconds)`` (the last seconds from a fixed ring, 16 kHz mono float32)
and ``close()``. Heavy dependencies are imported by each module when used,
so importing this package is cheap.
"""
from .base import (SAMPLE_RATE, AudioChunk, AudioRing, AudioSource, CaptureError, LatestSlot,
                   VideoFrame, VideoSource)
from .camera import CameraError, CameraSource
from .file import FileSource, Media, MediaError, MediaInfo, iter_media, load_media, probe
from .mic import MicError, MicSource
from .obs_screens import OBSScreenshotSource

__all__ = [
    "SAMPLE_RATE", "AudioChunk", "AudioRing", "AudioSource", "CaptureError", "LatestSlot",
    "VideoFrame", "VideoSource", "FileSource", "Media", "MediaError", "MediaInfo",
    "iter_media", "load_media", "probe", "CameraError", "CameraSource", "MicError", "MicSource",
    "OBSScreenshotSource",
]
