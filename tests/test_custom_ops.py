"""MediaPipe's custom ops (``blazeport.models.custom_ops``) on inputs with known answers, their
translation from the attention mesh's file, and one clear refusal for a custom op blazeport does not know."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from blazeport.cli import main  # noqa: E402
from blazeport.convert import ConversionError, convert, load_tflite  # noqa: E402
from blazeport.errors import BlazeportError  # noqa: E402
from blazeport.models.custom_ops import (  # noqa: E402
    landmarks_to_transform_matrix,
    transform_landmarks,
    transform_tensor_bilinear,
)
from blazeport.specs import WEIGHTS_DIR  # noqa: E402
from blazeport.tflite import MEDIAPIPE_CUSTOM_OPS, read_tflite  # noqa: E402

ATTENTION = WEIGHTS_DIR / "face_landmark_with_attention.tflite"


def _matrix(rows: list[list[float]], batch: int = 1) -> torch.Tensor:
    m = torch.eye(4)
    m[:2] = torch.tensor(rows, dtype=torch.float32)
    return m.expand(batch, 4, 4).clone()


# ---------------------------------------------------------------------------------------------
# TransformLandmarks


def test_transform_landmarks_identity_translation_rotation_and_z() -> None:
    pts = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [0.0, 0.0]]])  # (1, 3, 2)
    assert torch.equal(transform_landmarks(pts, torch.eye(4)[None]), pts)
    moved = transform_landmarks(pts, _matrix([[1, 0, 0, 10], [0, 1, 0, -5]]))
    assert torch.equal(moved, pts + torch.tensor([10.0, -5.0]))
    turned = transform_landmarks(pts, _matrix([[0, -1, 0, 0], [1, 0, 0, 0]]))  # a quarter turn: (x, y) -> (-y, x)
    assert torch.allclose(turned, torch.stack([-pts[..., 1], pts[..., 0]], -1))
    # the third column multiplies z = 0 (the kernel's (x, y, 0, 1)): it must not matter
    assert torch.equal(transform_landmarks(pts, _matrix([[1, 0, 7, 0], [0, 1, 7, 0]])), pts)
    # 3-D landmarks: z is copied, not transformed
    pts3 = torch.tensor([[[1.0, 2.0, 9.0]]])
    assert transform_landmarks(pts3, _matrix([[2, 0, 0, 1], [0, 2, 0, 1]])).tolist() == [[[3.0, 5.0, 9.0]]]


def test_transform_landmarks_uses_each_images_own_matrix() -> None:
    pts = torch.ones(2, 4, 2)
    m = torch.stack([_matrix([[1, 0, 0, 1], [0, 1, 0, 0]])[0], _matrix([[1, 0, 0, -1], [0, 1, 0, 0]])[0]])
    out = transform_landmarks(pts, m)
    assert out[0, :, 0].tolist() == [2.0] * 4 and out[1, :, 0].tolist() == [0.0] * 4


# ---------------------------------------------------------------------------------------------
# TransformTensorBilinear


def _ramp(channels: int = 2, h: int = 8, w: int = 10) -> torch.Tensor:
    """f(c, y, x) = x + 10 y + 100 c: bilinear sampling of a ramp is exact, so samples have known values."""
    c, y, x = torch.meshgrid(torch.arange(channels), torch.arange(h), torch.arange(w), indexing="ij")
    return (x + 10 * y + 100 * c).float()[None]  # (1, C, H, W)


def test_bilinear_identity_reads_the_pixels() -> None:
    """v2's half-pixel correction of an identity matrix is 0.5 + 0 - 0.5 = 0: output pixel (x, y) is input (x, y)."""
    x = _ramp()
    out = transform_tensor_bilinear(x, torch.eye(4)[None], 4, 6)
    assert torch.equal(out, x[:, :, :4, :6])


def test_bilinear_translation_samples_between_pixels_and_zeroes_outside() -> None:
    x = _ramp(h=8, w=10)
    out = transform_tensor_bilinear(x, _matrix([[1, 0, 0, 2.5], [0, 1, 0, 1.25]]), 8, 8)
    oy, ox = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    tx, ty = ox + 2.5, oy + 1.25
    inside = (tx <= 9) & (ty <= 7)  # the kernel's bounds: [0, W - 1] x [0, H - 1]
    expected = torch.where(inside, tx + 10 * ty, torch.zeros(()))
    assert torch.allclose(out[0, 0], expected, atol=1e-5)
    assert torch.allclose(out[0, 1], torch.where(inside, expected + 100, torch.zeros(())), atol=1e-4)
    assert (out[0, :, ~inside] == 0).all() and inside.sum() < 64  # some samples fell outside


def test_bilinear_scale_applies_the_align_corners_shift() -> None:
    """A 0.5 scale: the corrected translation is 0.5 * 0.5 + 0 - 0.5 = -0.25, so output x samples 0.5 x - 0.25;
    output pixel 0 (at -0.25) is outside and reads 0, pixel 1 reads 0.25 on the ramp."""
    x = _ramp(channels=1, h=4, w=4)
    out = transform_tensor_bilinear(x, _matrix([[0.5, 0, 0, 0], [0, 0.5, 0, 0]]), 4, 4)[0, 0]
    assert out[0].abs().sum() == 0 and out[:, 0].abs().sum() == 0
    assert out[1, 1].item() == pytest.approx(0.25 + 10 * 0.25)
    assert out[3, 2].item() == pytest.approx(0.75 + 10 * 1.25)


def test_bilinear_rotation_and_batch() -> None:
    """A quarter turn (x reads the input's y) in image 0, the identity in image 1 of the same batch."""
    x = _ramp(channels=1, h=6, w=6).expand(2, 1, 6, 6)
    turn = _matrix([[0, 1, 0, 0], [1, 0, 0, 0]])[0]  # tx = oy, ty = ox (plus a 0 half-pixel correction)
    out = transform_tensor_bilinear(x, torch.stack([turn, torch.eye(4)]), 6, 6)
    assert torch.equal(out[0, 0], x[0, 0].T) and torch.equal(out[1, 0], x[1, 0])


# ---------------------------------------------------------------------------------------------
# Landmarks2TransformMatrix


def test_landmarks_to_matrix_of_a_level_box() -> None:
    """Eyes level (rotation 0); the subset's box is x 10-30, y 20-60: the crop is that box x1.5 around its
    centre (20, 40), so output pixel (0, 0) lands at centre - 8 * scale and the middle (8, 8) at the centre."""
    lm = torch.zeros(1, 6, 3)
    lm[0, :4, :2] = torch.tensor([[10.0, 20.0], [30.0, 20.0], [10.0, 60.0], [30.0, 60.0]])
    lm[0, 4, :2], lm[0, 5, :2] = torch.tensor([10.0, 40.0]), torch.tensor([30.0, 40.0])
    m = landmarks_to_transform_matrix(lm, [0, 1, 2, 3], 4, 5, 0.0, 16, 16, 1.5, 1.5)[0]
    sx, sy = 1.5 * 20 / 16, 1.5 * 40 / 16
    expected = torch.tensor([[sx, 0, 0, 20 - 8 * sx], [0, sy, 0, 40 - 8 * sy], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert torch.allclose(m, expected, atol=1e-5)
    centre = m @ torch.tensor([8.0, 8.0, 0.0, 1.0])
    assert centre[:2].tolist() == pytest.approx([20.0, 40.0])


def test_landmarks_to_matrix_turns_with_the_eyes() -> None:
    """The right landmark straight below the left one: the crop's x axis runs down the image, and its
    size is the box of the subset measured along that turned frame (16 long, 4 wide)."""
    lm = torch.zeros(1, 4, 3)
    lm[0, :, :2] = torch.tensor([[5.0, 0.0], [5.0, 16.0], [3.0, 8.0], [7.0, 8.0]])
    m = landmarks_to_transform_matrix(lm, [0, 1, 2, 3], 0, 1, 0.0, 16, 16, 1.0, 1.0)[0]
    along_x = (m @ torch.tensor([1.0, 0, 0, 0]))[:2]  # the image step of one crop pixel in x
    along_y = (m @ torch.tensor([0.0, 1, 0, 0]))[:2]
    assert torch.allclose(along_x, torch.tensor([0.0, 1.0]), atol=1e-6)  # 16 px of box over 16 crop pixels
    assert torch.allclose(along_y, torch.tensor([-0.25, 0.0]), atol=1e-6)  # 4 px of box over 16
    assert torch.allclose((m @ torch.tensor([8.0, 8.0, 0, 1]))[:2], torch.tensor([5.0, 8.0]), atol=1e-5)
    # z of the landmarks plays no part
    lm2 = lm.clone()
    lm2[..., 2] = 123.0
    assert torch.equal(landmarks_to_transform_matrix(lm2, [0, 1, 2, 3], 0, 1, 0.0, 16, 16, 1.0, 1.0)[0], m)
    # a target rotation of a quarter turn brings the frame back to the image's axes (for this pair)
    level = landmarks_to_transform_matrix(lm, [0, 1, 2, 3], 0, 1, math.pi / 2, 16, 16, 1.0, 1.0)[0]
    assert abs(float(level[0, 1])) < 1e-6 and abs(float(level[1, 0])) < 1e-6


# ---------------------------------------------------------------------------------------------
# Translation from the file


def test_the_attention_mesh_file_holds_the_three_ops_with_their_options() -> None:
    model = read_tflite(ATTENTION)
    assert model.custom_ops() == {name: 2 for name in sorted(MEDIAPIPE_CUSTOM_OPS)}
    _, mapping = load_tflite(ATTENTION, family="graph")
    nodes = {n.output: n for n in mapping.config.nodes}
    kinds = [n.op for n in mapping.config.nodes]
    assert kinds.count("landmarks_to_matrix") == 3 and kinds.count("transform_tensor") == 3
    assert kinds.count("transform_landmarks") == 5
    lips = next(n for n in nodes.values() if n.op == "landmarks_to_matrix")
    assert (lips.attrs["left"], lips.attrs["right"], lips.attrs["output_height"], lips.attrs["scale_x"]) == (61, 291, 16, 1.5)
    assert len(lips.attrs["subset"]) == 80  # the 80 lip landmarks of the mesh
    assert len(mapping.config.outputs) == 7


def _renamed_copy(tmp_path: Path, old: bytes, new: bytes) -> Path:
    data = ATTENTION.read_bytes()
    assert len(old) == len(new) and data.count(old) >= 1
    path = tmp_path / "renamed_op.tflite"
    path.write_bytes(data.replace(old, new))
    return path


def test_an_unknown_custom_op_is_named_once(tmp_path: Path, capsys) -> None:
    """A copy whose TransformLandmarks is renamed: convert, the torch backend, LiteRT and the CLI each say
    the op's name in one line."""
    path = _renamed_copy(tmp_path, b"TransformLandmarks", b"TransformLandmarkZ")
    with pytest.raises(ConversionError, match=r"unsupported custom op\(s\) TransformLandmarkZ \(v2\)") as exc:
        convert(path, tmp_path / "never.safetensors")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "never.safetensors").exists()
    from blazeport.modelfiles.backends import TFLiteBackend

    with pytest.raises(BlazeportError, match="no kernel for the custom op") as exc:
        TFLiteBackend(path)
    assert "TransformLandmarkZ (v2)" in str(exc.value) and "\n" not in str(exc.value)
    code = main(["convert", str(path), "-o", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "TransformLandmarkZ" in err


def test_litert_refuses_mediapipes_ops_in_one_line_naming_what_runs_them() -> None:
    from blazeport.modelfiles.backends import TFLiteBackend

    with pytest.raises(BlazeportError) as exc:
        TFLiteBackend(ATTENTION)
    text = str(exc.value)
    assert "\n" not in text and "Landmarks2TransformMatrix (v2)" in text and "--backend torch" in text


def test_a_version_1_op_is_refused() -> None:
    """v1 kernels compute other things (no half-pixel correction, 4-D landmarks): refused, not run as v2."""
    from dataclasses import replace

    from blazeport.convert.custom import CUSTOM_TRANSLATORS
    from blazeport.convert.walker import Walker

    model = read_tflite(ATTENTION)
    walker = Walker(model)
    for op in (op for op in model.ops if op.type in CUSTOM_TRANSLATORS):
        v1 = replace(op, options={**op.options, "version": 1})
        with pytest.raises(ConversionError, match="version 1; blazeport translates version 2"):
            CUSTOM_TRANSLATORS[op.type](walker, v1)
        CUSTOM_TRANSLATORS[op.type](walker, op)  # the file's own v2 translates


# ---------------------------------------------------------------------------------------------
# The reference: MediaPipe's own inference (the parity extra)


def test_mediapipe_reference_runs_a_plain_model_as_litert_does() -> None:
    """The oracle itself: on face_landmark.tflite (builtin ops only) MediaPipe's InferenceCalculator, fed
    images, gives LiteRT's outputs on the same tensors; so its image input is the tensor, one to one."""
    pytest.importorskip("mediapipe", reason="the parity extra")
    import numpy as np

    from blazeport.modelfiles.backends import TFLiteBackend
    from blazeport.modelfiles.mediapipe_model import MediaPipeModel

    pixels = np.random.default_rng(1).integers(0, 256, (2, 192, 192, 3))
    batch = (pixels * np.float32(1 / 255)).astype(np.float32)
    ours = MediaPipeModel(WEIGHTS_DIR / "face_landmark.tflite").raw(batch)
    ref = TFLiteBackend(WEIGHTS_DIR / "face_landmark.tflite").raw(batch)
    assert [o.shape for o in ours] == [(2, 1404), (2, 1)]
    for a, b in zip(ours, ref, strict=True):
        assert np.abs(a - b.reshape(len(b), -1)).max() < 1e-3
    with pytest.raises(BlazeportError, match="takes images"):
        MediaPipeModel(WEIGHTS_DIR / "face_landmark.tflite").raw(batch + np.float32(0.001))


def test_damaged_custom_options_are_one_message(tmp_path: Path) -> None:
    """The flexbuffer reader does not verify: a damaged options buffer is refused by the reader, naming the op."""
    import tflite

    from blazeport.tflite import TFLiteError

    buf = bytearray(ATTENTION.read_bytes())
    graph = tflite.Model.GetRootAsModel(bytes(buf), 0).Subgraphs(0)
    op = next(graph.Operators(i) for i in range(graph.OperatorsLength()) if graph.Operators(i).CustomOptionsLength() == 40)
    end = op._tab.Vector(op._tab.Offset(14)) + 40  # CustomOptions (field 7): the flexbuffer's root is at its end
    buf[end - 2:end] = b"\xff\x7f"  # root type and byte width
    path = tmp_path / "bad_options.tflite"
    path.write_bytes(bytes(buf))
    with pytest.raises(TFLiteError, match=r"op 195 \(CUSTOM:TransformTensorBilinear\) has unreadable custom options"):
        read_tflite(path)
