"""Noisy Student terms (``--augment ns_*``): the teacher's labels of the clean sample, carried through the change.

A flip or a turn moves a known detection to where the picture moved it, keypoints in the subject's order; the
image and the labels move together (a marked pixel lands where the homography says); photometric terms leave
labels as they are; a term at probability 0 draws nothing; a resumed run repeats the same changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import blazeport
from blazeport.distill.augment import AugmentConfig
from blazeport.distill.changes import homography
from blazeport.distill.dataset import make_input, make_input_uint8
from blazeport.distill.noisy import Change, NoisyStudent, noisy_generator
from blazeport.errors import BlazeportError
from blazeport.pipeline.anchors import anchors_for
from blazeport.pipeline.postprocess import postprocess
from blazeport.pipeline.preprocess import Letterbox
from blazeport.specs import spec_named

SPEC = spec_named("short_range")
ANCHORS = anchors_for(SPEC)
S = SPEC.input_size


def _noisy(text: str) -> NoisyStudent:
    return NoisyStudent(AugmentConfig.parse(text), ANCHORS, SPEC.anchors, S, SPEC.score_clip)


def _one_face(anchor: int, box: tuple[float, float, float, float], kps: list[tuple[float, float]]):
    """Raw teacher outputs with one confident face at ``anchor``: box (xc, yc, w, h) and keypoints in input pixels."""
    reg = torch.zeros(1, len(ANCHORS), 16)
    cls = torch.full((1, len(ANCHORS), 1), -20.0)
    ax, ay = (float(v) * S for v in ANCHORS[anchor, :2])
    reg[0, anchor, :4] = torch.tensor([box[0] - ax, box[1] - ay, box[2], box[3]])
    for k, (x, y) in enumerate(kps):
        reg[0, anchor, 4 + 2 * k], reg[0, anchor, 5 + 2 * k] = x - ax, y - ay
    cls[0, anchor, 0] = 8.0
    return reg, cls


def _detections(reg: torch.Tensor, cls: torch.Tensor):
    return postprocess(reg.numpy(), cls.numpy(), ANCHORS, SPEC, [Letterbox(0, 0, 0, 0)])[0]


# a face left of centre: the subject's right eye (keypoint 0) at x=35, left eye at x=45, ears at 28 and 52
KPS = [(35, 50), (45, 50), (40, 56), (40, 62), (28, 52), (52, 52)]


def _anchor_near(x: float, y: float) -> int:
    return int(np.argmin(np.hypot(ANCHORS[:, 0] * S - x, ANCHORS[:, 1] * S - y)))


@pytest.mark.parametrize(("name", "params", "expect_box", "expect_kps"), [
    # a mirror: (x, y) -> (128 - x, y), and the eye at 45 becomes the subject's right eye (keypoint 0)
    ("flip", {}, (88, 54, 24, 24), [(83, 50), (93, 50), (88, 56), (88, 62), (76, 52), (100, 52)]),
    # a quarter turn (np.rot90): (x, y) -> (y, 128 - x); no reflection, so the order stays
    ("turn", {"k": 1}, (54, 88, 24, 24), [(50, 93), (50, 83), (56, 88), (62, 88), (52, 100), (52, 76)]),
    ("turn", {"k": 3}, (74, 40, 24, 24), [(78, 35), (78, 45), (72, 40), (66, 40), (76, 28), (76, 52)]),
    ("half", {}, (88, 74, 24, 24), [(93, 78), (83, 78), (88, 72), (88, 66), (100, 76), (76, 76)]),
])
def test_a_flip_or_turn_moves_a_known_detection_with_its_keypoints_in_the_subjects_order(name, params, expect_box,
                                                                                         expect_kps) -> None:
    ns = _noisy(f"ns_{name}=1")
    reg, cls = _one_face(_anchor_near(40, 54), (40, 54, 24, 24), KPS)
    change = Change(geometric=[(name, params)])
    c_reg, c_cls = ns.carry(reg, cls, [change])
    (det,) = _detections(c_reg, c_cls)
    x, y, w, h = np.asarray(det.box) * S
    np.testing.assert_allclose((x + w / 2, y + h / 2, w, h), expect_box, atol=1e-3)
    np.testing.assert_allclose(np.asarray(det.keypoints) * S, expect_kps, atol=1e-3)
    assert det.score == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), abs=1e-6)
    # exact: the anchor grid maps onto itself, so the carried logits are a permutation of the teacher's
    src, inside = ns.source_anchors(change.matrix(S))
    assert inside.all() and sorted(src.tolist()) == list(range(len(ANCHORS)))
    assert torch.equal(torch.sort(c_cls.flatten()).values, torch.sort(cls.flatten()).values)


@pytest.mark.parametrize(("name", "params"), [("flip", {}), ("turn", {"k": 1}), ("turn", {"k": 3}), ("half", {}),
                                              ("crop", {"zoom": 1.4, "u": 0.3, "v": 0.1}),
                                              ("tilt", dict(zip([f"d{i}" for i in range(8)],
                                                                (0.05, -0.03, -0.06, 0.02, 0.0, 0.07, 0.04, -0.05),
                                                                strict=True)))])
def test_the_picture_moves_as_its_labels_do(name: str, params: dict) -> None:
    """A marked pixel of the input lands where the change's homography sends its centre."""
    x = -torch.ones(3, S, S)
    col, row = 37, 21
    x[:, row, col] = 1.0
    moved = Change(geometric=[(name, params)]).apply(x)
    h = homography(name, params, S)
    px, py, pw = h @ np.array([col + 0.5, row + 0.5, 1.0])
    peak = np.unravel_index(int(moved[0].argmax()), (S, S))
    assert abs(peak[1] + 0.5 - px / pw) <= 0.5 and abs(peak[0] + 0.5 - py / pw) <= 0.5, (peak, px / pw, py / pw)


def test_carried_teacher_outputs_agree_with_the_teacher_on_the_mirrored_photo(astronaut: np.ndarray) -> None:
    """On a real photo: the teacher's clean-photo face carried through a mirror is where the teacher finds it
    on the mirrored tensor, keypoints in the same order."""
    teacher = blazeport.load("short_range").backend.module.eval()
    x = torch.from_numpy(make_input(astronaut, S)).permute(2, 0, 1)[None]
    change = Change(geometric=[("flip", {})])
    with torch.no_grad():
        clean = teacher(x)
        seen = teacher(change.apply(x[0])[None])
    (carried,) = _detections(*_noisy("ns_flip=1").carry(clean[0], clean[1], [change]))
    (direct,) = _detections(seen[0], seen[1])
    np.testing.assert_allclose(carried.box, direct.box, atol=0.02)
    np.testing.assert_allclose(carried.keypoints, direct.keypoints, atol=0.02)
    assert carried.keypoints[0][0] < carried.keypoints[1][0]  # the subject's right eye: the smaller x, facing us


def test_photometric_terms_change_the_picture_and_leave_the_labels() -> None:
    ns = _noisy("ns_dark=1,ns_noise=1,ns_motion=1,ns_focus=1,ns_jpeg=1,ns_cast=1")
    changes = ns.draw(2, noisy_generator(0, 5, 0))
    assert all(not c.geometric and [n for n, _ in c.photometric] == ["dark", "noise", "motion", "focus", "jpeg", "cast"]
               for c in changes)
    reg, cls = _one_face(_anchor_near(40, 54), (40, 54, 24, 24), KPS)
    reg, cls = reg.repeat(2, 1, 1), cls.repeat(2, 1, 1)
    c_reg, c_cls = ns.carry(reg, cls, changes)
    assert torch.equal(c_reg, reg) and torch.equal(c_cls, cls)
    x = torch.rand(2, 3, S, S) * 2 - 1
    y = ns.apply(x, changes)
    assert y.shape == x.shape and (y - x).abs().mean() > 0.05 and y.min() >= -1 and y.max() <= 1


def test_a_term_at_probability_zero_draws_nothing() -> None:
    a = _noisy("ns_dark=0.5,ns_crop=0.5").draw(16, noisy_generator(3, 7, 0))
    b = _noisy("ns_dark=0.5,ns_turn=0,ns_crop=0.5,ns_jpeg=0").draw(16, noisy_generator(3, 7, 0))
    assert a == b and any(c.geometric for c in a) and any(c.photometric for c in a)
    # and the samples themselves (drawn per sample, before any ns_ term) are those of a run without them
    photo = (np.random.default_rng(1).random((96, 160, 3)) * 255).astype(np.uint8)
    for i in range(5):
        rng = [np.random.default_rng([0, 0, i]) for _ in range(2)]
        plain = make_input_uint8(photo, S, rng[0], AugmentConfig.parse("grey=0.5"))
        noisy = make_input_uint8(photo, S, rng[1], AugmentConfig.parse("grey=0.5,ns_turn=1,ns_dark=0.5"))
        assert np.array_equal(plain, noisy)


def test_the_same_step_draws_the_same_changes_and_another_step_others() -> None:
    ns = _noisy("ns_dark=0.5,ns_turn=0.5,ns_tilt=0.5,ns_jpeg=0.5")
    x = torch.rand(4, 3, S, S) * 2 - 1
    t = (torch.randn(4, len(ANCHORS), 16), torch.randn(4, len(ANCHORS), 1))
    a = ns.student_batch(x, t, 1, 10, 0)
    b = ns.student_batch(x, t, 1, 10, 0)
    c = ns.student_batch(x, t, 1, 11, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0]) and a[2] == b[2]
    assert a[2] != c[2]


def test_geometric_terms_refuse_the_feature_map_loss(tmp_path: Path) -> None:
    from blazeport.distill.config import TrainConfig

    with pytest.raises(BlazeportError, match=r"ns_turn moves faces.*mgd"):
        TrainConfig(images=[str(tmp_path)], out=str(tmp_path / "o"), loss="recipe+mgd", augment="ns_turn=0.2").validate()
    with pytest.raises(BlazeportError, match=r"unknown term 'ns_rain'.*ns_tilt"):
        AugmentConfig.parse("ns_rain=0.2")


@pytest.mark.slow
def test_a_noisy_student_run_stopped_inside_an_epoch_resumes_with_the_same_changes(photos: Path, tmp_path: Path) -> None:
    """Every ns_ kind on, a mid-epoch checkpoint, a stop one step later, a resume: the uninterrupted run's metrics."""
    from blazeport.distill.trainer import NonFiniteLoss, train
    from tests.conftest import small_run

    terms = "ns_dark=0.3,ns_noise=0.3,ns_motion=0.3,ns_focus=0.3,ns_jpeg=0.3,ns_cast=0.3,ns_flip=0.3,ns_turn=0.3," \
            "ns_half=0.2,ns_crop=0.3,ns_tilt=0.3"
    base = dict(epochs=2, batch_size=2, augment=terms)
    train(small_run(photos, tmp_path / "full", **base))
    steps = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["scheduler"]["last_epoch"] // 2
    with pytest.raises(NonFiniteLoss):
        train(small_run(photos, tmp_path / "cut", checkpoint_every=1, fail_at_step=steps + 1, **base))
    train(small_run(photos, tmp_path / "cut", resume=True, **base))
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_total", "val_AP50", "val_mae_scores"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)


def test_the_help_and_the_docs_say_for_every_term_whether_it_is_labelled_before_or_after(
        capsys: pytest.CaptureFixture[str]) -> None:
    from blazeport.cli import main as cli_main
    from blazeport.distill.augment import AUGMENT_TERMS, NOISY_TERMS

    with pytest.raises(SystemExit):
        cli_main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    after, before = text.index("Labelled AFTER"), text.index("Labelled BEFORE")
    assert all(after < text.index(f"{k}:") < before for k in AUGMENT_TERMS)
    assert all(text.index(f"{k}:") > before for k in NOISY_TERMS)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "commands" / "distill.md").read_text()
    for k in AUGMENT_TERMS:
        assert f"| `{k}` | after |" in doc, k
    for k in NOISY_TERMS:
        assert f"| `{k}` | **before** |" in doc, k
