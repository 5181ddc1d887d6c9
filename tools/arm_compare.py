"""The comparison of tools/arm_check.py: two ``blazeport detect --json`` outputs (x86-64 and aarch64)
checked photo by photo, faces paired by closeness, every number within a tolerance, and the table that
reports it. Pure Python with no qemu, subprocess or file access, kept apart from the setup steps so that
it is unit-tested on its own (tests/test_arm_check.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------------
# comparison (pure: unit-tested without qemu)


@dataclass
class PhotoRow:
    """One photo's verdict: faces on each side, the worst difference over its paired faces, and why it
    failed (empty when it matched)."""

    image: str
    faces_x86: int
    faces_arm: int
    worst: float = 0.0
    worst_field: str = ""
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass
class Comparison:
    """Every photo's row, the worst difference over all of them, and the failures as sentences."""

    rows: list[PhotoRow] = field(default_factory=list)
    tolerance: float = TOLERANCE
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def worst(self) -> float:
        return max((r.worst for r in self.rows), default=0.0)

    @property
    def faces(self) -> int:
        return sum(r.faces_x86 for r in self.rows)


def _values(det: Mapping[str, Any]) -> list[tuple[str, float]]:
    """A detection flattened to named numbers: score, box[0..3], keypoints[i][j]."""
    named = [("score", float(det["score"]))]
    named += [(f"box[{i}]", float(v)) for i, v in enumerate(det["box"])]
    named += [(f"keypoints[{i}][{j}]", float(v)) for i, kp in enumerate(det["keypoints"]) for j, v in enumerate(kp)]
    return named


def _difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, str]:
    """The largest absolute difference between two detections and the field it is in (inf if their
    shapes differ, e.g. another number of keypoints)."""
    va, vb = _values(a), _values(b)
    if [n for n, _ in va] != [n for n, _ in vb]:
        return math.inf, "shape"
    worst, where = 0.0, ""  # no field to name when every number is equal
    for (name, x), (_, y) in zip(va, vb, strict=True):
        d = abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
        if d > worst:
            worst, where = d, name
    return worst, where


def _pair(x86: Sequence[Mapping[str, Any]], arm: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """Pair faces by closeness (greedy on the largest difference), not by list order: two faces with
    near-equal scores may come out of NMS in either order on another platform and still be the same faces."""
    candidates = sorted((*_difference(a, b), i, j) for i, a in enumerate(x86) for j, b in enumerate(arm))
    used_x, used_a, pairs = set(), set(), []
    for d, where, i, j in candidates:
        if i not in used_x and j not in used_a:
            used_x.add(i)
            used_a.add(j)
            pairs.append((d, where))
    return pairs


def compare(x86: Sequence[Mapping[str, Any]], arm: Sequence[Mapping[str, Any]], tolerance: float = TOLERANCE) -> Comparison:
    """Compare two ``blazeport detect --json`` outputs (lists of ``{"image", "width", "height",
    "detections"}``): the same photos, the same image sizes, the same number of faces per photo, and
    every number of every paired face within ``tolerance``. Each failure names its photo."""
    result = Comparison(tolerance=tolerance)
    by_image = {r["image"]: r for r in arm}
    for ref in x86:
        name = ref["image"]
        other = by_image.pop(name, None)
        if other is None:
            row = PhotoRow(name, len(ref["detections"]), 0, math.inf, "", "missing from the aarch64 output")
        else:
            row = _compare_photo(name, ref, other, tolerance)
        result.rows.append(row)
    for name, other in by_image.items():
        result.rows.append(PhotoRow(name, 0, len(other["detections"]), math.inf, "", "missing from the x86 output"))
    result.problems = [f"{r.image}: {r.problem}" for r in result.rows if r.problem]
    return result


def _compare_photo(name: str, ref: Mapping[str, Any], other: Mapping[str, Any], tolerance: float) -> PhotoRow:
    dx, da = ref["detections"], other["detections"]
    row = PhotoRow(name, len(dx), len(da))
    if (ref.get("width"), ref.get("height")) != (other.get("width"), other.get("height")):
        row.problem = (f"image size {ref.get('width')}x{ref.get('height')} on x86, "
                       f"{other.get('width')}x{other.get('height')} on aarch64")
    pairs = _pair(dx, da)
    if pairs:
        row.worst, row.worst_field = max(pairs)
    if len(dx) != len(da):
        row.worst = math.inf
        row.problem = row.problem or f"{len(dx)} face(s) on x86, {len(da)} on aarch64"
    elif row.worst > tolerance and not row.problem:
        row.problem = f"{row.worst_field} differs by {row.worst:.3g} (tolerance {tolerance:g})"
    return row


def format_table(comparison: Comparison) -> str:
    """A small fixed-width table: one line per photo, then the worst difference."""
    width = max([len(Path(r.image).name) for r in comparison.rows] + [5])
    lines = [f"{'photo':<{width}}  {'x86':>4}  {'arm':>4}  {'worst diff':>10}  field"]
    for r in comparison.rows:
        worst = "-" if not (r.faces_x86 or r.faces_arm) else f"{r.worst:.3g}"
        status = "" if r.ok else f"  FAIL: {r.problem}"
        lines.append(f"{Path(r.image).name:<{width}}  {r.faces_x86:>4}  {r.faces_arm:>4}  {worst:>10}  {r.worst_field}{status}")
    lines.append(f"{len(comparison.rows)} photo(s), {comparison.faces} face(s) on x86; worst difference "
                 f"{comparison.worst:.3g} (tolerance {comparison.tolerance:g})")
    return "\n".join(lines)
