"""``blazeport bench --video FILE``: our video loop and MediaPipe's in their own processes, one report.
What the figures are is the command's business (README, Benchmarks); this checks the report's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blazeport.cli import main


def test_bench_video_times_our_loop_against_mediapipes(tmp_path: Path, clip_mkv: Path, capsys) -> None:
    pytest.importorskip("mediapipe", reason="the MediaPipe rows need the parity extra")
    report = tmp_path / "video.json"
    code = main(["bench", "--video", str(clip_mkv), "--backend", "tflite-original", "--threads", "1", "--draw",
                 "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0 and "x the frames/s of MediaPipe's own loop" in out
    rows = json.loads(report.read_text())["results"]
    ours = [r for r in rows if r["backend"] == "tflite-original"]
    mp = [r for r in rows if r["backend"] == "mediapipe"]
    assert [(r["draw"], r["reader"]) for r in ours] == [(False, True), (True, True)]
    assert sorted(r["reader"] for r in mp) == [False, True]
    for r in rows:
        assert r["frames"] == 40 and r["frames_per_s"] > 0 and r["detect_ms"] > 0 and r["decode_ms"] > 0
        assert r["faces"] == rows[0]["faces"] >= 55  # the same faces in every loop: the same frames, the same model
    assert ours[1]["draw_ms"] > 0 and ours[1]["encode_ms"] > 0 and ours[0]["draw_ms"] is None
    assert ours[0]["vs_mediapipe"] == pytest.approx(ours[0]["frames_per_s"] / next(r for r in mp if not r["reader"])[
        "frames_per_s"])


def test_bench_video_refuses_what_does_not_apply(clip_mkv: Path, capsys) -> None:
    assert main(["bench", "--video", str(clip_mkv), "--e2e"]) == 2
    assert "--e2e do(es) not apply to --video" in capsys.readouterr().err
    assert main(["bench", "--video", "missing.mp4"]) == 2
