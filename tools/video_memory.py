"""Peak memory of ``blazeport detect VIDEO`` against the video's length and size: is it flat?

    python tools/video_memory.py --json runs/video_memory.json

Makes the videos with ``tools/make_video.py`` (into ``--dir``, reused when present): 640x480 at 30 fps
for 10 s, 1 min and 10 min, and 3840x2160 at 30 fps for 1 s and 20 s; then runs each through
``blazeport detect VIDEO --backend tflite --threads 1 --json`` (stdout to /dev/null) and the same with
``--out`` (drawing and encoding the mp4), each in a fresh process whose own peak RSS (``VmHWM``) is
read at its end. Flat means the peak does not grow with the length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = (("vga_10s.mp4", (640, 480), 10), ("vga_1min.mp4", (640, 480), 60), ("vga_10min.mp4", (640, 480), 600),
          ("uhd_1s.mp4", (3840, 2160), 1), ("uhd_20s.mp4", (3840, 2160), 20))
CHILD = """
import sys
from blazeport.cli import main
code = main(sys.argv[2:])
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
with open(sys.argv[1], "w") as f:
    f.write(f"{code} {peak}")
"""


def measure(video: Path, out_dir: Path | None) -> dict[str, object]:
    """One ``detect`` run in a fresh interpreter: exit code, peak RSS (MB), wall seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result"
        argv = ["detect", str(video), "--backend", "tflite", "--threads", "1", "--json", "-q"]
        argv += ["--out", str(out_dir)] if out_dir else []
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, str(result), *argv], cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - t0
        code, peak_kb = result.read_text().split()
    return {"exit": int(code), "peak_rss_mb": round(int(peak_kb) / 1024, 1), "wall_s": round(wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=ROOT / "runs" / "video_memory", help="where the videos are made")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from tools.make_video import make_video

    rows = []
    for name, size, seconds in VIDEOS:
        video = args.dir / name
        if not video.is_file():
            make_video(video, size, seconds)
        for draw in (False, True):
            with tempfile.TemporaryDirectory(dir=args.dir) as out:
                row = {"video": name, "size": f"{size[0]}x{size[1]}", "seconds": seconds, "frames": seconds * 30,
                       "mb_on_disk": round(video.stat().st_size / 1e6, 1), "out": draw,
                       **measure(video, Path(out) if draw else None)}
            row["frames_per_s"] = round(row["frames"] / row["wall_s"], 1)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
