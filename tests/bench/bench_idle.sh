#!/usr/bin/env bash
# bench_idle.sh [BUILD_DIR] - cost of the agent when it is loaded but idle.
#
# Alternates runs with and without LD_PRELOAD=libtbprof.so (no trigger set,
# control socket on: what every process of a job gets) and prints the ratio
# of medians, preloaded / plain, of wall time and of CPU time (user+sys from
# wait4; less disturbed by other load on a shared machine). Target <= 1.01.
#   (1) progs/idlework: 4 threads of malloc/free + syscalls + thread churn,
#       the main thread calling tbprof_step() in a loop;
#   (2) `python3 -c pass` start-up (10 runs per sample).
# BENCH_ROUNDS (default 21) alternating pairs of samples each.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TBPROF_BUILD:-$root/build}}
lib=$build/lib/libtbprof.so
work=$build/progs/idlework
[ -f "$lib" ] && [ -x "$work" ] || { echo "bench_idle: build first ($lib, $work)" >&2; exit 2; }
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
"$py" - "$lib" "$work" "$py" "$logdir" "${BENCH_ROUNDS:-21}" <<'PY'
import os, sys, time, statistics
lib, work, py, logdir, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
base = {k: v for k, v in os.environ.items() if not k.startswith("TBPROF_") and k != "LD_PRELOAD"}
base["TBPROF_LOGDIR"] = logdir
pre = dict(base, LD_PRELOAD=lib)
devnull = os.open(os.devnull, os.O_WRONLY)

def once(argv, env):
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(devnull, 1)
        os.execve(argv[0], argv, env)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit("bench_idle: %s failed (%d)" % (argv, status))
    return wall, ru.ru_utime + ru.ru_stime

def sample(argv, env, reps):
    w = c = 0.0
    for _ in range(reps):
        a, b = once(argv, env)
        w += a; c += b
    return w / reps, c / reps

def bench(name, argv, reps):
    sample(argv, base, 1); sample(argv, pre, 1)  # warm caches
    pw, pc, qw, qc = [], [], [], []
    for _ in range(rounds):
        a, b = sample(argv, base, reps); pw.append(a); pc.append(b)
        a, b = sample(argv, pre, reps); qw.append(a); qc.append(b)
    m = statistics.median
    rw, rc = m(qw) / m(pw), m(qc) / m(pc)
    print("%-22s wall: plain %8.2f ms preloaded %8.2f ms ratio %.3f | cpu: plain %8.2f ms preloaded %8.2f ms ratio %.3f"
          % (name, m(pw) * 1e3, m(qw) * 1e3, rw, m(pc) * 1e3, m(qc) * 1e3, rc))
    return rw, rc

print("bench_idle: %d alternating rounds, medians; agent loaded and idle (target ratio <= 1.01)" % rounds)
bench("idlework (4 threads)", [work, "4", "200000"], 1)
bench("python3 -c pass", [py, "-c", "pass"], 10)
written = [f for _, _, fs in os.walk(logdir) for f in fs]
if written:
    sys.exit("bench_idle: an idle agent wrote files: %s" % written)
PY

# Instructions executed (all threads), counted by callgrind: deterministic on
# a loaded machine, where the time ratios above swing by several percent.
# Includes the fixed cost of loading libtbprof.so and starting its thread.
if command -v valgrind >/dev/null; then
  count() { # VAR=value... argv...: run under env, print callgrind's total
    local out
    out=$(env "$@" 2>&1 >/dev/null | grep -Eo 'Collected : [0-9]+' | grep -Eo '[0-9]+$') || true
    echo "${out:-0}"
  }
  vg=(valgrind --tool=callgrind --callgrind-out-file=/dev/null)
  for w in "idlework 4x20000|$work 4 20000" "python3 -c pass|$py -c pass"; do
    name=${w%%|*}; read -r -a argv <<<"${w#*|}"
    a=$(count TBPROF_LOGDIR="$logdir" "${vg[@]}" "${argv[@]}")
    b=$(count TBPROF_LOGDIR="$logdir" LD_PRELOAD="$lib" "${vg[@]}" "${argv[@]}")
    awk -v n="$name" -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%-22s instructions: plain %d preloaded %d ratio %.4f\n", n, a, b, b / a }'
  done
else
  echo "bench_idle: valgrind not installed; instruction counts skipped"
fi
