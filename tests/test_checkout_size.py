"""The checkout stays small enough to travel to a GPU machine.

The device tool (``benchmarks/gpu/README.md``) sends the tracked working tree together with the
device wheels (``.whl/``, ~3.7 MB) and refuses anything over 64 MiB. The tree went over once,
with two 20 MB pretraining checkpoints in it, which made the documented GPU check fail before it
started. Large training state stays in git history (``benchmarks/pretrain/README.md`` says how to
restore it) instead of in the tree.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What may travel besides the wheels: the tool's 64 MiB less ~4 MiB of device wheels.
TREE_BUDGET = 60 * 2**20

#: Trials' checkpoints carried between sessions of the 1M grid: committed at the end of a session,
#: moved back out and removed from the tree at the start of the next, before any GPU call
#: (``benchmarks/transfer-1m-carry/README.md``).
CARRIED = "benchmarks/transfer-1m-carry/"


def tracked_sizes(root: Path) -> dict[str, int]:
    """Size in bytes of every file git tracks under ``root`` (deleted files left out)."""
    listing = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True)
    names = [name for name in listing.stdout.decode().split("\0") if name]
    return {name: (root / name).stat().st_size for name in names if (root / name).is_file()}


def over_budget(sizes: dict[str, int], budget: int = TREE_BUDGET) -> str | None:
    """Why ``sizes`` would not travel (None when it would): the total and the largest files."""
    kept = {name: size for name, size in sizes.items() if not name.startswith(CARRIED)}
    total = sum(kept.values())
    if total <= budget:
        return None
    largest = sorted(kept.items(), key=lambda item: -item[1])[:3]
    return (f"tracked files total {total / 2**20:.1f} MiB, over the {budget / 2**20:.0f} MiB that travel to a GPU "
            f"machine with its wheels; largest: {', '.join(f'{n} ({s / 2**20:.1f} MiB)' for n, s in largest)}")


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_checkout_fits_the_device_tool():
    assert over_budget(tracked_sizes(ROOT)) is None, over_budget(tracked_sizes(ROOT))


def test_over_budget_names_the_largest_files():
    sizes = {"a.pt": 50 * 2**20, "b.txt": 11 * 2**20, CARRIED + "Gopher/s2/checkpoint.pt": 40 * 2**20}
    message = over_budget(sizes)
    assert message is not None and "61.0 MiB" in message and message.index("a.pt") < message.index("b.txt")
    assert over_budget({"a.pt": 50 * 2**20, CARRIED + "x.pt": 40 * 2**20}) is None  # carried state is exempt
