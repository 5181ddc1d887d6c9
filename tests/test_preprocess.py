"""blazeport.pipeline.preprocess (letterbox, ROI transform, the array checks) and TF SAME padding; reading
image files (pixel limits, reduced decode, unreadable files) is tested in test_image_read.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from blazeport.errors import BlazeportError
from blazeport.models.blocks import same_padding
from blazeport.pipeline.postprocess import remove_letterbox
from blazeport.pipeline.preprocess import Letterbox, as_rgb, letterbox, roi_transform

# --------------------------------------------------------------------------- TF SAME padding


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (128, 5, 2, (1, 2)),  # the 5x5 stem
        (64, 3, 2, (0, 1)),  # stride-2 depthwise on an even size
        (64, 3, 1, (1, 1)),
        (128, 5, 1, (2, 2)),
        (16, 1, 1, (0, 0)),
        (65, 3, 2, (1, 1)),  # odd size: symmetric
        (7, 2, 2, (0, 1)),
        (8, 2, 2, (0, 0)),
    ],
)
def test_same_padding(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)  # TF: out = ceil(size / stride)


def test_same_padding_with_dilation() -> None:
    assert same_padding(32, 3, 1, dilation=2) == (2, 2)


# --------------------------------------------------------------------------- letterbox


def _solid(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (height, width, 3)).copy()


def test_letterbox_wide_image() -> None:
    tensor, pad = letterbox(_solid(100, 200, (255, 0, 128)), 128)  # W 200 x H 100
    assert tensor.shape == (128, 128, 3) and tensor.dtype == np.float32
    assert pad == Letterbox(0.0, 0.25, 0.0, 0.25)
    # the image lands on rows 32..96: borders are the low end of [-1, 1], not 0 or grey
    np.testing.assert_array_equal(tensor[:31], -1.0)
    np.testing.assert_array_equal(tensor[98:], -1.0)
    # RGB stays RGB (no BGR swap) and 0 / 255 map to exactly -1 / 1
    np.testing.assert_allclose(tensor[34:94], np.broadcast_to([1.0, -1.0, 128 / 127.5 - 1], (60, 128, 3)), atol=1e-6)


def test_letterbox_tall_image() -> None:
    tensor, pad = letterbox(_solid(300, 100, (255, 255, 255)), 128)  # W 100 x H 300
    assert tensor.shape == (128, 128, 3)
    assert pad.left == pytest.approx(1 / 3) and pad.right == pytest.approx(1 / 3)
    assert pad.top == 0.0 and pad.bottom == 0.0
    np.testing.assert_array_equal(tensor[:, :41], -1.0)
    np.testing.assert_array_equal(tensor[:, 87:], -1.0)
    np.testing.assert_array_equal(tensor[:, 44:84], 1.0)


def test_letterbox_square_image_has_no_border() -> None:
    tensor, pad = letterbox(_solid(256, 256, (0, 0, 0)), 128)
    assert pad == Letterbox(0.0, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(tensor, -1.0)
    tensor, _ = letterbox(_solid(256, 256, (255, 255, 255)), 128)
    np.testing.assert_array_equal(tensor[:127, :127], 1.0)


def test_letterbox_other_normalization() -> None:
    tensor, _ = letterbox(_solid(50, 100, (255, 255, 255)), 64, normalization=(0.0, 1.0))
    assert tensor.min() == 0.0 and tensor.max() == pytest.approx(1.0)
    assert tensor[0, 0, 0] == 0.0  # border


def test_letterbox_accepts_gray_and_rgba() -> None:
    gray = np.full((40, 80), 255, np.uint8)
    rgba = np.dstack([_solid(40, 80, (255, 255, 255)), np.zeros((40, 80), np.uint8)])
    for image in (gray, gray[..., None], rgba):
        tensor, pad = letterbox(image, 64)
        assert tensor.shape == (64, 64, 3)
        assert pad == Letterbox(0.0, 0.25, 0.0, 0.25)
        np.testing.assert_array_equal(tensor[20:44], 1.0)
    with pytest.raises(BlazeportError, match="uint8"):
        as_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(BlazeportError, match="shape"):
        as_rgb(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize(("width", "height"), [(300, 200), (200, 300), (640, 480), (128, 128)])
def test_roi_transform_round_trip(width: int, height: int) -> None:
    """Original pixel -> tensor (the warp's matrix) -> normalized -> remove_letterbox -> where it started."""
    size = 128
    matrix, pad = roi_transform(width, height, size)
    points = np.array([[0, 0], [width, height], [width, 0], [0.25 * width, 0.75 * height], [17.5, 3.25]], np.float64)
    in_tensor = cv2.perspectiveTransform(points[None], matrix)[0] / size  # normalized in the padded square
    boxes = np.concatenate([in_tensor[:2].reshape(1, 4)])  # corners as an xyxy box
    back_boxes, back_points = remove_letterbox(boxes.astype(np.float32), in_tensor[None].astype(np.float32), pad)
    np.testing.assert_allclose(back_points[0], points / [width, height], atol=1e-5)
    np.testing.assert_allclose(back_boxes[0], [0, 0, 1, 1], atol=1e-5)


def test_letterbox_content_lands_where_the_transform_says() -> None:
    """A white square in a black wide image: find it in the tensor, map it back, compare."""
    width, height = 320, 160
    image = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = 200, 40, 240, 80  # a 40 x 40 square, pixels [x0, x1) x [y0, y1)
    image[y0:y1, x0:x1] = 255
    tensor, pad = letterbox(image, 128)
    bright = tensor[..., 0] > 0  # over half-way between -1 and 1
    ys, xs = np.nonzero(bright)
    # bounding box of the bright pixels in tensor pixel-edge coordinates, normalized
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32) / 128
    box, _ = remove_letterbox(found, np.zeros((1, 6, 2), np.float32), pad)
    np.testing.assert_allclose(box[0] * [width, height, width, height], [x0, y0, x1, y1], atol=width / 128 * 1.01)


def test_letterbox_samples_at_pixel_edges_like_mediapipe() -> None:
    """Pixel edge 0 -> 0 and W -> size, no half-pixel shift: with an exact 4x reduction, tensor pixel
    (i, j) is image pixel (4i - offset, 4j) itself, not a blend of neighbours (which cv2.resize gives)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)  # H 256 x W 512: 128 rows of padding in the square
    tensor, pad = letterbox(image, 128)
    assert pad == Letterbox(0.0, 0.25, 0.0, 0.25)
    expected = image[0::4, 0::4].astype(np.float32) / 127.5 - 1.0  # rows 32..95 of the tensor
    np.testing.assert_allclose(tensor[32:96], expected, atol=1e-6)


# --------------------------------------------------------------------------- bad input: one clear error, never a traceback


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 10, 3), (10, 0, 3), (0, 5), (3, 0, 4)])
def test_empty_images_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(BlazeportError, match=r"empty image: shape \("):
        letterbox(np.zeros(shape, np.uint8), 128)


def test_detector_refuses_an_empty_image_before_running_the_model() -> None:
    from blazeport.pipeline.detector import Detector
    from blazeport.specs import spec_named

    def backend(_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("the model ran on an empty image")

    detector = Detector(spec_named("short_range"), backend)
    for shape in [(0, 0, 3), (0, 10, 3)]:
        with pytest.raises(BlazeportError, match="empty image"):
            detector.detect(np.zeros(shape, np.uint8))


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((4, 4, 3), np.float32), r"uint8 arrays \(0-255\), got float32; for floats in \[0, 1\]"),
        (np.zeros((4, 4, 3), bool), "uint8 arrays.*got bool"),
        (np.zeros((4, 4, 3), np.uint16), "uint8 arrays.*got uint16"),
        (np.zeros(12, np.uint8), r"got shape \(12,\)"),
        (np.zeros((1, 4, 4, 3), np.uint8), r"got shape \(1, 4, 4, 3\); for several images call detect_batch"),
        (np.zeros((4, 4, 2), np.uint8), r"got shape \(4, 4, 2\)"),
        (np.zeros((4, 4, 3, 1), np.uint8), r"got shape \(4, 4, 3, 1\)"),
    ],
)
def test_as_rgb_refuses_other_arrays_clearly(image: np.ndarray, match: str) -> None:
    with pytest.raises(BlazeportError, match=match):
        letterbox(image, 128)


def test_letterbox_non_contiguous_views_equal_their_copies() -> None:
    image = np.random.default_rng(2).integers(0, 256, (120, 200, 4), dtype=np.uint8)
    views = [image[:, ::-1, :3], image[..., 2::-1], image[::2, ::3, :3], np.asfortranarray(image[..., :3]),
             image[..., 0], image]
    for view in views:
        tensor, pad = letterbox(view, 64)
        expected, expected_pad = letterbox(np.ascontiguousarray(view), 64)
        np.testing.assert_array_equal(tensor, expected)
        assert pad == expected_pad


@pytest.mark.parametrize("transpose", [False, True])
def test_letterbox_images_longer_than_opencv_remap_allows(transpose: bool) -> None:
    """A side of 32767 px or more (cv2.remap's limit): shrunk first, the content stays where it belongs."""
    image = np.zeros((40, 40000, 3), np.uint8)
    image[:, 30000:32000] = 255  # a bright bar at 75-80 % of the width
    if transpose:
        image = image.transpose(1, 0, 2)
    tensor, pad = letterbox(image, 128)
    profile = tensor[..., 0].max(axis=0 if not transpose else 1)
    bright = np.nonzero(profile > 0)[0]
    assert 95 <= bright.min() <= 96 and 102 <= bright.max() <= 103  # 0.75 * 128 = 96, 0.8 * 128 = 102.4
    border = (40000 - 40) / 2 / 40000  # as the unshrunk image's, to the shrunk image's rounding
    expected = (0.0, border, 0.0, border) if not transpose else (border, 0.0, border, 0.0)
    assert (pad.left, pad.top, pad.right, pad.bottom) == pytest.approx(expected, abs=1e-4)
