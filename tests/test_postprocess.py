"""blazeport.pipeline.postprocess on hand-made values: decoding, clipped sigmoid, MediaPipe NMS, letterbox removal."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from blazeport.pipeline.postprocess import (
    Detection,
    decode_boxes,
    decode_scores,
    iou_one_to_many,
    nms,
    postprocess,
    remove_letterbox,
)
from blazeport.pipeline.preprocess import Letterbox
from blazeport.specs import spec_named

# --------------------------------------------------------------------------- decode

ANCHORS = np.array([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 2.0]], np.float32)


def _raw() -> np.ndarray:
    raw = np.zeros((2, 16), np.float32)
    raw[0, :4] = [12.8, -25.6, 64.0, 32.0]
    raw[0, 4:] = np.arange(12) * 6.4  # keypoint k: (12.8 k, 12.8 k + 6.4) / 128
    raw[1, :4] = [25.6, 12.8, 64.0, 32.0]
    raw[1, 4:6] = [-25.6, 51.2]
    return raw


def _expected() -> tuple[np.ndarray, np.ndarray]:
    # anchor 0 (w = h = 1): centre (0.6, 0.3), size (0.5, 0.25)
    # anchor 1 (w 0.5, h 2): centre (0.25 + 0.2 * 0.5, 0.75 + 0.1 * 2) = (0.35, 0.95), size (0.25, 0.5)
    boxes = np.array([[0.35, 0.175, 0.85, 0.425], [0.225, 0.7, 0.475, 1.2]])
    kps = np.zeros((2, 6, 2))
    kps[0, :, 0] = 0.5 + 0.1 * np.arange(6)
    kps[0, :, 1] = 0.5 + 0.1 * np.arange(6) + 0.05
    kps[1, :] = [0.25, 0.75]
    kps[1, 0] = [0.25 - 0.2 * 0.5, 0.75 + 0.4 * 2]
    return boxes, kps


def test_decode_known_values() -> None:
    boxes, kps = decode_boxes(_raw(), ANCHORS, 128.0)
    want_boxes, want_kps = _expected()
    assert boxes.shape == (2, 4) and kps.shape == (2, 6, 2)
    np.testing.assert_allclose(boxes, want_boxes, atol=1e-6)
    np.testing.assert_allclose(kps, want_kps, atol=1e-6)


def test_decode_batched_and_torch_agree() -> None:
    torch = pytest.importorskip("torch")
    raw = np.stack([_raw(), _raw() * 0.5])  # (B=2, N=2, 16)
    boxes, kps = decode_boxes(raw, ANCHORS, 128.0)
    assert boxes.shape == (2, 2, 4) and kps.shape == (2, 2, 6, 2)
    np.testing.assert_allclose(boxes[0], _expected()[0], atol=1e-6)
    tb, tk = decode_boxes(torch.from_numpy(raw), torch.from_numpy(ANCHORS), 128.0)
    assert isinstance(tb, torch.Tensor)
    np.testing.assert_allclose(tb.numpy(), boxes, atol=1e-6)
    np.testing.assert_allclose(tk.numpy(), kps, atol=1e-6)


def test_decode_scale_is_the_input_size() -> None:
    raw = _raw()
    b128, _ = decode_boxes(raw, ANCHORS, 128.0)
    b256, _ = decode_boxes(raw * 2, ANCHORS, 256.0)
    np.testing.assert_allclose(b128, b256, atol=1e-6)


# --------------------------------------------------------------------------- scores


def test_sigmoid_known_values() -> None:
    logits = np.array([[[0.0], [2.0], [-2.0]]], np.float32)
    np.testing.assert_allclose(decode_scores(logits), [[0.5, 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2))]], rtol=1e-6)
    assert decode_scores(logits).shape == (1, 3)


def test_sigmoid_clips_without_overflow_warning() -> None:
    logits = np.array([[[1000.0], [-1000.0], [100.0], [-100.0], [-150.0]]], np.float32)
    with warnings.catch_warnings(), np.errstate(over="warn", invalid="warn", divide="warn"):
        warnings.simplefilter("error")  # an overflow in exp would raise here
        s = decode_scores(logits)[0]
    assert s.dtype == np.float32
    assert np.isfinite(s).all()
    assert s[0] == 1.0
    # -1000 is clipped to -100: sigmoid(-100) ~ 3.7e-44, a float32 subnormal, not 0
    assert s[1] > 0 and s[1] == s[3] == s[4]
    np.testing.assert_allclose(s[1], 1 / (1 + np.exp(100.0)), rtol=0.05)
    # a smaller clip changes the answer
    assert decode_scores(logits, clip=10.0)[0, 1] == pytest.approx(1 / (1 + np.exp(10.0)), rel=1e-5)


def test_sigmoid_torch_clips() -> None:
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[[1000.0], [-1000.0], [-100.0], [float("inf")]]])
    s = decode_scores(logits)
    assert s.shape == (1, 4) and torch.isfinite(s).all()
    assert s[0, 0] == 1.0 and s[0, 1] == s[0, 2] and s[0, 3] == 1.0
    clipped = decode_scores(logits, clip=10.0)
    assert clipped[0, 1].item() == pytest.approx(1 / (1 + np.exp(10.0)), rel=1e-5)


# --------------------------------------------------------------------------- NMS

KP = np.zeros((0, 6, 2), np.float32)


def _kps(boxes: np.ndarray) -> np.ndarray:
    """Keypoints that follow the box: all six at its top-left corner plus k * 0.01."""
    return (boxes[:, None, :2] + 0.01 * np.arange(6)[None, :, None]).astype(np.float32)


def test_iou() -> None:
    box = np.array([0, 0, 2, 2], np.float32)
    others = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [1, 1, 1, 1]], np.float32)
    np.testing.assert_allclose(iou_one_to_many(box, others), [1 / 7, 1, 0, 0], rtol=1e-6)
    degenerate = np.array([1, 1, 1, 1], np.float32)
    np.testing.assert_array_equal(iou_one_to_many(degenerate, degenerate[None]), [0.0])  # no 0/0


def test_weighted_nms_blends_by_score_and_keeps_top_score() -> None:
    boxes = np.array([[0.1, 0.1, 0.5, 0.5],    # top
                      [0.12, 0.1, 0.52, 0.5],  # overlaps the top (IoU ~0.9)
                      [0.7, 0.7, 0.9, 0.9]],   # elsewhere
                     np.float32)
    scores = np.array([0.9, 0.6, 0.8], np.float32)
    kps = _kps(boxes)
    out_b, out_k, out_s = nms(boxes, kps, scores, threshold=0.3, weighted=True)
    assert out_b.shape == (2, 4) and out_k.shape == (2, 6, 2) and out_s.shape == (2,)
    np.testing.assert_array_equal(out_s, scores[[0, 2]])  # the top score, not the mean 0.75
    np.testing.assert_allclose(out_b[0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5, atol=1e-6)
    np.testing.assert_allclose(out_k[0], (0.9 * kps[0] + 0.6 * kps[1]) / 1.5, atol=1e-6)
    np.testing.assert_allclose(out_b[0, 0], 0.108, atol=1e-6)
    # the non-overlapping box survives as it was (a cluster of one, up to float rounding)
    np.testing.assert_allclose(out_b[1], boxes[2], atol=1e-6)
    np.testing.assert_allclose(out_k[1], kps[2], atol=1e-6)


def test_weighted_nms_cluster_is_taken_from_the_top_box() -> None:
    # B overlaps A (top) and C; C does not overlap A: A+B blend, C stands alone
    boxes = np.array([[0.0, 0.0, 0.4, 0.4], [0.1, 0.0, 0.5, 0.4], [0.3, 0.0, 0.7, 0.4]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    out_b, _, out_s = nms(boxes, _kps(boxes), scores, threshold=0.3)
    np.testing.assert_array_equal(out_s, scores[[0, 2]])
    np.testing.assert_allclose(out_b[0], (0.9 * boxes[0] + 0.8 * boxes[1]) / 1.7, atol=1e-6)
    np.testing.assert_allclose(out_b[1], boxes[2], atol=1e-6)


def test_iou_exactly_at_threshold_is_not_suppressed() -> None:
    # widths 5/16 and 8/16 overlapping by 3/16: IoU = 3 / 10 exactly as the division rounds it
    boxes = np.array([[0, 0, 5 / 16, 1 / 16], [2 / 16, 0, 10 / 16, 1 / 16]], np.float32)
    assert iou_one_to_many(boxes[0], boxes[1:])[0] == np.float32(0.3)
    scores = np.array([0.9, 0.8], np.float32)
    for weighted in (True, False):
        out_b, _, out_s = nms(boxes, _kps(boxes), scores, threshold=0.3, weighted=weighted)
        assert len(out_s) == 2, weighted  # MediaPipe suppresses on similarity > threshold only
        np.testing.assert_allclose(out_b, boxes, atol=1e-7)
    # a hair more overlap and the second one goes
    closer = boxes.copy()
    closer[1, 0] = 1.9 / 16
    assert len(nms(closer, _kps(closer), scores, threshold=0.3)[2]) == 1


def test_hard_nms_keeps_the_top_box_unchanged() -> None:
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.7, 0.7, 0.9, 0.9]], np.float32)
    scores = np.array([0.6, 0.9, 0.8], np.float32)  # the top one is index 1
    kps = _kps(boxes)
    out_b, out_k, out_s = nms(boxes, kps, scores, threshold=0.3, weighted=False)
    np.testing.assert_array_equal(out_s, scores[[1, 2]])
    np.testing.assert_array_equal(out_b, boxes[[1, 2]])
    np.testing.assert_array_equal(out_k, kps[[1, 2]])


def test_nms_max_detections() -> None:
    boxes = np.array([[0.0, 0.0, 0.1, 0.1], [0.3, 0.3, 0.4, 0.4], [0.6, 0.6, 0.7, 0.7]], np.float32)
    scores = np.array([0.7, 0.9, 0.8], np.float32)
    out_b, _, out_s = nms(boxes, _kps(boxes), scores, max_detections=2, weighted=False)
    np.testing.assert_array_equal(out_s, scores[[1, 2]])
    np.testing.assert_array_equal(out_b, boxes[[1, 2]])
    assert len(nms(boxes, _kps(boxes), scores, max_detections=-1)[2]) == 3


def test_weighted_nms_stops_after_a_round_that_suppresses_nothing() -> None:
    """MediaPipe's WeightedNonMaxSuppression breaks when a round removes nothing (a zero-area top box)."""
    boxes = np.array([[0.5, 0.5, 0.5, 0.6], [0.1, 0.1, 0.3, 0.3]], np.float32)  # the top box has zero width
    scores = np.array([0.9, 0.8], np.float32)
    out_b, _, out_s = nms(boxes, _kps(boxes), scores, weighted=True)
    np.testing.assert_array_equal(out_s, scores[:1])
    np.testing.assert_array_equal(out_b, boxes[:1])


def test_hard_nms_goes_on_after_a_zero_area_box() -> None:
    boxes = np.array([[0.5, 0.5, 0.5, 0.6], [0.1, 0.1, 0.3, 0.3]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    out_b, _, out_s = nms(boxes, _kps(boxes), scores, weighted=False)
    np.testing.assert_array_equal(out_s, scores)
    np.testing.assert_array_equal(out_b, boxes)


@pytest.mark.parametrize("weighted", [True, False])
def test_nms_empty_input(weighted: bool) -> None:
    out_b, out_k, out_s = nms(np.zeros((0, 4), np.float32), KP, np.zeros(0, np.float32), weighted=weighted)
    assert out_b.shape == (0, 4) and out_k.shape == (0, 6, 2) and out_s.shape == (0,)


# --------------------------------------------------------------------------- letterbox removal and results


def test_remove_letterbox_maps_padding_back() -> None:
    # a tall image in a square: a quarter of the square is padding on each side
    pad = Letterbox(0.25, 0.0, 0.25, 0.0)
    boxes = np.array([[0.25, 0.1, 0.5, 0.6], [0.5, 0.0, 0.75, 1.0]], np.float32)
    kps = np.array([[[0.25, 0.5], [0.75, 0.25]] * 3, [[0.5, 0.5]] * 6], np.float32)
    b, k = remove_letterbox(boxes, kps, pad)
    np.testing.assert_allclose(b, [[0.0, 0.1, 0.5, 0.6], [0.5, 0.0, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(k[0, :2], [[0.0, 0.5], [1.0, 0.25]], atol=1e-6)
    np.testing.assert_allclose(k[1], 0.5, atol=1e-6)
    # a wide image: top/bottom padding, uneven
    b, k = remove_letterbox(np.array([[0.2, 0.1, 0.6, 0.9]], np.float32), np.full((1, 6, 2), 0.55, np.float32),
                            Letterbox(0.0, 0.1, 0.0, 0.1))
    np.testing.assert_allclose(b, [[0.2, 0.0, 0.6, 1.0]], atol=1e-6)
    np.testing.assert_allclose(k[0, 0], [0.55, 0.5625], atol=1e-6)


def test_detection_to_dict_and_pixels() -> None:
    d = Detection(0.875, (0.1, 0.2, 0.3, 0.4), [(0.5, 0.25)] * 6)
    as_dict = d.to_dict()
    assert as_dict == {"score": 0.875, "box": [0.1, 0.2, 0.3, 0.4], "keypoints": [[0.5, 0.25]] * 6}
    assert json.loads(json.dumps(as_dict)) == as_dict  # plain JSON types
    box, kps = d.pixels(200, 100)
    np.testing.assert_allclose(box, [20, 20, 60, 40])
    np.testing.assert_allclose(kps, [[100, 25]] * 6)


def test_postprocess_thresholds_before_nms_and_unletterboxes() -> None:
    spec = spec_named("short_range")
    anchors = np.zeros((spec.num_anchors, 4), np.float32)
    anchors[:, :2] = 0.5
    anchors[:, 2:] = 1.0
    raw_boxes = np.zeros((1, spec.num_anchors, 16), np.float32)
    raw_boxes[0, :, 2:4] = 32.0  # every candidate a 0.25 x 0.25 box around (0.5, 0.5)
    raw_boxes[0, 1, 0] = 6.4  # candidate 1 shifted right by 0.05
    raw_boxes[0, 2, 0] = -12.8  # candidate 2 shifted left by 0.1
    raw_scores = np.full((1, spec.num_anchors, 1), -50.0, np.float32)
    raw_scores[0, :3, 0] = [2.0, 0.5, -0.1]  # 0.88 and 0.62 pass 0.5; 0.475 does not
    pad = Letterbox(0.0, 0.25, 0.0, 0.25)  # wide image
    (dets,) = postprocess(raw_boxes, raw_scores, anchors, spec, [pad])
    assert len(dets) == 1
    s0, s1 = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-0.5))
    assert dets[0].score == pytest.approx(s0, rel=1e-6)
    xmin = 0.375 + 0.05 * s1 / (s0 + s1)  # candidate 2 was dropped before NMS, not blended
    assert dets[0].box[0] == pytest.approx(xmin, abs=1e-6)
    assert dets[0].box[2] == pytest.approx(0.25, abs=1e-6)
    # y: (0.375 - 0.25) / 0.5 and height 0.25 / 0.5 in the original image
    assert dets[0].box[1] == pytest.approx(0.25, abs=1e-6)
    assert dets[0].box[3] == pytest.approx(0.5, abs=1e-6)
    assert len(dets[0].keypoints) == 6
    # a lower threshold lets candidate 2 in, and it moves the blend
    (more,) = postprocess(raw_boxes, raw_scores, anchors, spec, [pad], score_threshold=0.4)
    assert len(more) == 1 and more[0].box[0] < dets[0].box[0]
    # nothing above threshold: no detections, no error
    (none,) = postprocess(raw_boxes, raw_scores - 100, anchors, spec, [pad])
    assert none == []


def test_compiled_postprocess_matches_numpy_on_real_outputs(boxed_photos) -> None:
    """numba's decode + NMS gives the numpy code's floats on every face model's real outputs, at the
    spec's threshold and a low one (many overlapping candidates), weighted and hard NMS."""
    import dataclasses

    from blazeport import load
    from blazeport.pipeline.postprocess import compiled_available
    from blazeport.pipeline.preprocess import read_image
    from blazeport.specs import NMSOptions

    if not compiled_available():
        pytest.skip("numba is not installed (the 'fast' extra)")
    images = [read_image(p) for p in boxed_photos[:6]]
    faces = 0
    for name in ("short_range", "back", "full_range", "full_range_sparse"):
        detector = load(name, backend="tflite", threads=1)
        batch, pads = detector.preprocess(images)
        raw_boxes, raw_scores = detector.backend(batch)
        for options in (detector.spec.nms, NMSOptions(algorithm="hard"), NMSOptions(max_detections=1)):
            spec = dataclasses.replace(detector.spec, nms=options)
            for threshold in (None, 0.05):
                ours = postprocess(raw_boxes, raw_scores, detector.anchors, spec, pads, threshold, "numba")
                ref = postprocess(raw_boxes, raw_scores, detector.anchors, spec, pads, threshold, "numpy")
                assert [[d.to_dict() for d in x] for x in ours] == [[d.to_dict() for d in x] for x in ref]
                faces += sum(map(len, ours))
    assert faces > 100


def test_postprocess_choice_is_checked(monkeypatch) -> None:
    import blazeport.pipeline.postprocess as pp
    from blazeport.errors import BlazeportError

    raw_boxes, raw_scores = np.zeros((1, 896, 16), np.float32), np.zeros((1, 896, 1), np.float32)
    anchors = np.zeros((896, 4), np.float32)
    with pytest.raises(BlazeportError, match="one of auto, numpy, numba"):
        pp.postprocess(raw_boxes, raw_scores, anchors, spec_named("short_range"), [Letterbox(0, 0, 0, 0)], how="cuda")
    monkeypatch.setattr(pp, "compiled_available", lambda: False)
    with pytest.raises(BlazeportError, match=r"pip install 'blazeport\[fast\]'"):
        pp.check_postprocess("numba")
    # auto without numba falls back to the numpy code
    assert pp.postprocess(raw_boxes, raw_scores - 1, anchors, spec_named("short_range"), [Letterbox(0, 0, 0, 0)]) == [[]]


def test_compiled_sigmoid_gives_numpys_bits() -> None:
    """The kernel's pre-filter + sigmoid (used where numpy's exp is the C library's) returns the
    anchors and the float32 scores of numpy's path, on 4M random logits and the edge cases
    (tools/check_sigmoid.py walks all 2.24e9 float32 logits in [-100, 100])."""
    from blazeport.pipeline.postprocess import candidate_logit, compiled_available

    if not compiled_available():
        pytest.skip("numba is not installed (the 'fast' extra)")
    from blazeport.pipeline.compiled_post import kernel_sigmoid_is_exact, select

    if not kernel_sigmoid_is_exact():
        pytest.skip("numpy runs its own AVX-512 exp here: the sigmoid stays in numpy")
    rng = np.random.default_rng(0)
    edges = np.array([np.nan, np.inf, -np.inf, 100, -100, 100.5, -1e9, 1e9, 0, -0.0, 16.7, -16.7], np.float32)
    logits = np.concatenate([edges, rng.normal(0, 8, 2_000_000).astype(np.float32),
                             rng.uniform(-100, 100, 2_000_000).astype(np.float32)])
    for threshold in (0.5, 0.65, 1e-8):
        lo = candidate_logit(threshold, 100.0)
        idx, scores = select(logits, np.float32(lo or 0.0), lo is None, 100.0)
        want = np.flatnonzero(logits >= lo) if lo is not None else np.arange(len(logits))
        np.testing.assert_array_equal(idx, want)
        ref = decode_scores(logits[want][:, None], 100.0)
        assert np.array_equal(scores.view(np.uint32), ref.view(np.uint32))
