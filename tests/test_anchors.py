"""blazeport.pipeline.anchors against MediaPipe's SsdAnchorsCalculator, and the committed anchors/*.npy."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from blazeport.pipeline.anchors import ANCHORS_DIR, anchors_for, generate_anchors
from blazeport.specs import SPECS, AnchorOptions, spec_named

SHORT = AnchorOptions(input_size=128, num_layers=4, strides=(8, 16, 16, 16), min_scale=0.1484375, max_scale=0.75)
# MediaPipe face_detection_full_range.pbtxt
FULL = AnchorOptions(input_size=192, num_layers=1, strides=(4,), min_scale=0.1484375, max_scale=0.75,
                     interpolated_scale_aspect_ratio=0.0)


def test_short_range_layout() -> None:
    a = generate_anchors(SHORT)
    assert a.shape == (896, 4) and a.dtype == np.float32
    # stride 8: 16x16 cells, 2 anchors per cell (aspect 1 + interpolated)
    np.testing.assert_array_equal(a[0], [0.03125, 0.03125, 1, 1])
    np.testing.assert_array_equal(a[1], [0.03125, 0.03125, 1, 1])
    np.testing.assert_array_equal(a[2], [0.09375, 0.03125, 1, 1])  # x varies before y
    np.testing.assert_array_equal(a[32], [0.03125, 0.09375, 1, 1])
    np.testing.assert_array_equal(a[511], [0.96875, 0.96875, 1, 1])
    # stride 16 (three layers share it): 8x8 cells, 6 anchors per cell
    np.testing.assert_array_equal(a[512], [0.0625, 0.0625, 1, 1])
    assert (a[512:518] == a[512]).all()
    np.testing.assert_array_equal(a[518], [0.1875, 0.0625, 1, 1])
    np.testing.assert_array_equal(a[512 + 8 * 6], [0.0625, 0.1875, 1, 1])
    np.testing.assert_array_equal(a[895], [0.9375, 0.9375, 1, 1])


def test_back_layout() -> None:
    back = AnchorOptions(input_size=256, num_layers=4, strides=(16, 32, 32, 32), min_scale=0.15625, max_scale=0.75)
    a = generate_anchors(back)
    assert a.shape == (896, 4)
    np.testing.assert_array_equal(a[0], [0.03125, 0.03125, 1, 1])
    np.testing.assert_array_equal(a[512], [0.0625, 0.0625, 1, 1])


def test_single_stride_full_range() -> None:
    a = generate_anchors(FULL)
    assert a.shape == (2304, 4) and a.dtype == np.float32  # 48x48 cells, one anchor each
    np.testing.assert_allclose(a[0], [0.5 / 48, 0.5 / 48, 1, 1], rtol=0, atol=1e-7)
    np.testing.assert_allclose(a[1], [1.5 / 48, 0.5 / 48, 1, 1], rtol=0, atol=1e-7)
    np.testing.assert_allclose(a[48], [0.5 / 48, 1.5 / 48, 1, 1], rtol=0, atol=1e-7)
    # with one stride MediaPipe's CalculateScale is (min + max) / 2, not a division by zero
    sized = generate_anchors(replace(FULL, fixed_anchor_size=False))
    assert np.isfinite(sized).all()
    np.testing.assert_allclose(sized[:, 2:], (0.1484375 + 0.75) / 2, rtol=1e-7)
    np.testing.assert_array_equal(sized[:, :2], a[:, :2])


def test_scales_when_anchor_size_is_not_fixed() -> None:
    """Per-cell order: scale_l, then the interpolated sqrt(scale_l * scale_l+1) (1.0 after the last layer)."""
    a = generate_anchors(replace(SHORT, fixed_anchor_size=False))
    s = [0.1484375 + (0.75 - 0.1484375) * i / 3 for i in range(4)]
    np.testing.assert_allclose(a[0, 2:], s[0], rtol=1e-6)
    np.testing.assert_allclose(a[1, 2:], math.sqrt(s[0] * s[1]), rtol=1e-6)
    expected = [s[1], math.sqrt(s[1] * s[2]), s[2], math.sqrt(s[2] * s[3]), s[3], math.sqrt(s[3] * 1.0)]
    np.testing.assert_allclose(a[512:518, 2], expected, rtol=1e-6)
    np.testing.assert_allclose(a[890:896, 3], expected, rtol=1e-6)


def test_aspect_ratio_shapes_width_and_height() -> None:
    opts = AnchorOptions(input_size=64, num_layers=1, strides=(32,), min_scale=0.2, max_scale=0.6,
                         aspect_ratios=(1.0, 4.0), interpolated_scale_aspect_ratio=0.0, fixed_anchor_size=False)
    a = generate_anchors(opts)
    assert a.shape == (2 * 2 * 2, 4)
    np.testing.assert_allclose(a[0, 2:], [0.4, 0.4], rtol=1e-6)
    np.testing.assert_allclose(a[1, 2:], [0.8, 0.2], rtol=1e-6)  # w = s * sqrt(r), h = s / sqrt(r)


def test_wrong_number_of_strides() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        generate_anchors(replace(SHORT, num_layers=3))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_committed_tables_equal_the_generator(name: str) -> None:
    spec = SPECS[name]
    path = ANCHORS_DIR / f"{name}.npy"
    assert path.is_file(), f"{path} missing: run `python tools/make_anchors.py`"
    committed = np.load(path, allow_pickle=False)
    assert committed.dtype == np.float32
    assert committed.shape == (spec.num_anchors, 4)
    np.testing.assert_array_equal(committed, generate_anchors(spec.anchors))
    np.testing.assert_array_equal(anchors_for(spec), committed)


def test_short_range_spec_anchors_match_mediapipe_options() -> None:
    spec = spec_named("front")
    assert spec.name == "short_range"
    np.testing.assert_array_equal(anchors_for(spec), generate_anchors(SHORT))


def test_make_anchors_check_passes_and_catches_a_change(tmp_path) -> None:
    import tools.make_anchors as make_anchors

    assert make_anchors.check() == []
    assert make_anchors.main(["--dir", str(tmp_path)]) == 0
    assert make_anchors.check(tmp_path) == []
    name = sorted(SPECS)[0]
    table = np.load(tmp_path / f"{name}.npy")
    table[3, 0] += 1e-3
    np.save(tmp_path / f"{name}.npy", table)
    assert len(make_anchors.check(tmp_path)) == 1
    (tmp_path / f"{name}.npy").unlink()
    assert "missing" in make_anchors.check(tmp_path)[0]
