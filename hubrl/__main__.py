"""``python -m hubrl <command> ...``: the commands of :mod:`hubrl.cli` (``python -m hubrl --help``)."""

import sys

from hubrl.cli import main

sys.exit(main())
