#!/usr/bin/env bash
# bench_agent_cpu.sh - the agent thread's own CPU time per CPU sample: what
# draining the rings, unwinding the stacks and rescanning the threads cost
# inside the job, read from the profiles' tbprof_agent_overhead_ns and
# tbprof_cpu_samples.
#
#   tests/bench/bench_agent_cpu.sh [build-dir] [repeats]
#
# Workloads, 1 kHz, each REPEATS times (default 3), interleaved:
#   c       build/progs/cpu_split -t 2 -m 2000: two busy C threads, 2 s
#   python  tests/e2e/progs/cpu_split_py.py under the first CPython 3.12+
#           pyenv has (perf trampolines on), when there is one, or
#           TBPROF_BENCH_PY (one built with frame pointers: Python frames
#           in the fp rows too)
#   deep    tests/e2e/progs/deep_py.py 60: the same Python, 60 calls deep
#           (a 64 KiB copy and ~260 frames per sample once the thread's
#           copy has grown; an older build cuts them at 16 KiB / 128)
#   torch   tests/bench/torch_cpu.py: a PyTorch training loop on the CPU
#           (/usr/bin/python3 with torch, e.g. Debian's python3-torch, when
#           it imports): a real job's 40-60 frames through 120 MB of
#           libtorch_cpu, oneDNN's JIT code and autograd's threads
# in stack-copy mode (dwarf) and, as the baseline of the same run, in fp
# mode (the kernel walks the frame pointers: no unwinding on our side), and
# prints the median us per sample of each and dwarf/fp.
#   BASE_LIB=path/libtbprof.so: the dwarf runs of that build too, and the
#   ratio of this build's figure to it (two builds compared in one run).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
B=${1:-$root/build}
N=${2:-3}
lib=$B/lib/libtbprof.so
cli=$B/bin/tbprof
prog=$B/progs/cpu_split
[ -x "$prog" ] && [ -f "$lib" ] && [ -x "$cli" ] || { echo "build first: $prog, $lib, $cli"; exit 1; }
py=${TBPROF_BENCH_PY:-}
if [ -z "$py" ] && command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' ); do
    py=$(pyenv root)/versions/$v/bin/python3; break
  done
fi
torchpy=
/usr/bin/python3 -c 'import torch' >/dev/null 2>&1 && torchpy=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# one capture; prints "NS_PER_SAMPLE" (agent ns / samples), or nothing
one() { # LIB MODE WORKLOAD
  local d=$tmp/l$RANDOM
  local env=(LD_PRELOAD=$1 TBPROF_LOGDIR=$d TBPROF_GPU=off TBPROF_CPU=on TBPROF_CPU_HZ=1000 TBPROF_CPU_MODE=$2)
  # (exec in the background, for the pid: a CPython with PYTHONPERFSUPPORT=1
  # writes /tmp/perf-<pid>.map and leaves it behind)
  case $3 in
    c) exec env "${env[@]}" "$prog" -t 2 -m 2000 -l -1,-1 >/dev/null 2>&1 ;;
    python) exec env "${env[@]}" PYTHONPERFSUPPORT=1 "$py" "$root/tests/e2e/progs/cpu_split_py.py" >/dev/null 2>&1 ;;
    deep) exec env "${env[@]}" PYTHONPERFSUPPORT=1 TBPROF_DELAY=0.3 TBPROF_DURATION=1.5 \
          "$py" "$root/tests/e2e/progs/deep_py.py" 60 2.0 >/dev/null 2>&1 ;;
    torch) exec env "${env[@]}" TBPROF_DELAY=2 TBPROF_DURATION=1.5 \
          "$torchpy" "$root/tests/bench/torch_cpu.py" 2.5 >/dev/null 2>&1 ;;
  esac &
  local pid=$!
  # (a background job starts with SIGINT ignored: Ctrl-C here stops it too)
  trap 'kill "$pid" 2>/dev/null; rm -f "/tmp/perf-$pid.map"; exit 130' INT TERM
  wait "$pid"
  trap - INT TERM
  rm -f "/tmp/perf-$pid.map"
  local f
  f=$(find "$d" -name '*.xplane.pb' 2>/dev/null | head -1)
  [ -n "$f" ] && "$cli" dump "$f" 2>/dev/null |
    awk 'match($0, /tbprof_agent_overhead_ns=[0-9]+/) {a = substr($0, RSTART + 25, RLENGTH - 25)}
         match($0, /tbprof_cpu_samples=[0-9]+/) {s = substr($0, RSTART + 19, RLENGTH - 19)}
         END {if (s > 0) printf "%.0f\n", a / s}'
  rm -rf "$d"
}
median() { sort -n | awk '{a[NR]=$1} END{if(NR==0){print 0}else{print a[int((NR+1)/2)]}}'; }
declare -A t
loads=(c); [ -n "$py" ] && loads+=(python deep)
[ -n "$torchpy" ] && loads+=(torch)
for ((i = 0; i < N; i++)); do
  for w in "${loads[@]}"; do
    t[$w.dwarf]+="$(one "$lib" dwarf $w) "
    t[$w.fp]+="$(one "$lib" fp $w) "
    [ -n "${BASE_LIB:-}" ] && t[$w.base]+="$(one "$BASE_LIB" dwarf $w) "
  done
done
printf '%-10s %14s %14s %10s' "($N runs)" "dwarf us/smp" "fp us/smp" "dwarf/fp"
[ -n "${BASE_LIB:-}" ] && printf ' %16s %10s' "BASE_LIB us/smp" "this/base"
echo
for w in "${loads[@]}"; do
  d=$(echo "${t[$w.dwarf]}" | tr ' ' '\n' | grep -v '^$' | median)
  f=$(echo "${t[$w.fp]}" | tr ' ' '\n' | grep -v '^$' | median)
  awk -v w="$w" -v d="$d" -v f="$f" 'BEGIN{printf "%-10s %14.1f %14.1f %10.2f", w, d/1e3, f/1e3, (f>0? d/f : 0)}'
  if [ -n "${BASE_LIB:-}" ]; then
    b=$(echo "${t[$w.base]}" | tr ' ' '\n' | grep -v '^$' | median)
    awk -v d="$d" -v b="$b" 'BEGIN{printf " %16.1f %10.2f", b/1e3, (b>0? d/b : 0)}'
  fi
  echo
done
[ -n "$py" ] || echo "(no CPython 3.12+ under pyenv: the python rows are left out)"
[ -n "$torchpy" ] || echo "(/usr/bin/python3 has no torch: the torch row is left out)"
