"""Rewrite ``blazeport/bundled/SHA256SUMS``: the sha256 of every bundled model file.

Run after a model is converted again or a student re-shipped (``tools/ship_student.py``); the test
``tests/test_bundle.py`` fails while the list and the files disagree, so a changed model cannot ship
unlisted. ``--check`` only compares (exit 1 on a difference).

    python tools/bundle_manifest.py [--check]
"""

from __future__ import annotations

import argparse
import sys

from blazeport.files import sha256_of, write_atomic
from blazeport.modelfiles import bundle


def current() -> dict[str, str]:
    return {p.relative_to(bundle.BUNDLE_DIR).as_posix(): sha256_of(p) for p in bundle.bundled_files()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if the list is out of date")
    args = p.parse_args(argv)
    now = current()
    if args.check:
        listed = bundle.read_manifest() if bundle.MANIFEST.is_file() else {}
        diff = sorted(k for k in set(now) | set(listed) if now.get(k) != listed.get(k))
        for name in diff:
            print(f"differs: {name}", file=sys.stderr)
        return 1 if diff else 0
    write_atomic(bundle.MANIFEST, "".join(f"{digest}  {name}\n" for name, digest in sorted(now.items())).encode())
    print(f"{bundle.MANIFEST}: {len(now)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
