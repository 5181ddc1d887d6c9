"""The pipeline: letterbox, run a backend, decode, NMS and un-letterbox (:mod:`~blazeport.pipeline.detector`),
landmarks after detection, drawing and scoring; the same code for every model and runtime.
"""
