"""Decode raw outputs with anchors, NMS, and letterbox removal (numpy; decode also takes torch).

Mirrors MediaPipe: ``tensors_to_detections_calculator.cc`` (decoding, score clipping, sigmoid;
the score threshold and the drop of boxes with a negative width or height, both before NMS),
``non_max_suppression_calculator.cc`` (IoU overlap; WEIGHTED keeps the top detection's score and
blends coordinates by score) and ``detection_letterbox_removal_calculator.cc`` (coordinates back onto the original image).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.pipeline.preprocess import Letterbox
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


_IOU_MATRIX_MAX = 256  # candidates up to which NMS computes all pairwise IoUs at once (256^2 floats)


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """All pairwise IoUs, row i equal bit for bit to ``iou_one_to_many(boxes[i], boxes)``
    (the same float32 operations in the same order, broadcast instead of looped)."""
    # x and y side by side: (n, n, 2) extents of the intersections, then the same formula
    wh = np.clip(np.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - np.maximum(boxes[:, None, :2], boxes[None, :, :2]),
                 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area[:, None] + area[None, :] - inter
    # = np.where(union > 0, inter / union, 0.0), dividing only where the union is positive
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float = 0.3,
        weighted: bool = True, max_detections: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe NMS over one image's candidates; returns (boxes, keypoints, scores).

    Weighted: each kept detection takes the score of the highest-scoring member of its cluster and
    the score-weighted mean of the cluster's boxes and keypoints (the cluster being every
    remaining candidate with IoU > ``threshold`` against it, itself included). Hard: the top box
    as it is. Like MediaPipe, the loop stops when a round suppresses nothing (a degenerate box).

    Speed: up to ``_IOU_MATRIX_MAX`` candidates, every IoU is computed once up front
    (:func:`iou_matrix`, bit-identical to the per-round :func:`iou_one_to_many`), so a round costs a
    few small numpy calls instead of a dozen.
    """
    if not len(boxes):
        return np.zeros((0, 4), np.float32), np.zeros((0, *keypoints.shape[1:]), np.float32), np.zeros(0, np.float32)
    # boxes and keypoints side by side: one weighted sum per round (column sums are independent)
    flat = np.concatenate([boxes, keypoints.reshape(len(keypoints), -1)], axis=1)
    kept, kept_scores = _nms_flat(flat, scores, threshold, weighted, max_detections)
    return kept[:, :4], kept[:, 4:].reshape((-1, *keypoints.shape[1:])), kept_scores


def _nms_flat(flat: np.ndarray, scores: np.ndarray, threshold: float, weighted: bool,
              max_detections: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nms` on rows ``[xmin, ymin, xmax, ymax, kx0, ky0, ...]`` (at least one row).

    Up to ``_IOU_MATRIX_MAX`` candidates the greedy rounds run on Python lists (which candidate
    joins which cluster only needs ``iou > threshold``, computed once for all pairs), and every
    cluster's blend is the same float operations as the loop below: products ``row * score``, a
    column sum over the members in round order, divided by the sum of their scores.
    """
    if len(flat) > _IOU_MATRIX_MAX:
        return _nms_rounds(flat, scores, threshold, weighted, max_detections)
    adjacent = (iou_matrix(flat[:, :4]) > threshold).tolist()
    remaining = np.argsort(-scores, kind="stable").tolist()
    tops, clusters = [], []
    while remaining:
        top = remaining[0]
        row = adjacent[top]
        member = [j for j in remaining if row[j]]
        tops.append(top)
        clusters.append(member)
        if max_detections > 0 and len(tops) >= max_detections:
            break
        if not member:
            if weighted:  # MediaPipe's WEIGHTED loop ends when a round removes nothing (degenerate box)
                break
            remaining = remaining[1:]  # DEFAULT (hard) NMS drops the top box and carries on
        else:
            remaining = [j for j in remaining if not row[j]]
    if not weighted:
        return np.asarray(flat[tops], np.float32), np.asarray(scores[tops], np.float32)
    products = flat * scores[:, None]
    sums, weights = [], []
    for top, member in zip(tops, clusters, strict=True):
        if member:
            sums.append(products[member].sum(0))
            weights.append(scores[member].sum())
        else:  # a degenerate top box: kept as it is (x / 1 == x)
            sums.append(flat[top])
            weights.append(1)
    blended = np.asarray(sums) / np.asarray(weights, dtype=scores.dtype)[:, None]
    return np.asarray(blended, np.float32), np.asarray(scores[tops], np.float32)


def _nms_rounds(flat: np.ndarray, scores: np.ndarray, threshold: float, weighted: bool,
                max_detections: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_nms_flat` round by round, for large candidate sets (no all-pairs IoU matrix)."""
    boxes = flat[:, :4]
    order = np.argsort(-scores, kind="stable")
    out, out_s = [], []
    while order.size:
        top = order[0]
        overlap = iou_one_to_many(boxes[top], boxes[order])
        member = overlap > threshold
        cluster = order[member]
        if weighted and cluster.size:
            w = scores[cluster][:, None]
            out.append((flat[cluster] * w).sum(0) / w.sum())
        else:
            out.append(flat[top])
        out_s.append(scores[top])
        if max_detections > 0 and len(out_s) >= max_detections:
            break
        if not member.any():
            if weighted:  # MediaPipe's WEIGHTED loop ends when a round removes nothing (degenerate box)
                break
            member[0] = True  # DEFAULT (hard) NMS drops the top box and carries on
        order = order[~member]
    return np.asarray(out, np.float32), np.asarray(out_s, np.float32)


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


_LOGIT_MARGIN = 1e-6  # in score units: far above float32 rounding of a sigmoid (<= 3e-8)


def candidate_logit(threshold: float, clip: float) -> float | None:
    """A raw logit below which no anchor can reach ``threshold`` after :func:`decode_scores`, or
    None when every anchor might (a threshold at or below 1e-6). The margin keeps this a safe
    superset of the exact test, which still runs on the survivors: outputs are unchanged."""
    t = threshold - _LOGIT_MARGIN
    if not t > 0.0:  # also NaN
        return None
    if t >= 1.0:
        return float(clip)  # nothing passes; keep the clipped maximum as the (empty) candidate set
    return math.log(t) - math.log1p(-t) - 1e-9


POSTPROCESSORS = ("auto", "numpy", "numba")


@functools.cache
def compiled_available() -> bool:
    """Whether numba is installed (the ``fast`` extra), checked once without importing it."""
    return importlib.util.find_spec("numba") is not None


def check_postprocess(how: str) -> None:
    """Refuse an unknown post-processor, or ``numba`` without numba, with the fix."""
    if how not in POSTPROCESSORS:
        raise BlazeportError(f"postprocess must be one of {', '.join(POSTPROCESSORS)}, got {how!r}")
    if how == "numba" and not compiled_available():
        raise BlazeportError("postprocess 'numba' needs numba: pip install 'blazeport[fast]' (or use 'auto' or 'numpy')")


def _use_compiled(how: str, raw_boxes: np.ndarray, anchors: np.ndarray) -> bool:
    check_postprocess(how)
    if how == "numpy":
        return False
    # the kernel is written for float32 arithmetic; anything else keeps numpy's promotion rules
    return compiled_available() and raw_boxes.dtype == np.float32 and anchors.dtype == np.float32


def postprocess(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, spec: ModelSpec,
                pads: list[Letterbox], score_threshold: float | None = None,
                how: str = "auto") -> list[list[Detection]]:
    """Batched raw outputs -> detections per image, in original-image normalized coordinates.

    Threshold first, decode after: anchors whose raw logit cannot reach the score threshold
    (:func:`candidate_logit`) are dropped before the sigmoid and the box decoding, so only a handful
    of the 896 / 2304 anchors are decoded. Every value is computed by the same elementwise
    operations as decoding everything and thresholding after, so the detections are identical.

    ``how``: ``numba`` runs decode, NMS and un-letterbox as one compiled call per image
    (:mod:`blazeport.pipeline.compiled_post`, bit-identical, ~10x faster); ``numpy`` the numpy code below;
    ``auto`` (default) numba when it is installed.
    """
    threshold = spec.score_threshold if score_threshold is None else score_threshold
    lo = candidate_logit(threshold, spec.score_clip)
    k = spec.num_keypoints
    compiled = _use_compiled(how, raw_boxes, anchors)
    results: list[list[Detection]] = []
    if compiled:
        from blazeport.pipeline import compiled_post  # numba (the fast extra): only when it runs

        in_kernel = compiled_post.kernel_sigmoid_is_exact()
    for i, pad in enumerate(pads):
        if compiled and in_kernel:  # the pre-filter and the sigmoid in one compiled pass
            idx, scores = compiled_post.select(raw_scores[i, :, 0], np.float32(lo or 0.0), lo is None, float(spec.score_clip))
        else:
            idx = np.flatnonzero(raw_scores[i, :, 0] >= lo) if lo is not None else np.arange(raw_scores.shape[1])
            scores = decode_scores(raw_scores[i, idx], spec.score_clip) if idx.size else None  # (n,)
        if not idx.size:
            results.append([])
            continue
        if compiled:
            results.append(_compiled_one(raw_boxes[i], idx, scores, anchors, spec, threshold, pad))
            continue
        flat = _decode_flat(raw_boxes[i, idx], anchors[idx], spec.input_size, k)
        # like ConvertToDetections, drop boxes with a negative or NaN width or height before NMS
        ordered = flat[:, 2:4] >= flat[:, 0:2]
        keep = (scores >= threshold) & ordered[:, 0] & ordered[:, 1]
        if not keep.all():
            if not keep.any():
                results.append([])
                continue
            flat, scores = flat[keep], scores[keep]
        kept, sc = _nms_flat(flat, scores, spec.nms.min_suppression_threshold,
                             spec.nms.algorithm == "weighted", spec.nms.max_detections)
        # remove_letterbox on boxes and keypoints at once (the same arithmetic per coordinate)
        offset = np.array([pad.left, pad.top], np.float32)
        scale = np.array([1.0 - pad.left - pad.right, 1.0 - pad.top - pad.bottom], np.float32)
        pts = (kept.reshape(len(kept), 2 + k, 2) - offset) / scale
        wh = pts[:, 1] - pts[:, 0]
        results.append([
            Detection(s, (p[0][0], p[0][1], w[0], w[1]), [tuple(q) for q in p[2:]])
            for p, w, s in zip(pts.tolist(), wh.tolist(), sc.tolist(), strict=True)
        ])
    return results


def _compiled_one(raw_boxes: np.ndarray, idx: np.ndarray, scores: np.ndarray, anchors: np.ndarray,
                  spec: ModelSpec, threshold: float, pad: Letterbox) -> list[Detection]:
    """One image through :func:`blazeport.pipeline.compiled_post.decode_nms`, each scalar the float32 that
    numpy makes of it (a Python float meets a float32 array as a float32)."""
    from blazeport.pipeline.compiled_post import decode_nms  # numba (the fast extra): only when it runs

    f32 = np.float32
    rows, sc = decode_nms(raw_boxes, idx, scores, anchors, f32(spec.input_size), spec.num_keypoints, f32(threshold),
                          f32(spec.nms.min_suppression_threshold), spec.nms.algorithm == "weighted",
                          spec.nms.max_detections, f32(pad.left), f32(pad.top), f32(1.0 - pad.left - pad.right),
                          f32(1.0 - pad.top - pad.bottom))
    return [Detection(s, (r[0], r[1], r[2], r[3]), list(zip(r[4::2], r[5::2], strict=True)))
            for r, s in zip(rows.tolist(), sc.tolist(), strict=True)]


def _decode_flat(raw: np.ndarray, anchors: np.ndarray, scale: float, num_keypoints: int) -> np.ndarray:
    """:func:`decode_boxes` for numpy in fewer calls: rows ``[xmin, ymin, xmax, ymax, kx0, ky0, ...]``.

    Every coordinate goes through the same float32 operations in the same order
    (``raw / scale * anchor_size + anchor_centre``; ``centre -+ size / 2``), so the values are
    identical to ``decode_boxes``'s.
    """
    n, k = len(raw), 2 + num_keypoints
    pairs = raw[:, : 2 * k].reshape(n, k, 2) / scale * anchors[:, None, 2:4]  # (x, y), (w, h), keypoints
    half = pairs[:, 1] / 2
    points = pairs + anchors[:, None, 0:2]  # pair 0: the centre; pairs 2...: keypoints; pair 1 is overwritten
    np.add(points[:, 0], half, out=points[:, 1])  # xmax, ymax
    np.subtract(points[:, 0], half, out=points[:, 0])  # xmin, ymin
    return points.reshape(n, 2 * k)
