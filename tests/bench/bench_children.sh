#!/usr/bin/env bash
# bench_children.sh [BUILD_DIR] - what following fork()ed children
# (TBPROF_CHILDREN, README "Data-loader workers and other fork()ed
# children") costs a Python job that forks: the time of one os.fork() +
# the child's os._exit(0) + waitpid in the parent (tests/bench/fork_cost.py,
# the worst case: children that do nothing), plain, preloaded with
# TBPROF_CHILDREN=off, preloaded with it on (the default: the child starts
# its follower thread, through ctypes), and on while the parent captures
# (the first 32 children capture with it and write a profile each at their
# _exit; the rest do not join). Medians of BENCH_ROUNDS (default 5) rounds
# of 100 forks each, in a shuffled order, as ratios against the plain runs
# of the same bench. Then the same for multiprocessing's spawn and
# forkserver workers (tests/bench/mp_cost.py: a Process that does nothing,
# started and joined; 20 a round): plain, TBPROF_CHILDREN=off, and on (the
# worker asks the parent's agent for its page; the parent's socket on).
# Debian's python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TBPROF_BUILD:-$root/build}}
lib=$build/lib/libtbprof.so
[ -f "$lib" ] || { echo "bench_children: build first ($lib)" >&2; exit 2; }
py=/usr/bin/python3
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
"$py" - "$py" "$lib" "$logdir" "${BENCH_ROUNDS:-5}" "$root/tests/bench/fork_cost.py" "$root/tests/bench/mp_cost.py" <<'PY'
import os, random, statistics, subprocess, sys
py, lib, logdir, rounds, prog, mp_prog = sys.argv[1:7]
rounds = int(rounds)
base = {k: v for k, v in os.environ.items() if not k.startswith("TBPROF_") and k not in ("LD_PRELOAD", "PYTHONPATH")}
base.update(TBPROF_LOGDIR=logdir, TBPROF_SOCKET="off", TBPROF_GPU="off")
variants = [("plain", [py, prog, "100", "idle"], base),
            ("preloaded, TBPROF_CHILDREN=off", [py, prog, "100", "idle"],
             dict(base, LD_PRELOAD=lib, TBPROF_CHILDREN="off")),
            ("preloaded, children followed (idle parent)", [py, prog, "100", "idle"], dict(base, LD_PRELOAD=lib)),
            ("preloaded, children followed, parent capturing", [py, prog, "100", "capture"],
             dict(base, LD_PRELOAD=lib))]

def once(argv, env):
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit("bench_children: %s failed: %s" % (argv, out.stderr))
    return float(out.stdout.split()[-1])  # us per fork (per process)

def bench(variants, what):
    for _, argv, env in variants:
        once(argv, env)  # warm caches
    per = {v: [] for v, _, _ in variants}
    rng = random.Random(1)
    for _ in range(rounds):
        for v, argv, env in rng.sample(variants, len(variants)):
            per[v].append(once(argv, env))
    m = statistics.median
    plain = m(per["plain"])
    print("bench_children: %s, %d rounds, medians; plain %.0f us per %s" % (py, rounds, plain, what))
    for v, _, _ in variants[1:]:
        print("  %-48s %8.0f us  %5.2fx plain" % (v, m(per[v]), m(per[v]) / plain))

bench(variants, "fork+exit+wait (100 a round)")
for method in ("spawn", "forkserver"):
    argv = [py, mp_prog, "20", method]
    on = dict(base, LD_PRELOAD=lib, TBPROF_SOCKET="on")
    bench([("plain", argv, base), ("preloaded, TBPROF_CHILDREN=off", argv, dict(on, TBPROF_CHILDREN="off")),
           ("preloaded, workers followed (idle parent)", argv, on)],
          "%s Process start+join (20 a round)" % method)
PY
