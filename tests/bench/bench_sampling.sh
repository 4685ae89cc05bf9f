#!/usr/bin/env bash
# bench_sampling.sh - the job's slowdown while tbprof samples its CPU stacks,
# side by side with `perf record` on the same workload, in one run.
#
#   tests/bench/bench_sampling.sh [build-dir] [repeats]
#
# Workload: build/progs/cpu_split -w ROUNDS (THREADS=1 busy thread by default,
# so the profiler's own thread has the other core of a 2-core machine;
# fixed work: ROUNDS=300 rounds). Runs, in
# turn, REPEATS times each (interleaved so machine noise hits all alike):
#   base      no profiler (cpu_split -n: no capture)
#   tbprof    LD_PRELOAD=libtbprof.so, capture over the whole workload,
#             stack copies (16 KiB) at 1 kHz, then at the default rate
#   perf      perf record -e cpu-clock -F 1000 --call-graph dwarf,16384
# and prints, for each, the median wall time of the work and the median CPU
# time of everything that ran (the job, our agent thread, perf itself), each
# as a ratio to base; the figure of merit is tbprof's ratio against perf's
# (target: <= perf's). Wall time is noisy on a shared machine; CPU time is
# the steadier measure of the cost.
#   BASE_LIB=path/libtbprof.so: also runs that build (dwarf 16K, 1 kHz), to
#   compare two agent builds in the same run.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
B=${1:-$root/build}
N=${2:-5}
prog=$B/progs/cpu_split
lib=$B/lib/libtbprof.so
rounds=${ROUNDS:-300}
threads=${THREADS:-1}
args=(-t "$threads" -w "$rounds" -l -1,-1)
[ -x "$prog" ] && [ -f "$lib" ] || { echo "build first: $prog, $lib"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
have_perf=1
command -v perf >/dev/null || have_perf=0
work() { # "wall_ns cpu_ns": the workload's own measure of its work time, and
          # user+sys CPU of the whole command (children included: perf + job)
  /usr/bin/time -f "cpu %U %S" -o "$tmp/time" "$@" > "$tmp/out" 2>/dev/null
  printf '%s,%s' "$(awk '$1=="work_ns"{print $2}' "$tmp/out")" \
    "$(awk '$1=="cpu"{printf "%.0f", ($2+$3)*1e9}' "$tmp/time")"
}
declare -A t
for ((i = 0; i < N; i++)); do
  t[base]+="$(work "$prog" -n "${args[@]}") "
  t[tbprof_1k]+="$(LD_PRELOAD=$lib TBPROF_LOGDIR=$tmp/l TBPROF_GPU=off TBPROF_CPU=on TBPROF_CPU_HZ=1000 \
                   TBPROF_CPU_MODE=dwarf work "$prog" "${args[@]}" 2>/dev/null) "
  t[tbprof_def]+="$(LD_PRELOAD=$lib TBPROF_LOGDIR=$tmp/l TBPROF_GPU=off TBPROF_CPU=on TBPROF_CPU_MODE=dwarf \
                   work "$prog" "${args[@]}" 2>/dev/null) "
  if [ -n "${BASE_LIB:-}" ]; then
    t[baselib_1k]+="$(LD_PRELOAD=$BASE_LIB TBPROF_LOGDIR=$tmp/l TBPROF_GPU=off TBPROF_CPU=on TBPROF_CPU_HZ=1000 \
                     TBPROF_CPU_MODE=dwarf work "$prog" "${args[@]}" 2>/dev/null) "
  fi
  t[tbprof_fp]+="$(LD_PRELOAD=$lib TBPROF_LOGDIR=$tmp/l TBPROF_GPU=off TBPROF_CPU=on TBPROF_CPU_HZ=1000 \
                   TBPROF_CPU_MODE=fp work "$prog" "${args[@]}" 2>/dev/null) "
  if ((have_perf)); then
    t[perf_1k]+="$(work perf record -q -e cpu-clock -F 1000 --call-graph dwarf,16384 -o "$tmp/perf.data" \
                   -- "$prog" -n "${args[@]}") "
    t[perf_fp]+="$(work perf record -q -e cpu-clock -F 1000 -g -o "$tmp/perf.data" -- "$prog" -n "${args[@]}") "
  fi
done
median() { # $1: field (1 wall, 2 cpu)
  tr ' ' '\n' | grep -v '^$' | cut -d, -f"$1" | sort -n | awk '{a[NR]=$1} END{if(NR==0){print 0}else{print a[int((NR+1)/2)]}}'
}
base=$(echo "${t[base]}" | median 1)
cbase=$(echo "${t[base]}" | median 2)
printf '%-34s %10s %7s %10s %7s\n' "($N repeats, medians)" "wall ms" "ratio" "cpu ms" "ratio"
for k in base tbprof_def tbprof_1k baselib_1k perf_1k tbprof_fp perf_fp; do
  [ -n "${t[$k]:-}" ] || continue
  m=$(echo "${t[$k]}" | median 1)
  c=$(echo "${t[$k]}" | median 2)
  label=$k
  case $k in
    base) label="no profiler";;
    tbprof_def) label="tbprof dwarf, default rate";;
    tbprof_1k) label="tbprof dwarf 16K, 1 kHz";;
    baselib_1k) label="BASE_LIB dwarf 16K, 1 kHz";;
    perf_1k) label="perf record dwarf,16384, 1 kHz";;
    tbprof_fp) label="tbprof fp, 1 kHz";;
    perf_fp) label="perf record -g (fp), 1 kHz";;
  esac
  awk -v l="$label" -v m="$m" -v b="$base" -v c="$c" -v cb="$cbase" \
    'BEGIN{printf "%-34s %10.1f %7.3f %10.1f %7.3f\n", l, m/1e6, (b>0? m/b : 0), c/1e6, (cb>0? c/cb : 0)}'
done
if [ -n "${t[baselib_1k]:-}" ]; then
  awk -v a="$(echo "${t[tbprof_1k]}" | median 2)" -v o="$(echo "${t[baselib_1k]}" | median 2)" \
      -v b="$(echo "${t[base]}" | median 2)" \
    'BEGIN{printf "tbprof/BASE_LIB cpu ratio of ratios (1 kHz, dwarf 16K): %.3f\n", (a/b)/(o/b)}'
fi
if [ -n "${t[perf_1k]:-}" ]; then
  for f in 1 2; do
    awk -v a="$(echo "${t[tbprof_1k]}" | median $f)" -v p="$(echo "${t[perf_1k]}" | median $f)" \
        -v b="$(echo "${t[base]}" | median $f)" -v what="$([ $f = 1 ] && echo wall || echo cpu)" \
      'BEGIN{ra=a/b; rp=p/b; printf "tbprof/perf %s ratio of ratios (1 kHz, dwarf 16K): %.3f (%s)\n", what, ra/rp, (ra<=rp*1.01?"meets target":"above perf")}'
  done
fi
