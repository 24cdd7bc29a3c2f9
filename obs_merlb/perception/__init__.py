"""Perception: frames and audio -> the per-step arrays of docs/ARCHITECTURE.md.

face.py (face mesh, FER-framed aligned crop), voice.py (log-mel, silero-vad,
key segments), body.py (pose), scene.py (game thumbnail), and steps.py,
the per-step code both training and the live analyzer run. mediapipe and
onnxruntime load only when a model is created.
"""
from .steps import (MODALITIES, STEP_S, T_DEFAULT, VOICE_SECONDS, Perceiver, Steps, VoiceStep,
                    clip_steps, empty_steps)

__all__ = ["MODALITIES", "STEP_S", "T_DEFAULT", "VOICE_SECONDS", "Perceiver", "Steps",
           "VoiceStep", "clip_steps", "empty_steps"]
