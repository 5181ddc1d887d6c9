"""``--smooth``: MediaPipe's one-euro filter (``one_euro_filter.cc``) on boxes and keypoints over time."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import blazeport
from blazeport.pipeline.postprocess import Detection
from blazeport.video.smoothing import DetectionSmoother, OneEuroFilter

MS = 1_000_000  # ns


def test_one_euro_follows_mediapipes_formulas_step_by_step() -> None:
    f = OneEuroFilter(frequency=30.0, min_cutoff=1.0, beta=0.5, derivate_cutoff=1.0)
    assert f.apply(10 * MS, 1.0, np.array([2.0]))[0] == 2.0  # the first value passes
    # second value: the rate is still the default 30 Hz (the first timestamp only sets last_time)
    freq = 1 / ((40 - 10) * 1e-3)  # then it is measured from the timestamps: 33.3 Hz
    out = f.apply(40 * MS, 1.0, np.array([5.0]))[0]

    def alpha(cutoff: float, rate: float) -> float:
        return 1.0 / (1.0 + (1.0 / (2 * math.pi * cutoff)) * rate)

    d = np.float32(alpha(1.0, freq)) * ((5.0 - 2.0) * freq) + 0.0  # the speed's filter starts at 0, then blends
    d = float(np.float32(d))
    a = float(np.float32(alpha(1.0 + 0.5 * abs(d), freq)))
    assert out == pytest.approx(float(np.float32(a * 5.0 + (1 - a) * 2.0)), rel=1e-6)
    assert f.frequency == pytest.approx(freq)


def test_one_euro_constant_input_and_repeated_timestamps() -> None:
    f = OneEuroFilter()
    for t in range(1, 20):
        assert f.apply(t * 33 * MS, 0.01, np.array([7.5, -3.0])).tolist() == [7.5, -3.0]
    state = (f._stored.copy(), f.last_time_ns)  # type: ignore[union-attr]
    assert f.apply(19 * 33 * MS, 0.01, np.array([100.0, 100.0])).tolist() == [100.0, 100.0]  # not after the last: raw
    assert np.array_equal(f._stored, state[0]) and f.last_time_ns == state[1]  # and nothing learnt from it
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0.0)


def face(x: float, y: float = 0.3, size: float = 0.2, score: float = 0.9) -> Detection:
    kps = [(x + size * a, y + size * b) for a, b in ((0.3, 0.3), (0.7, 0.3), (0.5, 0.5), (0.5, 0.75), (0.0, 0.4), (1.0, 0.4))]
    return Detection(score, (x, y, size, size), kps)


def test_smoothing_calms_a_still_face_on_a_noisy_sensor(shared_data: Path) -> None:
    """A still camera on a real face with sensor noise: the detector's boxes jitter by ~0.7 px; smoothed, less."""
    photo = cv2.imread(str(shared_data / "unlabeled/pyfeat_video_frames/WolfgangLanger_Pexels_0000.jpg"))
    photo = cv2.cvtColor(cv2.resize(photo, (320, 180), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    frames = [np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8) for _ in range(40)]
    detector = blazeport.load("short_range", backend="tflite", threads=1)
    raw, smooth = [], []
    for (_, _, r), (_, _, s) in zip(detector.detect_video(frames), detector.detect_video(frames, smooth=True), strict=True):
        assert len(r) == len(s) == 1 and r[0].score == s[0].score
        raw.append(np.r_[r[0].box, np.ravel(r[0].keypoints)])
        smooth.append(np.r_[s[0].box, np.ravel(s[0].keypoints)])
    jitter_raw, jitter_smooth = np.std(raw[10:], 0).mean() * 320, np.std(smooth[10:], 0).mean() * 320
    assert jitter_raw > 0.3  # pixels: there is jitter to remove
    assert jitter_smooth < 0.7 * jitter_raw


def test_smoothing_follows_a_fast_move() -> None:
    smoother = DetectionSmoother()
    for i in range(40):  # still, then a jump of 30% of the image
        x = 0.3 + (0.3 if i >= 30 else 0.0)
        (d,) = smoother([face(x)], i * 1000 / 30, 640, 480)
        assert d.score == 0.9 and len(d.keypoints) == 6
    assert abs(d.box[0] - 0.6) < 0.01  # followed within 10 frames (beta 80), not lagged behind


def test_each_face_keeps_its_own_filter_and_a_lost_face_starts_fresh() -> None:
    smoother = DetectionSmoother()
    for i in range(10):
        smoother([face(0.1 + 0.002 * (i % 2))], i * 33.3, 640, 480)
    assert len(smoother.tracks) == 1
    first = smoother.tracks[0]
    a, b = smoother([face(0.7), face(0.101)], 10 * 33.3, 640, 480)  # a new face arrives, listed first
    assert a.box == pytest.approx((0.7, 0.3, 0.2, 0.2))  # a new face passes unfiltered
    assert smoother.tracks[1] is first  # the old face kept its filter though its place in the list moved
    assert b.box[0] != 0.101
    smoother([face(0.7)], 11 * 33.3, 640, 480)  # the first face is gone: its filter too
    (back,) = smoother([face(0.7), face(0.4)], 12 * 33.3, 640, 480)[1:]
    assert back.box == pytest.approx((0.4, 0.3, 0.2, 0.2))
