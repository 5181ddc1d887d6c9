"""Decode raw outputs with anchors, NMS, and letterbox removal (numpy; decode also takes torch).

Mirrors MediaPipe: ``tensors_to_detections_calculator.cc`` (decoding, score clipping, sigmoid;
the score threshold and the drop of boxes with a negative width or height, both before NMS),
``non_max_suppression_calculator.cc`` (IoU overlap; WEIGHTED keeps the top detection's score and
blends coordinates by score) and ``detection_letterbox_removal_calculator.cc`` (coordinates back onto the original image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blazeport.preprocess import Letterbox
from blazeport.specs import ModelSpec


def _xp(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return np
    import torch

    return torch


def decode_boxes(raw: Any, anchors: Any, scale: float, num_keypoints: int = 6) -> tuple[Any, Any]:
    """Raw regressors ``(..., N, 4 + 2K)`` -> boxes ``(..., N, 4)`` xyxy and keypoints ``(..., N, K, 2)``.

    Works on numpy arrays and torch tensors alike (distillation losses decode in torch).
    """
    xp = _xp(raw)
    ax, ay, aw, ah = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]
    xc = raw[..., 0] / scale * aw + ax
    yc = raw[..., 1] / scale * ah + ay
    w = raw[..., 2] / scale * aw
    h = raw[..., 3] / scale * ah
    boxes = xp.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], -1)
    kx = raw[..., 4 : 4 + 2 * num_keypoints : 2] / scale * aw[:, None] + ax[:, None]
    ky = raw[..., 5 : 5 + 2 * num_keypoints : 2] / scale * ah[:, None] + ay[:, None]
    return boxes, xp.stack([kx, ky], -1)


def decode_scores(raw: Any, clip: float = 100.0) -> Any:
    """Raw classificators ``(..., N, 1)`` -> sigmoid scores ``(..., N)``, logits clipped first."""
    xp = _xp(raw)
    logits = raw[..., 0]
    if xp is np:
        # float64 so exp(100) does not overflow; MediaPipe computes this in float too
        return (1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -clip, clip)))).astype(np.float32)
    return xp.sigmoid(logits.clamp(-clip, clip))


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with many; 0 where the union is empty (MediaPipe OverlapSimilarity)."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float = 0.3,
        weighted: bool = True, max_detections: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe NMS over one image's candidates; returns (boxes, keypoints, scores).

    Weighted: each kept detection takes the score of the highest-scoring member of its cluster and
    the score-weighted mean of the cluster's boxes and keypoints (the cluster being every
    remaining candidate with IoU > ``threshold`` against it, itself included). Hard: the top box
    as it is. Like MediaPipe, the loop stops when a round suppresses nothing (a degenerate box).
    """
    order = np.argsort(-scores, kind="stable")
    flat_kp = keypoints.reshape(len(keypoints), int(np.prod(keypoints.shape[1:])))  # -1 fails with no candidates
    out_b, out_k, out_s = [], [], []
    while order.size:
        top = order[0]
        overlap = iou_one_to_many(boxes[top], boxes[order])
        member = overlap > threshold
        cluster = order[member]
        if weighted and cluster.size:
            w = scores[cluster][:, None]
            out_b.append((boxes[cluster] * w).sum(0) / w.sum())
            out_k.append((flat_kp[cluster] * w).sum(0) / w.sum())
        else:
            out_b.append(boxes[top])
            out_k.append(flat_kp[top])
        out_s.append(scores[top])
        if max_detections > 0 and len(out_s) >= max_detections:
            break
        if not member.any():
            if weighted:  # MediaPipe's WEIGHTED loop ends when a round removes nothing (degenerate box)
                break
            member[0] = True  # DEFAULT (hard) NMS drops the top box and carries on
        order = order[~member]
    if not out_s:
        return np.zeros((0, 4), np.float32), np.zeros((0, *keypoints.shape[1:]), np.float32), np.zeros(0, np.float32)
    return (np.asarray(out_b, np.float32), np.asarray(out_k, np.float32).reshape((-1, *keypoints.shape[1:])),
            np.asarray(out_s, np.float32))


@dataclass
class Detection:
    """One face, normalized to the original image (MediaPipe's relative_bounding_box)."""

    score: float
    box: tuple[float, float, float, float]  # xmin, ymin, width, height
    keypoints: list[tuple[float, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "box": list(self.box), "keypoints": [list(k) for k in self.keypoints]}

    def pixels(self, width: int, height: int) -> tuple[list[float], list[list[float]]]:
        x, y, w, h = self.box
        return [x * width, y * height, w * width, h * height], [[kx * width, ky * height] for kx, ky in self.keypoints]


def remove_letterbox(boxes: np.ndarray, keypoints: np.ndarray, pad: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """Map xyxy boxes and keypoints from the padded square back onto the image (normalized)."""
    sx = 1.0 - pad.left - pad.right
    sy = 1.0 - pad.top - pad.bottom
    offset = np.array([pad.left, pad.top], np.float32)
    scale = np.array([sx, sy], np.float32)
    b = (boxes.reshape(-1, 2, 2) - offset) / scale
    k = (keypoints - offset) / scale
    return b.reshape(-1, 4), k


def postprocess(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, spec: ModelSpec,
                pads: list[Letterbox], score_threshold: float | None = None) -> list[list[Detection]]:
    """Batched raw outputs -> detections per image, in original-image normalized coordinates."""
    threshold = spec.score_threshold if score_threshold is None else score_threshold
    scores = decode_scores(raw_scores, spec.score_clip)  # (B, N)
    results: list[list[Detection]] = []
    for i, pad in enumerate(pads):
        boxes, kps = decode_boxes(raw_boxes[i], anchors, spec.input_size, spec.num_keypoints)
        # like ConvertToDetections, drop boxes with a negative or NaN width or height before NMS
        keep = np.nonzero((scores[i] >= threshold) & (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1]))[0]
        boxes, kps, sc = nms(boxes[keep], kps[keep], scores[i, keep], spec.nms.min_suppression_threshold,
                             spec.nms.algorithm == "weighted", spec.nms.max_detections)
        boxes, kps = remove_letterbox(boxes, kps, pad)
        results.append([
            Detection(float(s), (float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])),
                      [(float(x), float(y)) for x, y in k])
            for b, k, s in zip(boxes, kps, sc, strict=True)
        ])
    return results
