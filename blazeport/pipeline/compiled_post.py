"""Decode + weighted NMS + un-letterbox compiled with numba: the same floats, one call per image.

Why: post-processing one image is ~50 small numpy calls on the dozen anchors that pass the logit
pre-filter, each costing a few microseconds (more right after inference has evicted the caches),
so it took 15% of the short-range model's time at 1 thread. Compiled, the whole step after the
sigmoid is one call of a few microseconds.

Bit-identical to :func:`blazeport.pipeline.postprocess.postprocess` (tested on real outputs and random
ones): every value goes through the same float32 operations in the same order as the numpy code:

- decoding: ``raw / scale * anchor_size + anchor_centre``, then ``centre -+ size / 2``
  (``_decode_flat``), every constant a float32 as numpy's weak Python scalars become;
- the score and box-order filter and the candidates' order (a stable argsort of ``-score``);
- IoU as ``iou_matrix`` computes it (MediaPipe's OverlapSimilarity), compared with the float32
  threshold;
- the weighted blend: ``row * score`` summed over the cluster's members in round order (numpy's
  axis-0 sum adds rows one by one) divided by the members' score sum, which numpy adds pairwise
  (:func:`_pairwise_sum` is its ``pairwise_sum`` for float32, eight accumulators and all);
- ``(point - offset) / span`` for the letterbox, then ``max - min`` for width and height.

The candidates and their sigmoid (:func:`select`) are computed here too when that is exact:
``1 / (1 + exp(-clip(logit)))`` in float64, cast to float32, as
:func:`blazeport.pipeline.postprocess.decode_scores` does. numba's ``exp`` is the C library's; numpy's
float64 ``exp`` is the C library's too unless numpy dispatches its own AVX-512 loop, so
:func:`kernel_sigmoid_is_exact` asks numpy which loop it runs and, on an AVX-512 build, the sigmoid
stays in numpy. On this project's hosts (AVX2) every float32 logit in [-100, 100] gives the same
bits both ways (``tools/check_sigmoid.py``, 2.24e9 values).

numba is optional (the ``fast`` extra): :mod:`blazeport.pipeline.postprocess` imports this module only when
numba is installed. The first call in a process compiles (or loads numba's on-disk cache,
``cache=True``).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np


@functools.cache
def kernel_sigmoid_is_exact() -> bool:
    """Whether numpy's float64 ``exp`` is the C library's (the one numba calls): numpy dispatches its
    own SIMD ``exp`` for float64 only on AVX-512 (``X86_V4``); unknown means no."""
    try:
        from numpy.lib.introspect import opt_func_info

        loops = opt_func_info(func_name="^exp$", signature="float64").get("exp", {})
        current = " ".join(str(v.get("current", "")) for v in loops.values())
    except Exception:  # an older numpy without introspection, or another layout
        return False
    return bool(current) and "V4" not in current and "AVX512" not in current


@numba.njit(cache=True, nogil=True)
def select(logits: np.ndarray, lo: np.float32, every: bool, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """The anchors whose raw logit is ``>= lo`` (all of them when ``every``) and their scores,
    ``float32(1 / (1 + exp(-clip(logit))))`` computed in float64: ``postprocess``'s pre-filter and
    ``decode_scores`` in one pass."""
    n = logits.shape[0]
    idx = np.empty(n, np.int64)
    scores = np.empty(n, np.float32)
    m = 0
    for a in range(n):
        if every or logits[a] >= lo:
            v = np.float64(logits[a])
            if v < -clip:
                v = -clip
            elif v > clip:
                v = clip
            idx[m] = a
            scores[m] = np.float32(1.0 / (1.0 + math.exp(-v)))
            m += 1
    return idx[:m], scores[:m]


@numba.njit(cache=True, nogil=True)
def _block_sum(a: np.ndarray, start: int, n: int) -> np.float32:
    """numpy's float32 ``pairwise_sum`` (``loops_utils.h.src``) of ``a[start:start + n]``, n <= 128."""
    if n < 8:
        res = np.float32(0.0)
        for i in range(n):
            res += a[start + i]
        return res
    r = a[start:start + 8].copy()
    i = 8
    while i < n - (n % 8):
        for j in range(8):
            r[j] += a[start + i + j]
        i += 8
    res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        res += a[start + i]
        i += 1
    return res


@numba.njit(cache=True, nogil=True)
def _pairwise_sum(a: np.ndarray, n: int) -> np.float32:
    """``a[:n].sum()`` to the bit: numpy splits more than 128 values in two (the first half a
    multiple of 8) and adds the halves' sums. Its recursion runs here on an explicit stack (numba's
    on-disk cache of a recursive function crashed on reload)."""
    if n <= 128:
        return _block_sum(a, 0, n)
    starts = np.empty(64, np.int64)
    sizes = np.empty(64, np.int64)
    stage = np.zeros(64, np.int64)  # 0: left half next, 1: right half next, 2: add the halves
    sums = np.empty(64, np.float32)
    starts[0], sizes[0] = 0, n
    top, n_sums = 0, 0
    while top >= 0:
        start, size = starts[top], sizes[top]
        half = size // 2
        half -= half % 8
        if size <= 128:
            sums[n_sums] = _block_sum(a, start, size)
            n_sums += 1
            top -= 1
        elif stage[top] == 0:
            stage[top] = 1
            top += 1
            starts[top], sizes[top], stage[top] = start, half, 0
        elif stage[top] == 1:
            stage[top] = 2
            top += 1
            starts[top], sizes[top], stage[top] = start + half, size - half, 0
        else:
            sums[n_sums - 2] = sums[n_sums - 2] + sums[n_sums - 1]
            n_sums -= 1
            top -= 1
    return sums[0]


@numba.njit(cache=True, nogil=True)
def _iou(flat: np.ndarray, i: int, j: int) -> np.float32:
    """IoU of rows i and j of ``flat``, the float32 operations of ``iou_matrix`` row i, column j."""
    zero = np.float32(0.0)
    ix = min(flat[i, 2], flat[j, 2]) - max(flat[i, 0], flat[j, 0])
    iy = min(flat[i, 3], flat[j, 3]) - max(flat[i, 1], flat[j, 1])
    inter = max(ix, zero) * max(iy, zero)
    area_i = (flat[i, 2] - flat[i, 0]) * (flat[i, 3] - flat[i, 1])
    area_j = (flat[j, 2] - flat[j, 0]) * (flat[j, 3] - flat[j, 1])
    union = area_i + area_j - inter
    return inter / union if union > zero else zero


@numba.njit(cache=True, nogil=True)
def decode_nms(raw: np.ndarray, idx: np.ndarray, scores: np.ndarray, anchors: np.ndarray, scale: np.float32,
                   k: int, threshold: np.float32, nms_threshold: np.float32, weighted: bool, max_detections: int,
                   pad_left: np.float32, pad_top: np.float32, span_x: np.float32, span_y: np.float32,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One image: candidate anchors ``idx`` with sigmoid ``scores`` -> rows ``[xmin, ymin, w, h,
    kx0, ky0, ...]`` on the original image, and their scores (``postprocess``'s arithmetic)."""
    n, width = idx.shape[0], 4 + 2 * k
    two = np.float32(2.0)
    flat = np.empty((n, width), np.float32)
    kept_scores = np.empty(n, np.float32)
    m = 0
    for c in range(n):
        a, r = idx[c], raw[idx[c]]
        ax, ay, aw, ah = anchors[a, 0], anchors[a, 1], anchors[a, 2], anchors[a, 3]
        xc = r[0] / scale * aw + ax
        yc = r[1] / scale * ah + ay
        hw = r[2] / scale * aw / two
        hh = r[3] / scale * ah / two
        xmin, ymin, xmax, ymax = xc - hw, yc - hh, xc + hw, yc + hh
        # the score threshold and ConvertToDetections' drop of negative / NaN sizes, before NMS
        if not (scores[c] >= threshold and xmax >= xmin and ymax >= ymin):
            continue
        flat[m, 0], flat[m, 1], flat[m, 2], flat[m, 3] = xmin, ymin, xmax, ymax
        for p in range(k):
            flat[m, 4 + 2 * p] = r[4 + 2 * p] / scale * aw + ax
            flat[m, 5 + 2 * p] = r[5 + 2 * p] / scale * ah + ay
        kept_scores[m] = scores[c]
        m += 1
    flat, s = flat[:m], kept_scores[:m]

    remaining = np.argsort(-s, kind="mergesort")  # stable, like numpy's argsort(kind="stable")
    members = np.empty(m, np.int64)
    member_scores = np.empty(m, np.float32)
    out = np.empty((m, width), np.float32)
    out_scores = np.empty(m, np.float32)
    n_rem, n_out = m, 0
    while n_rem > 0:
        top = remaining[0]
        n_mem, n_keep = 0, 0
        for t in range(n_rem):  # members leave, the rest close up in order
            j = remaining[t]
            if _iou(flat, top, j) > nms_threshold:
                members[n_mem] = j
                n_mem += 1
            else:
                remaining[n_keep] = j
                n_keep += 1
        if weighted and n_mem > 0:
            for col in range(width):
                acc = flat[members[0], col] * s[members[0]]
                for t in range(1, n_mem):
                    acc += flat[members[t], col] * s[members[t]]
                out[n_out, col] = acc
            for t in range(n_mem):
                member_scores[t] = s[members[t]]
            total = _pairwise_sum(member_scores, n_mem)
            for col in range(width):
                out[n_out, col] = out[n_out, col] / total
        else:
            out[n_out] = flat[top]
        out_scores[n_out] = s[top]
        n_out += 1
        if max_detections > 0 and n_out >= max_detections:
            break
        if n_mem == 0:
            if weighted:  # MediaPipe's WEIGHTED loop ends when a round removes nothing (degenerate box)
                break
            remaining[: n_keep - 1] = remaining[1:n_keep].copy()  # hard NMS drops the top box, carries on
            n_keep -= 1
        n_rem = n_keep

    out = out[:n_out]
    for i in range(n_out):
        for p in range(2 + k):
            out[i, 2 * p] = (out[i, 2 * p] - pad_left) / span_x
            out[i, 2 * p + 1] = (out[i, 2 * p + 1] - pad_top) / span_y
        out[i, 2] = out[i, 2] - out[i, 0]  # width, height
        out[i, 3] = out[i, 3] - out[i, 1]
    return out, out_scores[:n_out]
