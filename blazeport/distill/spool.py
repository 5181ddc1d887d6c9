"""The held-out samples of WebDataset shards (validation and test), spooled: their encoded bytes in one
temporary file with offsets in memory, decoded on demand, so a run keeps them however many shards stream
past (:mod:`blazeport.distill.shards` streams the training samples)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.distill.dataset import make_input_uint8
from blazeport.distill.shards import ShardIndex, decode, image_member, key_and_ext
from blazeport.distill.stream import Sample
from blazeport.errors import BlazeportError
from blazeport.pipeline.preprocess import ImageReadError

__all__ = ["Spool"]


class Spool:
    """Held-out samples' encoded bytes in one temporary file (offsets in memory), decoded on demand."""

    def __init__(self, index: ShardIndex, which: str, size: int, folder: str | None = None):
        self.size, self.urls = size, index.urls
        lo, hi = (0.0, index.val_fraction) if which == "val" else \
            (index.val_fraction, index.val_fraction + index.test_fraction)
        want: dict[int, set[str]] = {}
        for s, key, place in index.held:
            if lo <= place < hi:
                want.setdefault(s, set()).add(key)
        where = folder if folder is not None else tempfile.gettempdir()
        try:
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
            self.file = tempfile.TemporaryFile(dir=folder, prefix="blazeport-heldout-")  # noqa: SIM115 (lives with the Spool)
            spans = self._fill(want)
        except OSError as exc:  # a full disk: one line, not a traceback (the temporary file vanishes when closed)
            if hasattr(self, "file"):
                self.file.close()
            raise BlazeportError(f"cannot spool the held-out samples into {where} ({exc.strerror or exc}); free space "
                                 "there, or pass --cache-dir on another disk") from None
        self.spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)

    def _fill(self, want: dict[int, set[str]]) -> list[tuple[int, int]]:
        """Copy the wanted samples' image bytes into the spool file; their (offset, length)."""
        spans: list[tuple[int, int]] = []
        self.names: list[str] = []
        pos = 0
        for s in sorted(want):
            with tarfile.open(self.urls[s], "r:") as tar:
                for m in tar:
                    key, ext = key_and_ext(m.name)
                    if m.isreg() and image_member(ext) and key in want[s]:
                        data = tar.extractfile(m).read()
                        self.file.write(data)
                        spans.append((pos, len(data)))
                        self.names.append(f"{key} in {self.urls[s]}")
                        pos += len(data)
                        want[s].discard(key)
        self.file.flush()
        return spans

    def __len__(self) -> int:
        return len(self.spans)

    def sample(self, i: int, epoch: int | None = None) -> Sample:
        skipped: list[str] = []
        for k in range(len(self)):
            j = (i + k) % len(self)
            off, n = self.spans[j]
            try:
                img = decode(os.pread(self.file.fileno(), int(n), int(off)), self.names[j], self.size)
            except ImageReadError as exc:
                skipped.append(str(exc))
                continue
            return make_input_uint8(img, self.size), tuple(skipped)
        raise BlazeportError(f"none of the {len(self)} held-out samples is readable (first: {skipped[0]})")

    def __getitem__(self, i: int) -> Sample:
        return self.sample(i)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a Spool is read in the process that made it")  # HeldOut decodes it in the main process
