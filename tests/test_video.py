"""Video frames (``blazeport.video.frames``): decoded once, in order, exact, streamed, rotated, timed; and what
a bad source does. The videos are made here from real photos (``tests/videos.py``)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import blazeport
from blazeport.errors import BlazeportError
from blazeport.pipeline.photos import is_video_input, list_inputs
from blazeport.video.frames import FrameSource, VideoReadError, open_frames
from blazeport.video.sources import ArrayCapture, OpenCVCapture, VideoInfo
from blazeport.video.writer import VideoOutput
from tests.videos import read_all, set_mp4_rotation, write_vfr, write_video


def rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("read_ahead", [None, 0])
def test_frames_are_the_frames_written_in_order_and_timed(clip_mkv: Path, clip_bgr: list[np.ndarray],
                                                          read_ahead: int | None) -> None:
    with open_frames(clip_mkv, read_ahead=read_ahead) as source:
        frames = list(source)
    assert source.info == VideoInfo(str(clip_mkv), 320, 240, 30.0, 40, live=False)
    assert [f.index for f in frames] == list(range(40)) and source.frames == source.decoded == 40
    assert all(np.array_equal(f.rgb, rgb(b)) for f, b in zip(frames, clip_bgr, strict=True))  # FFV1: lossless
    assert len({id(f.rgb) for f in frames}) == 40  # each frame its own array: nothing reused under the caller
    assert [round(f.time_ms) for f in frames] == [round(i * 1000 / 30) for i in range(40)]  # from the container
    assert source.error is None


def test_the_reader_stays_a_few_frames_ahead(clip_mkv: Path) -> None:
    """Memory is flat in the video's length: a slow consumer never has more than read_ahead frames waiting."""
    source = open_frames(clip_mkv, read_ahead=2)
    it = iter(source)
    next(it)
    time.sleep(0.5)  # the reader could have decoded the whole clip by now
    assert source.decoded <= 1 + 2 + 1  # the one taken, the queue, one in the reader's hands
    source.close()
    assert source._thread is not None and not source._thread.is_alive()


def test_an_image_sequence_is_a_printf_pattern(tmp_path: Path, clip_bgr: list[np.ndarray]) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for n in (1, 2, 3, 5, 10):  # gaps are allowed; number order, not name order
        cv2.imwrite(str(folder / f"{n:04d}.png"), clip_bgr[n])
    cv2.imwrite(str(folder / "12.png"), clip_bgr[12])  # not %04d: not in the sequence
    pattern = str(folder / "%04d.png")
    assert is_video_input(pattern) and not is_video_input(folder)
    with open_frames(pattern, fps=10) as source:
        frames = list(source)
    assert [f.time_ms for f in frames] == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert all(np.array_equal(f.rgb, rgb(clip_bgr[n])) for f, n in zip(frames, (1, 2, 3, 5, 10), strict=True))
    assert list_inputs([folder]) == sorted(folder.glob("*.png"))  # a folder of images stays photos
    with pytest.raises(VideoReadError, match="no file matches"):
        open_frames(str(folder / "x%03d.png"))


def _marker_frame() -> np.ndarray:
    frame = np.full((240, 320, 3), 40, np.uint8)
    frame[:60, :80] = (0, 0, 255)  # BGR red, top-left
    return frame


@pytest.mark.parametrize(("degrees", "corner"), [(90, "top-right"), (180, "bottom-right"), (270, "bottom-left")])
def test_a_phone_video_rotation_tag_is_honoured(tmp_path: Path, degrees: int, corner: str) -> None:
    path = write_video(tmp_path / "phone.mp4", [_marker_frame()] * 3, fourcc="mp4v")
    set_mp4_rotation(path, degrees)
    with open_frames(path) as source:
        frame = next(iter(source)).rgb
    assert source.info.rotation == degrees
    assert frame.shape == ((320, 240, 3) if degrees in (90, 270) else (240, 320, 3))
    h, w = frame.shape[:2]
    red = frame[..., 0].astype(int) - frame[..., 2]
    ys, xs = np.nonzero(red > 100)
    where = ("bottom" if ys.mean() > h / 2 else "top") + "-" + ("right" if xs.mean() > w / 2 else "left")
    assert where == corner


class _FakeCapture:
    """A cv2.VideoCapture stand-in: a build that reports the rotation tag but will not rotate."""

    def __init__(self, frames: list[np.ndarray], meta: int = 90, fps: float = 25.0) -> None:
        self.frames, self.meta, self.fps = list(frames), meta, fps
        self.released = False

    def set(self, prop: int, value: float) -> bool:
        return False

    def get(self, prop: int) -> float:
        h, w = self.frames[0].shape[:2] if self.frames else (0, 0)
        return {cv2.CAP_PROP_ORIENTATION_META: self.meta, cv2.CAP_PROP_ORIENTATION_AUTO: 0, cv2.CAP_PROP_FPS: self.fps,
                cv2.CAP_PROP_FRAME_WIDTH: w, cv2.CAP_PROP_FRAME_HEIGHT: h, cv2.CAP_PROP_FRAME_COUNT: 0,
                cv2.CAP_PROP_POS_MSEC: -1}.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self.frames.pop(0).copy()) if self.frames else (False, None)

    def release(self) -> None:
        self.released = True


def test_rotation_falls_back_to_ours_where_opencv_will_not_rotate() -> None:
    capture = OpenCVCapture(_FakeCapture([_marker_frame()] * 2), "old-opencv.mp4", live=False)
    assert (capture.info.width, capture.info.height, capture.info.rotation) == (240, 320, 90)
    with FrameSource(capture) as source:
        frames = list(source)
    assert [f.rgb.shape for f in frames] == [(320, 240, 3)] * 2
    assert frames[0].rgb[:60, -80:, 0].mean() > 200  # red moved to the top right: rotated clockwise
    assert [f.time_ms for f in frames] == [0.0, 40.0]  # no timestamps: index / fps


def test_variable_frame_rate_times_come_from_the_file(tmp_path: Path, clip_bgr: list[np.ndarray]) -> None:
    pts = [0, 1, 2, 5, 6, 12, 13, 14]  # in 1/30 s
    path = write_vfr(tmp_path / "vfr.mkv", clip_bgr[:8], pts)
    with open_frames(path) as source:
        times = [f.time_ms for f in source]
    assert times == pytest.approx([t * 1000 / 30 for t in pts], abs=1.0)
    assert source.error is None  # a long gap between frames is not a truncation


@pytest.mark.parametrize("damage", ["truncated", "garbage tail"])
def test_a_video_that_ends_early_keeps_its_frames_and_says_so(tmp_path: Path, clip_mkv: Path, damage: str) -> None:
    data = clip_mkv.read_bytes()
    cut = len(data) // 2
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(data[:cut] if damage == "truncated" else data[:cut] + np.random.default_rng(0).bytes(len(data) - cut))
    with open_frames(broken) as source:
        frames = list(source)
    good = read_all(clip_mkv)
    assert 5 < len(frames) < 40
    assert all(np.array_equal(f.rgb, rgb(g)) for f, g in zip(frames[:-1], good, strict=False))
    assert source.error is not None and str(broken) in source.error and "truncated or damaged" in source.error


def test_sources_that_give_nothing_are_one_error_each(tmp_path: Path) -> None:
    empty_avi = tmp_path / "zero.avi"
    cv2.VideoWriter(str(empty_avi), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240)).release()  # opens, no frame
    with pytest.raises(VideoReadError, match=r"zero\.avi: no frame could be decoded"):
        list(open_frames(empty_avi))
    (tmp_path / "empty.mp4").write_bytes(b"")
    for path, message in ((tmp_path / "empty.mp4", "not a video OpenCV's FFmpeg can open"),
                          (tmp_path / "missing.mp4", "cannot read the file"), (tmp_path, "is a folder")):
        with pytest.raises(VideoReadError, match=message):
            open_frames(path)
    with pytest.raises(VideoReadError, match="camera 97 cannot be opened"):
        open_frames(97)
    for url in ("file:///nonexistent.mp4", "rtsp://127.0.0.1:9/"):
        with pytest.raises(VideoReadError, match=url.replace(".", r"\.")):
            open_frames(url)


class _LiveCapture:
    """A camera that delivers 30 frames as fast as it can, each numbered in its pixels."""

    def __init__(self) -> None:
        self.info = VideoInfo("camera 9", 8, 8, 30.0, None, live=True, camera=True)
        self.sent = 0

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self.sent == 30:
            return None
        self.sent += 1
        return np.full((8, 8, 3), self.sent - 1, np.uint8), None

    def release(self) -> None:
        pass


def test_a_live_source_drops_its_oldest_frames_when_the_consumer_is_slow() -> None:
    source = FrameSource(_LiveCapture(), read_ahead=2)  # type: ignore[arg-type]
    got = []
    for frame in source:
        got.append(frame)
        time.sleep(0.02)
    assert source.dropped > 0 and len(got) + source.dropped == 30
    assert [int(f.rgb[0, 0, 0]) for f in got] == [f.index for f in got]  # index = the camera's own frame number
    assert got[-1].index == 29 and all(a.index < b.index for a, b in itertools.pairwise(got))
    assert all(a.time_ms < b.time_ms for a, b in itertools.pairwise(got))
    assert source.error == f"camera 9: stopped delivering frames after {len(got)}"


def test_detect_video_on_frames_the_caller_decoded(clip_bgr: list[np.ndarray]) -> None:
    detector = blazeport.load("short_range", backend="tflite", threads=1)
    frames = [rgb(b) for b in clip_bgr[:12]]
    out = list(detector.detect_video(frames, fps=10))
    assert [(i, t) for i, t, _ in out] == [(i, i * 100.0) for i in range(12)]
    assert [[d.to_dict() for d in dets] for _, _, dets in out] == [[d.to_dict() for d in detector.detect(f)] for f in frames]
    assert sum(len(d) for _, _, d in out) >= 10
    with pytest.raises(BlazeportError, match="one image"):
        list(detector.detect_video(frames[0]))
    assert isinstance(FrameSource(ArrayCapture(iter(frames))).info, VideoInfo)


def test_detect_video_raises_after_the_last_good_frame_of_a_truncated_file(tmp_path: Path, clip_mkv: Path) -> None:
    broken = tmp_path / "cut.mkv"
    broken.write_bytes(clip_mkv.read_bytes()[: clip_mkv.stat().st_size // 2])
    detector = blazeport.load("short_range", backend="tflite", threads=1)
    seen = []
    with pytest.raises(VideoReadError, match="truncated or damaged"):
        for index, _, _ in detector.detect_video(broken):
            seen.append(index)
    assert seen == list(range(len(seen))) and len(seen) > 5


def test_a_drawn_video_is_written_beside_and_put_in_place_at_the_end(tmp_path: Path, clip_bgr: list[np.ndarray]) -> None:
    target = tmp_path / "out" / "clip.mp4"
    out = VideoOutput(target, 25.0)
    for b in clip_bgr[:10]:
        out.write(rgb(b))
    assert out.temporary.is_file() and not target.exists()
    assert out.commit() == target and not out.temporary.exists()
    cap = cv2.VideoCapture(str(target))
    assert (cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS), cap.get(3), cap.get(4)) == (10, 25, 320, 240)
    before = target.read_bytes()
    again = VideoOutput(target, 25.0)  # a file the run did not make is never replaced
    again.write(rgb(clip_bgr[0]))
    with pytest.raises(BlazeportError, match="appeared while this run worked"):
        again.commit()
    assert target.read_bytes() == before and not again.temporary.exists()
    dropped = VideoOutput(tmp_path / "out" / "other.mp4", 30.0)
    dropped.write(rgb(clip_bgr[0]))
    dropped.discard()
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]


def test_an_encoder_failure_is_one_error_and_leaves_nothing(tmp_path: Path, clip_bgr: list[np.ndarray]) -> None:
    out = VideoOutput(tmp_path / "bad.mp4", 30.0)
    out.write(rgb(clip_bgr[0]))
    out.write(np.zeros((240, 320, 3), np.float64))  # fails in the encoder thread
    with pytest.raises(BlazeportError, match=r"bad\.mp4: writing the video failed"):
        for _ in range(50):  # raised by a later write at the latest, else by commit
            out.write(rgb(clip_bgr[1]))
        out.commit()
    out.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("queue_frames", [0, 4])
def test_the_encoder_thread_and_the_inline_encoder_write_the_frames_in_order(tmp_path: Path, clip_bgr: list[np.ndarray],
                                                                         queue_frames: int) -> None:
    with VideoOutput(tmp_path / "v.mp4", 30.0, queue_frames=queue_frames) as out:
        for i, b in enumerate(clip_bgr[:12]):
            marked = rgb(b)
            marked[:16, 20 * i: 20 * i + 16] = 255  # frame i: a white block at x = 20 i
            out.write(marked)
    frames = read_all(tmp_path / "v.mp4")
    assert out.encode_s > 0 and len(frames) == 12
    assert [int(np.argmax([f[:16, 20 * j: 20 * j + 16].mean() for j in range(12)])) for f in frames] == list(range(12))
