"""Check, for every float32 logit in [-100, 100], that the compiled post-processing's sigmoid gives
the bits of numpy's (:func:`blazeport.pipeline.postprocess.decode_scores`) on this machine.

    python tools/check_sigmoid.py          # ~2.24e9 values, about 80 s on 2 cores

blazeport computes the sigmoid inside the numba kernel only where numpy's float64 ``exp`` is the C
library's (``blazeport.pipeline.compiled_post.kernel_sigmoid_is_exact``); this walks every bit pattern to
show the two agree there. Exit status 1 on any mismatch (printed).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from blazeport.pipeline.compiled_post import kernel_sigmoid_is_exact, select
from blazeport.pipeline.postprocess import decode_scores

CHUNK = 1 << 24


def check(first: int, last: int) -> tuple[int, int]:
    """(values checked, mismatches) over the float32 bit patterns first..last (inclusive)."""
    n = bad = 0
    for a in range(first, last + 1, CHUNK):
        x = np.arange(a, min(a + CHUNK, last + 1), dtype=np.uint64).astype(np.uint32).view(np.float32)
        _, ours = select(x, np.float32(0), True, 100.0)
        ref = decode_scores(x[:, None], 100.0)
        wrong = ours.view(np.uint32) != ref.view(np.uint32)
        if wrong.any():
            print(f"mismatch at logits {x[wrong][:5]}: {ours[wrong][:5]} vs numpy {ref[wrong][:5]}")
        n, bad = n + len(x), bad + int(wrong.sum())
    return n, bad


def main() -> int:
    bits = np.array([100.0, -100.0], np.float32).view(np.uint32)
    t0 = time.time()
    n1, bad1 = check(0, int(bits[0]))  # +0 .. 100
    n2, bad2 = check(0x80000000, int(bits[1]))  # -0 .. -100
    print(f"{n1 + n2:,} float32 logits, {bad1 + bad2} mismatches, {time.time() - t0:.0f} s; "
          f"the kernel computes the sigmoid here: {kernel_sigmoid_is_exact()}")
    return 1 if bad1 + bad2 else 0


if __name__ == "__main__":
    sys.exit(main())
