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


def _row(label: str, kind: str, ap50: float, faces: int, small: tuple[float, int] | None = None) -> dict:
    bands = {"under_15pct": {"AP50": small[0], "AP": 0.0, "faces": small[1]}} if small else {}
    return {"scored_on": label, "run": "r", "kind": kind, "faces": faces, "AP50": ap50, "AP": ap50 / 2,
            "by_face_width": bands}


def test_selection_weights_folders_by_faces_and_counts_small_faces_apart() -> None:
    rows = [_row("wider", "source held out", 0.4, 100, (0.2, 30)), _row("portraits", "source held out", 1.0, 300),
            _row("voc", "external", 0.7, 100, (0.5, 10)), _row("test split (all)", "test split", 0.1, 1000)]
    sel = holdout.selection(rows)
    assert sel["rows"] == ["wider", "portraits", "voc"]  # the test split comes from the training sources
    assert sel["faces"] == 500 and abs(sel["AP50_weighted"] - (40 + 300 + 70) / 500) < 1e-12
    assert sel["small_faces"] == 40 and abs(sel["small_AP50_weighted"] - (0.2 * 30 + 0.5 * 10) / 40) < 1e-12


def test_compare_flags_every_held_out_or_external_row_that_got_worse() -> None:
    old = {"rows": [_row("wider", "source held out", 0.40, 100), _row("voc", "external", 0.70, 20),
                    _row("test split (all)", "test split", 0.9, 80)]}
    new = [_row("wider", "source held out", 0.45, 100), _row("voc", "external", 0.65, 20),
           _row("test split (all)", "test split", 0.5, 80), _row("caltech", "source held out", 1.0, 9)]
    got = {c["scored_on"]: c["worse"] for c in holdout.compare(new, old)}
    assert got == {"wider": False, "voc": True}  # test splits hold other photos; caltech has nothing to compare


def test_epoch_selection_weighs_every_runs_kept_epoch_and_prefers_the_later_on_a_tie() -> None:
    def point(epoch: int, label: str, ap50: float, faces: int) -> dict:
        return {"epoch": epoch, "scored_on": label, "faces": faces, "AP50": ap50, "AP": ap50 / 2, "by_face_width": {}}

    curves = {"wider": [point(20, "wider", 0.2, 100), point(40, "wider", 0.5, 100), point(60, "wider", 0.5, 100)],
              "all": [point(20, "voc", 0.9, 100), point(40, "voc", 0.7, 100), point(60, "voc", 0.7, 100),
                      point(80, "voc", 1.0, 100)]}  # epoch 80: only one run kept it, so it cannot be chosen
    chosen = holdout.epoch_selection(curves)
    assert [e["epoch"] for e in chosen["per_epoch"]] == [20, 40, 60]
    assert [round(e["AP50_weighted"], 3) for e in chosen["per_epoch"]] == [0.55, 0.6, 0.6]
    assert chosen["chosen_epoch"] == 60
    kinds = {r["scored_on"]: r["kind"] for r in chosen["chosen_rows"]}
    assert kinds == {"wider": "source held out", "voc": "external"}
    old = {"rows": [_row("wider", "source held out", 0.45, 100), _row("voc", "external", 0.75, 100)]}
    assert {c["scored_on"]: c["worse"] for c in holdout.compare(chosen["chosen_rows"], old)} == {"wider": False,
                                                                                                 "voc": True}


def test_every_run_gets_the_recipe_and_an_interrupted_one_resumes(tmp_path: Path, monkeypatch) -> None:
    """The recipe options reach each run's ``blazeport distill`` (an earlier recipe is re-run with its own
    zoom); a run with ``last.pt`` resumes, and a finished one (``summary.json``) is not trained again."""
    import argparse

    calls: list[list[str]] = []
    monkeypatch.setattr(holdout.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    args = argparse.Namespace(teacher="full_range_sparse", student="mobilenet", epochs=90, threads=1, workers=1,
                              seed=0, augment="none", zoom="0.75,1.5", keep_every=30, cache_dir=None, lr=None,
                              init_runs=None, init_epoch=None)
    holdout.train("pyfeat", [tmp_path / "a"], tmp_path, args)
    cmd = calls[-1]
    for flag, value in (("--teacher", "full_range_sparse"), ("--augment", "none"), ("--zoom", "0.75,1.5"),
                        ("--keep-every", "30"), ("--epochs", "90")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--resume" not in cmd and "--cache-dir" not in cmd

    (tmp_path / "pyfeat" / "last.pt").write_bytes(b"")
    holdout.train("pyfeat", [tmp_path / "a"], tmp_path, argparse.Namespace(**{**vars(args), "zoom": None}))
    assert "--resume" in calls[-1] and "--zoom" not in calls[-1]

    (tmp_path / "pyfeat" / "summary.json").write_text("{}")
    holdout.train("pyfeat", [tmp_path / "a"], tmp_path, args)
    assert len(calls) == 2

    # --init-runs: a fold finishes the same fold of an earlier recipe, never another run's student
    earlier = tmp_path / "earlier"
    holdout.train("wider", [tmp_path / "a"], tmp_path, argparse.Namespace(**{**vars(args), "init_runs": earlier,
                                                                           "init_epoch": 200, "lr": 0.001}))
    cmd = calls[-1]
    assert cmd[cmd.index("--init") + 1] == str(earlier / "wider" / "epochs" / "student_e0200.safetensors")
    assert cmd[cmd.index("--lr") + 1] == "0.001"


def test_a_shipped_file_takes_the_all_runs_place_on_the_external_folders(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """``--shipped FILE``: no run on every source is trained; the file is scored on each external folder, so
    an earlier recipe's report (its folds, its shipped file) has every row a new report is compared on."""
    import json
    import sys

    for name in ("a", "b"):
        _folder(tmp_path / "images", name, 3)
    (tmp_path / "voc").mkdir()
    shipped = tmp_path / "old.safetensors"
    shipped.write_bytes(b"x")
    trained, scored = [], []
    monkeypatch.setattr(holdout, "train", lambda name, folders, out, args: trained.append(name) or out / name)
    monkeypatch.setattr(holdout, "score", lambda student, images, args: scored.append((student, images)) or {
        "images": 3, "references": 4, "AP50": 0.5, "AP": 0.25, "found50": 2})
    monkeypatch.setattr(holdout, "test_split", lambda folders, rule: [])
    for run in ("a",):
        (tmp_path / "runs" / run / "epochs").mkdir(parents=True)
        (tmp_path / "runs" / run / "summary.json").write_text(json.dumps({"best_epoch": 1, "best": {}, "images": {}}))
    for epoch in (20, 40):  # kept students: scored on the fold's held-out source, one curve point each
        (tmp_path / "runs" / "a" / "epochs" / f"student_e{epoch:04d}.safetensors").write_bytes(b"x")
    monkeypatch.setattr(sys, "argv", ["source_holdout.py", "--images", str(tmp_path / "images"), "--out",
                                      str(tmp_path / "runs"), "--folds", "a", "--shipped", str(shipped),
                                      "--external", f"voc={tmp_path / 'voc'}"])
    assert holdout.main() == 0
    assert trained == ["a"]  # the fold only: no "all" run
    assert (shipped, [tmp_path / "voc"]) in scored
    report = json.loads((tmp_path / "runs" / "holdout.json").read_text())
    assert {(r["scored_on"], r["run"], r["kind"]) for r in report["rows"]} >= {("voc", "shipped", "external"),
                                                                                ("a", "a", "source held out")}
    assert report["shipped"] == str(shipped)
    assert [(c["epoch"], c["scored_on"], c["AP50"]) for c in report["by_epoch"]["a"]] == [(20, "a", 0.5), (40, "a", 0.5)]
    assert (tmp_path / "runs" / "a" / "epochs" / "student_e0040.safetensors", [tmp_path / "images" / "a"]) in scored
    assert report["epoch_selection"]["chosen_epoch"] == 40  # a tie: the later epoch

    old = tmp_path / "old.json"  # an earlier report without the external row: said, not passed silently
    old.write_text(json.dumps({"rows": [r for r in report["rows"] if r["scored_on"] == "a"]}))
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--compare", str(old)])
    capsys.readouterr()
    assert holdout.main() == 0
    out = capsys.readouterr().out
    assert "a: AP50 0.500 -> 0.500" in out and f"voc: no row in {old}" in out

    import pytest

    argv = sys.argv
    monkeypatch.setattr(sys, "argv", [*argv[:argv.index("--shipped")], "--shipped", str(tmp_path / "missing.st")])
    with pytest.raises(SystemExit):
        holdout.main()
    assert "missing.st: no such file" in capsys.readouterr().err

    # a run whose earlier student is missing is refused before anything trains
    monkeypatch.setattr(sys, "argv", [*argv, "--init-runs", str(tmp_path / "earlier"), "--init-epoch", "60"])
    with pytest.raises(SystemExit):
        holdout.main()
    assert "a/epochs/student_e0060.safetensors" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", [*argv, "--init-runs", str(tmp_path / "runs")])  # the --out itself
    with pytest.raises(SystemExit):
        holdout.main()
    assert "is --out" in capsys.readouterr().err
