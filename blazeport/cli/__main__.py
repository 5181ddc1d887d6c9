"""``python -m blazeport.cli``: the console command (torchrun runs distillation this way)."""

import sys

from blazeport.cli import main

sys.exit(main())
