"""Image reading and MediaPipe-exact letterboxing (numpy + OpenCV, no torch).

MediaPipe's CPU path (``mediapipe/calculators/tensor/image_to_tensor_calculator.cc`` with
``keep_aspect_ratio: true`` and ``BORDER_ZERO``, via ``image_to_tensor_converter_opencv.cc``)
does this: the region of interest is the whole image grown to a square around its centre
(``PadRoi`` in ``image_to_tensor_utils.cc``); ``cv::getPerspectiveTransform`` maps the ROI's
corners onto the tensor's corners (pixel edge 0 -> 0 and W -> size, no half-pixel shift);
``cv::warpPerspective`` resamples the *uint8* image bilinearly with a black border; only then
is the result scaled to [-1, 1] (so the border becomes -1). A plain ``cv2.resize`` (half-pixel
centres) moves boxes by up to 0.06.

MediaPipe 0.10.14 links an OpenCV whose ``warpPerspective`` is the 3.4-4.x fixed-point one (1/32-pixel
grid, 15-bit bilinear weights); OpenCV 5 rewrote it, which moves warped pixels by up to 4 levels and
face scores by up to 0.013. So :func:`letterbox` builds the old warp's fixed-point maps itself
(:func:`_warp_maps`) and resamples with ``cv2.remap``, whose fixed-point path is the same in 4.x and 5:
the tensor is bit-identical to MediaPipe's whatever OpenCV is installed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from blazeport.errors import BlazeportError


class ImageReadError(BlazeportError):
    """An image file that cannot be read: missing, unreadable, not decodable, or over the pixel limit."""


# Images over this many pixels are refused from their header, before any decoding. 500 MP is 2.5x the
# largest camera sensors (200 MP phones, 100-150 MP medium format), so every photo and most stitched
# panoramas pass; what is bigger is a gigapixel scan or a decompression bomb (a one-colour 30000 x 30000
# PNG is a few MB on disk and 2.7 GB decoded). At the limit a PNG or TIFF still peaks at ~3 GB while OpenCV
# decodes it (6 bytes a pixel: it decodes, then copies); JPEGs that large are decoded reduced (below):
# ~100 MB for a baseline one, ~1.5 GB for a progressive one (libjpeg keeps every DCT coefficient).
# OpenCV refuses 2**30 pixels and more by itself unless OPENCV_IO_MAX_IMAGE_PIXELS is set before cv2 is imported.
MAX_PIXELS = 500_000_000

# JPEGs over this many pixels are decoded reduced by 2, 4 or 8 in libjpeg's IDCT (cv2.IMREAD_REDUCED_COLOR_N),
# never to a long side under REDUCED_MIN_SIDE: 8x the largest model input (256), so the model input keeps
# its detail, at a fraction of the memory and time. 50 MP keeps every 48 MP phone photo and
# anything smaller decoded in full, pixel for pixel what MediaPipe sees (the parity tests rely on it).
REDUCE_ABOVE_PIXELS = 50_000_000
REDUCED_MIN_SIDE = 2048
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_OPENCV_MAX_PIXELS = 1 << 30  # imgcodecs' default OPENCV_IO_MAX_IMAGE_PIXELS

# cv2.remap (the letterbox) asserts both sides < SHRT_MAX; a longer image is first shrunk to this long side
_REMAP_MAX_SIDE = 32767
_SHRUNK_SIDE = 4096


@dataclass(frozen=True)
class Letterbox:
    """Padding added around the image, as fractions of the padded square (MediaPipe's order)."""

    left: float
    top: float
    right: float
    bottom: float


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read any OpenCV-readable image as RGB uint8 ``(H, W, 3)``.

    Grayscale and 16-bit files are converted, alpha is dropped, EXIF rotation is applied. Files
    over ``max_pixels`` (default :data:`MAX_PIXELS`) are refused; JPEGs over
    :data:`REDUCE_ABOVE_PIXELS` come back reduced (see :func:`read_image_sized` for the file's size).
    """
    return read_image_sized(path, max_pixels)[0]


def read_image_sized(path: str | Path, max_pixels: int | None = None, reduce_above: int | None = None,
                     reduce_to: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`, plus the file's full ``(width, height)`` (after EXIF rotation).

    The size matters when a big JPEG was decoded reduced: detections are normalized, so multiply them
    by this size, not the array's, for pixel coordinates in the original file. The size is read from
    the header (PNG, JPEG, BMP, WebP, TIFF) before the file is decoded, so an image over ``max_pixels``
    costs nothing; other formats are checked once decoded. ``reduce_above`` (default
    :data:`REDUCE_ABOVE_PIXELS`) is the JPEG size above which decoding is reduced.

    ``reduce_to`` (the fast decode, off by default): every JPEG is decoded reduced by the largest
    of 2, 4, 8 that keeps its long side at ``reduce_to`` pixels or more. libjpeg then skips most
    of the IDCT and the colour conversion, and the letterbox, which shrinks the image to the model's
    input anyway, reads fewer pixels. The pixels differ from a full decode, so detections move a
    little (``blazeport bench --folder --fast-decode`` measures how much); MediaPipe decodes in full.

    Raises:
        ImageReadError: missing or unreadable file, not a decodable image, or over ``max_pixels``.
        BlazeportError: ``max_pixels`` or ``reduce_above`` not a positive integer.
    """
    path = Path(path)
    limit = _positive_int("max_pixels", MAX_PIXELS if max_pixels is None else max_pixels)
    reduce_above = _positive_int("reduce_above", REDUCE_ABOVE_PIXELS if reduce_above is None else reduce_above)
    try:
        with open(path, "rb") as file:
            header = _header_size(file)
            if header is not None:
                _check_pixels(path, header, limit)
            file.seek(0)
            data = np.fromfile(file, dtype=np.uint8)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and path.is_symlink():  # open() says only "No such file or directory"
            raise ImageReadError(f"{path}: broken symlink (its target {path.readlink()} does not exist).") from None
        raise ImageReadError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    factor = 1
    if header is not None and data[:3].tobytes() == b"\xff\xd8\xff":
        if header[0] * header[1] > reduce_above:
            factor = _reduction(*header)
        if reduce_to is not None:
            factor = max(factor, _reduction(*header, _positive_int("reduce_to", reduce_to)))
    try:
        img = cv2.imdecode(data, _REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR)) if data.size else None
    except cv2.error as exc:
        hint = ""
        if (header is not None and header[0] * header[1] >= _OPENCV_MAX_PIXELS) or "MAX_IMAGE_PIXELS" in str(exc):
            hint = " OpenCV refuses 2**30 pixels and more unless OPENCV_IO_MAX_IMAGE_PIXELS is set before cv2 is imported."
        reason = str(exc).strip().split(" error: ", 1)[-1] or "cv2.error"  # drop "OpenCV(5.x) /path/file.cpp:80:"
        raise ImageReadError(f"{path}: OpenCV cannot decode it ({reason}).{hint}") from None
    del data
    if img is None:
        raise ImageReadError(f"{path}: not an image OpenCV can decode (empty, truncated or another format).")
    h, w = img.shape[:2]
    if header is None:
        size = (w, h)
        _check_pixels(path, size, limit)  # a format without a parsed header: checked once decoded
    elif factor == 1:
        size = (w, h)  # the header's, or its transpose when EXIF rotated the image
    else:
        width, height = header  # libjpeg's reduced size is ceil(side / factor); anything else means EXIF rotated it
        size = (width, height) if (w, h) == (-(-width // factor), -(-height // factor)) else (height, width)
    cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second full-size copy
    return img, size


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise BlazeportError(f"{name} must be a positive integer (pixels), got {value!r}")
    return int(value)


def _check_pixels(path: Path, size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageReadError(
            f"{path}: {width}x{height} is {width * height:,} pixels, over the limit of {limit:,} pixels (a decompression "
            "bomb, or a huge scan or panorama); raise the limit with --max-pixels (max_pixels= in Python) if the file "
            "is trusted."
        )


def _reduction(width: int, height: int, min_side: int | None = None) -> int:
    """The largest JPEG reduction (8, 4, 2) that keeps the long side at ``min_side`` (default:
    REDUCED_MIN_SIDE, read at call time) or more; else 1."""
    side, min_side = max(width, height), REDUCED_MIN_SIDE if min_side is None else min_side
    return next((f for f in (8, 4, 2) if -(-side // f) >= min_side), 1)


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): all but DHT C4, JPG C8, DAC CC
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HEADER_SCAN_LIMIT = 4096  # JPEG segments or TIFF tags looked at before giving up (then checked once decoded)


def _header_size(file: BinaryIO) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, JPEG, BMP, WebP or TIFF header, without decoding; None if not found.

    Pillow could tell too, but its ``Image.open`` applies its own global decompression-bomb limit
    (a warning at 89 MP, an error at 179 MP); these few fixed-layout headers are simpler to read here.
    """
    head = file.read(32)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return _positive_size(*struct.unpack_from(">II", head, 16))
        if head.startswith(b"\xff\xd8\xff"):
            return _jpeg_size(file)
        if head.startswith(b"BM"):
            if struct.unpack_from("<I", head, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
                return _positive_size(*struct.unpack_from("<HH", head, 18))
            width, height = struct.unpack_from("<ii", head, 18)
            return _positive_size(width, abs(height))  # negative height: rows stored top-down
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_size(file, head)
    except (struct.error, OverflowError, ValueError, OSError):  # truncated, or offsets past any file: let the
        return None  # decoder report it (a real read error comes back when the whole file is read)
    return None


def _positive_size(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _jpeg_size(file: BinaryIO) -> tuple[int, int] | None:
    """Walk the marker segments (EXIF, ICC, ...) by their lengths up to the start-of-frame."""
    file.seek(2)
    for _ in range(_HEADER_SCAN_LIMIT):
        if file.read(1) != b"\xff":
            return None
        marker = file.read(1)
        for _ in range(64):  # fill bytes
            if marker != b"\xff":
                break
            marker = file.read(1)
        if not marker or marker == b"\xff":
            return None
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # segments without a length
            continue
        if code in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = struct.unpack(">H", file.read(2))[0]
        if code in _JPEG_SOF:
            _, height, width = struct.unpack(">BHH", file.read(5))
            return _positive_size(width, height)  # height 0: defined later (DNL), unknown here
        if length < 2:
            return None
        file.seek(length - 2, 1)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the start code
        width, height = struct.unpack_from("<HH", head, 26)
        return _positive_size(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = struct.unpack_from("<I", head, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _tiff_size(file: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first IFD, classic or BigTIFF."""
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 64-bit offsets and counts, 20-byte entries
        file.seek(struct.unpack_from(order + "Q", head, 8)[0])
        count, entry_size, entry = struct.unpack(order + "Q", file.read(8))[0], 20, order + "HHQ8s"
    else:
        file.seek(struct.unpack_from(order + "I", head, 4)[0])
        count, entry_size, entry = struct.unpack(order + "H", file.read(2))[0], 12, order + "HHI4s"
    entries = file.read(min(count, _HEADER_SCAN_LIMIT) * entry_size)
    values: dict[int, int] = {}
    value_formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    for offset in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind, _, raw = struct.unpack_from(entry, entries, offset)
        if tag in (256, 257) and kind in value_formats:
            values[tag] = struct.unpack_from(order + value_formats[kind], raw)[0]
    if 256 in values and 257 in values:
        return _positive_size(values[256], values[257])
    return None


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA uint8 arrays, and nothing else.

    Anything else is a :class:`BlazeportError` saying what was wrong and what to pass instead, so
    a caller's mistake never surfaces as an OpenCV assertion. Non-contiguous views are fine (OpenCV
    copies them).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise BlazeportError(f"images must be uint8 arrays (0-255), got {image.dtype}; for floats in [0, 1] "
                             "pass (image * 255).round().astype(np.uint8)")
    channels_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
    if not channels_ok:
        batch = "; for several images call detect_batch with a list of them" if image.ndim == 4 else ""
        raise BlazeportError(f"expected an (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA image, "
                             f"got shape {image.shape}{batch}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BlazeportError(f"empty image: shape {image.shape} has no pixels")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    return image


def roi_transform(width: int, height: int, size: int) -> tuple[np.ndarray, Letterbox]:
    """The 3x3 matrix MediaPipe builds for a whole-image ROI padded to a square, and the padding."""
    side = float(max(width, height))
    cx, cy = width / 2.0, height / 2.0
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    # cv::boxPoints order for an unrotated rect: bottom-left, top-left, top-right, bottom-right
    src = np.array([[x0, y1], [x0, y0], [x1, y0], [x1, y1]], dtype=np.float32)
    dst = np.array([[0, size], [0, 0], [size, 0], [size, size]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    pad_x = (side - width) / 2.0 / side
    pad_y = (side - height) / 2.0 / side
    return matrix, Letterbox(pad_x, pad_y, pad_x, pad_y)


_INTER_BITS = 5  # OpenCV's INTER_BITS: warps sample on a 1/32-pixel grid
_INTER_TAB_SIZE = 1 << _INTER_BITS
_WARP_BLOCK_COLS = 64  # WarpPerspectiveInvoker's blocks: BLOCK_SZ 32 -> 16 rows x 64 columns


@lru_cache(maxsize=32)
def _warp_maps(width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-point maps OpenCV 3.4-4.x ``warpPerspective(INTER_LINEAR)`` builds for our ROI.

    As ``WarpPerspectiveInvoker`` in ``imgproc/src/imgwarp.cpp``: the matrix is inverted (LU, double);
    for output pixel (x, y) in a block starting at column xb, X = M0*xb + M1*y + M2 + M0*(x - xb)
    (likewise Y and W, in that order: the last bit decides ties), then X*32/W is rounded half to
    even. Integer parts (>> 5) make the ``CV_16SC2`` map, the 5+5 fractional bits the ``CV_16UC1``
    index into the bilinear weight table; ``cv2.remap`` then blends exactly as ``warpPerspective``.
    """
    matrix, _ = roi_transform(width, height, size)
    xy, alpha = perspective_maps(matrix, size, size)
    xy.flags.writeable = alpha.flags.writeable = False  # shared through the cache
    return xy, alpha


def fit_for_remap(image: np.ndarray) -> np.ndarray:
    """``image``, or a copy shrunk to a long side of 4096 when a side reaches 32767 (``cv2.remap`` and
    ``warpPerspective`` take no more; MediaPipe cannot either). Normalized coordinates are unchanged."""
    h, w = image.shape[:2]
    if max(h, w) < _REMAP_MAX_SIDE:
        return image
    scale = _SHRUNK_SIDE / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def perspective_maps(matrix: np.ndarray, out_width: int, out_height: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps that reproduce OpenCV 4.x ``warpPerspective(src, matrix, (out_width,
    out_height), INTER_LINEAR)`` exactly, for any 3x3 ``matrix`` (source -> output, as
    ``cv::getPerspectiveTransform`` gives it): see :func:`_warp_maps`. The letterbox uses it for
    the whole image; :mod:`blazeport.pipeline.roi` for the rotated face crops of the landmark model.
    """
    m = cv2.invert(np.asarray(matrix, np.float64), flags=cv2.DECOMP_LU)[1]
    y, x = np.mgrid[0:out_height, 0:out_width].astype(np.float64)
    xb = x - x % _WARP_BLOCK_COLS
    dx = x - xb
    w = m[2, 0] * xb + m[2, 1] * y + m[2, 2] + m[2, 0] * dx
    w = np.where(w != 0, _INTER_TAB_SIZE / np.where(w != 0, w, 1.0), 0.0)
    limits = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    fx = np.rint(np.clip((m[0, 0] * xb + m[0, 1] * y + m[0, 2] + m[0, 0] * dx) * w, *limits)).astype(np.int64)
    fy = np.rint(np.clip((m[1, 0] * xb + m[1, 1] * y + m[1, 2] + m[1, 0] * dx) * w, *limits)).astype(np.int64)
    xy = np.stack([fx >> _INTER_BITS, fy >> _INTER_BITS], -1).clip(-32768, 32767).astype(np.int16)
    alpha = ((fy & (_INTER_TAB_SIZE - 1)) * _INTER_TAB_SIZE + (fx & (_INTER_TAB_SIZE - 1))).astype(np.uint16)
    return xy, alpha


def letterbox(image: np.ndarray, size: int, normalization: tuple[float, float] = (-1.0, 1.0)) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 image -> ``(size, size, 3)`` float32 tensor in ``normalization`` range, padding."""
    image = as_rgb(image)
    h, w = image.shape[:2]
    if max(h, w) >= _REMAP_MAX_SIDE:
        # cv2.remap cannot take it (MediaPipe's warpPerspective cannot either): shrink it first. Boxes move
        # by at most the rounding of the shrunk size, < 1e-4 of the image.
        scale = _SHRUNK_SIDE / max(h, w)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    pad = _letterbox_pad(w, h, size)
    xy, alpha = _warp_maps(w, h, size)
    warped = cv2.remap(
        image, xy, alpha, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )  # (size, size, 3) uint8, what MediaPipe's cv::warpPerspective gives
    lo, hi = normalization
    # = warped.astype(float32) * scale + lo, without the temporaries (same two float32 roundings)
    tensor = np.multiply(warped, np.float32((hi - lo) / 255.0), dtype=np.float32)
    np.add(tensor, np.float32(lo), out=tensor)
    return tensor, pad


@lru_cache(maxsize=32)
def _letterbox_pad(width: int, height: int, size: int) -> Letterbox:
    """:func:`roi_transform`'s padding, cached per image and tensor size like the warp maps."""
    return roi_transform(width, height, size)[1]
