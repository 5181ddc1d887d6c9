"""Latency benchmarks a mobile engineer can trust: ``blazeport bench``.

What is measured, and how:

- **Every configuration in its own process** (model x backend x threads x mode): a child of the
  chosen interpreter (``python -m blazeport.bench.child``, config on stdin, one JSON line back).
  Peak RSS and thread settings are then the configuration's own, and nothing a previous runtime
  loaded or spun up stays around. Peak RSS is ``VmHWM`` (Linux; ``ru_maxrss`` survives ``exec``
  and would report the parent's peak) or ``getrusage(RUSAGE_SELF).ru_maxrss`` elsewhere; both are in
  the JSON. The child sets ``OMP_NUM_THREADS``/``cv2.setNumThreads`` and the runtime's thread count
  (LiteRT ``num_threads``, onnxruntime ``intra_op_num_threads``, ``torch.set_num_threads``) to N.
  ``--rounds R`` splits the runs over R processes per configuration, run round-robin with every
  other round reversed, so a slow spell of a shared host hits every configuration alike.
- **Times**: ``time.perf_counter_ns``. ``import`` (the runtime module), ``init`` (open the file
  with :func:`blazeport.modelfiles.loader.open_backend`: interpreter / session / module ready), ``first`` (the
  first call), then ``--warmup`` untimed calls, then ``--runs`` timed calls: min, p50, p90, p99,
  mean, std, max, and the raw per-run timings in the JSON. CPU time per run (user + system) shows
  how many cores a runtime really kept busy.
- **Model only** (default): the backend call of the pipeline on a ready letterboxed input
  ``(1, S, S, 3)`` float32 (set input, invoke, read outputs back as numpy), the same call for
  torch, onnxruntime and LiteRT.
- **End to end** (``--e2e``): exactly :meth:`blazeport.pipeline.detector.Detector.detect` on an image
  *file*, with each stage timed inside the loop: ``read`` (file -> RGB with OpenCV),
  ``preprocess`` (MediaPipe letterbox), ``infer`` (backend), ``postprocess`` (decode, score
  threshold, weighted NMS, un-letterbox). Post-processing's share is ``p50(postprocess) /
  p50(infer)``.
- **Baselines in the same run**: Google's original ``.tflite`` in LiteRT with XNNPACK (backend
  ``tflite-original``) for every model that is one or names one as its teacher (a student is
  compared with its teacher's original), and, with ``--e2e``, MediaPipe's own
  ``mp.solutions.face_detection.FaceDetection(model_selection=0|1).process(rgb)`` on the same
  file for an original whose spec names the MediaPipe pipeline that runs that very file
  (``ModelSpec.mediapipe_model_selection``: short_range and full_range_sparse; the dense full_range
  has none), reading the file included exactly as ours (``read_image``: ``cv2.imdecode`` + BGR->RGB).
  ``mp.solutions`` exposes no thread count: its InferenceCalculator uses XNNPACK with MediaPipe's
  default (1 thread off mobile; the CPU-time column shows it), so 1 thread is the stock object and
  N > 1 the same graph with ``xnnpack.num_threads`` set to N
  (:func:`blazeport.bench.mediapipe.mediapipe_face_detection`). MediaPipe runs in any interpreter
  that has it (``--mediapipe-python``, e.g. a separate venv with ``mediapipe==0.10.14``).

Backends (the ``--backend`` labels): the runtimes of :data:`blazeport.modelfiles.backends.RUNTIMES` --
``torch`` (converted or student ``.safetensors``), ``onnx`` (the file ``blazeport export`` writes,
made on the fly into ``--cache`` for a spec name), ``tflite`` (a re-export by ``blazeport export``;
for an original file or a spec name with one, ``tflite`` also runs the original) -- and
``tflite-original`` (Google's file only).

Only torch configurations import torch: ``blazeport bench x.tflite --backend tflite`` runs on a
board with numpy, OpenCV and ``ai-edge-litert`` alone (params and MACs are then counted from the
TFLite graph). ``--android`` prints the equivalent ``benchmark_model`` command lines instead.

The modules, in the order a run goes through them:

- :mod:`~blazeport.cli.bench`: the ``bench`` subcommand (parser, :func:`~blazeport.cli.bench.cmd_bench`);
- :mod:`~blazeport.bench.targets`: MODEL arguments -> targets (a file on a backend), baselines, cached exports;
- :mod:`~blazeport.bench.counts`: params and MACs (the module counter, or the TFLite / ONNX graph);
- :mod:`~blazeport.bench.rounds`: configurations, one child process each per round, merged into rows;
- :mod:`~blazeport.bench.child`: the measured child process; :mod:`~blazeport.bench.spawn` starts it;
  :mod:`~blazeport.bench.folder_measure`: what the child runs for `--folder`;
- :mod:`~blazeport.bench.timing`: the clocks and process facts a child reports;
- :mod:`~blazeport.bench.mediapipe`: MediaPipe's pipeline as a baseline, and its graph surgery;
- :mod:`~blazeport.bench.report`: statistics, ratios, target checks, host, tables and the chart;
- :mod:`~blazeport.bench.android`: TFLite ``benchmark_model`` command lines for a phone.

Nothing here imports :mod:`blazeport.cli` (which imports :func:`~blazeport.cli.bench.add_bench_parser`).
"""
