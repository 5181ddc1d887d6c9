"""Distillation of a converted original (teacher) into a student, on unlabeled images.

The package, one job per module:

- :mod:`~blazeport.distill.config`: :class:`TrainConfig`, a job's arguments, and their checks.
- :mod:`~blazeport.distill.split`: the train / validation / test split, by a hash of each photo's
  bytes (runs recorded before that rule keep their file-name hash on resume);
  :mod:`~blazeport.distill.dataset`: augmentation seeded per (seed, epoch, image), and the
  in-memory photo set.
- :mod:`~blazeport.distill.stream`: photos streamed from an index of paths, decoded in DataLoader
  workers, with bounded memory and optional disk caches; :mod:`~blazeport.distill.shards`: the
  same from WebDataset tar shards, each DDP rank reading its own.
- :mod:`~blazeport.distill.changes`: what a camera does to a photo, with explicit parameters;
  :mod:`~blazeport.distill.noisy`: Noisy Student (``--augment ns_*``), the student's input changed and
  the teacher's clean-photo outputs carried through the change; :mod:`~blazeport.distill.labels`:
  hand-drawn boxes (``--boxes``) beside the teacher.
- :mod:`~blazeport.distill.loss_terms`: the table of ``--loss`` terms and :class:`LossConfig`
  (no torch: the CLI's help reads it); :mod:`~blazeport.distill.losses` implements each term.
- :mod:`~blazeport.distill.checkpoint`: ``last.pt`` / ``best.pt``: written atomically, read only
  with ``torch.load(weights_only=True)``, and every check that refuses a foreign or broken one;
  :mod:`~blazeport.distill.midepoch`: checkpoints inside an epoch, and resuming from one exactly.
- :mod:`~blazeport.distill.validation`: the teacher against its ``.tflite`` before training, the
  student against the teacher on held-out images each epoch.
- :mod:`~blazeport.distill.logs`: TensorBoard, ``metrics.json``, ``curves.png``, ``summary.json``.
- :mod:`~blazeport.distill.lock`: ``OUT/.lock``, one run per run folder.
- :mod:`~blazeport.distill.inputs`: the checked teacher and the run's photos;
  :mod:`~blazeport.distill.trainer`: :func:`train`, the run itself (teacher check, epochs,
  validation, the student's weights).

Nothing is imported here, so ``import blazeport.distill.loss_terms`` stays free of torch.
"""
