"""Motion by frame differencing: the share of pixels that changed between two frames.

Frames are decoded at a quarter of their size in grayscale straight from the JPEG (libjpeg
scales while decoding, so this costs a fraction of a full decode) and blurred, so that
compression noise and a few flickering pixels do not count as motion.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
from numpy.typing import NDArray

Gray = NDArray[np.uint8]
PIXEL_DELTA = 25  # grey levels a pixel must change by to count as changed


def small_gray(jpeg: bytes) -> Gray | None:
    """The frame at a quarter size, grey and blurred; None when it does not decode."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if image is None:
        return None
    return np.asarray(cv2.GaussianBlur(image, (5, 5), 0), dtype=np.uint8)


def changed(previous: Gray | None, current: Gray | None) -> float:
    """Share of pixels (0..1) that changed; 0 for a first frame or a size change."""
    if previous is None or current is None or previous.shape != current.shape:
        return 0.0
    delta = cv2.absdiff(previous, current)
    return float(np.count_nonzero(delta > PIXEL_DELTA)) / delta.size


def max_motion(jpegs: list[bytes]) -> float:
    """The largest change between consecutive frames of a sequence."""
    grays = [small_gray(j) for j in jpegs]
    return max((changed(a, b) for a, b in itertools.pairwise(grays)), default=0.0)
