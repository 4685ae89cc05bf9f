#!/usr/bin/env bash
# bench_python_idle.sh [BUILD_DIR] - what an idle agent costs a Python job's
# own code: a call-bound pure-Python loop (tests/bench/python_calls.py, the
# worst case for per-call costs) run plain, with libtbprof.so preloaded and
# idle (the helper on PYTHONPATH, the step hooks on, the perf trampoline off:
# the default), under `tbprof run` (the same), and with the trampoline on for
# the whole run (PYTHONPERFSUPPORT=1: what `tbprof run` did before the
# trampoline was turned on for captures only). CPU time of the child (wait4),
# medians of BENCH_ROUNDS (default 11) rounds in a shuffled order, as ratios
# against the plain runs of the same bench. Needs a CPython >= 3.12
# (TBPROF_TEST_PY312, or pyenv's); skipped without one.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TBPROF_BUILD:-$root/build}}
lib=$build/lib/libtbprof.so cli=$build/bin/tbprof
[ -f "$lib" ] && [ -x "$cli" ] || { echo "bench_python_idle: build first ($lib)" >&2; exit 2; }
py=${TBPROF_TEST_PY312:-}
if [ -z "$py" ]; then
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 /usr/bin/python3.1[2-9]; do
    [ -x "$c" ] && { py=$c; break; }
  done
fi
[ -n "$py" ] || { echo "bench_python_idle: no CPython >= 3.12 here; skipped"; exit 0; }
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
/usr/bin/python3 - "$py" "$lib" "$cli" "$logdir" "${BENCH_ROUNDS:-11}" "$root/tests/bench/python_calls.py" <<'PY'
import os, random, statistics, sys
py, lib, cli, logdir, rounds, prog = sys.argv[1:7]
rounds = int(rounds)
base = {k: v for k, v in os.environ.items()
        if not k.startswith("TBPROF_") and k not in ("LD_PRELOAD", "PYTHONPATH", "PYTHONPERFSUPPORT")}
base["TBPROF_LOGDIR"] = logdir
variants = [("plain", [py, prog], base),
            ("preloaded, idle", [py, prog], dict(base, LD_PRELOAD=lib)),
            ("tbprof run, idle", [cli, "run", "--", py, prog], base),
            ("trampoline all run", [py, prog], dict(base, LD_PRELOAD=lib, PYTHONPERFSUPPORT="1"))]
devnull = os.open(os.devnull, os.O_WRONLY)

def once(argv, env):
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
    _, status, ru = os.wait4(pid, 0)
    if status != 0:
        sys.exit("bench_python_idle: %s failed (%d)" % (argv, status))
    try:  # PYTHONPERFSUPPORT's map (CPython leaves it)
        os.unlink("/tmp/perf-%d.map" % pid)
    except OSError:
        pass
    return ru.ru_utime + ru.ru_stime

for _, argv, env in variants:
    once(argv, env)  # warm caches
cpu = {v: [] for v, _, _ in variants}
rng = random.Random(1)
for _ in range(rounds):
    for v, argv, env in rng.sample(variants, len(variants)):
        cpu[v].append(once(argv, env))
m = statistics.median
pc = m(cpu["plain"])
print("bench_python_idle: %s, %d rounds, CPU time medians; plain %.1f ms" % (py, rounds, pc * 1e3))
for v, _, _ in variants[1:]:
    c = m(cpu[v])
    print("  %-20s cpu %8.1f ms ratio %.3f" % (v, c * 1e3, c / pc))
for root_, _, fs in os.walk(logdir):
    if fs:
        sys.exit("bench_python_idle: an idle agent wrote files: %s" % fs)
PY

# Instructions (callgrind, all threads): steady where CPU time swings with
# other tenants of the machine.
if command -v valgrind >/dev/null; then
  count() { # VAR=value... argv...: callgrind's total instructions
    local out pid
    env -u PYTHONPERFSUPPORT -u PYTHONPATH -u LD_PRELOAD TBPROF_LOGDIR="$logdir" "$@" >/dev/null 2>"$logdir/vg" &
    pid=$!
    wait $pid || true
    rm -f "/tmp/perf-$pid.map" # PYTHONPERFSUPPORT's (env execs: the same pid)
    out=$(grep -Eo 'Collected : [0-9]+' "$logdir/vg" | grep -Eo '[0-9]+$') || true
    rm -f "$logdir/vg"
    echo "${out:-0}"
  }
  vg=(valgrind --tool=callgrind --callgrind-out-file=/dev/null)
  prog=$root/tests/bench/python_calls.py
  a=$(count "${vg[@]}" "$py" "$prog")
  b=$(count LD_PRELOAD="$lib" "${vg[@]}" "$py" "$prog")
  c=$(count LD_PRELOAD="$lib" PYTHONPERFSUPPORT=1 "${vg[@]}" "$py" "$prog")
  awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN { if (a > 0) printf "  instructions: plain %.0f, preloaded idle %.0f (ratio %.4f), trampoline all run %.0f (ratio %.4f)\n", a, b, b / a, c, c / a }'
else
  echo "  (valgrind not installed: no instruction counts)"
fi
