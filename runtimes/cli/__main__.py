"""`python -m runtimes.cli`: the `edge-transfer` command line, where the console script is not on PATH."""

import sys

from . import main

sys.exit(main())
