"""Verification: run a model and a reference on the same real photos and say how far apart they are.

One module for every check blazeport makes before it says OK: ``convert`` (the converted module
against the original in LiteRT), ``export`` (the written file in its runtime against the PyTorch
module), the distillation trainer's teacher check and the MediaPipe parity tool. Each builds two
backends and calls :func:`verify`; the inputs, the comparison, the gate and the detection
matching are the same for all of them.

The gate's tolerances, and why they are not a bare 1e-4, are at :data:`ABS_TOL`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.pipeline.anchors import anchors_for
from blazeport.pipeline.postprocess import decode_boxes, decode_scores, postprocess
from blazeport.pipeline.preprocess import Letterbox, letterbox
from blazeport.specs import LandmarkSpec, ModelSpec

# Float32 noise sets the raw tolerance. Raw outputs reach |x| ~ 100-1500 (background logits,
# offsets in input pixels) where one float32 ULP is 8e-6 to 1.2e-4, and LiteRT's XNNPACK output
# itself differs from a float64 evaluation of the same graph by up to 2e-4 relative (measured
# on short range and back). So raw outputs must satisfy |a - b| <= 1e-4 + 1e-3 * s (a mapping
# error shows as O(1)), and decoded scores and coordinates agree to 1e-4.
#
# s is the largest |b| in the element's anchor row (the box and keypoints one head conv computes
# for that anchor from the same features), not the element's own |b|: a small offset in a row
# whose other values reach hundreds carries the float32 rounding of those hundreds. Measured on
# MediaPipe's pose detector (rows up to 746 px): a keypoint offset of 0.047 was 1.1e-3 away from
# a float64 evaluation in LiteRT itself and 1.3e-3 in PyTorch, 3.2x and 2.6x the element-wise
# rule; per row, the converted pose and palm models use at most 2% of the tolerance, and a bias
# perturbed by 0.05 still uses 7-47x it. For the classificators (one value a row) both rules agree.
ABS_TOL = 1e-4
REL_TOL = 1e-3

__all__ = ["ABS_TOL", "REL_TOL", "compare_outputs", "iou", "landmark_outputs", "match_detections", "pair_detections",
           "passes", "raw_tolerance", "verification_inputs", "verify", "verify_landmarks"]


def verification_inputs(spec: ModelSpec | LandmarkSpec, images: list[np.ndarray], seed: int = 0,
                        image_grid: bool = False) -> tuple[np.ndarray, list[Letterbox]]:
    """Real photos letterboxed as the pipeline does, plus one random input in the model's range
    (NHWC float32); and the photos' letterbox padding, to map detections back. ``image_grid``: the
    random input is a random uint8 image mapped onto the range, as a reference that takes images
    needs (:class:`blazeport.modelfiles.mediapipe_model.MediaPipeModel`); the photos always are."""
    done = [letterbox(img, spec.input_size, spec.normalization) for img in images]
    lo, hi = spec.normalization
    shape = (spec.input_size, spec.input_size, 3)
    if image_grid:
        pixels = np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)
        noise = np.multiply(pixels, np.float32((hi - lo) / 255.0), dtype=np.float32) + np.float32(lo)
    else:
        noise = np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)
    return np.stack([t for t, _ in done] + [noise]), [p for _, p in done]


def raw_tolerance(ref: np.ndarray) -> np.ndarray:
    """The allowed ``|a - b|`` for each element of a raw output ``(..., N, k)`` against ``ref``:
    ``ABS_TOL + REL_TOL * max |ref|`` over the element's anchor row (see :data:`ABS_TOL`)."""
    return ABS_TOL + REL_TOL * np.abs(ref).max(axis=-1, keepdims=True)


def compare_outputs(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray],
                    spec: ModelSpec, anchors: np.ndarray) -> dict[str, dict[str, float]]:
    """Differences between two backends' raw outputs, raw and as the pipeline uses them.

    Returns ``max_abs_diff`` (raw, per output), ``max_scaled_diff`` (``|a - b| / max(1, |b|)``:
    absolute within [-1, 1], relative beyond) and ``decoded_diff`` (sigmoid scores and normalized
    box/keypoint coordinates, what a user of the detections sees).
    """
    out: dict[str, dict[str, float]] = {"max_abs_diff": {}, "max_scaled_diff": {}, "tolerance_used": {}}
    for name, a, b in (("regressors", ours[0], ref[0]), ("classificators", ours[1], ref[1])):
        d = np.abs(a.astype(np.float64) - b)
        out["max_abs_diff"][name] = float(d.max())
        out["max_scaled_diff"][name] = float((d / np.maximum(1.0, np.abs(b))).max())
        # fraction of the allowed difference used by the worst element (<= 1 passes)
        out["tolerance_used"][name] = float((d / raw_tolerance(b)).max())
    bx, kx = decode_boxes(ours[0], anchors, spec.input_size, spec.num_keypoints)
    b0, k0 = decode_boxes(ref[0], anchors, spec.input_size, spec.num_keypoints)
    s, s0 = decode_scores(ours[1], spec.score_clip), decode_scores(ref[1], spec.score_clip)
    out["decoded_diff"] = {
        "scores": float(np.abs(s - s0).max()),
        "coordinates": float(max(np.abs(bx - b0).max(), np.abs(kx - k0).max())),
    }
    return out


def passes(diffs: dict[str, dict[str, float]]) -> bool:
    """The conversion gate: every raw output within ``ABS_TOL + REL_TOL * |ref|`` (numpy's
    ``allclose`` rule, with ``|ref|`` the largest of its anchor row: :func:`raw_tolerance`), and
    decoded scores and coordinates within ``ABS_TOL``."""
    raw_ok = all(v <= 1.0 for v in diffs["tolerance_used"].values())
    return raw_ok and all(v <= ABS_TOL for v in diffs["decoded_diff"].values())


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(xmin, ymin, width, height)`` boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def pair_detections(ours: Sequence[Any], theirs: Sequence[Any]) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of two detection lists (anything with ``.box``): the overlapping
    pair with the highest IoU first, ties in detection order."""
    candidates = sorted((-iou(a.box, b.box), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs))
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs = []
    for neg_iou, i, j in candidates:
        if neg_iou < 0 and i not in used_i and j not in used_j:
            pairs.append((i, j))
            used_i.add(i)
            used_j.add(j)
    return pairs


def match_detections(ours: list[list[Any]], ref: list[list[Any]]) -> dict[str, Any]:
    """Per image, pair the detections (:func:`pair_detections`); count agreement and the worst score
    and coordinate (box and keypoint) difference over the pairs, with their 99th percentiles (over
    pairs) and how many images found as many detections on both sides."""
    coords, scores = [0.0], [0.0]
    same_images = 0
    for a, b in zip(ours, ref, strict=True):
        same_images += len(a) == len(b)
        for i, j in pair_detections(a, b):
            box = np.subtract(a[i].box, b[j].box)
            diff = np.abs(np.concatenate([box, np.ravel(np.subtract(a[i].keypoints, b[j].keypoints))]))
            coords.append(float(diff.max()))
            scores.append(abs(a[i].score - b[j].score))
    return {"images": len(ref), "faces": sum(map(len, ref)), "faces_checked": sum(map(len, ours)),
            "same_count": same_images == len(ref), "images_same_count": same_images,
            "max_coordinate_diff": max(coords), "max_score_diff": max(scores),
            "p99_coordinate_diff": float(np.percentile(coords[1:] or [0.0], 99)),
            "p99_score_diff": float(np.percentile(scores[1:] or [0.0], 99))}


def verify(candidate: Any, reference: Any, spec: ModelSpec, images: list[np.ndarray]) -> dict[str, Any]:
    """Run two backends (callables NHWC batch -> raw outputs) on the same photos + 1 random input.

    Returns the raw and decoded differences (:func:`compare_outputs`), the detections after decode
    and NMS matched on the photos (:func:`match_detections`), whether the candidate's outputs are
    finite, and ``passes_gate``: raw outputs by :func:`passes`, detections in the same count and
    within ``ABS_TOL``.
    """
    inputs, pads = verification_inputs(spec, images)
    ours, ref = candidate(inputs), reference(inputs)
    anchors = anchors_for(spec)
    diffs = compare_outputs(ours, ref, spec, anchors)
    n = len(images)
    dets = match_detections(postprocess(ours[0][:n], ours[1][:n], anchors, spec, pads),
                            postprocess(ref[0][:n], ref[1][:n], anchors, spec, pads))
    gate = passes(diffs) and dets["same_count"] and max(dets["max_coordinate_diff"], dets["max_score_diff"]) <= ABS_TOL
    return {**diffs, "detections": dets, "finite": bool(np.isfinite(ours[0]).all() and np.isfinite(ours[1]).all()),
            "images": n, "random_inputs": 1, "tolerance": {"abs": ABS_TOL, "rel": REL_TOL}, "passes_gate": bool(gate)}


def landmark_outputs(outputs: Sequence[np.ndarray], spec: LandmarkSpec, source: str = "model") -> list[np.ndarray]:
    """A landmark model's outputs as ``(B, floats)`` arrays in ``spec.outputs`` order, matched by size.

    Files give them in their own order and shapes (``(1, 1, 1, 1404)`` from a conv, ``(1, 213)``
    after a RESHAPE, NCHW ``(B, 1404, 1, 1)`` from the converted module); one image's floats are
    the same values in the same order in all of them, so flattening is exact.
    """
    flat = [np.asarray(o, dtype=np.float32).reshape(len(o), -1) for o in outputs]
    wanted = [n for _, n in spec.outputs]
    if len(flat) != len(wanted) or sorted(f.shape[1] for f in flat) != sorted(wanted):
        raise BlazeportError(f"{source}: outputs of {[f.shape[1] for f in flat]} floats per image, but spec {spec.name} "
                             f"reads {', '.join(f'{name} ({n})' for name, n in spec.outputs)}")
    unused = list(range(len(flat)))  # equal sizes (the attention mesh's eyes, irises): in the file's order
    picked = []
    for n in wanted:
        i = next(i for i in unused if flat[i].shape[1] == n)
        unused.remove(i)
        picked.append(flat[i])
    return picked


def verify_landmarks(candidate: Any, reference: Any, spec: LandmarkSpec, images: list[np.ndarray],
                     crops: list[np.ndarray] | None = None, image_grid: bool = False) -> dict[str, Any]:
    """:func:`verify` for a landmark model: ``candidate`` and ``reference`` map an NHWC batch to the
    model's raw outputs (a backend's ``raw``), run on the photos scaled to the input (letterboxed
    as the detectors are), on ``crops`` (inputs the landmark pipeline made, e.g. face crops) and on
    one random input.

    The gate is the detectors': every raw output within ``ABS_TOL + REL_TOL * |ref|`` (landmarks
    are in input pixels, up to ~200), and what a user reads within ``ABS_TOL``: landmark
    coordinates divided by the spec's coordinate scale (normalized to the crop) and, for a
    one-float output (the face flag), its sigmoid. ``image_grid`` as :func:`verification_inputs`.
    """
    inputs, _ = verification_inputs(spec, images, image_grid=image_grid)
    if crops:
        inputs = np.concatenate([np.stack(crops).astype(np.float32), inputs])
    ours = landmark_outputs(candidate(inputs), spec, "candidate")
    ref = landmark_outputs(reference(inputs), spec, "reference")
    out: dict[str, Any] = {"max_abs_diff": {}, "max_scaled_diff": {}, "tolerance_used": {}, "decoded_diff": {}}
    for (name, n), a, b in zip(spec.outputs, ours, ref, strict=True):
        d = np.abs(a.astype(np.float64) - b)
        out["max_abs_diff"][name] = float(d.max())
        out["max_scaled_diff"][name] = float((d / np.maximum(1.0, np.abs(b))).max())
        out["tolerance_used"][name] = float((d / (ABS_TOL + REL_TOL * np.abs(b))).max())
        if n == 1:  # a presence flag: the score a user sees
            sa, sb = (1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -100, 100))) for x in (a, b))
            out["decoded_diff"][f"{name} (sigmoid)"] = float(np.abs(sa - sb).max())
        else:  # landmark coordinates, normalized to the crop
            out["decoded_diff"][f"{name} (normalized)"] = float(d.max() / spec.coordinate_scale)
    gate = all(v <= 1.0 for v in out["tolerance_used"].values()) and all(v <= ABS_TOL for v in out["decoded_diff"].values())
    finite = all(bool(np.isfinite(a).all()) for a in ours)
    return {**out, "finite": finite, "images": len(images), "crops": len(crops or []), "random_inputs": 1,
            "tolerance": {"abs": ABS_TOL, "rel": REL_TOL}, "passes_gate": bool(gate and finite)}

