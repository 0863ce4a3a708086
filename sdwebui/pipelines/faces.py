"""Find faces, align each to the 512x512 face template, and paste restored faces back with a feathered mask.

Reference: facexlib's `FaceRestoreHelper` (`utils/face_restoration_helper.py`), which A1111's GFPGAN and
CodeFormer use (`modules/face_restoration_utils.py`: `face_size=512`, `crop_ratio=(1, 1)`, `upscale_factor=1`,
`eye_dist_threshold=5`): five landmarks (eyes, nose tip, mouth corners) per face, a partial affine transform
(rotation, uniform scale, shift; `cv2.estimateAffinePartial2D` with LMEDS) onto its template, the crop warped
with its grey border colour; the restored crop is warped back and blended in through the face square eroded by
1/10 of its side and blurred as wide (facexlib's mask without the face-parsing network).

Detectors, none of which needs the internet:
- `RetinaFaceDetector`: facexlib's RetinaFace (`sdwebui.models.retinaface`), as A1111 uses it, when its weights
  (`detection_Resnet50_Final.pth`, which A1111 keeps in `models/GFPGAN`) are installed: boxes and five landmarks,
  on the image scaled up to 640 pixels on its short side (facexlib's `get_face_landmarks_5(resize=640)`).
- `HaarFaceDetector`, otherwise: OpenCV's frontal-face Haar cascade, which ships inside opencv-python
  (`cv2.data.haarcascades`), so restoration works on a fresh machine. A cascade gives boxes, not landmarks: the
  eyes are looked for with OpenCV's eye cascade in the box's upper half, and the nose and mouth placed from them
  as the template places them; without two eyes, all five come from the box (where a frontal face's features
  sit in OpenCV's boxes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from sdwebui.models.retinaface import detect as retinaface_detect
from sdwebui.models.retinaface import load_retinaface

FACE_SIZE = 512
FACE_TEMPLATE = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043],
     [313.08905, 371.15118]], dtype=np.float32)
"""facexlib's five-point template for a 512x512 face (left eye, right eye, nose tip, left and right mouth corner,
as seen in the image)."""
BORDER_RGB = (132, 133, 135)
"""facexlib's `borderValue=(135, 133, 132)` (BGR) for the part of a crop outside the image."""
EYE_DISTANCE_THRESHOLD = 5
"""Faces whose eyes are closer than this many pixels are skipped (A1111's `eye_dist_threshold=5`)."""
DETECT_MAX_SIDE = 1024
"""A larger image is scaled down for detection (facexlib detects at 640 on the short side)."""

# Where a frontal face's eyes sit in OpenCV's Haar box (fractions of its side), measured on the cascade's boxes.
HAAR_EYES = np.array([[0.28, 0.38], [0.72, 0.38]], dtype=np.float32)


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 in image pixels."""
    landmarks: np.ndarray
    """(5, 2) float32 image coordinates in the template's order."""
    score: float = 1.0


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces of an RGB uint8 (H, W, 3) image."""
        ...


def landmarks_from_eyes(left_eye: Sequence[float], right_eye: Sequence[float]) -> np.ndarray:
    """All five landmarks from the two eye centres: the template moved, turned and scaled so that its eyes land on
    them (the similarity transform the eyes determine)."""
    t_left, t_right = complex(*FACE_TEMPLATE[0]), complex(*FACE_TEMPLATE[1])
    d_left, d_right = complex(*left_eye), complex(*right_eye)
    a = (d_right - d_left) / (t_right - t_left)
    b = d_left - a * t_left
    points = [a * complex(*point) + b for point in FACE_TEMPLATE]
    return np.array([[p.real, p.imag] for p in points], dtype=np.float32)


class HaarFaceDetector:
    """OpenCV's Haar cascades (shipped in opencv-python): faces, then eyes in each face's upper half."""

    name = "OpenCV Haar cascade"

    def __init__(self, min_neighbors: int = 5):
        root = cv2.data.haarcascades
        self.faces = cv2.CascadeClassifier(root + "haarcascade_frontalface_default.xml")
        self.eyes = cv2.CascadeClassifier(root + "haarcascade_eye.xml")
        if self.faces.empty() or self.eyes.empty():
            raise RuntimeError(f"OpenCV's Haar cascades are missing from {root}")
        self.min_neighbors = min_neighbors

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        smallest = max(24, min(gray.shape[:2]) // 24)
        boxes = self.faces.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                            minSize=(smallest, smallest))
        found = []
        for x, y, w, h in (boxes if len(boxes) else []):
            left, right = self._eyes(gray, int(x), int(y), int(w), int(h))
            if left is None:
                left, right = (np.array([x, y]) + HAAR_EYES * np.array([w, h]))
            landmarks = landmarks_from_eyes(left, right) / scale
            box = (x / scale, y / scale, (x + w) / scale, (y + h) / scale)
            found.append(DetectedFace(box, landmarks.astype(np.float32)))
        return found

    def _eyes(self, gray: np.ndarray, x: int, y: int, w: int, h: int):
        """The two eye centres (image's left first) in the upper part of a face box, or (None, None)."""
        roi = gray[y:y + int(h * 0.6), x:x + w]
        eyes = self.eyes.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5, minSize=(max(4, w // 10),) * 2,
                                          maxSize=(w // 2, w // 2))
        centres = sorted(((ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in (eyes if len(eyes) else [])))
        left = [c for c in centres if c[0] < w * 0.5]
        right = [c for c in centres if c[0] >= w * 0.5]
        if not left or not right:
            return None, None
        (lx, ly), (rx, ry) = left[-1], right[0]
        if rx - lx < w * 0.25 or abs(ry - ly) > h * 0.2:  # not a plausible pair of eyes
            return None, None
        return np.array([x + lx, y + ly]), np.array([x + rx, y + ry])


class RetinaFaceDetector:
    """facexlib's RetinaFace (ResNet-50) from its weights file."""

    name = "RetinaFace"

    def __init__(self, path, device: torch.device | str = "cpu", resize: int = 640):
        self.path = path
        self.device = torch.device(device)
        self.net = load_retinaface(path, self.device)
        self.resize = resize

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        scale = max(1.0, self.resize / min(height, width))  # facexlib always scales up, never down
        if scale > 1.0:
            image = cv2.resize(image, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_LINEAR)
        found = []
        for box, score, landmarks in retinaface_detect(self.net, image, device=self.device):
            found.append(DetectedFace(tuple(float(v) / scale for v in box), (landmarks / scale).astype(np.float32),
                                      score))
        return found


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = FACE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(the face warped onto the template, size x size RGB uint8; the 2x3 affine matrix image -> crop)."""
    template = FACE_TEMPLATE * (size / FACE_SIZE)
    matrix = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), template, method=cv2.LMEDS)[0]
    if matrix is None:  # degenerate landmarks: the similarity of the eyes alone
        matrix = cv2.estimateAffinePartial2D(landmarks[:2].astype(np.float32), template[:2])[0]
    crop = cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_RGB)
    return crop, matrix


def paste_face(image: np.ndarray, restored: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`image` (float32 H x W x 3) with `restored` (the aligned crop, restored) warped back through `matrix` and
    blended in with facexlib's soft square mask; pixels outside the face's square are left exactly as they were."""
    height, width = image.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    face = cv2.warpAffine(restored, inverse, (width, height))
    mask = cv2.warpAffine(np.ones(restored.shape[:2], dtype=np.float32), inverse, (width, height))
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    pasted = mask[:, :, None] * face.astype(np.float32)
    edge = int(float(np.sum(mask)) ** 0.5) // 20
    if edge > 0:
        center = cv2.erode(mask, np.ones((edge * 2, edge * 2), np.uint8))
        soft = cv2.GaussianBlur(center, (edge * 2 + 1, edge * 2 + 1), 0)
    else:
        soft = mask
    soft = soft[:, :, None]
    return soft * pasted + (1 - soft) * image


def restore_faces_in(
    image: np.ndarray,
    detector: FaceDetector,
    restore: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, int]:
    """Detect, align, restore (`restore`: aligned RGB uint8 crop -> restored crop of the same size) and paste back
    every face of an RGB uint8 image. Returns (the image, the number of faces restored); no face: the image as
    it was."""
    faces = [face for face in detector.detect(image)
             if float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])) >= EYE_DISTANCE_THRESHOLD]
    if not faces:
        return image, 0
    result = image.astype(np.float32)
    for face in faces:
        crop, matrix = align_face(image, face.landmarks)
        restored = restore(crop)
        result = paste_face(result, restored, matrix)
    return np.clip(result, 0, 255).astype(np.uint8), len(faces)


__all__ = [
    "FACE_SIZE", "FACE_TEMPLATE", "DetectedFace", "FaceDetector", "HaarFaceDetector", "RetinaFaceDetector",
    "align_face",
    "landmarks_from_eyes", "paste_face", "restore_faces_in",
]
