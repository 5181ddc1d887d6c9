#!/usr/bin/env python
"""The attention mesh's landmark index maps, read from the MediaPipe wheel itself.

MediaPipe compiles its subgraphs (``tensors_to_face_landmarks_with_attention.pbtxt`` among them) into
``mediapipe/python/_framework_bindings*.so`` as serialized ``CalculatorGraphConfig`` protos. This finds
the one whose ``type`` is ``TensorsToFaceLandmarksWithAttention`` (it ends with that name, field 20),
parses it with MediaPipe's own proto classes and prints its ``LandmarksRefinementCalculator`` options;
``--check`` compares them with :data:`blazeport.pipeline.refine.REFINEMENTS` (exit 1 on a difference).

    python tools/refinement_maps.py [--check]        # needs the parity extra (mediapipe==0.10.14)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blazeport.pipeline.refine import REFINEMENTS, Refinement  # noqa: E402

SUBGRAPH = "TensorsToFaceLandmarksWithAttention"


def wheel_config() -> Any:
    """The subgraph's ``CalculatorGraphConfig`` as compiled into the installed MediaPipe."""
    import mediapipe
    from mediapipe.framework import calculator_pb2

    so = next((Path(mediapipe.__file__).parent / "python").glob("_framework_bindings*.so"))
    data = so.read_bytes()
    tail = b"\xa2\x01" + bytes([len(SUBGRAPH)]) + SUBGRAPH.encode()  # field 20 (type), length, the name
    end = data.find(tail)
    if end < 0:
        raise SystemExit(f"{so}: no serialized {SUBGRAPH} graph found")
    end += len(tail)
    for start in range(end - 3, max(0, end - 64_000), -1):  # its start: the earliest offset that parses whole
        if data[start] != 0x0A:  # field 1 (node), length-delimited
            continue
        config = calculator_pb2.CalculatorGraphConfig()
        try:
            config.ParseFromString(data[start:end])
        except Exception:  # protobuf's DecodeError, or a varint past the slice
            continue
        if config.type == SUBGRAPH and config.node and all(n.calculator for n in config.node) and \
                config.node[0].calculator == "SplitTensorVectorCalculator":
            return config
    raise SystemExit(f"{so}: the {SUBGRAPH} graph does not parse")


def wheel_refinements() -> tuple[Refinement, ...]:
    """:class:`Refinement` s as the wheel's ``LandmarksRefinementCalculator`` node states them, named by
    the ``TensorsToLandmarksCalculator`` streams that feed it (``lips_landmarks`` -> ``lips``)."""
    from mediapipe.calculators.util import landmarks_refinement_calculator_pb2 as pb

    config = wheel_config()
    node = next(n for n in config.node if n.calculator == "LandmarksRefinementCalculator")
    options = node.options.Extensions[pb.LandmarksRefinementCalculatorOptions.ext]
    names = [s.split(":")[-1].removesuffix("_landmarks") for s in node.input_stream]
    out = []
    for name, r in zip(names, options.refinement, strict=True):
        z = r.z_refinement.WhichOneof("z_refinement_options")
        out.append(Refinement("landmarks" if name == "mesh" else name, tuple(r.indexes_mapping), z,
                              tuple(r.z_refinement.assign_average.indexes_for_average)))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with blazeport.pipeline.refine.REFINEMENTS")
    args = ap.parse_args(argv)
    found = wheel_refinements()
    for r in found:
        print(f"{r.output:<11} {len(r.indexes):>3} landmarks -> {r.indexes[:6]}...  z {r.z}"
              + (f" of {r.average_of}" if r.average_of else ""))
    if args.check:
        same = found == REFINEMENTS
        name = "blazeport.pipeline.refine.REFINEMENTS"
        print(f"OK: {name} is the wheel's" if same else f"DIFFERS from {name}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
