"""Rank the default hub's experts for each game and seed 0-2 exactly as ``--method select`` does
at a trial's start (hubrl/methods.py: the trial's settings, 20k random-policy steps seeded by the
trial's seed), and write the rankings as JSON: which finetune trial each 1M select trial is.

    python benchmarks/transfer-1m-select/rank.py OUT.json GAME [GAME ...]
"""

import json
import sys

from hubrl.envs import resolve_game
from hubrl.hub import resolve_hub
from hubrl.selection import rank_experts
from hubrl.transfer import TransferConfig

rankings = {}
for game in sys.argv[2:]:
    for seed in (0, 1, 2):
        cfg = TransferConfig(env=game, method="select", seed=seed)
        ranked = rank_experts(resolve_hub(cfg.hub, cfg.sources), resolve_game(game), frames=cfg.select_frames,
                              seed=cfg.seed, repeat_action_probability=cfg.repeat_action_probability)
        rankings[f"{game}/s{seed}"] = [{"expert": r.name, "proxy": float(r.proxy)} for r in ranked]
        print(game, seed, rankings[f"{game}/s{seed}"], flush=True)
with open(sys.argv[1], "w") as handle:
    json.dump(rankings, handle, indent=1)
