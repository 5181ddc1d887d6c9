"""Shared fixtures: the repo's weights, real photos from ../shared/data and scikit-image."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data: Path) -> Path:
    """8 real photos (4 portraits, 4 group shots) for short distillation runs; with val_fraction 0.25 the
    hash of their bytes holds out 1 and trains on 6 (1 is test). A test file may define its own."""
    folder = tmp_path_factory.mktemp("photos")
    picks = sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:4]
    picks += sorted((shared_data / "unlabeled" / "human_samples").glob("*.jpg"))[:4]
    for p in picks:
        shutil.copy(p, folder / p.name)
    return folder


def small_run(folder: Path, out: Path, **kw: Any) -> Any:
    """A one-epoch ``resnet_slim`` distillation config on ``folder`` (kw overrides), for run-folder tests."""
    from blazeport.distill.trainer import TrainConfig  # torch: only for the tests that train

    base: dict[str, Any] = dict(images=[str(folder)], out=str(out), student="resnet_slim", epochs=1, batch_size=8,
                                lr=2e-3, val_fraction=0.25, limit=8, progress=False, threads=1, seed=1)
    base.update(kw)
    return TrainConfig(**base)


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
