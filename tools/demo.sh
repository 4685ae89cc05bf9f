#!/usr/bin/env bash
# tools/demo.sh [LOGDIR]: set up, build, profile a demo workload, show what
# was captured. Runs tests/e2e/progs/steps.c (a training-loop stand-in: steps
# of compute + malloc, two worker threads) under `tbprof run --steps 3,5`,
# then a Python loop through the tbprof helper (when python3 is there), then
# `tbprof ls`, `tbprof dump` and `tbprof summary` on what was written. LOGDIR defaults to ./logs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${TBPROF_DEMO_BUILD:-$root/build}
logdir=${1:-logs}
if [ -z "${TBPROF_DEMO_BUILT:-}" ]; then  # (set: $build is built already; tests/e2e/test_readme.py)
  echo "== setup (apt packages, if missing)"
  bash "$root/tools/setup.sh"
  echo "== build ($build)"
  bash "$root/tools/build.sh" "$build"
fi
tbprof=$build/bin/tbprof
gpu=--no-gpu
[ -e /dev/nvidiactl ] && gpu=--gpu
echo "== C workload: steps 3..5 of 10 (tbprof run --steps 3,5)"
"$tbprof" run --steps 3,5 --logdir "$logdir" --run demo_c "$gpu" -- "$build/progs/steps" -n 10 -m 20 -t 2
if command -v python3 >/dev/null; then
  echo "== Python workload: tbprof.step() in a loop, steps 3..5"
  "$tbprof" run --steps 3,5 --logdir "$logdir" --run demo_python "$gpu" -- python3 -c '
import tbprof
def work():
    return sum(i * i for i in range(200000))
for i in range(10):
    tbprof.step()
    work()
print("python demo: 10 steps")'
fi
echo "== tbprof ls $logdir"
"$tbprof" ls "$logdir"
# this run's C profile: the newest (a run before this one left its own beside it)
first=$(ls -t "$logdir"/plugins/profile/demo_c/*.xplane.pb | head -n1)
echo "== tbprof dump $first"
"$tbprof" dump "$first"
echo "== tbprof summary $first"
"$tbprof" summary "$first"
echo
echo "Open it in TensorBoard: tensorboard --logdir $logdir  (Profile tab)"
