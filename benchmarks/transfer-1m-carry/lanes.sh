#!/usr/bin/env bash
# Two lanes of the 1M grid, one trial at a time each, seed-major. Lane 1: routed arm at 79b61a4; lane 2: scratch at f849f10.
# Then, as the issue orders, the finetune arms (f849f10, scratch's harness): lane 1 fine-tunes Seaquest's expert, lane 2
# Riverraid's, all of Jamesbond's seeds first (where the hub falls furthest behind scratch), then Alien's, then Gopher's;
# then zoo-tuning in both lanes (select is the finetune of the expert it ranks first: see the end).
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
# One trial, unless the other lane is training it: the pinned harness (f849f10) takes no run lock of its own,
# so each lane holds a lane lock per trial for as long as it trains it (flock -n: skip when the other holds it).
trial() {  # trial GAME METHOD-NAME SEED RUN-ARGS...
  local g=$1 m=$2 s=$3; shift 3
  done_before $g/$m/s$s && return 0
  mkdir -p /work/grids/transfer-1m/.lanes
  exec 8> /work/grids/transfer-1m/.lanes/$g-$m-s$s.lock
  if flock -n 8; then
    echo "== $(date -u +%FT%T) $m $g s$s"; $PY scripts/benchmark.py run $COMMON --games $g --seeds $s "$@"
  else
    echo "== $(date -u +%FT%T) $m $g s$s: the other lane is training it, skipped"
  fi
  exec 8>&-
}
for g in Jamesbond Alien Gopher; do for s in 0 1 2; do  # game-major: Jamesbond's question (poor experts, or the routing?) first
  trial $g finetune-$SOURCE $s --methods finetune:source=$SOURCE
done; done
# The issue's arms before "as compute allows": lane 2, done with Riverraid's expert first, helps lane 1 with
# Seaquest's Gopher seeds from the other end (2, 1, 0).
if [ "$1" = 2 ]; then for s in 2 1 0; do
  trial Gopher finetune-seaquest-ppo $s --methods finetune:source=seaquest-ppo
done; fi
# Then, "as compute allows" (the issue), Zoo-Tuning in both lanes: both experts mixed per sample, about
# 1.9x a finetune's training time, so about 4 hours a trial here. Not at the finetunes' harness (f849f10):
# its gates start with hidden units that can be dead for the whole run (fixed in 089b83a), so from a
# worktree pinned at 089b83a. Lane 2 (free first) takes the trials game-major from Jamesbond's seed 0,
# lane 1 from Gopher's seed 2, each skipping one the other lane is training (its lane lock held), so
# they meet in the middle.
{ flock 9; [ -d /work/wt-zoo1m ] || git -C "$REPO" worktree add -f --detach /work/wt-zoo1m 089b83a; } 9> /tmp/grid1m-worktrees.lock
cd /work/wt-zoo1m
# Select is not run: it ranks the experts (hubrl rank --env GAME --seed SEED: the ranking it does at its
# start, 20k random-policy steps) and then fine-tunes the one ranked first with a finetune's code path and
# seed, so each of its trials is the finetune trial of that expert (bit-identical at 100k for 8 of 9
# trials). BENCHMARKS.md's 1M section reports it so, with the rankings (benchmarks/transfer-1m-select/).
ZOO=(Jamesbond/0 Jamesbond/1 Jamesbond/2 Alien/0 Alien/1 Alien/2 Gopher/0 Gopher/1 Gopher/2)
[ "$1" = 1 ] && ZOO=($(printf '%s\n' "${ZOO[@]}" | tac))
for t in "${ZOO[@]}"; do
  trial ${t%/*} zoo-tuning ${t#*/} --methods zoo-tuning
done
