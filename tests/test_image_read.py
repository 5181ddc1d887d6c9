"""Reading image files with blazeport.pipeline.preprocess (read_image, read_image_sized): colour, alpha and
16-bit files, the pixel limit checked from each format's header before decoding, reduced decoding of big
JPEGs, and unreadable, garbled or denied files as one ImageReadError. Split from test_preprocess.py, which
keeps the letterbox and padding tests, so that each file stays a readable size."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from blazeport.errors import BlazeportError
from blazeport.pipeline import preprocess
from blazeport.pipeline.preprocess import ImageReadError, read_image, read_image_sized

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


# --------------------------------------------------------------------------- bad input: one clear error, never a traceback


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` but whose pixel data is a tiny truncated IDAT:
    the shape of a decompression bomb, without allocating it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise AssertionError("the file was decoded; it should have been refused from its header")

    monkeypatch.setattr(cv2, "imdecode", fail)


def test_read_image_refuses_a_huge_png_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _png_header_only(tmp_path / "bomb.png", 60000, 60000)
    _no_decoding(monkeypatch)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    message = str(err.value)
    assert str(path) in message and "60000x60000" in message and "--max-pixels" in message and "max_pixels=" in message


def test_read_image_max_pixels_parameter_and_module_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    assert cv2.imwrite(str(path), np.zeros((50, 100, 3), np.uint8))
    assert read_image(path, max_pixels=5000).shape == (50, 100, 3)  # the limit itself is allowed
    with pytest.raises(ImageReadError, match="100x50"):
        read_image(path, max_pixels=4999)
    monkeypatch.setattr(preprocess, "MAX_PIXELS", 4999)  # the default is read at each call
    with pytest.raises(ImageReadError, match="4,999 pixels"):
        read_image(path)
    assert read_image(path, max_pixels=5000).shape == (50, 100, 3)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5e9, "1000"])
def test_read_image_max_pixels_must_be_a_positive_int(bad: object, tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    assert cv2.imwrite(str(path), np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(BlazeportError, match="max_pixels must be a positive integer"):
        read_image(path, max_pixels=bad)  # type: ignore[arg-type]


def _bigtiff(path: Path, width: int, height: int) -> Path:
    """A little-endian BigTIFF header whose first IFD holds ImageWidth (LONG8) and ImageLength (LONG)."""
    entries = struct.pack("<HHQQ", 256, 16, 1, width) + struct.pack("<HHQI4x", 257, 4, 1, height)
    path.write_bytes(b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + entries + struct.pack("<Q", 0))
    return path


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".png", []),
        (".jpg", []),
        (".jpg-progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".bmp", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # lossy: VP8 chunk
        (".webp-lossless", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # VP8L chunk
        (".webp-alpha", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # alpha: VP8X chunk
        (".tif", []),
        (".tif-big", []),
    ],
)
def test_read_image_reads_the_size_from_each_header(suffix: str, params: list[int], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every format in data.IMAGE_SUFFIXES is refused from its header alone (odd sizes, so no axis mix-up)."""
    width, height = 37, 23
    path = tmp_path / f"image{suffix.split('-')[0]}"
    if suffix == ".tif-big":
        _bigtiff(path, width, height)
    else:
        image = np.full((height, width, 4 if suffix == ".webp-alpha" else 3), 90, np.uint8)
        assert cv2.imwrite(str(path), image, params)
        assert read_image(path).shape == (height, width, 3)
    _no_decoding(monkeypatch)
    with pytest.raises(ImageReadError, match=f"{width}x{height} "):
        read_image(path, max_pixels=width * height - 1)


@pytest.mark.parametrize(
    "content",
    [
        b"II+\x00" + struct.pack("<HHQ", 8, 0, 2**63 + 5),  # BigTIFF whose first IFD lies past any file
        b"MM\x00*" + struct.pack(">I", 2**32 - 1),  # classic TIFF, likewise
        b"\xff\xd8\xff\xe0\x00\x01garbage",  # JPEG segment length under 2
        b"\xff\xd8" + b"\xff" * 5000,  # JPEG fill bytes only
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # PNG cut inside IHDR
        b"RIFF\x00\x00\x00\x00WEBPVP8X",  # WebP cut inside its first chunk
        b"BM\x00",  # BMP cut inside its header
    ],
)
def test_read_image_garbled_headers_are_image_read_errors(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "garbled.img"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=r"garbled\.img: not an image OpenCV can decode"):
        read_image(path)


def test_read_image_opencv_error_becomes_image_read_error(tmp_path: Path) -> None:
    """With the limit raised past OpenCV's own (2**30 pixels), cv2's assertion is reported, not raised."""
    path = _png_header_only(tmp_path / "bomb.png", 60000, 60000)
    with pytest.raises(ImageReadError) as err:
        read_image(path, max_pixels=4_000_000_000)
    assert str(path) in str(err.value) and "OPENCV_IO_MAX_IMAGE_PIXELS" in str(err.value)
    assert err.value.__cause__ is None


def test_read_image_any_opencv_error_becomes_image_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    assert cv2.imwrite(str(path), np.zeros((5, 5, 3), np.uint8))

    def broken(*_: object) -> None:
        raise cv2.error("OpenCV(5.1.0) /io/opencv/modules/imgcodecs/src/grfmt_png.cpp:1: error: (-2:Unspecified error) bad")

    monkeypatch.setattr(cv2, "imdecode", broken)
    with pytest.raises(ImageReadError, match=r"small\.png: OpenCV cannot decode it \(\(-2:Unspecified error\) bad\)"):
        read_image(path)


def _gradient_jpeg(path: Path, width: int, height: int) -> np.ndarray:
    """A smooth RGB image saved as a JPEG (so a reduced decode is close to a downscale); returns it as RGB."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    np.full((height, width), 60, np.float32)], -1).astype(np.uint8)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return rgb


def test_read_image_decodes_big_jpegs_reduced(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    rgb = _gradient_jpeg(path, 4801, 3200)
    full, size = read_image_sized(path)  # 15 MP: under REDUCE_ABOVE_PIXELS, decoded in full
    assert full.shape == (3200, 4801, 3) and size == (4801, 3200)
    reduced, size = read_image_sized(path, reduce_above=1_000_000)
    # by 2 only: by 4 the long side (1201) would fall under REDUCED_MIN_SIDE; libjpeg rounds sizes up
    assert reduced.shape == (1600, 2401, 3) and size == (4801, 3200)
    expected = cv2.resize(rgb, (2401, 1600), interpolation=cv2.INTER_AREA)  # the same picture, still RGB
    assert np.abs(reduced.astype(np.int16) - expected).mean() < 2.0


def test_read_image_reduction_factor_follows_reduced_min_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jpg"
    _gradient_jpeg(path, 2400, 1600)
    monkeypatch.setattr(preprocess, "REDUCED_MIN_SIDE", 300)
    assert read_image_sized(path, reduce_above=1_000_000)[0].shape == (200, 300, 3)  # by 8
    monkeypatch.setattr(preprocess, "REDUCED_MIN_SIDE", 301)
    assert read_image_sized(path, reduce_above=1_000_000)[0].shape == (400, 600, 3)  # by 4


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an EXIF APP1 segment (one IFD entry: Orientation) inserted after SOI."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_read_image_sized_reports_the_rotated_full_size(tmp_path: Path) -> None:
    """An EXIF-rotated (90 degrees) big JPEG: the array is reduced and rotated; the size is the full one, rotated."""
    plain = tmp_path / "plain.jpg"
    _gradient_jpeg(plain, 4801, 3200)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(plain.read_bytes(), 6))
    image, size = read_image_sized(path)
    assert image.shape == (4801, 3200, 3) and size == (3200, 4801)  # sanity: OpenCV applies the orientation
    image, size = read_image_sized(path, reduce_above=1_000_000)
    assert image.shape == (2401, 1600, 3) and size == (3200, 4801)
    with pytest.raises(ImageReadError, match="4801x3200 "):  # the header walk skips the APP1 segment
        read_image(path, max_pixels=1000)


def test_read_image_normal_photos_decode_exactly_as_before(boxed_photos: list[Path]) -> None:
    """Photos under REDUCE_ABOVE_PIXELS are what cv2.imread gives, pixel for pixel (MediaPipe parity)."""
    for path in boxed_photos[:4]:
        image, size = read_image_sized(path)
        np.testing.assert_array_equal(image, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        assert size == (image.shape[1], image.shape[0])


def test_read_image_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.png"
    assert cv2.imwrite(str(path), np.zeros((5, 5, 3), np.uint8))
    if os.geteuid() == 0:  # root reads anything: make the open itself fail as it would for a user
        def denied(file: object, *args: object, **kwargs: object) -> object:
            if Path(str(file)) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return open(file, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(preprocess, "open", denied, raising=False)
    else:
        path.chmod(0)
    with pytest.raises(ImageReadError, match=r"secret\.png: cannot read the file \(Permission denied\)"):
        read_image(path)
