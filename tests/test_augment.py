"""The failure-mode augmentations (close-ups, grey, low light, occlusion): each does what it says, a
term at probability 0 changes nothing, and ``--augment`` refuses what it cannot parse."""

from __future__ import annotations

import numpy as np
import pytest

from blazeport.distill.augment import AugmentConfig, photometric, random_affine
from blazeport.distill.dataset import make_input_uint8
from blazeport.errors import BlazeportError

SIZE = 128


def _rng(i: int) -> np.random.Generator:
    return np.random.default_rng([0, 0, i])


def test_parse_reads_probabilities_and_none() -> None:
    aug = AugmentConfig.parse("closeup=0.25, grey=0.1,dark=0,occlude=1", zoom=(0.5, 2.0))
    assert (aug.closeup, aug.grey, aug.dark, aug.occlude, aug.zoom) == (0.25, 0.1, 0.0, 1.0, (0.5, 2.0))
    none = AugmentConfig.parse("none")
    assert (none.closeup, none.grey, none.dark, none.occlude) == (0.0, 0.0, 0.0, 0.0)
    for bad, match in (("closeup", "a probability in"), ("closeup=x", "a probability in"), ("grey=-0.1", "a probability"),
                       ("sepia=0.2", "unknown term 'sepia'")):
        with pytest.raises(BlazeportError, match=match):
            AugmentConfig.parse(bad)


def test_closeups_zoom_in_1_5_to_4_times_and_reach_the_whole_frame() -> None:
    plain = [random_affine(_rng(i), AugmentConfig(zoom=(0.6, 1.5)), SIZE) for i in range(200)]
    close = [random_affine(_rng(i), AugmentConfig(zoom=(0.6, 1.5), closeup=1.0), SIZE) for i in range(200)]
    assert all(0.6 <= abs(m[0, 0]) <= 1.5 for m in plain)
    scales = np.array([abs(m[0, 0]) for m in close])
    assert scales.min() >= 1.5 and scales.max() <= 4.0 and scales.max() > 3.0
    # a 3x close-up may centre any part of the frame, not only the middle 30% a plain shift reaches
    assert max(abs(m[0, 2] - (SIZE / 2 - m[0, 0] * SIZE / 2)) for m in close) > 0.5 * SIZE


def _photo() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random((SIZE, SIZE, 3)) * 200 + 30).astype(np.uint8)


def test_grey_dark_and_occlusion_each_change_the_sample_as_named() -> None:
    photo = _photo()
    base = AugmentConfig(blur=0.0)
    for i in range(20):
        ref = photometric(photo, _rng(i), base)
        grey = photometric(photo, _rng(i), AugmentConfig(blur=0.0, grey=1.0))
        assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
        assert not (ref[..., 0] == ref[..., 1]).all()
        dark = photometric(photo, _rng(i), AugmentConfig(blur=0.0, dark=1.0))
        assert dark.mean() < 0.85 * ref.mean()
        occluded = photometric(photo, _rng(i), AugmentConfig(blur=0.0, occlude=1.0))
        changed = (occluded != ref).any(axis=2)
        ys, xs = np.nonzero(changed)
        assert changed.sum() >= (0.1 * SIZE) ** 2 * 0.9  # at least one rectangle of >= 10% of the side
        colours = {tuple(c) for c in occluded[changed]}
        assert len(colours) <= 2  # flat fills, one colour per rectangle
        assert ys.max() - ys.min() < SIZE and xs.max() - xs.min() < SIZE


def test_terms_at_probability_zero_leave_the_sample_unchanged() -> None:
    """``--augment none`` gives the samples of runs made before the failure modes existed: a term at
    0 draws nothing from the sample's generator."""
    photo = _photo()
    for i in range(10):
        a = make_input_uint8(photo, SIZE, _rng(i), AugmentConfig(zoom=(0.75, 1.5)))
        b = make_input_uint8(photo, SIZE, _rng(i), AugmentConfig.parse("none", zoom=(0.75, 1.5)))
        c = make_input_uint8(photo, SIZE, _rng(i), AugmentConfig.parse("grey=1", zoom=(0.75, 1.5)))
        assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_mosaic_tiles_four_batch_samples_at_half_size_and_repeats_on_resume() -> None:
    import torch
    import torch.nn.functional as F

    from blazeport.distill.mosaic import mosaic_batch, mosaic_generator

    x = torch.rand(16, 3, SIZE, SIZE) * 2 - 1
    before = x.clone()
    out = mosaic_batch(x, 0.5, mosaic_generator(0, 7, 0))
    assert torch.equal(x, before)  # the batch itself is left alone
    changed = [i for i in range(16) if not torch.equal(out[i], x[i])]
    assert 2 <= len(changed) <= 14
    half = F.interpolate(x, size=(SIZE // 2, SIZE // 2), mode="area")
    for i in changed:  # every quarter of a mosaic is one of the batch's samples at half size
        for tile in (out[i, :, :64, :64], out[i, :, :64, 64:], out[i, :, 64:, :64], out[i, :, 64:, 64:]):
            assert min((tile - h).abs().max().item() for h in half) < 1e-6
    again = mosaic_batch(x, 0.5, mosaic_generator(0, 7, 0))
    assert torch.equal(out, again)  # a resumed run (same seed, step, rank) draws the same mosaics
    assert not torch.equal(out, mosaic_batch(x, 0.5, mosaic_generator(0, 8, 0)))
    assert mosaic_batch(x, 0.0, mosaic_generator(0, 7, 0)) is x
