#!/usr/bin/env python
"""Fine-tune an agent on a target Atari game by transfer from a hub of pretrained experts.

The command ``hubrl-transfer`` (also ``python -m hubrl transfer``), runnable from a clone; ``--help`` lists its options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a clone runs without installation too

from hubrl.cli import run_script  # noqa: E402

if __name__ == "__main__":
    run_script("transfer", __file__)
