#!/usr/bin/env bash
# Two lanes of the 1M grid, one trial at a time each, seed-major. Lane 1: routed arm at 79b61a4; lane 2: scratch at f849f10.
# Then, as the issue orders, the finetune arms (f849f10, scratch's harness): lane 1 fine-tunes Seaquest's expert, lane 2
# Riverraid's, all of Jamesbond's seeds first (where the hub falls furthest behind scratch), then Alien's, then Gopher's;
# then select (lane 1) and zoo-tuning (lane 2), in the same order.
# Usage (from anywhere): bash lanes.sh 1 & bash lanes.sh 2 &   (README.md here: restoring the grid root first)
# Each lane runs its arm from a git worktree pinned at the arm's commit, made here when missing, and
# skips trials finished in an earlier session (status ok in the repository's archive,
# benchmarks/transfer-1m) or in this grid root (the runner's own check); an interrupted trial resumes.
set -u
REPO=${REPO:-/work/main}
{ flock 9  # the two lanes start together: one makes the worktrees, the other waits for them
  [ -d /work/wt-routed1m ] || git -C "$REPO" worktree add -f --detach /work/wt-routed1m 79b61a4
  [ -d /work/wt-grid1m ] || git -C "$REPO" worktree add -f --detach /work/wt-grid1m f849f10
} 9> /tmp/grid1m-worktrees.lock
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PY=${PY:-$REPO/.venv/bin/python}
done_before() { grep -q '"status": "ok"' "$REPO/benchmarks/transfer-1m/$1/status.json" 2>/dev/null; }
COMMON="--root /work/grids/transfer-1m --budget 1M --workers 1 --threads 1 --eval-freq 50k --eval-episodes 10 --checkpoint-freq 50k"
if [ "$1" = 1 ]; then
  cd /work/wt-routed1m
  for s in 0 1 2; do for g in Jamesbond Alien Gopher; do
    done_before $g/hub-pathway-routed/s$s && continue
    echo "== $(date -u +%FT%T) routed $g s$s"; $PY scripts/benchmark.py run $COMMON --games $g --methods hub-pathway-routed=hub-pathway --seeds $s
  done; done
  SOURCE=seaquest-ppo
else
  cd /work/wt-grid1m
  for s in 1 2; do for g in Alien Gopher Jamesbond; do
    done_before $g/scratch/s$s && continue
    echo "== $(date -u +%FT%T) scratch $g s$s"; $PY scripts/benchmark.py run $COMMON --games $g --methods scratch --seeds $s
  done; done
  SOURCE=riverraid-ppo
fi
cd /work/wt-grid1m
for g in Jamesbond Alien Gopher; do for s in 0 1 2; do  # game-major: Jamesbond's question (poor experts, or the routing?) first
  done_before $g/finetune-$SOURCE/s$s && continue
  echo "== $(date -u +%FT%T) finetune $SOURCE $g s$s"; $PY scripts/benchmark.py run $COMMON --games $g --methods finetune:source=$SOURCE --seeds $s
done; done
# Then, "as compute allows" (the issue), the field's other two methods at the same harness (f849f10):
# lane 1 select (ranks the experts on 20k random-policy steps, outside the budget, then fine-tunes the
# best: a finetune's cost), lane 2 zoo-tuning (both experts mixed per sample: about 1.9x a finetune's
# training time, so about 4 hours a trial here). Game-major, Jamesbond first, as the finetunes.
if [ "$1" = 1 ]; then METHOD=select; else METHOD=zoo-tuning; fi
for g in Jamesbond Alien Gopher; do for s in 0 1 2; do
  done_before $g/$METHOD/s$s && continue
  echo "== $(date -u +%FT%T) $METHOD $g s$s"; $PY scripts/benchmark.py run $COMMON --games $g --methods $METHOD --seeds $s
done; done
