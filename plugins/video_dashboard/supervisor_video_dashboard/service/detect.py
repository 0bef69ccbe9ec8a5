"""The CPU path's people detector: OpenCV's HOG + linear SVM (Dalal & Triggs), shipped in
opencv-python-headless 4.x. It recognises upright people and nothing else; events it makes
say so, and never claim to be a language model's description."""

from __future__ import annotations

import threading

import cv2
import numpy as np

NAME = "opencv-hog-people"
# SVM margin a window needs to count as a person: the default detector's weak hits (about
# 0-0.5) fire on edges and boxes; people in clear view score well above 1.
MIN_WEIGHT = 0.8
# HOG's cost grows with the pixel count; 400 px wide keeps a frame near a quarter second on
# one core while a person filling a fifth of the height still spans HOG's 128 px window.
DETECT_WIDTH = 400

_local = threading.local()


def _hog() -> cv2.HOGDescriptor:
    hog = getattr(_local, "hog", None)
    if hog is None:
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
        _local.hog = hog
    return hog


def people(jpeg: bytes) -> list[float]:
    """The confidence weight of each person found in a frame (empty: nobody)."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return []
    height, width = image.shape[:2]
    if width > DETECT_WIDTH:
        image = cv2.resize(image, (DETECT_WIDTH, round(height * DETECT_WIDTH / width)))
    _rects, weights = _hog().detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
    found = [float(w) for w in np.asarray(weights).reshape(-1)]
    return [w for w in found if w >= MIN_WEIGHT]
