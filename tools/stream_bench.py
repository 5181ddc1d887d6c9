"""Images per second and peak memory of the distillation data pipeline, in memory against streamed.

    python tools/stream_bench.py                       # 1k, 10k, 100k photos; shards at 1k and 10k
    python tools/stream_bench.py --sizes 1000 --samples 500 --quick

Pools are made of the real photos in ``../shared/data/unlabeled`` repeated: symlinks (folders of
1,000) under ``--work`` (default ``/tmp/blazeport-stream-bench``), so 100,000 "photos" take no disk;
WebDataset shards (1,000 samples each, real bytes) only at the sizes in ``--shard-sizes``. Each
configuration runs in its own process (its peak RSS is its own) and draws ``--samples`` training
samples, in batches of 32, the way the trainer does: decode (or look up, for the in-memory path),
downscale, augment, convert to [-1, 1], and the teacher's forward pass on the batch (short_range,
one torch thread), i.e. everything but the student's step.

- ``memory``: the old path, ``ImageSet.load`` (every photo decoded into a list), then samples from
  it. Its start-up (decoding the whole pool) is reported apart from its samples/s.
- ``stream``: :class:`~blazeport.distill.stream.StreamDataset` with no memory cache, samples in
  the epoch's shuffled order, ``--workers`` 0 and 2.
- ``shards``: :class:`~blazeport.distill.shards.ShardTrain` over the tar shards, workers 0 and 2.

Peak RSS is ``VmHWM`` from ``/proc/PID/status``: the training process's, and with workers the sum of
the training process and its workers (read just before the workers exit), which over-counts pages
the forked workers share with their parent: an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "unlabeled"
BATCH = 32


def hwm_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int | str = "self") -> int:
    """Proportional set size: shared pages split between the processes that share them (no double count)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def sources() -> list[Path]:
    from blazeport.pipeline.photos import list_images

    return list_images([SHARED])


def make_folder(work: Path, n: int) -> Path:
    folder = work / f"folder_{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    src = sources()
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        link = sub / f"{i:06d}_{src[i % len(src)].name}"
        if not link.is_symlink():
            link.symlink_to(src[i % len(src)].resolve())
    done.write_text("")
    return folder


def make_shards(work: Path, n: int) -> str:
    folder = work / f"shards_{n}"
    count = -(-n // 1000)
    spec = str(folder / f"{{000..{count - 1:03d}}}.tar")
    if (folder / ".complete").exists():
        return spec
    folder.mkdir(parents=True, exist_ok=True)
    src = sources()
    for s in range(count):
        with tarfile.open(folder / f"{s:03d}.tar", "w") as tar:
            for i in range(s * 1000, min(n, (s + 1) * 1000)):
                p = src[i % len(src)]
                tar.add(str(p.resolve()), arcname=f"{i:06d}_{p.stem}{p.suffix.lower()}")
    (folder / ".complete").write_text("")
    return spec


def run_one(kind: str, source: str, workers: int, samples: int) -> dict:
    """One configuration, in this process."""
    import numpy as np
    import torch

    import blazeport
    from blazeport.distill.dataset import DistillDataset, ImageSet
    from blazeport.distill.shards import ShardIndex, ShardTrain
    from blazeport.distill.stream import FolderTrain, ImageIndex, StreamDataset, to_batch

    torch.set_num_threads(1)
    teacher = blazeport.load("short_range").backend.module.to(memory_format=torch.channels_last).eval()
    size = 128
    steps = max(1, samples // BATCH)
    t0 = time.perf_counter()
    workers_hwm: list[int] = []
    pss: list[int] = []
    if kind == "memory":
        images = ImageSet.load([source], size)
        n = len(images.images)
        ds = DistillDataset(images, list(range(n)), size, seed=0, augment=True)
        startup = time.perf_counter() - t0
        order = ds.order()

        def batches():
            for s in range(steps):  # a pool smaller than --samples: more epochs
                ds.set_epoch(s * BATCH // n)
                idx = [order[(s * BATCH + k) % n] for k in range(BATCH)]
                yield torch.from_numpy(np.stack([ds[i] for i in idx])).permute(0, 3, 1, 2)
    else:
        if kind == "stream":
            index = ImageIndex([source])
            n = len(index)
            train = FolderTrain(StreamDataset(index, list(range(n)), size, seed=0, augment=True, memory_mb=0), workers)
        else:
            sidx = ShardIndex([source], 0.1, 0.1)  # the trainer's default split; samples from the training 80%
            n = sidx.total
            train = ShardTrain(sidx, size, 0, None, workers)
        startup = time.perf_counter() - t0

        def batches():
            s = 0
            for epoch in range(10**6):  # a pool smaller than --samples: more epochs
                for x, _ in train.epoch(epoch, 0, 1, BATCH):
                    if s == steps - 1:  # the workers' peaks and everyone's current PSS, while the workers are alive
                        workers_hwm.extend(hwm_kb(pid) for pid in children())
                        pss.extend(pss_kb(pid) for pid in ["self", *children()])
                    yield to_batch(x, torch.device("cpu"))
                    s += 1
                    if s >= steps:
                        return

    t1 = time.perf_counter()
    done = 0
    with torch.no_grad():
        for x in batches():
            teacher(x.contiguous(memory_format=torch.channels_last))
            done += len(x)
    seconds = time.perf_counter() - t1
    parent = hwm_kb()
    return {"kind": kind, "images": n, "workers": workers, "samples": done, "startup_s": round(startup, 2),
            "images_per_s": round(done / seconds, 1), "peak_rss_mb": round(parent / 1024, 1),
            "workers_peak_rss_mb": [round(w / 1024, 1) for w in workers_hwm],
            "total_peak_rss_mb": round((parent + sum(workers_hwm)) / 1024, 1),
            "pss_at_end_mb": round(sum(pss) / 1024, 1) if pss else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--shard-sizes", default="1000,10000")
    ap.add_argument("--memory-sizes", default="1000,10000", help="sizes at which the in-memory path is run")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--work", default="/tmp/blazeport-stream-bench")
    ap.add_argument("--json", default="runs/stream_bench.json")
    ap.add_argument("--one", nargs=4, metavar=("KIND", "SOURCE", "WORKERS", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, source, workers, samples = args.one
        print(json.dumps(run_one(kind, source, int(workers), int(samples))))
        return 0
    work = Path(args.work)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    shard_sizes = [int(s) for s in args.shard_sizes.split(",") if s]
    memory_sizes = [int(s) for s in args.memory_sizes.split(",") if s]
    configs = []
    for n in sizes:
        t = time.perf_counter()
        folder = make_folder(work, n)
        print(f"pool of {n} photos (symlinks): {folder} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        if n in memory_sizes:
            configs.append(("memory", str(folder), 0))
        configs += [("stream", str(folder), 0), ("stream", str(folder), 1), ("stream", str(folder), 2)]
        if n in shard_sizes:
            spec = make_shards(work, n)
            configs += [("shards", spec, 0), ("shards", spec, 2)]
    results = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for kind, source, workers in configs:
        proc = subprocess.run([sys.executable, __file__, "--one", kind, source, str(workers), str(args.samples)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{kind} {source} workers={workers}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print("| path | photos | workers | start-up s | images/s | peak RSS MB (process) | peak RSS MB (+ workers) | PSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['kind']} | {r['images']:,} | {r['workers']} | {r['startup_s']} | {r['images_per_s']} | "
              f"{r['peak_rss_mb']} | {r['total_peak_rss_mb']} | {r['pss_at_end_mb'] or ''} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
