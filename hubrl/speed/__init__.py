"""Speed measurements behind ``hubrl-speed`` (:mod:`hubrl.cli.speed`) and BENCHMARKS.md's speed tables.

* :mod:`hubrl.speed.throughput`: whole pipelines, in agent or env steps per second: the envs,
  training processes against stock SB3's, every transfer method against scratch, ranking a hub;
* :mod:`hubrl.speed.kernels`: single computations timed side by side after checking that they
  compute the same thing: Zoo-Tuning's per-sample convolutions, the variants measured and not
  adopted, Hub-Pathway's inference with its routing controlled.
"""

from __future__ import annotations

import os

from hubrl.provenance import cpu_model

__all__ = ["machine_line"]


def machine_line() -> str:
    """CPU model and core count, for the record under a table."""
    return f"{cpu_model()}, {os.cpu_count()} cores"
