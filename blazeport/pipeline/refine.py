"""The 478 refined face landmarks from the attention mesh's seven outputs, as MediaPipe assembles them.

``FaceMesh(refine_landmarks=True)`` runs ``face_landmark_with_attention.tflite`` and reads its outputs
with the ``TensorsToFaceLandmarksWithAttention`` subgraph
(``mediapipe/modules/face_landmark/tensors_to_face_landmarks_with_attention.pbtxt``):

1. ``SplitTensorVectorCalculator``: the first six tensors (mesh, lips, left eye, right eye, left
   iris, right iris; the seventh, the face flag, was split off before);
2. one ``TensorsToLandmarksCalculator`` each (``num_landmarks`` 468 / 80 / 71 / 71 / 5 / 5,
   ``input_image_width`` and ``height`` 192): x / 192, y / 192, and z / 192 where the tensor has
   three values a landmark (the mesh only; the others are x, y);
3. ``LandmarksRefinementCalculator`` (``mediapipe/calculators/util/landmarks_refinement_calculator.cc``):
   478 landmarks, starting at 0; each refinement in turn writes its x and y at its
   ``indexes_mapping``; z: the mesh's is copied (``copy``), the lips' and eyes' leave the mesh's
   (``none``), and each iris gets the mean z of 16 eye contour landmarks of the refined list
   (``assign_average``, summed in double as ``GetZAverage`` does).

:data:`REFINEMENTS` holds the index maps as MediaPipe 0.10.14 runs them: read from the
``CalculatorGraphConfig`` of that subgraph compiled into the wheel's ``_framework_bindings`` ``.so``
(``tools/refinement_maps.py`` extracts it and ``--check`` compares it with this table; the pbtxt on
GitHub at tag v0.10.14 is the same). The lips and eye maps are the ``subset_idxs`` of the model's own
``Landmarks2TransformMatrix`` ops: each sub-model refines the landmarks it cropped around.

numpy only: every runtime's outputs go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["NUM_REFINED_LANDMARKS", "REFINEMENTS", "Refinement", "refine_landmarks"]

NUM_REFINED_LANDMARKS = 478

_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409, 78, 95, 88, 178,
         87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415, 76, 77, 90, 180, 85, 16, 315, 404,
         320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408, 62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292,
         183, 42, 41, 38, 12, 268, 271, 272, 407)
_LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173, 130, 25, 110, 24, 23, 22, 26,
             112, 243, 247, 30, 29, 27, 28, 56, 190, 226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223,
             222, 221, 189, 35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245, 156, 70, 63, 105, 66,
             107, 55, 193)
_RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398, 359, 255, 339, 254, 253,
              252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414, 446, 261, 448, 449, 450, 451, 452, 453, 464, 342,
              445, 444, 443, 442, 441, 413, 265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
              383, 300, 293, 334, 296, 336, 285, 417)


@dataclass(frozen=True)
class Refinement:
    """One ``LandmarksRefinementCalculatorOptions.Refinement``: which output, where its landmarks go,
    and what happens to z (``copy``, ``none`` or ``assign_average`` over ``average_of``)."""

    output: str  # the LandmarkSpec output it reads
    indexes: tuple[int, ...]
    z: str
    average_of: tuple[int, ...] = ()


# In MediaPipe's order (LANDMARKS:0 ... LANDMARKS:5); the eye contours' first 16 landmarks (lower contour,
# then the upper one without its corners) are what each iris's z is the mean of.
REFINEMENTS: tuple[Refinement, ...] = (
    Refinement("landmarks", tuple(range(468)), "copy"),
    Refinement("lips", _LIPS, "none"),
    Refinement("left_eye", _LEFT_EYE, "none"),
    Refinement("right_eye", _RIGHT_EYE, "none"),
    Refinement("left_iris", (468, 469, 470, 471, 472), "assign_average", _LEFT_EYE[:16]),
    Refinement("right_iris", (473, 474, 475, 476, 477), "assign_average", _RIGHT_EYE[:16]),
)


def refine_landmarks(outputs: Mapping[str, np.ndarray], scale: float) -> np.ndarray:
    """One face's 478 landmarks ``(478, 3)``, normalized to the crop, from the attention mesh's raw
    outputs (one image's floats each, by :data:`REFINEMENTS`' output names; ``scale``: the model's input
    size, 192): ``TensorsToLandmarksCalculator`` then ``LandmarksRefinementCalculator``."""
    refined = np.zeros((NUM_REFINED_LANDMARKS, 3), np.float32)
    s = np.float32(scale)
    for r in REFINEMENTS:
        raw = np.asarray(outputs[r.output], np.float32).reshape(len(r.indexes), -1)  # (n, 2 or 3)
        idx = np.asarray(r.indexes)
        refined[idx, :2] = raw[:, :2] / s
        if r.z == "copy":
            refined[idx, 2] = raw[:, 2] / s if raw.shape[1] > 2 else np.float32(0)
        elif r.z == "assign_average":
            refined[idx, 2] = np.float32(refined[list(r.average_of), 2].astype(np.float64).mean())
    return refined
