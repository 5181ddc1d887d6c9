"""``python -m blazeport.bench ARGS``: the same as ``blazeport bench ARGS``."""

import sys

from blazeport.bench.cli import main

sys.exit(main())
