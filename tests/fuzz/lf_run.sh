#!/usr/bin/env bash
# tests/fuzz/lf_run.sh TARGET [LIMIT]: run a libFuzzer target of a
# TBPROF_SANITIZE=fuzzer build over a fresh seed corpus.
#   LIMIT: -runs=N (a fixed-seed pass, as ctest runs it: deterministic) or
#          SECONDS (explore that long with a random seed; default 60)
# Inputs that crash are kept in TARGET's folder as lf-crash-*; re-run one
# with: TARGET FILE. The corpus grown is left in $LF_CORPUS when set.
set -uo pipefail
target=${1:?usage: lf_run.sh TARGET [-runs=N | SECONDS]}
limit=${2:-60}
name=$(basename "$target")
corpus=${LF_CORPUS:-$(mktemp -d /tmp/tbprof-$name.XXXXXX)}
mkdir -p "$corpus"
[ -n "${LF_CORPUS:-}" ] || trap 'rm -rf "$corpus"' EXIT
case $name in
  lf_space)
    LF_WRITE_SEEDS=$corpus "$target" || { echo "lf_run: $name could not write its seeds" >&2; exit 1; }
    max_len=65536 ;;
  lf_config)
    # values for the TBPROF_* variables in the order they are read, and
    # NVTX range names in torch's and XLA's op formats
    printf '3,5\n10-20/100x3\non\n499\nauto\n/tmp/logs\n' >"$corpus/env"
    printf 'aten::mm, seq = 12, op_id = 3, sizes = [[2, 3], [3, 4]]\nxla_op#hlo_op=fusion.1,hlo_module=jit_step#\n' \
      >"$corpus/ops"
    printf '/step_([0-9]+)/\n5s\n1.5\nSIGUSR2\n0\n' >"$corpus/misc"
    max_len=4096 ;;
  lf_files)
    # the vDSO and a JIT map (written by the target), a small shared object
    # with .symtab and .dynsym built here, and a small system one
    LF_WRITE_SEEDS=$corpus "$target" || { echo "lf_run: $name could not write its seeds" >&2; exit 1; }
    printf 'int f(void){return 1;}\nstatic int g(int x){return x+2;}\nint h(int x){return g(x)*3;}\n' |
      ${CC:-cc} -shared -fPIC -O1 -x c -o "$corpus/small.so" - 2>/dev/null || true
    for so in /lib/x86_64-linux-gnu/libdl.so.2 /usr/lib/x86_64-linux-gnu/libdl.so.2; do
      [ -f "$so" ] && { cp "$so" "$corpus/libdl.so"; break; }
    done
    max_len=40000 ;;
  *) echo "lf_run: no seeds known for $name" >&2; exit 2 ;;
esac
case $limit in
  -runs=*) opts=(-seed=1 "$limit") ;;
  *) opts=(-max_total_time="$limit") ;;
esac
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
# libFuzzer's exit status: 0 when nothing was found
"$target" "${opts[@]}" -max_len=$max_len -rss_limit_mb=4096 -print_final_stats=1 \
  -artifact_prefix="$(dirname "$target")/lf-crash-$name-" "$corpus" 2>&1 |
  grep -avE '^#[0-9]+\s+(NEW|REDUCE|pulse)|^\s*$'
exit "${PIPESTATUS[0]}"
