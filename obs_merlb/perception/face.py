"""Face: mediapipe face mesh -> a grey 64x64 crop framed like FER2013.

FER2013 is what the face encoder trains on, so a live crop must look like a
FER image: the eye line level, the eyes a little above the middle, the face
filling the frame from the brow to the chin. The framing constants below were
measured by running this same face mesh on 378 FER2013 training images
(upscaled 4x, padded): eye midpoint at (0.50, 0.39) of the crop, eye-centre
distance 0.365 of the width, eye midpoint to chin 0.607 of the height.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

CROP = 64
# FER2013 framing, as fractions of the crop (see module docstring).
EYE_MID_X = 0.50
EYE_MID_Y = 0.39
EYE_DIST = 0.365
EYE_CHIN = 0.607

# Face-mesh landmark ids (the subject's right eye is on the image's left).
_R_EYE = (33, 133)
_L_EYE = (362, 263)
_CHIN = 152


@dataclass
class FaceResult:
    crop: np.ndarray          # (64, 64) float32 grey in [0, 1]
    box: tuple[float, float, float, float]   # x, y, w, h in pixels (landmark extent)
    landmarks: np.ndarray     # (468, 2) float32 pixels
    angle: float              # eye-line roll removed, degrees


def align_crop(image: np.ndarray, landmarks_px: np.ndarray, size: int = CROP) -> tuple[np.ndarray, float]:
    """Rotate so the eyes are level and scale/centre to FER2013 framing.

    The scale takes the larger of the two face-size estimates (eye distance,
    eye-to-chin): a turned head shrinks the eye distance, a nodding one the
    eye-to-chin distance, and neither should zoom the crop in.
    """
    import cv2

    r_eye = landmarks_px[list(_R_EYE)].mean(axis=0)
    l_eye = landmarks_px[list(_L_EYE)].mean(axis=0)
    mid = (r_eye + l_eye) / 2
    d_eye = float(np.linalg.norm(l_eye - r_eye))
    d_chin = float(np.linalg.norm(landmarks_px[_CHIN] - mid))
    angle = float(np.degrees(np.arctan2(l_eye[1] - r_eye[1], l_eye[0] - r_eye[0])))
    # Warp at 2x then area-downsample: a 200 px webcam face warped straight to
    # 64 px with bilinear sampling aliases (FER images are smooth).
    work = size * 2
    face_px = max(d_eye / EYE_DIST, d_chin / EYE_CHIN, 1e-3)   # source px per crop width
    scale = work / face_px
    m = cv2.getRotationMatrix2D((float(mid[0]), float(mid[1])), angle, scale)
    m[0, 2] += EYE_MID_X * work - mid[0]
    m[1, 2] += EYE_MID_Y * work - mid[1]
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    warped = cv2.warpAffine(grey, m, (work, work), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    crop = cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)
    return crop.astype(np.float32) / 255.0, angle


class FaceCropper:
    """Holds one mediapipe FaceMesh (create once, reuse, close).

    ``static=True`` detects afresh on every frame (frames far apart, or a
    reproducible result for training); ``static=False`` tracks from the last
    frame, which is cheaper on a live stream. Not thread-safe: one per thread.
    """

    def __init__(self, static: bool = False, min_confidence: float = 0.5) -> None:
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> FaceResult | None:
        """RGB uint8 (H, W, 3) frame -> aligned crop, or None when no face."""
        if image is None or image.ndim != 3 or image.shape[0] < 16 or image.shape[1] < 16:
            return None
        h, w = image.shape[:2]
        with self._lock:
            if self._mesh is None:
                raise RuntimeError("FaceCropper is closed")
            res = self._mesh.process(np.ascontiguousarray(image))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        pts = np.array([(p.x * w, p.y * h) for p in lm], dtype=np.float32)
        crop, angle = align_crop(image, pts)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        box = (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
        return FaceResult(crop, box, pts, angle)

    def close(self) -> None:
        with self._lock:
            if self._mesh is not None:
                self._mesh.close()
                self._mesh = None

    def __enter__(self) -> "FaceCropper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
