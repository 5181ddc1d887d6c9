"""Pictures of detections: boxes, keypoints and scores drawn on a copy of the image."""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import cv2
import numpy as np

from blazeport.errors import BlazeportError
from blazeport.files import write_atomic
from blazeport.postprocess import Detection

# One colour per keypoint (RGB), in output order (faces: eyes, nose, mouth, ears; palms use all seven; a
# model with more keypoints reuses them in turn).
KEYPOINT_COLOURS = ((255, 64, 64), (64, 64, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 160, 0),
                    (255, 255, 255))


def draw_detections(image: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """RGB uint8 image -> RGB copy with every detection drawn, sized to the image."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    for det in detections:
        (x, y, bw, bh), kps = det.pixels(w, h)
        p0, p1 = (round(x), round(y)), (round(x + bw), round(y + bh))
        cv2.rectangle(out, p0, p1, (0, 255, 0), thick, cv2.LINE_AA)
        for (kx, ky), colour in zip(kps, cycle(KEYPOINT_COLOURS)):
            cv2.circle(out, (round(kx), round(ky)), thick + 1, colour, -1, cv2.LINE_AA)
        label = f"{det.score:.2f}"
        scale = 0.4 * thick
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = max(p0[1], th + 2)
        cv2.rectangle(out, (p0[0], ty - th - 2), (p0[0] + tw + 2, ty), (0, 255, 0), -1)
        cv2.putText(out, label, (p0[0] + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out


def save_rgb(path: str | Path, image: np.ndarray) -> Path:
    """Encode by the path's suffix and write atomically (a half-written drawing never replaces one)."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BlazeportError(f"{path}: OpenCV could not encode the drawing")
    return write_atomic(path, data.tobytes())
