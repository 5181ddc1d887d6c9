"""tools/source_holdout.py's pieces that decide what is trained on and what is scored (no training here:
the runs themselves are ``blazeport distill`` and ``blazeport eval``, tested on their own)."""

from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np

from blazeport.distill.stream import ImageIndex

holdout = importlib.import_module("tools.source_holdout")


def _folder(root: Path, name: str, n: int) -> None:
    (root / name).mkdir(parents=True)
    for i in range(n):
        assert cv2.imwrite(str(root / name / f"{name}_{i:03d}.jpg"), np.full((40, 60, 3), i, np.uint8))


def test_sources_are_the_subfolders_with_photos(tmp_path: Path) -> None:
    _folder(tmp_path, "b", 2)
    _folder(tmp_path, "a", 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a source")
    assert holdout.sources(tmp_path) == ["a", "b"]


def test_the_test_split_is_the_one_distill_never_trains_on(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _folder(tmp_path, name, 60)
    folders = [tmp_path / "a", tmp_path / "c"]
    index = ImageIndex([str(f) for f in folders])
    _, _, test = index.split(0.1, 0.1)  # what `blazeport distill` does with its default fractions
    expected = sorted(str(index.paths[i]) for i in test)
    got = sorted(str(p) for p in holdout.test_split(folders))
    assert got == expected and 0 < len(got) < 120
    assert not any("/b/" in p for p in got)


def test_table_rows_show_bands_and_missing_values() -> None:
    result = {"images": 5, "references": 4, "AP50": 0.75, "AP": None, "found50": 3,
              "breakdown": {"by_face_width": {"under_15pct": {"AP50": 0.5, "AP": 0.2, "references": 2},
                                              "15_to_40pct": {"AP50": 1.0, "AP": 0.7, "references": 2},
                                              "over_40pct": {"AP50": float("nan"), "AP": float("nan"), "references": 0}},
                            "by_teacher_score": {}}}
    row = holdout.row("wider_416", "wider_416", "source held out", result)
    line = holdout.table([row]).splitlines()[-1]
    assert line == "| wider_416 | source held out | wider_416 | 5 | 4 | 0.750 | - | 0.500 (2) | 1.000 (2) | - (0) |"


def test_an_out_folder_inside_the_images_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    import pytest

    _folder(tmp_path, "a", 2)
    monkeypatch.setattr(sys, "argv", ["source_holdout.py", "--images", str(tmp_path), "--out", str(tmp_path / "runs")])
    with pytest.raises(SystemExit):
        holdout.main()
    assert "is inside --images" in capsys.readouterr().err and not (tmp_path / "runs").exists()
