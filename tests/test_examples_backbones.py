"""The example user backbones in examples/: contract (list of maps at strides 4-32) and ONNX export."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from examples.efficientnet_lite_backbone import efficientnet_lite0
from examples.mnv3_backbone import mnv3_small

FACTORIES = {"mnv3_small": mnv3_small, "efficientnet_lite0": efficientnet_lite0}
PLAIN_ONNX_OPS = {"Conv", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Add", "Mul", "ReduceMean", "Identity",
                  "Constant"}  # Constant: Clip's bounds (ReLU6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("width", [0.75, 1.0])
def test_builds_and_returns_four_strides(name: str, width: float) -> None:
    model = FACTORIES[name](width=width).eval()
    assert 20_000 < sum(p.numel() for p in model.parameters()) < 400_000  # "a few hundred k params at most"
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    channels = None
    for size in (128, 192):
        with torch.no_grad():
            maps = model(torch.zeros(1, 3, size, size))
        assert isinstance(maps, list) and len(maps) == 4
        assert [(size // m.shape[-1], size // m.shape[-2]) for m in maps] == [(4, 4), (8, 8), (16, 16), (32, 32)]
        assert all(m.shape[-1] * s == size for m, s in zip(maps, (4, 8, 16, 32), strict=True))
        if channels is not None:
            assert [m.shape[1] for m in maps] == channels  # fully convolutional: same channels at any size
        channels = [m.shape[1] for m in maps]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_exports_to_onnx_with_plain_ops(name: str) -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = FACTORIES[name]().eval()
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: a fraction of dynamo's time
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
    proto = onnx.load_from_string(buf.getvalue())
    assert {n.op_type for n in proto.graph.node} <= PLAIN_ONNX_OPS
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert len(outs) == len(expected) == 4
    for got, want in zip(outs, expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-3)
