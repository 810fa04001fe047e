#!/usr/bin/env python
"""Rank a hub's experts for a target game before training.

The command ``hubrl-rank`` (also ``python -m hubrl rank``), runnable from a clone; ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs without installation too

from hubrl.cli import run_script  # noqa: E402

if __name__ == "__main__":
    run_script("rank", __file__)
