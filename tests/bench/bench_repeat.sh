# bench_repeat.sh [BUILD_DIR] - what each repeat of a repeating window
# (TBPROF_STEPS=A-B/P) costs the training thread.
#
# progs/steps runs 5 ms steps and prints when each began (-s); step i's time
# is the gap to step i+1. Runs alternate: the agent preloaded and idle (the
# baseline), and TBPROF_STEPS=5-6/20 with CPU sampling on and, where the
# build has it, GPU tracing through the fake libcupti (its subscribe,
# enable, flush and detach; no records). Steps are told apart by where
# they fall in each 20-step period: the two around a window's start (where
# the agent arms and, at the first step, waits for its sources), the
# window's own, the one whose end the profile is written after, and the
# rest. Each class's median, and its slowest step, are printed as ratios
# against the baseline's median of the same round. BENCH_ROUNDS (default 5) rounds of 400 steps.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TBPROF_BUILD:-$root/build}}
lib=$build/lib/libtbprof.so
prog=$build/progs/steps
fake=$build/fakecupti/libcupti.so
[ -f "$lib" ] && [ -x "$prog" ] || { echo "bench_repeat: build first ($lib, $prog)" >&2; exit 2; }
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
"$py" - "$lib" "$prog" "$fake" "$logdir" "${BENCH_ROUNDS:-5}" <<'PY'
import os, statistics, subprocess, sys
lib, prog, fake, logdir, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
base = {k: v for k, v in os.environ.items() if not k.startswith(("TBPROF_", "TBFAKE_")) and k != "LD_PRELOAD"}
base.update(LD_PRELOAD=lib, TBPROF_LOGDIR=logdir, TBPROF_SOCKET="off", TBPROF_LOG="error")
gpu = os.path.exists(fake)
rep = dict(base, TBPROF_STEPS="5-6/20", TBPROF_CPU="on", TBPROF_GPU="on" if gpu else "off")
if gpu:  # (a libcuda with no functions: GPU tracing starts in a process that has loaded one)
    rep["TBPROF_CUPTI_PATH"] = fake
    rep["LD_PRELOAD"] = os.path.join(os.path.dirname(os.path.dirname(fake)), "fakecudabare", "libcuda.so.1") + ":" + lib
N, P = 400, 20


def steps(env):
    out = subprocess.run([prog, "-s", "-n", str(N + 1), "-m", "5"], env=env, capture_output=True, text=True,
                         timeout=300).stdout
    t = {int(f[1]): int(f[2]) for f in (l.split() for l in out.splitlines()) if f and f[0] == "step"}
    return {i: (t[i + 1] - t[i]) / 1e6 for i in range(N) if i in t and i + 1 in t}


def where(i):
    k = i % P
    return {4: "window start", 5: "window start", 6: "in window", 7: "after (written)"}.get(k, "rest")


classes = ["window start", "in window", "after (written)", "rest"]
ratios = {c: [] for c in classes}
worst = {c: [] for c in classes}
base_ms = []
for r in range(rounds):
    b = steps(base)
    x = steps(rep)
    m = statistics.median(b.values())
    base_ms.append(m)
    for c in classes:
        v = [d for i, d in x.items() if where(i) == c and i >= P]  # from the second repeat on
        if v:
            ratios[c].append(statistics.median(v) / m)
            worst[c].append(max(v) / m)
print("bench_repeat: 5 ms steps, TBPROF_STEPS=5-6/20 (%d repeats a run), CPU sampling on, GPU %s; %d rounds" %
      (N // P, "through the fake libcupti" if gpu else "off (no CUPTI build)", rounds))
print("  baseline (agent idle): median step %.3f ms" % statistics.median(base_ms))
for c in classes:
    v = ratios[c]
    print("  %-16s median step / baseline: %.3f (rounds %.3f..%.3f); slowest step %.2f (median of rounds)" % (
        c, statistics.median(v), min(v), max(v), statistics.median(worst[c])))
PY
