"""``python -m blazeport.bench ARGS``: the same as ``blazeport bench ARGS``."""

import sys

from blazeport.cli.bench import main

sys.exit(main())
