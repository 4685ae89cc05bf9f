# bench_idle.sh [BUILD_DIR] - cost of the agent when it is loaded but idle.
#
# Alternates runs of each program plain and with LD_PRELOAD (no trigger
# set) and prints medians of wall time and of CPU time (user+sys of the
# child, from wait4; less disturbed by other load on a shared machine), each
# as a ratio against the plain runs of the same round. Target <= 1.01 for
# "agent (default)": TBPROF_SOCKET=auto, the control socket bound, and the
# agent's thread (asleep in poll()) only in a process that has started a
# thread of its own. References in the same run split that cost:
#   noop preload       an LD_PRELOAD library with nothing in it: what the
#                      loader charges any preload library;
#   agent, socket off  TBPROF_SOCKET=off: the agent with no socket, no thread;
#   agent, socket on   TBPROF_SOCKET=on: our thread in every process.
# Programs:
#   (1) progs/idlework: 4 threads of malloc/free + syscalls + thread churn,
#       the main thread calling tbprof_step() in a loop;
#   (2) `python3 -c pass` start-up (10 runs per sample).
# Children are started with posix_spawn (vfork): a fork of the Python
# driver would charge its page-table copy to the child's CPU time.
# BENCH_ROUNDS (default 21) rounds of one sample per variant, in a shuffled
# order each round.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TBPROF_BUILD:-$root/build}}
lib=$build/lib/libtbprof.so
noop=$build/bench/libnoop_preload.so
work=$build/progs/idlework
[ -f "$lib" ] && [ -f "$noop" ] && [ -x "$work" ] || { echo "bench_idle: build first ($lib, $noop, $work)" >&2; exit 2; }
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
"$py" - "$lib" "$noop" "$work" "$py" "$logdir" "${BENCH_ROUNDS:-21}" <<'PY'
import os, random, sys, time, statistics
lib, noop, work, py, logdir, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
base = {k: v for k, v in os.environ.items() if not k.startswith("TBPROF_") and k != "LD_PRELOAD"}
base["TBPROF_LOGDIR"] = logdir
variants = [("plain", base),
            ("noop preload", dict(base, LD_PRELOAD=noop)),
            ("agent, socket off", dict(base, LD_PRELOAD=lib, TBPROF_SOCKET="off")),
            ("agent (default)", dict(base, LD_PRELOAD=lib)),
            ("agent, socket on", dict(base, LD_PRELOAD=lib, TBPROF_SOCKET="on"))]
devnull = os.open(os.devnull, os.O_WRONLY)

def once(argv, env):
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
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
    for _, env in variants:
        sample(argv, env, 1)  # warm caches
    wall = {v: [] for v, _ in variants}
    cpu = {v: [] for v, _ in variants}
    rng = random.Random(1)  # a new order every round (the same in every run): no variant always follows another
    for _ in range(rounds):
        for v, env in rng.sample(variants, len(variants)):
            a, b = sample(argv, env, reps)
            wall[v].append(a); cpu[v].append(b)
    m = statistics.median
    pw, pc = m(wall["plain"]), m(cpu["plain"])
    print("%s: plain wall %.2f ms, cpu %.2f ms" % (name, pw * 1e3, pc * 1e3))
    for v, _ in variants[1:]:
        w, c = m(wall[v]), m(cpu[v])
        print("  %-18s wall %8.2f ms ratio %.3f (%+.2f ms) | cpu %8.2f ms ratio %.3f (%+.2f ms)"
              % (v, w * 1e3, w / pw, (w - pw) * 1e3, c * 1e3, c / pc, (c - pc) * 1e3))

print("bench_idle: %d rounds, medians; agent loaded and idle (target ratio <= 1.01)" % rounds)
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
