"""``python -m spikegpt``: the command line (see :mod:`spikegpt.tools.cli`)."""

import sys

from spikegpt.tools.cli import main

sys.exit(main())
