#!/usr/bin/env bash
# run.sh - tbprof's real-GPU checks (run on the GPU machine from the folder
# tests/gpu/pack.sh made: bash .gpu/run.sh). Needs python3 with torch (CUDA),
# jax and protobuf; no network, no Debian packages.
#   0. tbprof doctor finds GPU tracing ready (its CPU line is reported)
#   1. cuda_steps under the preload, steps 3..6 marked by cudaProfilerStart/
#      Stop (1a) and by NVTX ranges (1b): exactly the launched kernels
#      (names, counts, grid/block, the graph's kernel), copies, memsets,
#      allocations, syncs and API calls, each GPU event with its host call
#      and flow, GPU work launched inside an NVTX range named by it
#      (nvtx_range); 1b also the NVTX step ranges, every GPU event named
#   2. a PyTorch loop, steps 10..14, no code change (tbprof run) vs
#      torch.profiler on the same steps: kernel names, counts, GPU time (5%);
#      2b. its torch.cuda.nvtx ranges are in our profile, one per step, and
#          the forward pass's kernels carry nvtx_range "forward"
#      2c. which libcupti traced it, the pool, buffers filled, drops (INFO)
#   3. jax.profiler.ProfileData loads our .xplane.pb; xprof (when installed)
#      converts it into its tools (the memory profile shows the cudaMalloc timeline)
#   4. step time: no agent / agent idle / capturing / torch.profiler;
#      4a. idle again after a capture: within 2% of no agent, the capture
#          having detached CUPTI (cuptiFinalize); the same with
#          TBPROF_CUPTI_TEARDOWN=off (CUPTI left attached) is reported
#   4b. minor page faults of the job's threads per step, capturing vs idle
#      (CUPTI buffers come faulted in by the agent thread): reported (INFO)
#   4c. tbprof convert --gpu of the capturing run: most GPU time under the
#      loop's own Python frames (SKIP without CPU samples, as under gVisor)
#   5. tbprof and torch.profiler in one job: each holding CUPTI first, and
#      torch.profiler done before our window, with and without
#      TEARDOWN_CUPTI=1: neither breaks the other or the job (the real
#      second-subscriber path)
# Prints a table; exit status = number of failed checks (SKIP, INFO are not).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export TBGPU=$here
py=${PYTHON:-python3}
work=$(mktemp -d /tmp/tbgpu.XXXXXX)
tbprof="$here/bin/tbprof"
# the CLI needs protobuf-c; the agent dlopen()s libz and (for libunwind)
# liblzma: the packed copies, where the machine lacks them
if ldd "$here/bin/tbprof" "$here/lib/libtbprof.so" 2>/dev/null | grep -q "not found" ||
  ! $py -c "import ctypes; ctypes.CDLL('libz.so.1'); ctypes.CDLL('liblzma.so.5')" 2>/dev/null; then
  export LD_LIBRARY_PATH="$here/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# libcupti: the one torch ships (pip nvidia-cuda-cupti), else the toolkit's
cupti=$($py - <<'PY' 2>/dev/null
import glob, os, site
for d in site.getsitepackages():
    for p in sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib", "libcupti.so*")), reverse=True):
        print(p); raise SystemExit
PY
)
# else the one pack.sh took from the toolkit it built with
[ -z "$cupti" ] && cupti=$(ls "$here"/cupti/libcupti.so.* 2>/dev/null | head -1)
[ -n "$cupti" ] && export TBPROF_CUPTI_PATH="$cupti"
echo "work dir $work; libcupti: ${cupti:-search}"
nvidia-smi -L 2>/dev/null || true
$py -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" 2>/dev/null || true
declare -a rows; fails=0
row() { rows+=("$(printf '%-30s %-5s %s' "$1" "$2" "$3")"); case $2 in PASS|SKIP|INFO) ;; *) fails=$((fails+1)) ;; esac; }
check() { # name, command...: records the RESULT line
  local name=$1; shift
  local out; out=$("$@" 2>&1); local rc=$?
  local res; res=$(grep '^RESULT' <<<"$out" | tail -1)
  if [ -n "$res" ]; then row "$name" "$(awk '{print $3}' <<<"$res")" "$(cut -d' ' -f4- <<<"$res")"
  else row "$name" FAIL "rc=$rc: $(tail -3 <<<"$out" | tr '\n' ' ')"; fi
}

# 0. tbprof doctor: on a GPU machine it must find GPU tracing ready
doc=$("$tbprof" doctor 2>&1); docd=$(grep -E '^  (GPU tracing|CUPTI after|CPU sampling)' <<<"$doc" | tr -s ' ' | paste -sd ';')
if grep -q '^  GPU tracing *ready:' <<<"$doc"; then row doctor PASS "$docd"; else row doctor FAIL "${docd:-$(tail -2 <<<"$doc" | tr '\n' ' ')}"; fi

# 1. CUDA program: steps 3..6 = 4 steps, from each CUDA step source
x1=
for mode in profiler nvtx; do
  logs1=$work/cuda_$mode
  extra=(); nv=
  [ $mode = nvtx ] && { extra=(TBPROF_NVTX_STEP=step TBPROF_CUDA_STEPS=off); nv=3,6; }
  env TBPROF_STEPS=3,6 TBPROF_LOGDIR="$logs1" TBPROF_CPU=off "${extra[@]}" LD_PRELOAD="$here/lib/libtbprof.so" \
    "$here/bin/cuda_steps" $mode 10 >"$work/cuda_$mode.out" 2>"$work/cuda_$mode.err"
  x=$(find "$logs1" -name '*.xplane.pb' 2>/dev/null | head -1)
  if [ -n "$x" ]; then
    check "cuda_program ($mode)" $py "$here/check.py" cuda "$x" "$work/cuda_$mode.out" 4 $nv
    x1=${x1:-$x}
  else row "cuda_program ($mode)" FAIL "no xplane.pb: $(tail -2 "$work/cuda_$mode.err" | tr '\n' ' ')"; fi
done

# 2. PyTorch: ours (no code change) vs torch.profiler, steps 10..14
logs2=$work/torch
"$tbprof" run --steps 10,14 --logdir "$logs2" -- env TBPROF_CPU=off $py "$here/torch_loop.py" --steps 20 --nvtx \
  >"$work/torch.out" 2>"$work/torch.err"
$py "$here/torch_loop.py" --steps 20 --nvtx --torch-profile 10,14 --out "$work" >/dev/null 2>"$work/torchprof.err"
x2=$(find "$logs2" -name '*.xplane.pb' 2>/dev/null | head -1)
if [ -n "$x2" ] && [ -f "$work/torch_trace.json" ]; then
  check torch_vs_torch_profiler $py "$here/check.py" torch "$x2" "$work/torch_trace.json"
else row torch_vs_torch_profiler FAIL "missing output: ours=${x2:-none} torch=$(ls "$work"/torch_trace.json 2>/dev/null); $(tail -n 2 "$work/torch.err" "$work/torchprof.err" 2>/dev/null | tr '\n' ' ')"; fi
# 2b. torch.cuda.nvtx ranges, recorded through tbprof's NVTX injection
if [ -n "$x2" ]; then check torch_nvtx_ranges $py "$here/check.py" torch_nvtx "$x2"; fi

# 2c. which libcupti traced the torch job, how many buffers it filled, drops
if [ -n "$x2" ]; then check cupti_in_torch_job $py "$here/check.py" capture "$x2"; fi

# 3. JAX reads our XSpace
if [ -n "$x2" ]; then check jax_profiledata $py "$here/check.py" jax "$x2"
elif [ -n "$x1" ]; then check jax_profiledata $py "$here/check.py" jax "$x1"
else row jax_profiledata FAIL "no xplane.pb to load"; fi

# 3b. xprof's own converters (the TensorBoard plugin's code) on the CUDA profile
if [ -n "$x1" ]; then check xprof_tools $py "$here/check.py" xprof "$x1"; fi

# 4. step time (median of steps 10..29 of 40)
med() { $py -c "import sys,statistics; v=[float(l) for l in open(sys.argv[1])][10:30]; print('%.3f' % (statistics.median(v)*1e3))" "$1"; }
$py "$here/torch_loop.py" --steps 40 --times "$work/t_none" >/dev/null 2>"$work/t_none.err"
TBPROF_LOGDIR=$work/idle LD_PRELOAD=$here/lib/libtbprof.so $py "$here/torch_loop.py" --steps 40 --times "$work/t_idle" >/dev/null 2>"$work/t_idle.err"
"$tbprof" run --steps 10,29 --logdir "$work/cap" -- $py "$here/torch_loop.py" --steps 40 --times "$work/t_cap" >/dev/null 2>&1
mkdir -p "$work/tp"  # torch.profiler exports its trace there at step 29
$py "$here/torch_loop.py" --steps 40 --torch-profile 10,29 --out "$work/tp" --times "$work/t_tp" >/dev/null 2>&1 || true
# idle again after a capture (steps 3..7): CUPTI detached; and left attached
"$tbprof" run --steps 3,7 --logdir "$work/after" -- $py "$here/torch_loop.py" --steps 40 --times "$work/t_after" >/dev/null 2>&1
"$tbprof" run --steps 3,7 --logdir "$work/after_off" -- env TBPROF_CUPTI_TEARDOWN=off $py "$here/torch_loop.py" \
  --steps 40 --times "$work/t_after_off" >/dev/null 2>&1
tn=$(med "$work/t_none" 2>/dev/null); ti=$(med "$work/t_idle" 2>/dev/null)
tc=$(med "$work/t_cap" 2>/dev/null); tt=$(med "$work/t_tp" 2>/dev/null); ta=$(med "$work/t_after" 2>/dev/null)
tao=$(med "$work/t_after_off" 2>/dev/null)
echo
echo "step time (median ms, steps 10..29):"
printf '  %-28s %s\n' "no profiler" "${tn:-?}" "tbprof preloaded, idle" "${ti:-?}" \
  "tbprof capturing (GPU+CPU)" "${tc:-?}" "torch.profiler (CPU+CUDA)" "${tt:-?}" \
  "tbprof idle after a capture" "${ta:-?}" "... CUPTI left attached" "${tao:-?}"
if [ -n "$tn" ] && [ -n "$ti" ]; then
  ok=$($py -c "print('PASS' if $ti <= $tn * 1.02 + 0.05 else 'FAIL')")
  row idle_overhead "$ok" "idle ${ti} ms vs none ${tn} ms (limit +2%)"
else row idle_overhead FAIL "no step times: $(tail -n 2 "$work/t_none.err" "$work/t_idle.err" 2>/dev/null | tr '\n' ' ')"
fi
# 4c. GPU time by launching stack of the capturing run: under torch_loop.py's frames
if "$tbprof" convert "$work/cap" --gpu --to "$work/gpu.folded" 2>"$work/gpu_flame.err"; then
  check gpu_flame $py "$here/check.py" gpu_flame "$work/gpu.folded" torch_loop.py
else row gpu_flame FAIL "$(tail -2 "$work/gpu_flame.err" | tr '\n' ' ')"; fi
# 4a. idle again after a capture: as fast as without tbprof (CUPTI detached)
xa=$(find "$work/after" -name '*.xplane.pb' 2>/dev/null | head -1)
if [ -n "$xa" ]; then check idle_after_capture $py "$here/check.py" after_capture "$xa" "$work/t_after" "$work/t_none" "$work/t_after_off"
else row idle_after_capture FAIL "no xplane.pb from the capture of steps 3..7"; fi

# 4b. page faults on the job's threads per step (steps 10..29), capturing vs idle
TBPROF_LOGDIR=$work/idle2 LD_PRELOAD=$here/lib/libtbprof.so $py "$here/torch_loop.py" --steps 40 --faults "$work/f_idle" >/dev/null 2>&1
"$tbprof" run --steps 10,29 --logdir "$work/cap2" -- $py "$here/torch_loop.py" --steps 40 --faults "$work/f_cap" >/dev/null 2>&1
fps() { $py -c "import sys; v=[int(l) for l in open(sys.argv[1])]; print('%.1f' % ((v[29]-v[9])/20))" "$1"; }
fi_=$(fps "$work/f_idle" 2>/dev/null); fc=$(fps "$work/f_cap" 2>/dev/null)
row job_thread_page_faults INFO "minor faults per step: capturing ${fc:-?}, idle ${fi_:-?}"

# 5. tbprof and torch.profiler in one job (CUPTI takes one subscriber):
#    name, what must hold (check.py coexist), our steps, torch.profiler's
#    steps (20 in all), then environment settings for the job
coexist() {
  local name=$1 want=$2 d=$work/co_$1 x rc
  mkdir -p "$d"
  "$tbprof" run --steps "$3" --logdir "$d" -- env TBPROF_CPU=off "${@:5}" $py "$here/torch_loop.py" --steps 20 \
    --torch-profile "$4" --out "$d" >"$d.out" 2>"$d.err"; rc=$?
  x=$(find "$d" -name '*.xplane.pb' 2>/dev/null | head -1)
  if [ -n "$x" ]; then check "coexist_$name" $py "$here/check.py" coexist "$name" "$want" "$x" "$d/torch_trace.json" $rc
  else row "coexist_$name" FAIL "rc=$rc, no xplane.pb: $(tail -2 "$d.err" | tr '\n' ' ')"; fi
}
coexist torch_first either 10,14 5,19   # 5a. torch.profiler holds CUPTI when our window opens
coexist tbprof_first ours 3,14 8,12     # 5b. torch.profiler starts inside our window
coexist torch_before either 10,14 2,6   # 5c. torch.profiler traced earlier (Kineto keeps CUPTI)
coexist torch_before_teardown ours 10,14 2,6 TEARDOWN_CUPTI=1  # 5d. ... unless told to let go

echo
printf '%-30s %-5s %s\n' CHECK RESULT DETAIL
printf '%s\n' "${rows[@]}"
echo "$fails failed; outputs in $work"
exit $fails
