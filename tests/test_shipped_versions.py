"""tools/shipped_versions.py: a version is new when its weights are, not when only its header was re-written."""

from __future__ import annotations

import importlib

import numpy as np
from safetensors.numpy import save

versions = importlib.import_module("tools.shipped_versions")


def test_the_same_tensors_under_another_header_are_one_version() -> None:
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    first = save(a, metadata={"spec": '{"name": "x"}'})
    rewritten = save(dict(reversed(list(a.items()))), metadata={"spec": '{"name": "x", "aliases": []}', "more": "1"})
    assert first != rewritten
    assert versions.weights_digest(first) == versions.weights_digest(rewritten)
    changed = save({**a, "b": np.array([1, 1, 1.0001], np.float32)})
    assert versions.weights_digest(changed) != versions.weights_digest(first)
    renamed = save({"w2": a["w"], "b": a["b"]})
    assert versions.weights_digest(renamed) != versions.weights_digest(first)
