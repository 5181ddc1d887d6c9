"""Densifying TFLite's block-sparse weights (the sparse full-range model stores its convs so)."""

from __future__ import annotations

from typing import Any

import numpy as np

from blazeport.tflite.check import DamagedModel, sparse_levels


def _sparse_index_vector(dim: Any, which: str) -> np.ndarray:
    """Read a DimensionMetadata segments/indices union (int32, uint16 or uint8 vector)."""
    import tflite

    kind = dim.ArraySegmentsType() if which == "segments" else dim.ArrayIndicesType()
    table = dim.ArraySegments() if which == "segments" else dim.ArrayIndices()
    cls = {
        tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
        tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
        tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector,
    }.get(kind)
    if cls is None or table is None:
        raise DamagedModel(f"sparse {which} stored as union type {kind}")
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    return np.asarray(vec.ValuesAsNumpy(), dtype=np.int64) if vec.ValuesLength() else np.zeros(0, np.int64)


def densify(values: np.ndarray, dense_shape: tuple[int, ...], sparsity: Any) -> np.ndarray:
    """Expand a TFLite sparse tensor (DENSE / SPARSE_CSR levels, optional blocks) to dense.

    Mirrors ``FormatConverter::Populate`` in TFLite's
    ``kernels/internal/utils/sparsity_format_converter.cc``, but vectorised: each level expands
    the list of visited positions (a DENSE level multiplies it, a CSR level follows the segment
    array), and the leaves come out in the order the values are stored. The metadata is checked
    against the dense shape first (:func:`blazeport.tflite.check.sparse_levels`).
    """
    import tflite

    order = [int(x) for x in sparsity.TraversalOrderAsNumpy()] if sparsity.TraversalOrderLength() else []
    block_map = [int(x) for x in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    rank = len(dense_shape)
    levels: list[dict[str, Any]] = []
    for level in range(sparsity.DimMetadataLength()):
        dim = sparsity.DimMetadata(level)
        if dim.Format() == tflite.DimensionType.DENSE:
            levels.append({"dense": int(dim.DenseSize())})
        elif dim.Format() == tflite.DimensionType.SPARSE_CSR:
            levels.append({"segments": _sparse_index_vector(dim, "segments"), "indices": _sparse_index_vector(dim, "indices")})
        else:
            raise DamagedModel(f"sparse level {level} has format {dim.Format()}")
    sizes, block_sizes = sparse_levels(order, block_map, levels, dense_shape, len(values))
    pos = np.zeros(1, dtype=np.int64)  # index into the current level's storage
    coords: list[np.ndarray] = []
    for level, size in zip(levels, sizes, strict=True):
        if "dense" in level:
            pos = np.repeat(pos * size, size) + np.tile(np.arange(size), len(pos))
            coords = [np.repeat(c, size) for c in coords]
            coords.append(pos % size)
        else:
            segments, indices = level["segments"], level["indices"]
            counts = segments[pos + 1] - segments[pos]
            starts = np.repeat(segments[pos], counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = starts + offsets
            coords = [np.repeat(c, counts) for c in coords]
            coords.append(indices[pos])
    # coords[i] is the index along traversal dimension i; map back to the dense layout
    orig = [np.zeros_like(pos) for _ in range(rank)]
    for i in range(rank):
        orig[order[i]] = coords[i]
    for i in range(rank, len(levels)):
        d = block_map[i - rank]
        orig[d] = orig[d] * block_sizes[i - rank] + coords[i]
    dense = np.zeros(dense_shape, dtype=values.dtype)
    dense[tuple(orig)] = values
    return dense
