# bench_nvtx.sh [BUILD_DIR] - what an NVTX range costs the job's thread.
#
# progs/nvtx_steps -b N times N nvtxRangePushA/Pop pairs of a name that
# matches no step pattern, in three states of the same program:
#   no tool         NVTX_INJECTION64_PATH unset, no preload: NVTX's own no-op
#   tbprof idle     preloaded (TBPROF_NVTX=on, the default), no capture
#   tbprof capture  preloaded, inside a capture (tbprof_start(0) first): each
#                   pair records a range (two clock reads, a name copy)
# and, as the machine's yardstick, one CLOCK_MONOTONIC read (clock_ns):
# a recorded range needs two, so "capture / clock" says how far the record
# is from that floor on this machine. BENCH_ROUNDS (default 7) rounds, the
# variants interleaved; medians. Needs the NVTX headers (CUDA toolkit):
# without them nvtx_steps exits 77 and this benchmark says so and passes.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-${TBPROF_BUILD:-$root/build}}
lib=$build/lib/libtbprof.so
prog=$build/progs/nvtx_steps
[ -f "$lib" ] && [ -x "$prog" ] || { echo "bench_nvtx: build first ($lib, $prog)" >&2; exit 2; }
py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
"$py" - "$lib" "$prog" "$logdir" "${BENCH_ROUNDS:-7}" <<'PY'
import os, statistics, subprocess, sys
lib, prog, logdir, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = {k: v for k, v in os.environ.items()
        if not k.startswith("TBPROF_") and k not in ("LD_PRELOAD", "NVTX_INJECTION64_PATH")}
# 256 MB: NVTX's 1/16 holds 262,144 ranges, so every timed pair is recorded
# (a full arena only counts drops, which is cheaper and not what we measure)
tb = dict(base, LD_PRELOAD=lib, TBPROF_LOGDIR=logdir, TBPROF_CPU="off", TBPROF_GPU="off",
          TBPROF_BUFFER_MB="256")
variants = [("no tool", base, []), ("tbprof idle", tb, []), ("tbprof capture", tb, ["-c"])]
N = 200000  # pairs per run; with the 1000 warm-up pairs, < 262,144

def once(env, extra):
    p = subprocess.run([prog, "-b", str(N)] + extra, env=env, capture_output=True, text=True, timeout=300)
    if p.returncode == 77:
        print("bench_nvtx: nvtx_steps was built without the NVTX headers: skipped")
        sys.exit(0)
    if p.returncode != 0:
        sys.exit("bench_nvtx: nvtx_steps failed (%d): %s" % (p.returncode, p.stderr[-300:]))
    f = dict(kv.split("=") for kv in p.stdout.split("bench ", 1)[1].split())
    if extra and "capturing=1" not in p.stdout:
        sys.exit("bench_nvtx: the capture did not start: %s" % p.stderr[-300:])
    return float(f["miss_ns"]), float(f["clock_ns"])

pair = {name: [] for name, _, _ in variants}
clock = []
for _ in range(rounds):
    for name, env, extra in variants:
        ns, c = once(env, extra)
        pair[name].append(ns)
        clock.append(c)
clk = statistics.median(clock)
none = statistics.median(pair["no tool"])
print("NVTX push+pop pair, median of %d rounds of %d pairs; CLOCK_MONOTONIC read %.1f ns" % (rounds, N, clk))
print("  %-16s %10s %12s %16s" % ("state", "ns/pair", "added ns", "pair / clock"))
for name, _, _ in variants:
    m = statistics.median(pair[name])
    print("  %-16s %10.1f %12.1f %16.2f" % (name, m, m - none, m / clk))
PY
