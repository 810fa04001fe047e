"""The transfer methods by name: what each does and which read a hub.

Torch-free, so that the commands' ``--help`` (which lists them, :func:`methods_help`) answers at
once; :mod:`hubrl.methods` builds each method's agent.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["METHODS", "HUB_METHODS", "METHOD_SUMMARIES", "SHIPPED_HUB", "methods_help"]

METHODS = ("hub-pathway", "scratch", "finetune", "zoo-tuning", "select")
HUB_METHODS = ("hub-pathway", "finetune", "zoo-tuning", "select")  # those that read a hub (all but scratch)

#: What each method does, in one line.
METHOD_SUMMARIES = {
    "hub-pathway": "Hub-Pathway (Shu et al., NeurIPS 2022): a noisy gate routes each observation to its top-k "
                   "experts' encoders and mixes their features; exploration and exploitation losses are added to "
                   "PPO/A2C's.",
    "scratch": "PPO/A2C from a fresh RL Zoo NatureCNN: no hub.",
    "finetune": "one expert's encoder (--source) with new policy and value heads, all fine-tuned.",
    "zoo-tuning": "Zoo-Tuning (Shu et al., ICML 2021): each conv layer mixes the experts' kernels per sample "
                  "with a learned gate; --lite saves one merged NatureCNN.",
    "select": "rank the experts by a cheap proxy (a ridge probe of random play's returns on each frozen "
              "encoder), then fine-tune the best.",
}

#: The hub shipped inside the package: experts only (their pretraining runs are kept outside it).
SHIPPED_HUB = Path(__file__).resolve().parent / "default_hub"


def methods_help() -> str:
    """The methods, one line each, and the shipped hub's experts: a command's ``--help`` epilog."""
    experts = sorted(p.name for p in SHIPPED_HUB.iterdir() if p.is_dir()) if SHIPPED_HUB.is_dir() else []
    # Never break at a hyphen or inside a word: 'riverraid-ppo' and the hub's path must read whole
    # wherever the package is installed.
    whole = {"width": 100, "break_on_hyphens": False, "break_long_words": False}
    lines = ["methods:"] + [textwrap.fill(text, initial_indent=f"  {name:<13}", subsequent_indent=" " * 15, **whole)
                            for name, text in METHOD_SUMMARIES.items()]
    lines.append(textwrap.fill(f"The shipped hub, used without --hub or --sources ({SHIPPED_HUB}): "
                               f"{', '.join(experts) or 'no experts in this installation'}.", **whole))
    return "\n".join(lines)
