#!/usr/bin/env python
"""Watch an agent play an Atari game, optionally record a video.

The command ``hubrl-enjoy`` (also ``python -m hubrl enjoy``), runnable from a clone; ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs without installation too

from hubrl.cli import run_script  # noqa: E402

if __name__ == "__main__":
    run_script("enjoy", __file__)
