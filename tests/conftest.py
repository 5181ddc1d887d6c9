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
