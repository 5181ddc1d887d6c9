"""Real photos that ship inside installed packages (no downloads), and folders of images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.pipeline.preprocess import as_rgb
from blazeport.video.sources import is_sequence_pattern, is_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# what a folder's videos are called: listed with its photos and run as videos (never .ts: TypeScript shares it)
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".mts", ".m2ts",
                  ".3gp", ".ogv"}

# Bundled in scikit-image's wheel: a portrait (astronaut), a person with a camera, a cat, a cup,
# a rocket launch. Faces and non-faces alike: conversion checks compare raw outputs, not boxes.
SAMPLE_NAMES = ("astronaut", "camera", "chelsea", "coffee", "rocket")


BUNDLED_PHOTOS = Path(__file__).resolve().parent.parent / "bundled" / "photos"  # astronaut.png: a core install's photo


def sample_image_path(name: str = "astronaut") -> Path:
    """Path of a sample photo: bundled with blazeport (``astronaut``, the same bytes scikit-image ships),
    else inside scikit-image's installed package (the ``torch`` extra installs it)."""
    bundled = BUNDLED_PHOTOS / f"{name}.png"
    if bundled.is_file():
        return bundled
    try:
        import skimage
    except ImportError:
        raise BlazeportError(f"sample photo {name!r} comes with scikit-image: pip install 'blazeport[torch]'") from None
    path = Path(skimage.__file__).parent / "data" / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the scikit-image install")
    return path


def sample_images(names: tuple[str, ...] = SAMPLE_NAMES) -> list[np.ndarray]:
    """RGB uint8 photos: the bundled one read from its file, the rest from scikit-image (grayscale ones
    converted). ``astronaut`` gives the same pixels either way (the same PNG)."""
    if all((BUNDLED_PHOTOS / f"{n}.png").is_file() for n in names):
        return [_read_png(BUNDLED_PHOTOS / f"{n}.png") for n in names]
    try:
        import skimage.data
    except ImportError:
        raise BlazeportError(f"sample photos {', '.join(names)} come with scikit-image: pip install 'blazeport[torch]'"
                             ) from None
    return [as_rgb(getattr(skimage.data, n)()) for n in names]


def _read_png(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image files, sorted.

    A broken symlink with an image suffix is listed too: the reader then reports it as unreadable,
    so it is counted among the skipped files with its name, instead of vanishing from the run."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                              and (f.is_file() or _broken_link(f))))
        else:
            out.append(p)
    return out


def is_video_input(item: str | Path) -> bool:
    """A video file (by its suffix), a URL, or an image-sequence pattern (``frames/%04d.png``)."""
    return is_url(item) or is_sequence_pattern(item) or Path(item).suffix.lower() in VIDEO_SUFFIXES


def list_inputs(paths: list[str | Path]) -> list[Path | str]:
    """:func:`list_images`, with videos: a folder's video files are listed among its photos (sorted);
    a URL and an image-sequence pattern stay strings (``Path`` would fold ``rtsp://`` to ``rtsp:/``)."""
    out: list[Path | str] = []
    for p in paths:
        if is_url(p) or is_sequence_pattern(p):
            out.append(str(p))
            continue
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
                              and (f.is_file() or _broken_link(f))))
        else:
            out.append(p)
    return out
