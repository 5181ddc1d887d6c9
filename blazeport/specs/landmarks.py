"""The landmark models' specs, as data: MediaPipe's face mesh (plain and with attention) and iris.

Not detectors (no anchors), so kept apart from :data:`blazeport.specs.SPECS`, which every detector
tool iterates. The pipeline that makes their crops and reads their outputs is :mod:`blazeport.pipeline.landmarks`.
"""

from __future__ import annotations

from blazeport.specs.types import LandmarkSpec

__all__ = ["LANDMARK_SPECS"]

# MediaPipe's face mesh model (mediapipe/modules/face_landmark/face_landmark_cpu.pbtxt: ImageToTensorCalculator
# 192x192, float range [0, 1]; TensorsToLandmarksCalculator 468 landmarks, input_image_width/height 192;
# the face flag through TensorsToFloatsCalculator's SIGMOID).
FACE_LANDMARK = LandmarkSpec(
    name="face_landmark",
    description="MediaPipe face mesh: 468 3-D landmarks and a face presence score from a 192x192 face crop",
    input_size=192,
    outputs=(("landmarks", 468 * 3), ("face_flag", 1)),
    tflite="face_landmark.tflite",
    sha256="1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
)

# MediaPipe's iris model (mediapipe/modules/iris_landmark/iris_landmark_cpu.pbtxt: a 64x64 eye crop, float range
# [0, 1] (TfLiteConverterCalculator zero_center: false); 71 eye contour and brow landmarks, then 5 iris
# landmarks, in 64-pixel units).
IRIS_LANDMARK = LandmarkSpec(
    name="iris_landmark",
    description="MediaPipe iris: 71 eye contour/brow and 5 iris 3-D landmarks from a 64x64 eye crop",
    input_size=64,
    outputs=(("eye_contour", 71 * 3), ("iris", 5 * 3)),
    tflite="iris_landmark.tflite",
    sha256="d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
)

# MediaPipe's face mesh with attention, what FaceMesh(refine_landmarks=True) runs (face_landmark_cpu.pbtxt with
# with_attention: the same 192x192 crop in [0, 1]; tensors_to_face_landmarks_with_attention.pbtxt reads the seven
# outputs in the file's order: the 468-landmark mesh (x, y, z), then x, y of the 80 lip, 71 + 71 eye and 5 + 5 iris
# landmarks, all in 192-pixel units, and the face flag). Its custom ops: blazeport.models.custom_ops.
FACE_LANDMARK_ATTENTION = LandmarkSpec(
    name="face_landmark_with_attention",
    description="MediaPipe face mesh with attention: 468 3-D landmarks refined on the lips, eyes and irises "
    "(478 with the irises) and a face presence score, from a 192x192 face crop",
    input_size=192,
    outputs=(("landmarks", 468 * 3), ("lips", 80 * 2), ("left_eye", 71 * 2), ("right_eye", 71 * 2),
             ("left_iris", 5 * 2), ("right_iris", 5 * 2), ("face_flag", 1)),
    tflite="face_landmark_with_attention.tflite",
    sha256="e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4",
    aliases=("attention",),
)

# Landmark models: not detectors (no anchors), so kept apart from SPECS, which every detector tool iterates.
LANDMARK_SPECS: dict[str, LandmarkSpec] = {s.name: s for s in (FACE_LANDMARK, IRIS_LANDMARK, FACE_LANDMARK_ATTENTION)}
