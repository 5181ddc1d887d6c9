"""The detectors' specs, as data: one MediaPipe graph's values each.

A spec says how to feed a model (input size, normalization), how to read its outputs (anchor
options, decode scales, keypoints), how to filter them (score threshold, NMS) and where its
original file and architecture come from. Code never branches on a model name; it reads a spec.

The constants mirror MediaPipe's detection graphs (``mediapipe/modules/face_detection/
face_detection.pbtxt`` and the short/full-range wrappers, ``pose_detection/pose_detection_cpu.pbtxt``,
``palm_detection/palm_detection_cpu.pbtxt``: ``ImageToTensorCalculatorOptions``,
``SsdAnchorsCalculatorOptions``, ``TensorsToDetectionsCalculatorOptions``,
``NonMaxSuppressionCalculatorOptions``), each spec below holding one graph's values. The palm and
pose values were read from the graphs compiled into mediapipe 0.10.14 itself (its
``_framework_bindings`` module): today's GitHub ``pose_detection_cpu.pbtxt`` says
``min_score_thresh: 0.2``, the 0.10.14 graph that the parity oracle runs says 0.5. Every one of
these graphs sets ``reverse_output_order: true`` (raw boxes are x, y, w, h), ``sigmoid_score``
with ``score_clipping_thresh: 100``, x/y/w/h scales equal to the input size, no
``flip_vertically`` and no ``apply_exponential_on_box_size``: what :mod:`blazeport.pipeline.postprocess` decodes.
"""

from __future__ import annotations

import dataclasses

from blazeport.specs.types import (
    PALM_KEYPOINT_NAMES,
    POSE_KEYPOINT_NAMES,
    AnchorOptions,
    ModelSpec,
    student_spec,
)

__all__ = ["SPECS"]

SHORT_RANGE = ModelSpec(
    name="short_range",
    description="BlazeFace short range (front camera, faces within ~2 m), 128x128",
    input_size=128,
    anchors=AnchorOptions(input_size=128, num_layers=4, strides=(8, 16, 16, 16), min_scale=0.1484375, max_scale=0.75),
    num_anchors=896,
    architecture="blazeface_short_range",
    tflite="face_detection_short_range.tflite",
    sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    score_threshold=0.5,
    aliases=("front",),
    mediapipe_model_selection=0,
)

BACK = ModelSpec(
    name="back",
    description="BlazeFace back camera (faces further away), 256x256",
    input_size=256,
    anchors=AnchorOptions(input_size=256, num_layers=4, strides=(16, 32, 32, 32), min_scale=0.15625, max_scale=0.75),
    num_anchors=896,
    architecture="blazeface_back",
    tflite="face_detection_back.tflite",
    sha256="e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8",
    score_threshold=0.65,
)

_FULL_RANGE_ANCHORS = AnchorOptions(
    input_size=192, num_layers=1, strides=(4,), min_scale=0.1484375, max_scale=0.75, interpolated_scale_aspect_ratio=0.0
)

FULL_RANGE = ModelSpec(
    name="full_range",
    description="BlazeFace full range, dense weights (faces within ~5 m), 192x192",
    input_size=192,
    anchors=_FULL_RANGE_ANCHORS,
    num_anchors=2304,
    architecture="graph",
    family="graph",
    tflite="face_detection_full_range.tflite",
    sha256="99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    score_threshold=0.6,
)

# What MediaPipe itself runs for model_selection=1: another network, block-sparse fp16 weights,
# with the dense file's input, anchors, decoding and thresholds.
FULL_RANGE_SPARSE = dataclasses.replace(
    FULL_RANGE,
    name="full_range_sparse",
    description="BlazeFace full range as MediaPipe runs it (sparse weights, other network), 192x192",
    tflite="face_detection_full_range_sparse.tflite",
    sha256="671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce",
    mediapipe_model_selection=1,
)


# MediaPipe's pose detector (BlazePose's first stage): a box around the face plus 4 body keypoints from
# which the pose landmark model's region is built. pose_detection_cpu.pbtxt as compiled into mediapipe 0.10.14.
POSE_DETECTION = ModelSpec(
    name="pose_detection",
    description="MediaPipe pose detector (face box + hip/shoulder centres and body scale points), 224x224",
    input_size=224,
    anchors=AnchorOptions(input_size=224, num_layers=5, strides=(8, 16, 32, 32, 32), min_scale=0.1484375,
                          max_scale=0.75),
    num_anchors=2254,
    architecture="graph",
    family="graph",
    tflite="pose_detection.tflite",
    sha256="9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
    num_coords=12,
    num_keypoints=4,
    keypoint_names=POSE_KEYPOINT_NAMES,
    subject="pose",
    score_threshold=0.5,
    normalization=(-1.0, 1.0),
    mediapipe_solution="pose",
)

# MediaPipe's palm detectors (BlazePalm; PRELU activations), palm_detection_cpu.pbtxt as compiled into
# mediapipe 0.10.14: input in [0, 1] (letterbox border 0), 7 keypoints. Hands picks the file by
# model_complexity (PalmDetectionModelLoader: 0 lite, 1 full).
PALM_DETECTION_LITE = ModelSpec(
    name="palm_detection_lite",
    description="MediaPipe palm detector, lite (hands model_complexity=0), 192x192",
    input_size=192,
    anchors=AnchorOptions(input_size=192, num_layers=4, strides=(8, 16, 16, 16), min_scale=0.1484375, max_scale=0.75),
    num_anchors=2016,
    architecture="graph",
    family="graph",
    tflite="palm_detection_lite.tflite",
    sha256="e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18",
    num_coords=18,
    num_keypoints=7,
    keypoint_names=PALM_KEYPOINT_NAMES,
    subject="palm",
    score_threshold=0.5,
    normalization=(0.0, 1.0),
    mediapipe_solution="hands",
    mediapipe_model_complexity=0,
)

PALM_DETECTION_FULL = dataclasses.replace(
    PALM_DETECTION_LITE,
    name="palm_detection_full",
    description="MediaPipe palm detector, full (hands model_complexity=1), 192x192",
    tflite="palm_detection_full.tflite",
    sha256="1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54",
    mediapipe_model_complexity=1,
)


# The residual student distilled from short range (blazeport distill; weights/short_range_resnet.safetensors).
SHORT_RANGE_RESNET = student_spec(
    SHORT_RANGE, "resnet", "resnet", name="short_range_resnet",
    description="ResNet-style student distilled from short range on unlabeled photos, 128x128")

# A wider, deeper student from the same recipe (weights/short_range_resnet_large.safetensors).
SHORT_RANGE_RESNET_LARGE = student_spec(
    SHORT_RANGE, "resnet_large", "resnet", name="short_range_resnet_large",
    description="ResNet-style student, 2.6x the teacher's params, distilled from short range, 128x128")

# A MobileNet student of the full-range model (weights/full_range_sparse_mobilenet.safetensors): inverted
# residuals to stride 32, a top-down neck to the teacher's single stride-4 head.
FULL_RANGE_SPARSE_MOBILENET = student_spec(
    FULL_RANGE_SPARSE, "mobilenet", "student", name="full_range_sparse_mobilenet",
    description="MobileNet-style student (inverted residuals + top-down neck) distilled from full range, 192x192")

SPECS: dict[str, ModelSpec] = {
    s.name: s for s in (SHORT_RANGE, BACK, FULL_RANGE, FULL_RANGE_SPARSE, SHORT_RANGE_RESNET, SHORT_RANGE_RESNET_LARGE,
                        FULL_RANGE_SPARSE_MOBILENET, POSE_DETECTION, PALM_DETECTION_LITE, PALM_DETECTION_FULL)
}
