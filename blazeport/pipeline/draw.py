"""Pictures of detections (boxes, keypoints and scores) and of face meshes, drawn on a copy of the image."""

from __future__ import annotations

from itertools import cycle
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blazeport.errors import BlazeportError
from blazeport.files import write_atomic
from blazeport.pipeline.mesh import CONTOURS, TESSELATION, pairs
from blazeport.pipeline.postprocess import Detection

EYELID_OUTLINE = [*range(9), *range(15, 8, -1)]

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


def draw_landmarks(image: np.ndarray, faces: list[Any], mesh: bool = True) -> np.ndarray:
    """RGB uint8 image -> RGB copy with each face's mesh drawn (:class:`blazeport.pipeline.landmarks.FaceLandmarks`):
    the tessellation in thin grey (``mesh``), the contours (lips, eyes, brows, oval) in white, the
    468 points, the ROI the model saw in green with the presence score, the iris landmarks and
    eye contours of the iris model when present, and the attention mesh's refined irises (landmarks
    468-472 and 473-477, centre first) in magenta."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 600))
    for face in faces:
        pts = np.round(face.landmarks[:, :2] * (w, h)).astype(np.int32)
        if mesh:
            lines = [np.stack([pts[a], pts[b]]) for a, b in pairs(TESSELATION)]
            cv2.polylines(out, lines, False, (160, 160, 160), 1, cv2.LINE_AA)
        cv2.polylines(out, [np.stack([pts[a], pts[b]]) for a, b in pairs(CONTOURS)], False, (255, 255, 255), thick,
                      cv2.LINE_AA)
        for x, y in pts:
            cv2.circle(out, (int(x), int(y)), thick, (255, 48, 48), -1, cv2.LINE_AA)
        corners = np.round(face.roi.corners(w, h)).astype(np.int32)
        cv2.polylines(out, [corners], True, (0, 255, 0), thick, cv2.LINE_AA)
        label = f"{face.score:.2f}"
        top = corners[np.argmin(corners[:, 1])]
        cv2.putText(out, label, (int(top[0]), max(int(top[1]) - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick,
                    (0, 255, 0), thick, cv2.LINE_AA)
        for eye in face.iris.values():
            # the eyelids: points 0-8 the lower lid corner to corner, 9-15 the upper lid without the corners
            # (update_face_landmarks_calculator.cc), so the outline runs 0..8 then 15..9
            contour = np.round(eye.contour[EYELID_OUTLINE, :2] * (w, h)).astype(np.int32)
            cv2.polylines(out, [contour], True, (255, 255, 0), thick, cv2.LINE_AA)
            iris = eye.iris[:, :2] * (w, h)
            radius = float(np.linalg.norm(iris[1:] - iris[0], axis=1).mean())
            cv2.circle(out, (round(iris[0][0]), round(iris[0][1])), max(1, round(radius)), (0, 200, 255), thick,
                       cv2.LINE_AA)
        for centre in (468, 473)[: max(0, (len(face.landmarks) - 468) // 5)]:  # refined irises (478 landmarks)
            iris = face.landmarks[centre:centre + 5, :2] * (w, h)
            radius = float(np.linalg.norm(iris[1:] - iris[0], axis=1).mean())
            cv2.circle(out, (round(iris[0][0]), round(iris[0][1])), max(1, round(radius)), (255, 0, 255), thick,
                       cv2.LINE_AA)
    return out


def save_rgb(path: str | Path, image: np.ndarray, replace: bool = True) -> Path:
    """Encode by the path's suffix and write atomically (a half-written drawing never replaces one);
    ``replace=False`` never replaces an existing file (:func:`blazeport.files.write_atomic`)."""
    path = Path(path)
    ok, data = cv2.imencode(path.suffix or ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BlazeportError(f"{path}: OpenCV could not encode the drawing")
    return write_atomic(path, data.tobytes(), replace)
