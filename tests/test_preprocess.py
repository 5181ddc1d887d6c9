"""blazeport.preprocess (letterbox, ROI transform, image reading) and TF SAME padding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from blazeport.errors import BlazeportError
from blazeport.models.blocks import same_padding
from blazeport.postprocess import remove_letterbox
from blazeport.preprocess import ImageReadError, Letterbox, as_rgb, letterbox, read_image, roi_transform

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


# --------------------------------------------------------------------------- reading images


def test_read_image_color_is_rgb(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    assert cv2.imwrite(str(path), bgr)
    image = read_image(path)
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])


def test_read_image_grayscale(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (7, 1))  # (7, 25)
    assert cv2.imwrite(str(path), gray)
    image = read_image(path)
    assert image.shape == (7, 25, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=2))


def test_read_image_rgba_drops_alpha(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    bgra = np.zeros((9, 11, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 1] = 100  # green
    bgra[..., 3] = np.linspace(0, 255, 11).astype(np.uint8)  # alpha varies; colour must not
    assert cv2.imwrite(str(path), bgra)
    image = read_image(path)
    assert image.shape == (9, 11, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.broadcast_to([0, 100, 200], (9, 11, 3)))


def test_read_image_16_bit(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([0, 257 * 64, 257 * 128, 65535], np.uint16)
    bgr16 = np.zeros((4, 4, 3), np.uint16)
    bgr16[..., 2] = values[None, :]  # red channel, 16-bit
    assert cv2.imwrite(str(path), bgr16)
    image = read_image(path)
    assert image.shape == (4, 4, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image[0, :, 0], [0, 64, 128, 255], atol=1)
    np.testing.assert_array_equal(image[..., 1:], 0)
    gray16 = tmp_path / "gray16.png"
    assert cv2.imwrite(str(gray16), np.full((3, 5), 65535, np.uint16))
    image = read_image(gray16)
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, 255)


def test_read_image_jpeg_and_str_path(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    assert cv2.imwrite(str(path), np.full((16, 24, 3), 128, np.uint8))
    image = read_image(str(path))
    assert image.shape == (16, 24, 3)
    np.testing.assert_allclose(image, 128, atol=2)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated-png"])
def test_read_image_unreadable_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image, just some words\n" * 10)
    else:
        ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        assert ok
        path.write_bytes(png.tobytes()[: png.size // 2])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_read_image_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "photo.jpg"
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert err.value.__cause__ is None


def test_read_image_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_letterbox_samples_at_pixel_edges_like_mediapipe() -> None:
    """Pixel edge 0 -> 0 and W -> size, no half-pixel shift: with an exact 4x reduction, tensor pixel
    (i, j) is image pixel (4i - offset, 4j) itself, not a blend of neighbours (which cv2.resize gives)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)  # H 256 x W 512: 128 rows of padding in the square
    tensor, pad = letterbox(image, 128)
    assert pad == Letterbox(0.0, 0.25, 0.0, 0.25)
    expected = image[0::4, 0::4].astype(np.float32) / 127.5 - 1.0  # rows 32..95 of the tensor
    np.testing.assert_allclose(tensor[32:96], expected, atol=1e-6)
