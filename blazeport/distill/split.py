"""The split of a run's photos: training, validation (chooses ``best.pt``) and test (chooses nothing).

**The rule of new runs, ``content-sha1``: a photo's place is a hash of what it is, its bytes.** Each
photo gets a place in [0, 1] from the sha1 of its file's bytes (of a WebDataset sample's image
member); places below ``--val-fraction`` are validation, the next ``--test-fraction`` test, the rest
training. The split stays stable as folders grow, and a copy of a photo under another name (or in
another folder, or another shard) always lands in the same split as the original, so no test
figure is measured on a photo the student trained on. Two different photos that share a name in
two folders may land apart: intended, they are different photos.

**The old rule, ``file-name``**, hashed each file's *name* (a shard sample's ``__key__``), so a
renamed copy could sit in train and test at once. A run records its rule (``split_rule`` in
``config.json`` and in every checkpoint's config); a run whose record names no rule was started
under the old one, and :func:`recorded_split_rule` keeps it when that run is resumed, so its
photos stay where they were.

Hashing reads every photo once at the start of a run (threads; a folder of 100,000 photos is
mostly a read of the folder, which the first epoch does anyway). With ``--cache-dir`` each file's
hash is kept in ``CACHE/split-sha1.json``, keyed by its resolved path, mtime and size like the
photo cache, so a resume or a second run reads no photo to split. A file that cannot be read is
placed by its name: it is skipped as unreadable wherever it lands.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from blazeport import files
from blazeport.errors import BlazeportError

__all__ = ["CONTENT_RULE", "NAME_RULE", "SPLIT_RULES", "HashCache", "content_hash", "file_places", "hex_place",
           "name_hash", "recorded_split_rule", "split_by_hash", "split_places"]

CONTENT_RULE = "content-sha1"  # new runs: sha1 of each photo's bytes
NAME_RULE = "file-name"  # runs recorded without a rule: sha1 of each file name / __key__
SPLIT_RULES = (CONTENT_RULE, NAME_RULE)


def hex_place(hexdigest: str) -> float:
    """A hex digest's place in [0, 1] (its first 32 bits)."""
    return int(hexdigest[:8], 16) / 0xFFFFFFFF


def name_hash(name: str) -> float:
    """A file name's (or a WebDataset ``__key__``'s) place in [0, 1]: the old rule, and the seed of a
    shard sample's augmentation."""
    return hex_place(hashlib.sha1(name.encode()).hexdigest())


def content_hash(data: bytes) -> float:
    """A photo's place in [0, 1] from its bytes: the rule of new runs."""
    return hex_place(hashlib.sha1(data).hexdigest())


def split_places(places: Sequence[float], val_fraction: float, test_fraction: float = 0.0, what: str = "images",
                 by: str = "photo's bytes") -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test indices from each item's place in [0, 1].

    Validation chooses ``best.pt``; test is never used to choose anything, so its figures are
    the honest ones. Places below ``val_fraction`` are validation, the next ``test_fraction``
    test: adding a test split leaves the validation images as they were.
    """
    train, val, test = [], [], []
    for i, h in enumerate(places):
        (val if h < val_fraction else test if h < val_fraction + test_fraction else train).append(i)
    if not val:
        raise BlazeportError(
            f"none of the {len(places)} {what} falls in the held-out {val_fraction:.0%} (the split is by a hash of "
            f"each {by}); the validation images choose best.pt, so the split must not be empty: add images or "
            "raise --val-fraction")
    if not train:
        raise BlazeportError(f"all {len(places)} {what} fall in the validation and test splits, none is left "
                             "to train on: add images or lower --val-fraction / --test-fraction")
    return train, val, test


def split_by_hash(names: Sequence[str], val_fraction: float, test_fraction: float = 0.0,
                  what: str = "images", by: str = "file name") -> tuple[list[int], list[int], list[int]]:
    """:func:`split_places` by a hash of each name: the old ``file-name`` rule."""
    return split_places([name_hash(n) for n in names], val_fraction, test_fraction, what, by)


def recorded_split_rule(saved: dict[str, Any], path: Path) -> str:
    """The rule a run recorded in its checkpoint's config (``file-name`` when it recorded none: it was
    started before the rule was recorded); one error for a rule this blazeport does not know."""
    rule = saved.get("split_rule") or NAME_RULE
    if rule not in SPLIT_RULES:
        raise BlazeportError(f"{path} records the split rule {rule!r}, which this blazeport does not know "
                             f"({', '.join(SPLIT_RULES)}); resume it with the blazeport that started it, or choose "
                             "another --out")
    return rule


class HashCache:
    """Content hashes kept across runs in ``FOLDER/split-sha1.json`` (nothing without a folder), each
    under its file's resolved path, mtime and size: a changed file is hashed again."""

    def __init__(self, folder: str | Path | None):
        self.file = Path(folder) / "split-sha1.json" if folder is not None else None
        self.entries: dict[str, Any] = {}
        self.changed = False
        if self.file is not None:
            try:
                loaded = json.loads(self.file.read_bytes())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                pass  # none yet, or damaged: rebuilt

    @staticmethod
    def key(path: str | Path) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"{os.path.realpath(path)}\0{st.st_mtime_ns}\0{st.st_size}"

    def get(self, key: str | None) -> Any:
        return self.entries.get(key) if key is not None and self.file is not None else None

    def put(self, key: str | None, value: Any) -> None:
        if key is not None and self.file is not None:
            self.entries[key] = value
            self.changed = True

    def save(self) -> None:
        """Write the hashes back (atomically); a failure costs the next run a re-read, not this run."""
        if self.file is not None and self.changed:
            with contextlib.suppress(BlazeportError):
                files.write_atomic(self.file, json.dumps(self.entries).encode())
            self.changed = False


def _file_digest(path: str) -> str | None:
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def file_places(paths: Sequence[str], cache_dir: str | Path | None = None) -> list[float]:
    """Each file's place by the ``content-sha1`` rule (an unreadable file: by its name), reading each
    file once, in threads, and none whose hash ``cache_dir`` already holds."""
    cache = HashCache(cache_dir)
    keys = [HashCache.key(p) for p in paths]
    digests: list[str | None] = [cache.get(k) for k in keys]
    todo = [i for i, d in enumerate(digests) if not isinstance(d, str)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, digest in zip(todo, pool.map(_file_digest, [paths[i] for i in todo]), strict=True):
            digests[i] = digest
            if digest is not None:
                cache.put(keys[i], digest)
    cache.save()
    return [hex_place(d) if d is not None else name_hash(Path(p).name) for p, d in zip(paths, digests, strict=True)]
