"""The models that ship inside the package, and the check that they are the bytes we shipped.

``blazeport/bundled/weights`` holds Google's original ``.tflite`` files (their provenance and
licence in ``PROVENANCE.md``), their converted ``.safetensors``, the shipped students and their
training records; ``blazeport/bundled/anchors`` the SSD anchors. ``pip install blazeport`` carries
them as package data, so ``blazeport.load(name)`` works from any folder with nothing downloaded. A
clone's ``weights/`` and ``anchors/`` are links to these folders.

``SHA256SUMS`` beside them lists every bundled file (``sha256sum`` format, paths relative to
``bundled/``). :func:`check_bundled` compares a file with it the first time it is opened in a
process: a model damaged or swapped inside site-packages is refused with one message, not run.
``tools/bundle_manifest.py`` rewrites the list after a model is re-shipped.
"""

from __future__ import annotations

from pathlib import Path

from blazeport.errors import BlazeportError
from blazeport.files import sha256_of

__all__ = ["BUNDLE_DIR", "MANIFEST", "bundled_files", "check_bundled", "is_bundled", "read_manifest"]

BUNDLE_DIR = Path(__file__).resolve().parent.parent / "bundled"
MANIFEST = BUNDLE_DIR / "SHA256SUMS"
BUNDLED_KINDS = ("weights", "anchors", "photos")  # the folders whose every file is listed


def read_manifest(path: Path | None = None) -> dict[str, str]:
    """``relative path -> sha256`` from a ``sha256sum``-format file (default: the bundled list)."""
    path = MANIFEST if path is None else path  # looked up per call, so a test can point it at a copy
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BlazeportError(f"{path}: the list of bundled models cannot be read ({exc.strerror or exc}); "
                             "reinstall blazeport") from None
    out = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            out[name] = digest
    return out


def bundled_files(root: Path | None = None) -> list[Path]:
    """Every file under the bundled folders (what the manifest must list)."""
    root = BUNDLE_DIR if root is None else root
    return sorted(p for kind in BUNDLED_KINDS for p in (root / kind).rglob("*") if p.is_file())


def is_bundled(path: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(BUNDLE_DIR)


_CHECKED: set[tuple[str, str]] = set()


def check_bundled(path: str | Path) -> Path:
    """``path`` if it is not a bundled file, or is one whose sha256 is the manifest's; else one error.
    Checked once per file version and process (:func:`blazeport.files.sha256_of` remembers digests)."""
    path = Path(path)
    if not is_bundled(path):
        return path
    name = path.resolve().relative_to(BUNDLE_DIR).as_posix()
    digest = sha256_of(path)
    if (name, digest) in _CHECKED:
        return path
    expected = read_manifest().get(name)
    if expected is None:
        raise BlazeportError(f"{path}: not in the list of bundled models ({MANIFEST}); it was added after "
                             "installation. Load it by its own path from outside the package")
    if digest != expected:
        raise BlazeportError(f"{path}: its sha256 {digest[:12]}... is not the shipped {expected[:12]}...: the file was "
                             "changed or damaged after installation. Reinstall blazeport (pip install --force-reinstall); in a "
                             "clone where you re-shipped it on purpose, run python tools/bundle_manifest.py")
    _CHECKED.add((name, digest))
    return path
