#!/usr/bin/env bash
# hubrl on a CUDA GPU, end to end, in one call (issue 18; benchmarks/gpu/README.md says how and why).
#
#   here, in the checkout's root, once:  mkdir -p .whl && cp ../shared/device-wheels/*.whl .whl/
#   device tool:  run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# 293 s on one H200 with 16 cores (2026-11-30: benchmarks/gpu/h200-2026-11-30/). Stages, each command under its own time limit;
# a failing command does not stop the others:
#   setup  the wheels of .whl/ (gymnasium, ale-py, SB3) into /tmp/site; versions, GPU, this checkout first on PYTHONPATH
#   tests  tests/test_device.py (its CUDA tests run here) and the --device rows of tests/test_bad_inputs.py
#   cli    --device cuda: pretrain; transfer with every method (bf16, pause and resume on the GPU, a GPU run resumed
#          on the CPU); enjoy a run and a hub expert; --device cuda:99 and a hidden GPU refused in one line
#   grid   bench run --device cuda, 3 workers on one GPU; the device each trial recorded; bench report
#   speed  speed train / transfer / zoo-conv on the GPU, and hubrl's training on this machine's CPU for comparison
# tests, cli and grid run side by side (16 cores); speed runs alone after them. Optional, after speed (about 480 s in all
# on the H200 with both: BUDGET=570, timeout_s=600): SUITE=1, the whole suite but slow; THROUGHPUT=1, 12 grid trials at once.
#
# Results in $OUT (at most 8 files): summary.txt (one line per command: ok/FAILED, seconds), log.txt (all output),
# speed.md (the throughput tables), runs.tgz (config.yaml, status.json, trials.jsonl, evaluations.json, expert.json,
# report.md ... of every run; no weights). Without a GPU (a dry run of the script itself): DEVICE=cpu STEPS=1024.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-2048}                 # agent steps of each tiny run: 2 PPO rollouts of 8 envs x 128
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-500}                # seconds for the whole script: later commands get what is left
SPEED=${SPEED:-1}                    # 0: skip the throughput stage
TESTS=${TESTS:-1}                    # 0: skip the pytest stage
EXTRA=${EXTRA:-}                     # more flags for every training command (a dry run on a small CPU: --n-envs 2)
SEQUENTIAL=${SEQUENTIAL:-0}          # 1: one command at a time (a dry run on a small CPU)
GRID_WORKERS=${GRID_WORKERS:-3}      # trials of the grid at once, each in its own process
SUITE=${SUITE:-0}                    # 1: then the whole test suite but slow (-n 16 on the H200: 103 s)
THROUGHPUT=${THROUGHPUT:-0}          # 1: then 12 grid trials at once, 20k steps each (85 s there): agent steps/s per trial
W=$(mktemp -d /tmp/hubrl-gpu.XXXXXX)
START=$SECONDS
mkdir -p "$OUT" "$W/logs"
LOG=$OUT/log.txt SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# par CMD...: CMD in the background, or in the foreground with SEQUENTIAL=1
par() { if [ "$SEQUENTIAL" = 1 ]; then "$@"; else "$@" & fi; }

say() { echo "== $* ($((SECONDS - START)) s)"; }

# left: seconds until the budget is spent (at least 5)
left() { local l=$((BUDGET - (SECONDS - START))); echo $((l > 5 ? l : 5)); }

# step NAME LIMIT CMD...: run CMD under min(LIMIT, what is left), output into $W/logs/NAME.log (log.txt gets them all
# at the end: commands run side by side); one line in summary.txt
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS l; l=$(left); ((limit < l)) || limit=$l
  echo "\$ $*" >"$W/logs/$name.log"
  timeout -k 5 "$limit" "$@" >>"$W/logs/$name.log" 2>&1
  local rc=$?
  echo "(rc $rc, $((SECONDS - t0)) s)" >>"$W/logs/$name.log"
  printf '%-34s %-7s %4d s  rc %s\n' "$name" "$([ $rc = 0 ] && echo ok || echo FAILED)" $((SECONDS - t0)) $rc >>"$SUMMARY"
  return $rc
}

# refused NAME CMD...: CMD must end with exit code 2 and one "error: ..." line naming --device
refused() {
  local name=$1; shift
  local t0=$SECONDS err rc
  err=$(timeout 120 "$@" 2>&1 >/dev/null); rc=$?
  printf '$ %s\n%s\n(rc %s)\n' "$*" "$err" $rc >"$W/logs/$name.log"
  local ok=FAILED; [ $rc = 2 ] && [ "$(printf '%s\n' "$err" | grep -c .)" = 1 ] && [[ $err == error:*--device* ]] && ok=ok
  printf '%-34s %-7s %4d s  rc %s: %s\n' "$name" "$ok" $((SECONDS - t0)) $rc "$err" >>"$SUMMARY"
}

# ------------------------------------------------------------------------------------------ setup
say "setup"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$W/logs/pip.log" 2>&1 \
    || { echo "setup FAILED: pip install of .whl/" | tee -a "$SUMMARY"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true; echo "cores $(nproc --all)"; } >"$W/logs/machine.log"
step versions 60 $PY - "$DEVICE" <<'EOF' || { cat "$SUMMARY"; exit 1; }
import sys
import gymnasium, ale_py, stable_baselines3, torch as th
import hubrl
print("python", sys.version.split()[0], "| torch", th.__version__, "cuda", th.version.cuda, "| sb3", stable_baselines3.__version__,
      "| gymnasium", gymnasium.__version__, "| ale-py", ale_py.__version__, "| hubrl", hubrl.__file__)
print("cuda available", th.cuda.is_available(), th.cuda.device_count(), th.cuda.get_device_name(0) if th.cuda.is_available() else "",
      "| bf16", th.cuda.is_bf16_supported() if th.cuda.is_available() else None,
      "| cudnn.allow_tf32", th.backends.cudnn.allow_tf32, "| matmul.allow_tf32", th.backends.cuda.matmul.allow_tf32)
if sys.argv[1].startswith("cuda") and not th.cuda.is_available():
    sys.exit("torch sees no CUDA GPU")
EOF
cat "$W/logs/machine.log" "$W/logs/versions.log" >>"$SUMMARY"
cat "$SUMMARY"

# ------------------------------------------------------------------------------------------ tests, cli, grid (side by side)
T="$PY -m hubrl transfer --env Alien --timesteps $STEPS --eval-episodes 1 --no-early-eval --no-progress-bar --device $DEVICE $EXTRA"

run_tests() {
  [ "$TESTS" = 1 ] || return 0
  step tests 300 $PY -m pytest tests/test_device.py tests/test_bad_inputs.py -k "test_device or cuda" -q -rs -p no:cacheprovider
}

run_cli() {
  par step pretrain 240 $PY -m hubrl pretrain --env Pong --timesteps "$STEPS" --eval-episodes 1 --out "$W/pretrain" \
    --hub "$W/hub" --no-progress-bar --device "$DEVICE" $EXTRA
  par step transfer-scratch 240 $T --method scratch --out "$W/t/scratch"
  par step transfer-finetune 240 $T --method finetune --source Seaquest --out "$W/t/finetune"
  par step transfer-select 240 $T --method select --select-timesteps 4000 --out "$W/t/select"
  par step transfer-zoo-tuning 240 $T --method zoo-tuning --out "$W/t/zoo"
  par step transfer-zoo-tuning-lite 240 $T --method zoo-tuning --lite --out "$W/t/zoo-lite"
  par hub_pathway_then_enjoy
  par hub_pathway_k2_then_cpu
  par step enjoy-expert 120 $PY -m hubrl enjoy --expert Seaquest --timesteps 300 --device "$DEVICE"
  wait
  refused refuse-cuda-index-past-last $PY -m hubrl transfer --env Alien --device cuda:99
  refused refuse-cuda-when-hidden env CUDA_VISIBLE_DEVICES= $PY -m hubrl transfer --env Alien --device cuda
}

hub_pathway_then_enjoy() {  # bf16 encoders, paused after half the steps, resumed on its saved device, then played
  step transfer-hub-pathway-bf16-paused 240 $T --method hub-pathway --precision bf16 --pause-at $((STEPS / 2)) \
      --out "$W/t/hp" \
    && step transfer-hub-pathway-bf16-resumed 240 $PY -m hubrl transfer --resume --out "$W/t/hp" --no-progress-bar \
    && step enjoy-run 120 $PY -m hubrl enjoy "$W/t/hp" --timesteps 300 --device "$DEVICE"
}

hub_pathway_k2_then_cpu() {  # k=2, paused on the device, resumed on the CPU from that device's checkpoint (fp32: bf16
  # on a CPU without bf16 instructions is slow)
  step transfer-hub-pathway-k2-paused 240 $T --method hub-pathway --top-k 2 --pause-at $((STEPS / 2)) --out "$W/t/hp-k2" \
    && step transfer-hub-pathway-k2-resumed-on-cpu 240 $PY -m hubrl transfer --resume --out "$W/t/hp-k2" --device cpu \
      --threads 4 --no-progress-bar
}

run_grid() {
  step grid 300 $PY -m hubrl bench run --root "$W/grid" --env Alien --method scratch hub-pathway zoo-tuning:lite --seed 0 \
    --timesteps "$STEPS" --eval-episodes 1 --workers "$GRID_WORKERS" --device "$DEVICE" $EXTRA \
  && step grid-devices 30 $PY - "$W/grid/trials.jsonl" "$DEVICE" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if not r.get("requeued")]  # an attempt a broken pool stopped and ran again: not a result
for r in rows:
    print(r["trial"], r["status"], r.get("device"), r.get("steps_per_s"), "steps/s, inference", r.get("inference_steps_per_s"))
want = "cuda" if sys.argv[2] == "auto" else sys.argv[2]
bad = [r["trial"] for r in rows if r["status"] != "ok" or not str(r.get("device")).startswith(want)]
sys.exit(f"not ok or not on {want}: {bad}" if bad else 0)
EOF
  step grid-report 120 $PY -m hubrl bench report "$W/grid" --reps 1000
}

say "tests, cli, grid"
par run_tests
par run_cli
par run_grid
wait
for f in "$W"/t/*/model.zip; do [ -f "$f" ] || echo "missing $f" >>"$SUMMARY"; done

# ------------------------------------------------------------------------------------------ speed (alone)
if [ "$SPEED" = 1 ]; then
  say "speed"
  S="$PY -m hubrl speed"
  step speed-train 150 $S train --device "$DEVICE" --timesteps 10k --repeats 1
  step speed-train-one-cpu-8-threads 60 $S train-one --device cpu --threads 8 --timesteps 5k
  step speed-transfer 150 $S transfer --device "$DEVICE" --timesteps 4096 --repeats 1
  step speed-zoo-conv 90 $S zoo-conv --device "$DEVICE" --experts 2,4 --batch-sizes 8,256 --repeats 3
  for name in speed-train speed-train-one-cpu-8-threads speed-transfer speed-zoo-conv; do
    { echo "## $name"; echo; cat "$W/logs/$name.log"; echo; } >>"$OUT/speed.md"
  done
fi

# ------------------------------------------------------------------------------------------ suite, throughput (alone)
if [ "$SUITE" = 1 ]; then
  say "suite"
  step suite 240 $PY -m pytest -m "not slow" -q -p no:cacheprovider -n "$(nproc)" --tb=short
fi
if [ "$THROUGHPUT" = 1 ]; then
  say "throughput"
  step throughput 240 $PY -m hubrl bench run --root "$W/throughput" --env Alien Gopher Jamesbond \
    --method scratch hub-pathway --seed 0 1 --timesteps 20k --eval-episodes 1 --workers 12 --threads 1 --device "$DEVICE" $EXTRA
fi

# ------------------------------------------------------------------------------------------ results
for f in "$W"/logs/*.log; do echo "== $(basename "$f" .log)"; cat "$f"; echo; done >"$LOG"
(cd "$W" && find . \( -name '*.yaml' -o -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.csv' \) -print0 \
  | tar --null -czf "$OUT/runs.tgz" -T -)
echo "total $((SECONDS - START)) s, device $DEVICE, $STEPS steps per run" >>"$SUMMARY"
cat "$SUMMARY"
! grep -q FAILED "$SUMMARY"
