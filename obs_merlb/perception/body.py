"""Body: mediapipe Pose -> (132,) = 33 landmarks x (x, y, z, visibility).

x and y are relative to the image (0..1), z is mediapipe's depth relative to
the hips (same scale as x), visibility in [0, 1]. The wheel carries only the
"full" pose model (complexity 1); the lite and heavy ones would be
downloaded at run time, which must never happen, so complexity is fixed.
"""
from __future__ import annotations

import threading

import numpy as np

N_LANDMARKS = 33
BODY_DIM = N_LANDMARKS * 4


class BodyPose:
    """One mediapipe Pose, created once and reused; not thread-safe across callers."""

    def __init__(self, static: bool = False, min_confidence: float = 0.5) -> None:
        import mediapipe as mp

        self._pose = mp.solutions.pose.Pose(
            static_image_mode=static, model_complexity=1, smooth_landmarks=not static,
            enable_segmentation=False, min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence)
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """RGB uint8 frame -> (132,) float32, or None when no person is found."""
        if image is None or image.ndim != 3 or image.shape[0] < 16 or image.shape[1] < 16:
            return None
        with self._lock:
            if self._pose is None:
                raise RuntimeError("BodyPose is closed")
            res = self._pose.process(np.ascontiguousarray(image))
        if res.pose_landmarks is None:
            return None
        return np.array([(p.x, p.y, p.z, p.visibility) for p in res.pose_landmarks.landmark],
                        dtype=np.float32).reshape(BODY_DIM)

    def close(self) -> None:
        with self._lock:
            if self._pose is not None:
                self._pose.close()
                self._pose = None
