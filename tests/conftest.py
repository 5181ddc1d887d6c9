"""Shared fixtures: the repo's weights, real photos from ../shared/data and scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights"
SHARED_DATA = ROOT.parent / "shared" / "data"
SHORT_RANGE_TFLITE = WEIGHTS / "face_detection_short_range.tflite"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip with a reason if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real photos not found at {SHARED_DATA} (the shared data folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def boxed_photos(shared_data: Path) -> list[Path]:
    """The 12 photos of faces-boxed (9 with hand-drawn boxes, 3 without)."""
    return sorted((shared_data / "faces-boxed" / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def clip_bgr(shared_data: Path) -> list[np.ndarray]:
    """40 frames of 320x240 made from real photos under camera motion: one face, none, three (tests/videos.py)."""
    from tests.videos import clip_frames

    return clip_frames(shared_data)


@pytest.fixture(scope="session")
def clip_mkv(tmp_path_factory, clip_bgr: list[np.ndarray]) -> Path:
    """``clip_bgr`` as a lossless FFV1 ``.mkv`` at 30 fps (frames read back are the frames written)."""
    from tests.videos import write_video

    return write_video(tmp_path_factory.mktemp("video") / "clip.mkv", clip_bgr)
