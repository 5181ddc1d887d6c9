"""Writing a user's files safely: the one place every command's outputs go through.

Four rules, each one a bug a user hit before it existed:

- **Never write where we read.** :func:`check_output` refuses an output path that resolves to an
  input (the same file, through symlinks or hard links too): ``blazeport convert X.tflite -o
  X.tflite`` once replaced Google's original with safetensors.
- **Check the target before the work.** :func:`check_output` also refuses a folder where a file is
  wanted and a place that cannot be written, *before* a minute of export or conversion runs.
- **Never replace a file this run did not make, unless asked.** An output path that holds a file
  is refused before any work (:func:`check_output`), unless the user passed ``--overwrite``
  (``overwrite=True``) or the caller knows the file for its own earlier output (``convert``'s
  re-conversion of the same original). Drawings take a free name instead (:func:`free_name`):
  ``detect dl/photo.png --out dl`` once replaced ``dl/photo.jpg``. The final rename is itself
  no-clobber (a hard link, which fails if the name was taken meanwhile).
- **Replace a good output only with a verified one.** :func:`staged` writes to a temporary file
  beside the target; the caller verifies it and calls :meth:`Staged.commit`, which renames it over
  the target (atomic on one filesystem). A failure, or no commit, deletes the temporary file and
  leaves the previous output exactly as it was.

:func:`write_atomic` is the one atomic writer for bytes (weights, exports, checkpoints, reports).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from blazeport.errors import BlazeportError

__all__ = ["OVERWRITE_HINT", "PACKAGE_DIR", "Staged", "check_output", "drawing_paths", "free_name", "in_source_checkout",
           "inputs_outside", "same_file", "sha256_of", "staged", "write_atomic"]

OVERWRITE_HINT = "choose another path, or pass --overwrite to replace it"
PACKAGE_DIR = Path(__file__).resolve().parent  # blazeport itself: site-packages/blazeport once installed


def in_source_checkout() -> bool:
    """Whether blazeport runs from a clone (``pip install -e .``): its ``pyproject.toml`` sits beside the
    package. Only then may a command write into the package's own folders (``convert`` refreshing
    ``weights/``); an installed package is never written to."""
    return (PACKAGE_DIR.parent / "pyproject.toml").is_file()


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file: same inode when both exist, else same resolved path."""
    a, b = Path(a), Path(b)
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # (path, device, inode, size, mtime_ns) -> sha256


def sha256_of(path: str | Path) -> str:
    """The file's sha256 (hex); an unreadable file is one clear error. Remembered per file version
    (device, inode, size, modification time), so opening a model hashes it once, not once per check."""
    try:
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return _DIGESTS[key]
    except OSError as exc:
        raise BlazeportError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _temp_name(out: Path) -> Path:
    # keeps the real suffix: runtimes and blazeport.load pick the format from it
    return out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")


def check_output(out: str | Path, inputs: Iterable[str | Path] = (), what: str = "output", overwrite: bool = False) -> Path:
    """Refuse ``out`` before any work if it is an input, a folder, an existing file (unless
    ``overwrite``), or cannot be written there.

    Creates nothing but a probe file that is removed at once (as root, permission bits say nothing;
    only trying to create a file tells whether the folder, its filesystem or its quota takes one).
    """
    out = Path(out)
    for src in inputs:
        if same_file(out, src):
            raise BlazeportError(f"{out}: this {what} is the input {src}; writing it would destroy the input. "
                                 "Choose another output path.")
    if out.is_dir():
        raise BlazeportError(f"{out}: is a folder; the {what} must be a file path (e.g. {out / 'model'}...)")
    if out.resolve().is_relative_to(PACKAGE_DIR) and not in_source_checkout():
        raise BlazeportError(f"{out}: is inside the installed blazeport package ({PACKAGE_DIR}), which is never written "
                             f"to; write the {what} to a folder of yours (e.g. -o {Path.cwd() / out.name})")
    if not overwrite and (out.exists() or out.is_symlink()):
        raise BlazeportError(f"{out}: a file of that name exists, and blazeport never replaces a file it did not make; "
                             f"{OVERWRITE_HINT}")
    parent = out.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BlazeportError(f"{out}: cannot create the {what} there: {existing} is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".blazeport-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BlazeportError(f"{out}: cannot write the {what} into {existing} ({exc.strerror or exc}). "
                             "Choose a writable place.") from None
    return out


def _appeared(out: Path) -> BlazeportError:
    return BlazeportError(f"{out}: a file of that name appeared while this run worked; it was left as it was. "
                          f"Choose another path, or pass --overwrite to replace it")


def _put(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished ``tmp`` to ``out``: a rename, or with ``replace=False`` a hard link that fails
    if ``out`` exists (atomic no-clobber: a name taken since the check is never overwritten)."""
    if replace:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise _appeared(out) from None
    except OSError:  # a filesystem without hard links: check, then rename (a narrow race, as before)
        if out.exists():
            raise _appeared(out) from None
        os.replace(tmp, out)
        return
    tmp.unlink()


class Staged:
    """A temporary file beside ``target``; :meth:`commit` puts it in place, else it is deleted."""

    def __init__(self, target: Path, replace: bool = True):
        self.target = target
        self.path = _temp_name(target)
        self.replace = replace
        self.committed = False

    def commit(self) -> Path:
        _put(self.path, self.target, self.replace)
        self.committed = True
        return self.target


@contextlib.contextmanager
def staged(target: str | Path, replace: bool = True) -> Iterator[Staged]:
    """Write to ``stage.path``, verify, then ``stage.commit()``; anything else leaves ``target`` as it was.
    ``replace=False``: the commit never replaces a file (one that appeared meanwhile is an error).

    An error about the temporary file (a full disk while writing it) is reported as the target's:
    the user named the target, and the temporary file is gone by then."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BlazeportError(f"{target}: cannot create its folder ({exc.strerror or exc}).") from None
    stage = Staged(target, replace)
    try:
        yield stage
    except BlazeportError as exc:
        if str(stage.path) not in str(exc):
            raise
        raise BlazeportError(str(exc).replace(str(stage.path), str(target))) from None
    finally:
        if not stage.committed:
            stage.path.unlink(missing_ok=True)


def write_atomic(out: str | Path, data: bytes, replace: bool = True) -> Path:
    """Write ``data`` beside ``out``, then rename: an interrupted write never leaves a half file,
    and a failed one (full disk, read-only folder) leaves no temporary file behind. ``replace=False``
    never replaces an existing ``out`` (:func:`_put`)."""
    out = Path(out)
    tmp = _temp_name(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        _put(tmp, out, replace)
    except (OSError, BlazeportError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, BlazeportError):
            raise
        raise BlazeportError(f"{out}: cannot write ({exc.strerror or exc}).") from None
    return out


def free_name(path: Path, taken: set[Path] | None = None) -> Path:
    """``path``, or the first of ``stem_2``, ``stem_3``, ... beside it that no file has and that is not
    in ``taken`` (names already given out in this run)."""
    taken = taken or set()
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink() or candidate in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def inputs_outside(arguments: list[str | Path], images: list[Path], out_dir: str | Path) -> tuple[list[Path], int]:
    """``images`` less those a folder argument found inside ``out_dir`` (and how many): with ``--out``
    inside an input folder, a second run must not take the first run's drawings for photos. An image
    named on the command line is always kept."""
    out = Path(out_dir).resolve()
    for a in arguments:
        if Path(a).is_dir() and Path(a).resolve() == out:
            raise BlazeportError(f"--out {out_dir} is the input folder {a}: the drawings would mix with the photos and "
                                 "be taken for photos by the next run. Choose another folder, or a subfolder")
    named = {Path(a).resolve() for a in arguments if not Path(a).is_dir()}
    kept = [p for p in images if p.resolve() in named or not p.resolve().is_relative_to(out)]
    return kept, len(images) - len(kept)


def drawing_paths(arguments: list[str | Path], images: list[Path], out_dir: str | Path, suffix: str = ".jpg",
                  overwrite: bool = False) -> list[Path]:
    """Where ``detect --out`` draws each image: never onto an input, never two onto one name, and
    never onto an existing file unless ``overwrite``.

    An image found in a folder argument keeps its path relative to that folder (``photos/a/x.jpg``
    -> ``OUT/a/x.jpg``); a file argument keeps its name. Names that would still collide (``a.jpg``
    and ``a.png``; ``x.jpg`` from two folders) get the source suffix (``a_jpg.jpg``, ``a_png.jpg``),
    then a counter. A name an existing file holds gets a free one (``x_2.jpg``, :func:`free_name`);
    with ``overwrite`` it is replaced, and it raises before anything is drawn if a drawing would
    replace an input image.
    """
    out_dir = Path(out_dir)
    folders = [Path(a).resolve() for a in arguments if Path(a).is_dir()]

    def relative(image: Path) -> Path:
        resolved = image.resolve()
        for folder in folders:
            if resolved.is_relative_to(folder):
                return resolved.relative_to(folder)
        return Path(image.name)

    rels = [relative(p) for p in images]
    first = [r.with_suffix(suffix) for r in rels]
    counts: dict[Path, int] = {}
    for t in first:
        counts[t] = counts.get(t, 0) + 1
    named = [t if counts[t] == 1 else r.with_name(f"{r.stem}_{r.suffix.lstrip('.') or 'img'}{suffix}")
             for t, r in zip(first, rels, strict=True)]
    seen: dict[Path, int] = {}
    targets = []
    for t in named:
        n = seen.get(t, 0)
        seen[t] = n + 1
        targets.append(out_dir / (t if n == 0 else t.with_name(f"{t.stem}_{n + 1}{suffix}")))
    if not overwrite:
        given: set[Path] = set()
        for i, t in enumerate(targets):
            targets[i] = free_name(t, given | set(targets[i + 1 :]))
            given.add(targets[i])
    resolved = {p.resolve() for p in images}
    inodes = {_inode(p) for p in images} - {None}
    for target, image in zip(targets, images, strict=True):
        if target.resolve() in resolved or _inode(target) in inodes:  # hard links too
            raise BlazeportError(f"--out {out_dir}: the drawing of {image} would be written to {target}, which is an "
                                 "input image. Choose an --out folder that holds no input.")
    return targets
