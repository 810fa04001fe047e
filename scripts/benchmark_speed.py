#!/usr/bin/env python
"""Throughput on this machine, measured side by side.

The command ``hubrl-speed`` (also ``python -m hubrl speed``), runnable from a clone; ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs without installation too

from hubrl.cli import run_script  # noqa: E402

if __name__ == "__main__":
    run_script("speed", __file__)
