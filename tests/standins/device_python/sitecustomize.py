"""Stand-in for the lent GPU machine's Python (the workplace's device tool, KINDS.md: "Python packages
already there"): torch, numpy, onnx, onnxruntime, opencv, scikit-learn, scipy, safetensors, rich and
matplotlib are there; this project's capture, audio and UI packages are not. On PYTHONPATH, this makes
an import of any of those fail as it would there. GPU_FACE_CARRIED names the ones a test lets through
because the real run carries them as wheels (tools/gpu_face.py pack)."""
import importlib.abc
import os
import sys

ABSENT = {"mediapipe", "av", "silero_vad", "obsws_python", "sounddevice", "PyQt5", "pyqtgraph", "pytestqt",
          "platformdirs", "websockets", "tomli_w", "selenium"} - set(os.environ.get("GPU_FACE_CARRIED", "").split())


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)")
        return None


sys.meta_path.insert(0, _Absent())
