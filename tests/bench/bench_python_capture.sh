#!/usr/bin/env bash
# bench_python_capture.sh [BUILD_DIR] - what a capture costs a Python job's
# own calls, per CPython found (3.10 and 3.11: tbprof's own trampoline;
# 3.12+: CPython's): a call-bound loop's ns per call while a capture runs
# and after it, as ratios against the same process's idle loop before the
# capture (tests/bench/python_capture_cost.py), median of BENCH_ROUNDS
# (default 3) processes. CPU sampling is on during the capture, so its
# ratio holds the sampler's cost too. Skips a Python it cannot find.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TBPROF_BUILD:-$root/build}}
lib=$build/lib/libtbprof.so
[ -f "$lib" ] || { echo "bench_python_capture: build first ($lib)" >&2; exit 2; }
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
declare -A seen=()
printf '%-8s %10s %16s %14s\n' python "idle ns" "capturing/idle" "after/idle"
for py in /usr/bin/python3 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[0-9].*/bin/python3; do
  [ -x "$py" ] || continue
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
  [[ -n "${seen[$v]:-}" ]] && continue
  seen[$v]=1
  rows=()
  for ((r = 0; r < ${BENCH_ROUNDS:-3}; r++)); do
    rows+=("$(env -u PYTHONPERFSUPPORT LD_PRELOAD="$lib" TBPROF_LOGDIR="$logdir/$v-$r" TBPROF_CPU=on \
      TBPROF_GPU=off "$py" "$root/tests/bench/python_capture_cost.py")")
  done
  printf '%s\n' "${rows[@]}" | /usr/bin/python3 -c '
import statistics, sys
r = [list(map(float, l.split()[1:])) for l in sys.stdin if l.strip()]
idle = statistics.median(x[0] for x in r)
on = statistics.median(x[1] / x[0] for x in r)
after = statistics.median(x[2] / x[0] for x in r)
print("%-8s %10.1f %16.2f %14.2f" % (sys.argv[1], idle, on, after))' "$v"
done
