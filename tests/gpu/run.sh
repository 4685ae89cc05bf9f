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
#      (nvtx_range) and, past the step ranges, given it as its op (tf_op);
#      1b also the NVTX step ranges, every GPU event named
#   2. a PyTorch loop, steps 10..19, no code change (tbprof run) vs
#      torch.profiler on the same steps: kernel names, counts, GPU time (5%);
#      2b. its torch.cuda.nvtx ranges are in our profile, one per step, and
#          the forward pass's kernels carry nvtx_range "forward"
#      2c. which libcupti traced it, the pool, buffers filled, drops (INFO)
#   3. jax.profiler.ProfileData reads our .xplane.pb as we do (events per
#      plane, the GPU's names, durations); xprof (when installed)
#      converts it into its tools (the memory profile shows the cudaMalloc timeline)
#   4. step time: no agent / agent idle / capturing / torch.profiler;
#      4a. idle again after a capture: within 5% of no agent, the capture
#          having detached CUPTI (cuptiFinalize); the same with
#          TBPROF_CUPTI_TEARDOWN=off (CUPTI left attached) is reported
#   4b. minor page faults of the job's threads per step, capturing vs idle
#      (CUPTI buffers come faulted in by the agent thread): reported (INFO)
#   4c. tbprof convert --gpu of the capturing run: most GPU time under the
#      loop's own Python frames (SKIP without CPU samples, as under gVisor)
#  2h. tbprof summary on the PyTorch profile adds up (kernels, each step's
#      busy + idle, the idle split joined to launching calls): reported
#  1c. cuda_steps captured twice (CUPTI detached and attached again, with a
#      CUDA graph in the process): both profiles hold what 1 checks
#  1d. a PyTorch loop captured from start-up (before it loads CUDA) until
#      it exits: GPU tracing starts once libcuda loads, every step has its
#      kernels, and the capture is written at the exit
#  3c. a JAX training loop captured mid-run with `tbprof trigger PID`:
#      kernels, each with its launching call, nothing lost; how many
#      threads made CUDA calls (INFO in the detail)
#  3d. the same loop with its steps in jax.profiler.StepTraceAnnotations,
#      under `tbprof run --steps 20,29` (no code change): those steps, each
#      with kernels
#  3e. two PyTorch ranks sharing the GPU under one launcher, captured by
#      `tbprof trigger LAUNCHER --tree --steps 5`: one run folder, the same
#      five step numbers in both, kernels in every step
#  2i. the PyTorch loop fed by a DataLoader's 2 workers (new ones every 8
#      steps), fork and forkserver start methods, under tbprof run --steps
#      10,25: the trainer's steps with kernels, and 4 workers at least
#      captured with it into its run folder, within its window, without
#      GPU tracing of their own, their samples in SlowData.__getitem__
#      (where CPU sampling is on; data-loading frames reported)
#  2d. (run after the rest) tbprof run --torch-ops: torch's op ranges in the
#      captured steps, kernels named by their op; step time with them;
#      2e. xprof's kernel stats and framework op stats show those ops;
#      2f. --torch-shapes: the ops keep their names, shapes as torch_args;
#      4d. the loop captured four times (TBPROF_STEPS=5-6/20x4): each
#          profile whole, tbprof trend lists them; 4e. tbprof diff of the
#          first and last: the same kernels as often per step;
#      2g/3h. xprof's Overview on the torch and JAX profiles: its steps
#          hold the GPU work launched from other threads;
#      5e. torch.profiler started inside such a capture still works;
#      3f. XLA's NVTX domain declined by default, and what it gives when on;
#      3g. jax.profiler's own trace in the same job keeps its op annotations
#   5. tbprof and torch.profiler in one job: each holding CUPTI first, and
#      torch.profiler done before our window, with and without
#      TEARDOWN_CUPTI=1: neither breaks the other or the job (the real
#      second-subscriber path)
# Prints each row as it is decided and the whole table at the end; exit status
# = number of failed checks (SKIP, INFO are not).
# Device time is scarce, so the run is bounded: each job gets TBGPU_JOB_S
# seconds (default 120; a hung job is killed, and its row says so), rows
# not started within TBGPU_BUDGET_S seconds (default 420) are SKIPped, rows
# (1)-(4), the issue's, first, and no job runs past TBGPU_END_S seconds
# (default 510: keep it under the device call's limit, so the run itself
# ends, writes its table and packs its outputs). Where $OUT is set (the
# device tool), table.txt (each row as decided) and outputs.tar.gz
# (profiles, logs, step times) are written there.
set -uo pipefail
t_start=$SECONDS
budget=${TBGPU_BUDGET_S:-420}
job_s=${TBGPU_JOB_S:-120}
end_s=${TBGPU_END_S:-510}
# left: the seconds a job started now may run: job_s, or what is left before
# end_s (2 at least: timeout 0 would mean no limit)
left() { local l=$((end_s - (SECONDS - t_start))); ((l > job_s)) && l=$job_s; ((l < 2)) && l=2; echo "$l"; }
# job CMD...: run one job, killed (with its children) after left() seconds
job() {
  local s; s=$(left); timeout -k 5 "$s" "$@"; local rc=$?
  ((rc == 124 || rc == 137)) && echo "tbgpu: killed after ${s} s: $*" >&2; return $rc
}
# in_budget NAME...: false (and the rows SKIPped) once the time budget is spent
in_budget() {
  local now=$((SECONDS - t_start)) why= n
  ((now >= budget)) && why="time budget spent (TBGPU_BUDGET_S=$budget)"
  ((now >= end_s)) && why="the run's end reached (TBGPU_END_S=$end_s)"
  [ -z "$why" ] && return 0
  for n in "$@"; do row "$n" SKIP "$why"; done
  return 1
}
here=$(cd "$(dirname "$0")" && pwd)
export TBGPU=$here
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/tbgpu.XXXXXX")
tbprof="$here/bin/tbprof"
# the CLI needs protobuf-c (deps/, where the machine lacks it); the agent
# dlopen()s libz and (for libunwind) liblzma: the packed copies in deps/dl/
# only where the machine has none, so they never shadow the system's own in
# the torch and jax jobs
if ldd "$here/bin/tbprof" "$here/lib/libtbprof.so" 2>/dev/null | grep -q "not found"; then
  export LD_LIBRARY_PATH="$here/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if ! job $py -c "import ctypes; ctypes.CDLL('libz.so.1'); ctypes.CDLL('liblzma.so.5')" 2>/dev/null; then
  export LD_LIBRARY_PATH="$here/deps/dl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# libunwind: the agent finds the copy beside libtbprof.so, but the loader
# looks for what that copy needs (libunwind.so.8) only on its search path:
# lib/ goes on it where the machine has no libunwind of its own
if ! job $py -c "import ctypes; ctypes.CDLL('libunwind-x86_64.so.8')" 2>/dev/null; then
  export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# libcupti for the CUDA program (its packed runtime has none beside it,
# and the machine may have no toolkit): the one torch ships (pip
# nvidia-cuda-cupti: nvidia/cu13/lib for CUDA 13, nvidia/cuda_cupti/lib for
# 12), the newest major first, else the one packed from this toolkit. The
# Python jobs and the doctor find theirs as a user's would (no
# TBPROF_CUPTI_PATH): the job's own, the pip one beside its runtime
cupti=$(job $py - <<'PY' 2>/dev/null
import glob, os, re, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
found = [p for d in dirs for p in glob.glob(os.path.join(d, "nvidia", "*", "lib", "libcupti.so.*"))]
def major(p):
    m = re.search(r"\.so\.(\d+)", p)
    return int(m.group(1)) if m else 0
if found:
    print(max(found, key=major))
PY
)
# else the one pack.sh took from the toolkit it built with
[ -z "$cupti" ] && cupti=$(ls "$here"/cupti/libcupti.so.* 2>/dev/null | head -1)
cuenv=(); [ -n "$cupti" ] && cuenv=(TBPROF_CUPTI_PATH="$cupti")
echo "work dir $work; libcupti for the CUDA program: ${cupti:-search}"
nvidia-smi -L 2>/dev/null || true
# what the jobs will find (a python3 without torch or jax, or no GPU for it,
# fails their rows: said here once, plainly)
job $py - <<'PY' 2>&1 || true
import sys
print("python", sys.version.split()[0], sys.executable)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "GPU available:", torch.cuda.is_available())
except Exception as e:
    print("torch: not usable (%s)" % e)
try:
    import jax
    print("jax", jax.__version__, "backend", jax.default_backend())
except Exception as e:
    print("jax: not usable (%s)" % e)
PY
declare -a rows; fails=0
table() {
  printf '%-30s %-5s %s\n' CHECK RESULT DETAIL
  printf '%s\n' "${rows[@]}"
  echo "$fails failed in $((SECONDS - t_start)) s; outputs in $work"
}
row() {
  local r; r=$(printf '%-30s %-5s %s' "$1" "$2" "$3"); rows+=("$r")
  printf '[%4ds] %s\n' $((SECONDS - t_start)) "$r"
  case $2 in PASS|SKIP|INFO) ;; *) fails=$((fails+1)) ;; esac
  # the table so far, should the device's limit stop the run before its end
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then table >"$OUT/table.txt"; fi
}
check() { # name, command...: records the RESULT line
  local name=$1; shift
  local out; out=$(job "$@" 2>&1); local rc=$?
  local res; res=$(grep '^RESULT' <<<"$out" | tail -1)
  if [ -n "$res" ]; then row "$name" "$(awk '{print $3}' <<<"$res")" "$(cut -d' ' -f4- <<<"$res")"
  else row "$name" FAIL "rc=$rc: $(tail -3 <<<"$out" | tr '\n' ' ')"; fi
}

# 0. tbprof doctor: on a GPU machine it must find GPU tracing ready
doc=$(job "$tbprof" doctor 2>&1); docd=$(grep -E '^  (GPU tracing|CUPTI after|CPU sampling)' <<<"$doc" | tr -s ' ' | paste -sd ';')
if grep -q '^  GPU tracing *ready:' <<<"$doc"; then row doctor PASS "$docd"; else row doctor FAIL "${docd:-$(tail -2 <<<"$doc" | tr '\n' ' ')}"; fi

# 1. CUDA program: steps 3..6 = 4 steps, from each CUDA step source
x1=
for mode in profiler nvtx; do
  in_budget "cuda_program ($mode)" || continue
  logs1=$work/cuda_$mode
  extra=(); nv=
  [ $mode = nvtx ] && { extra=(TBPROF_NVTX_STEP=step TBPROF_CUDA_STEPS=off); nv=3,6; }
  job env TBPROF_STEPS=3,6 TBPROF_LOGDIR="$logs1" TBPROF_CPU=off "${extra[@]}" "${cuenv[@]}" \
    LD_PRELOAD="$here/lib/libtbprof.so" \
    "$here/bin/cuda_steps" $mode 10 >"$work/cuda_$mode.out" 2>"$work/cuda_$mode.err"; rc=$?
  x=$(find "$logs1" -name '*.xplane.pb' 2>/dev/null | head -1)
  # the program must also run to its end: steps 7..9 run after the detach
  if ((rc)) || ! grep -q '^done ' "$work/cuda_$mode.out"; then
    row "cuda_program ($mode)" FAIL "the program exited $rc before its end: $(tail -2 "$work/cuda_$mode.err" | tr '\n' ' ')"
  elif [ -n "$x" ]; then
    check "cuda_program ($mode)" $py "$here/check.py" cuda "$x" "$work/cuda_$mode.out" 4 $nv
    x1=${x1:-$x}
  else row "cuda_program ($mode)" FAIL "no xplane.pb: $(tail -2 "$work/cuda_$mode.err" | tr '\n' ' ')"; fi
done

# 2. PyTorch: ours (no code change) vs torch.profiler, steps 10..19 of 25
logs2=$work/torch; x2=
if in_budget torch_vs_torch_profiler torch_nvtx_ranges cupti_in_torch_job; then
  job "$tbprof" run --steps 10,19 --logdir "$logs2" -- env TBPROF_CPU=off $py "$here/torch_loop.py" --steps 25 --nvtx \
    >"$work/torch.out" 2>"$work/torch.err"; rc=$?
  job $py "$here/torch_loop.py" --steps 25 --nvtx --torch-profile 10,19 --out "$work" >"$work/torchprof.out" \
    2>"$work/torchprof.err"; rc2=$?
  x2=$(find "$logs2" -name '*.xplane.pb' 2>/dev/null | head -1)
  if ((rc || rc2)) || ! grep -q '^done ' "$work/torch.out"; then
    row torch_vs_torch_profiler FAIL "a job failed: ours exited $rc, torch.profiler's $rc2: $(tail -n 2 "$work/torch.err" "$work/torchprof.err" 2>/dev/null | tr '\n' ' ')"
  elif [ -n "$x2" ] && [ -f "$work/torch_trace.json" ]; then
    check torch_vs_torch_profiler $py "$here/check.py" torch "$x2" "$work/torch_trace.json"
  else row torch_vs_torch_profiler FAIL "missing output: ours=${x2:-none} torch=$(ls "$work"/torch_trace.json 2>/dev/null); $(tail -n 2 "$work/torch.err" "$work/torchprof.err" 2>/dev/null | tr '\n' ' ')"; fi
  # 2b. torch.cuda.nvtx ranges, recorded through tbprof's NVTX injection
  if [ -n "$x2" ]; then check torch_nvtx_ranges $py "$here/check.py" torch_nvtx "$x2"; fi
  # 2c. which libcupti traced the torch job, how many buffers it filled, drops
  if [ -n "$x2" ]; then check cupti_in_torch_job $py "$here/check.py" capture "$x2"; fi
fi

# 3. JAX reads our XSpace
if in_budget jax_profiledata; then
  if [ -n "$x2" ]; then check jax_profiledata $py "$here/check.py" jax "$x2"
  elif [ -n "$x1" ]; then check jax_profiledata $py "$here/check.py" jax "$x1"
  else row jax_profiledata FAIL "no xplane.pb to load"; fi
fi

# 4. step time (median of steps 10..29 of 40); 4b. the job threads' minor
#    page faults per step from the same runs (read between steps, untimed)
med() { job $py -c "import sys,statistics; v=[float(l) for l in open(sys.argv[1])][10:30]; print('%.3f' % (statistics.median(v)*1e3))" "$1"; }
fps() { job $py -c "import sys; v=[int(l) for l in open(sys.argv[1])]; print('%.1f' % ((v[29]-v[9])/20))" "$1"; }
if in_budget idle_overhead gpu_flame idle_after_capture job_thread_page_faults; then
  job $py "$here/torch_loop.py" --steps 40 --times "$work/t_none" >/dev/null 2>"$work/t_none.err"
  job env TBPROF_LOGDIR="$work/idle" LD_PRELOAD="$here/lib/libtbprof.so" $py "$here/torch_loop.py" --steps 40 \
    --times "$work/t_idle" --faults "$work/f_idle" >/dev/null 2>"$work/t_idle.err"
  job "$tbprof" run --steps 10,29 --logdir "$work/cap" -- $py "$here/torch_loop.py" --steps 40 --times "$work/t_cap" \
    --faults "$work/f_cap" >/dev/null 2>"$work/t_cap.err"
  mkdir -p "$work/tp"  # torch.profiler exports its trace there at step 29
  job $py "$here/torch_loop.py" --steps 40 --torch-profile 10,29 --out "$work/tp" --times "$work/t_tp" >/dev/null 2>"$work/t_tp.err"
  # idle again after a capture (steps 3..7): CUPTI detached; and left attached
  job "$tbprof" run --steps 3,7 --logdir "$work/after" -- $py "$here/torch_loop.py" --steps 40 --times "$work/t_after" \
    >/dev/null 2>"$work/t_after.err"
  job "$tbprof" run --steps 3,7 --logdir "$work/after_off" -- env TBPROF_CUPTI_TEARDOWN=off $py "$here/torch_loop.py" \
    --steps 40 --times "$work/t_after_off" >/dev/null 2>"$work/t_after_off.err"
  tn=$(med "$work/t_none" 2>/dev/null); ti=$(med "$work/t_idle" 2>/dev/null)
  tc=$(med "$work/t_cap" 2>/dev/null); tt=$(med "$work/t_tp" 2>/dev/null); ta=$(med "$work/t_after" 2>/dev/null)
  tao=$(med "$work/t_after_off" 2>/dev/null)
  echo
  echo "step time (median ms, steps 10..29):"
  printf '  %-28s %s\n' "no profiler" "${tn:-?}" "tbprof preloaded, idle" "${ti:-?}" \
    "tbprof capturing (GPU+CPU)" "${tc:-?}" "torch.profiler (CPU+CUDA)" "${tt:-?}" \
    "tbprof idle after a capture" "${ta:-?}" "... CUPTI left attached" "${tao:-?}"
  if [ -n "$tn" ] && [ -n "$ti" ]; then
    # (two processes' medians: a few % apart run to run on one GPU)
    ok=$(job $py -c "print('PASS' if $ti <= $tn * 1.05 + 0.05 else 'FAIL')")
    row idle_overhead "$ok" "idle ${ti} ms vs none ${tn} ms (limit +5%); capturing ${tc:-?}, torch.profiler ${tt:-?}"
  else row idle_overhead FAIL "no step times: $(tail -n 2 "$work/t_none.err" "$work/t_idle.err" 2>/dev/null | tr '\n' ' ')"
  fi
  # 4c. GPU time by launching stack of the capturing run: under torch_loop.py's frames
  if job "$tbprof" convert "$work/cap" --gpu --to "$work/gpu.folded" 2>"$work/gpu_flame.err"; then
    check gpu_flame $py "$here/check.py" gpu_flame "$work/gpu.folded" torch_loop.py
  else row gpu_flame FAIL "$(tail -2 "$work/gpu_flame.err" | tr '\n' ' ')"; fi
  # 4a. idle again after a capture: as fast as without tbprof (CUPTI detached)
  xa=$(find "$work/after" -name '*.xplane.pb' 2>/dev/null | head -1)
  if [ -n "$xa" ]; then check idle_after_capture $py "$here/check.py" after_capture "$xa" "$work/t_after" "$work/t_none" "$work/t_after_off"
  else row idle_after_capture FAIL "no xplane.pb from the capture of steps 3..7: $(tail -2 "$work/t_after.err" | tr '\n' ' ')"; fi
  # 4b. page faults on the job's threads per step (steps 10..29), capturing vs idle
  fi_=$(fps "$work/f_idle" 2>/dev/null); fc=$(fps "$work/f_cap" 2>/dev/null)
  row job_thread_page_faults INFO "minor faults per step: capturing ${fc:-?}, idle ${fi_:-?}"
fi

# 3b. xprof's own converters (the TensorBoard plugin's code) on the CUDA profile
if [ -n "$x1" ] && in_budget xprof_tools; then check xprof_tools $py "$here/check.py" xprof "$x1"; fi

# 2h. tbprof summary on the PyTorch profile: its figures add up on real
#     CUPTI data; the GPU-idle split and communication are reported
if [ -n "$x2" ] && in_budget summary_torch; then
  job "$tbprof" summary --json --top 100000 "$x2" >"$work/summary_torch.json" 2>"$work/summary_torch.err"
  check summary_torch $py "$here/check.py" summary "$work/summary_torch.json" "$x2" 10
fi

# 1c. the CUDA program captured twice (steps 2..3, 7..8): the second capture
#     attaches CUPTI again after the first one's cuptiFinalize, with a CUDA
#     graph in the process (the path that crashed before CUDA 12.6); both
#     profiles whole. A CUPTI 13.0/13.1 numbers graph launches wrongly once
#     re-attached: there the second one's graph work is written unlinked
if in_budget "cuda_reattached (1st)" "cuda_reattached (2nd)"; then
  logs1c=$work/cuda_re
  job env TBPROF_STEPS="2-3;7-8" TBPROF_LOGDIR="$logs1c" TBPROF_CPU=off "${cuenv[@]}" LD_PRELOAD="$here/lib/libtbprof.so" \
    "$here/bin/cuda_steps" profiler 11 >"$work/cuda_re.out" 2>"$work/cuda_re.err"; rc=$?
  mapfile -t xr < <(find "$logs1c" -name '*.xplane.pb' 2>/dev/null | sort)
  if ((rc)) || ! grep -q '^done ' "$work/cuda_re.out"; then
    row "cuda_reattached" FAIL "the program exited $rc before its end: $(tail -2 "$work/cuda_re.err" | tr '\n' ' ')"
  elif ((${#xr[@]} != 2)); then
    row "cuda_reattached" FAIL "${#xr[@]} profiles, expected 2: $(tail -2 "$work/cuda_re.err" | tr '\n' ' ')"
  else
    check "cuda_reattached (1st)" $py "$here/check.py" cuda "${xr[0]}" "$work/cuda_re.out" 2
    check "cuda_reattached (2nd)" $py "$here/check.py" cuda "${xr[1]}" "$work/cuda_re.out" 2
  fi
fi

# 3c. a JAX job captured mid-run by `tbprof trigger` (no steps, no code change)
if in_budget jax_capture; then
  logs3=$work/jax; stop=$work/jax.stop; jpid=; jback=
  timeout -k 5 "$(left)" env TBPROF_LOGDIR="$logs3" TBPROF_CPU=off LD_PRELOAD="$here/lib/libtbprof.so" \
    $py "$here/jax_loop.py" --stop-file "$stop" --seconds 90 >"$work/jax.out" 2>"$work/jax.err" &
  jbg=$!
  for _ in $(seq 180); do
    grep -q '^ready ' "$work/jax.out" 2>/dev/null && break
    kill -0 "$jbg" 2>/dev/null || break
    sleep 0.5
  done
  read -r _ jpid jback < <(grep '^ready ' "$work/jax.out" 2>/dev/null || true)
  if [ -z "$jpid" ]; then
    touch "$stop"; wait "$jbg"
    row jax_capture FAIL "the JAX job did not get ready: $(tail -2 "$work/jax.err" | tr '\n' ' ')"
  elif [ "$jback" != gpu ] && [ "$jback" != cuda ]; then
    touch "$stop"; wait "$jbg"
    row jax_capture SKIP "jax runs on $jback here, not on the GPU"
  else
    job "$tbprof" trigger "$jpid" --duration 2 --timeout 60 >"$work/jax_trigger.out" 2>&1; trc=$?
    touch "$stop"; wait "$jbg"; jrc=$?
    x3=$(find "$logs3" -name '*.xplane.pb' 2>/dev/null | head -1)
    if ((jrc)) || ! grep -q '^done ' "$work/jax.out"; then
      row jax_capture FAIL "the JAX job exited $jrc before its end: $(tail -2 "$work/jax.err" | tr '\n' ' ')"
    elif [ -n "$x3" ]; then check jax_capture $py "$here/check.py" jax_capture "$x3"
    else row jax_capture FAIL "no xplane.pb (tbprof trigger exited $trc: $(tail -2 "$work/jax_trigger.out" | tr '\n' ' '))"; fi
  fi
fi

# 3d. JAX steps with no code change: `tbprof run --steps 20,29` on a loop
#     whose steps are jax.profiler.StepTraceAnnotations (a sync every step)
if in_budget jax_steps; then
  job "$tbprof" run --steps 20,29 --logdir "$work/jax_steps" -- env TBPROF_CPU=off $py "$here/jax_loop.py" \
    --annotate --steps 40 --sync-every 1 >"$work/jax_steps.out" 2>"$work/jax_steps.err"; rc=$?
  x3d=$(find "$work/jax_steps" -name '*.xplane.pb' 2>/dev/null | head -1)
  if ((rc)) || ! grep -q '^done ' "$work/jax_steps.out"; then
    row jax_steps FAIL "the JAX job exited $rc before its end: $(tail -2 "$work/jax_steps.err" | tr '\n' ' ')"
  elif [ -n "$x3d" ]; then check jax_steps $py "$here/check.py" jax_steps "$x3d" 20,29
  else row jax_steps FAIL "no xplane.pb: $(tail -2 "$work/jax_steps.err" | tr '\n' ' ')"; fi
fi

# 5. tbprof and torch.profiler in one job (CUPTI takes one subscriber):
#    name, what must hold (check.py coexist), our steps, torch.profiler's
#    steps (20 in all), then environment settings for the job
coexist() {
  local name=$1 want=$2 d=$work/co_$1 x rc
  in_budget "coexist_$name" || return 0
  mkdir -p "$d"
  job "$tbprof" run --steps "$3" --logdir "$d" -- env TBPROF_CPU=off "${@:5}" $py "$here/torch_loop.py" --steps 20 \
    --torch-profile "$4" --out "$d" >"$d.out" 2>"$d.err"; rc=$?
  x=$(find "$d" -name '*.xplane.pb' 2>/dev/null | head -1)
  if [ -n "$x" ]; then check "coexist_$name" $py "$here/check.py" coexist "$name" "$want" "$x" "$d/torch_trace.json" $rc
  else row "coexist_$name" FAIL "rc=$rc, no xplane.pb: $(tail -2 "$d.err" | tr '\n' ' ')"; fi
}
coexist torch_first either 10,14 5,19   # 5a. torch.profiler holds CUPTI when our window opens
coexist tbprof_first ours 3,14 8,12     # 5b. torch.profiler starts inside our window
coexist torch_before either 10,14 2,6   # 5c. torch.profiler traced earlier (Kineto keeps CUPTI)
coexist torch_before_teardown ours 10,14 2,6 TEARDOWN_CUPTI=1  # 5d. ... unless told to let go

# 1d. a capture from start-up, before the job loads CUDA, that the job's
#     exit ends: GPU tracing starts when libcuda loads (tbprof_gpu_start_delay_ns)
if in_budget gpu_from_start; then
  job "$tbprof" run --delay 0 --duration 300 --logdir "$work/from_start" -- env TBPROF_CPU=off \
    $py "$here/torch_loop.py" --steps 15 >"$work/from_start.out" 2>"$work/from_start.err"; rc=$?
  x=$(find "$work/from_start" -name '*.xplane.pb' 2>/dev/null | head -1)
  if ((rc)) || ! grep -q '^done ' "$work/from_start.out"; then
    row gpu_from_start FAIL "the job exited $rc before its end: $(tail -2 "$work/from_start.err" | tr '\n' ' ')"
  elif [ -n "$x" ]; then check gpu_from_start $py "$here/check.py" from_start "$x" 15
  else row gpu_from_start FAIL "no xplane.pb: $(tail -2 "$work/from_start.err" | tr '\n' ' ')"; fi
fi

# 3e. (run last: rows 1-5 are the issue's own) two ranks of one job: two
#     PyTorch processes sharing the GPU under a shell started by `tbprof
#     run`; `tbprof trigger LAUNCHER --tree --steps 5` captures the same
#     five steps in both, into one run folder
if in_budget ranks_trigger; then
  rstop=$work/ranks.stop
  rank_cmd="TBPROF_CPU=off $py '$here/torch_loop.py' --steps 20000 --ready --stop-file '$rstop'"
  timeout -k 5 "$(left)" "$tbprof" run --logdir "$work/ranks" -- sh -c \
    "$rank_cmd >'$work/rank0.out' 2>'$work/rank0.err' & $rank_cmd >'$work/rank1.out' 2>'$work/rank1.err' & wait" &
  rbg=$!
  for _ in $(seq 180); do
    [ "$(cat "$work"/rank[01].out 2>/dev/null | grep -c '^ready ')" = 2 ] && break
    kill -0 "$rbg" 2>/dev/null || break
    sleep 0.5
  done
  job "$tbprof" trigger "$rbg" --tree --steps 5 --timeout 60 >"$work/ranks_trigger.out" 2>&1; trc=$?
  touch "$rstop"; wait "$rbg"; rrc=$?
  mapfile -t xk < <(find "$work/ranks" -name '*.xplane.pb' 2>/dev/null | sort)
  if ((rrc)) || [ "$(cat "$work"/rank[01].out 2>/dev/null | grep -c '^done ')" != 2 ]; then
    row ranks_trigger FAIL "the ranks did not both finish (launcher rc $rrc): $(tail -n 2 "$work"/rank[01].err | tr '\n' ' ')"
  elif ((${#xk[@]})); then check ranks_trigger $py "$here/check.py" ranks 5 "${xk[@]}"
  else row ranks_trigger FAIL "no xplane.pb (tbprof trigger exited $trc: $(tail -3 "$work/ranks_trigger.out" | tr '\n' ' '))"; fi
fi

# 2i. (after the issue's rows) DataLoader workers capture with the trainer:
#     forked ones, and a forkserver's (Python 3.14's default start method)
for mp in fork forkserver; do
  in_budget "torch_workers_$mp" || continue
  job "$tbprof" run --steps 10,25 --logdir "$work/workers_$mp" -- \
    $py "$here/torch_loop.py" --steps 40 --workers 2 --mp "$mp" >"$work/workers_$mp.out" 2>"$work/workers_$mp.err"; rc=$?
  x=$(find "$work/workers_$mp" -name '*.xplane.pb' 2>/dev/null | head -1)
  if ((rc)) || ! grep -q '^done ' "$work/workers_$mp.out"; then
    row "torch_workers_$mp" FAIL "the job exited $rc before its end: $(tail -2 "$work/workers_$mp.err" | tr '\n' ' ')"
  elif [ -n "$x" ]; then check "torch_workers_$mp" $py "$here/check.py" workers "torch_workers_$mp" "$(dirname "$x")" 16 4 1 \
    SlowData.__getitem__
  else row "torch_workers_$mp" FAIL "no xplane.pb: $(tail -2 "$work/workers_$mp.err" | tr '\n' ' ')"; fi
done

# 2d. (after the issue's rows) `tbprof run --torch-ops`: torch's op ranges in
#     the captured steps (10..29 of 40, as 4's capturing run), kernels named
#     by their op, backward's too; step time against 4's capture without ops
if in_budget torch_ops; then
  job "$tbprof" run --torch-ops --steps 10,29 --logdir "$work/ops" -- $py "$here/torch_loop.py" --steps 40 \
    --times "$work/t_ops" >"$work/ops.out" 2>"$work/ops.err"; rc=$?
  xo=$(find "$work/ops" -name '*.xplane.pb' 2>/dev/null | head -1)
  if ((rc)) || ! grep -q '^done ' "$work/ops.out"; then
    row torch_ops FAIL "the job exited $rc before its end: $(tail -2 "$work/ops.err" | tr '\n' ' ')"
  elif [ -n "$xo" ]; then check torch_ops $py "$here/check.py" torch_ops "$xo" "$work/t_ops" "$work/t_cap"
  else row torch_ops FAIL "no xplane.pb: $(tail -2 "$work/ops.err" | tr '\n' ' ')"; fi
  # 2e. xprof's op pages on that profile: kernel stats name each kernel's
  #     torch op (tf_op), framework op stats list GPU time by op
  if [ -n "$xo" ] && in_budget xprof_torch_ops; then check xprof_torch_ops $py "$here/check.py" xprof_ops "$xo"; fi
fi
# 2g/3h. xprof's Overview on the torch profile (2) and the JAX one (3d): its
#     steps hold the GPU work launched from other threads (autograd's,
#     XLA's) through the producer/consumer links
if [ -n "$x2" ] && in_budget xprof_steps_torch; then check xprof_steps_torch $py "$here/check.py" xprof_steps xprof_steps_torch "$x2"; fi
if [ -n "${x3d:-}" ] && in_budget xprof_steps_jax; then check xprof_steps_jax $py "$here/check.py" xprof_steps xprof_steps_jax "$x3d"; fi
# 2f. --torch-shapes: torch's record_shapes names parse (op names kept, the
#     shapes as torch_args)
if in_budget torch_shapes; then
  job "$tbprof" run --torch-shapes --steps 5,6 --logdir "$work/shapes" -- env TBPROF_CPU=off $py \
    "$here/torch_loop.py" --steps 8 >"$work/shapes.out" 2>"$work/shapes.err"; rc=$?
  xs=$(find "$work/shapes" -name '*.xplane.pb' 2>/dev/null | head -1)
  if ((rc)) || ! grep -q '^done ' "$work/shapes.out"; then
    row torch_shapes FAIL "the job exited $rc before its end: $(tail -2 "$work/shapes.err" | tr '\n' ' ')"
  elif [ -n "$xs" ]; then check torch_shapes $py "$here/check.py" torch_shapes "$xs"
  else row torch_shapes FAIL "no xplane.pb: $(tail -2 "$work/shapes.err" | tr '\n' ' ')"; fi
fi
# 4d. a PyTorch loop captured again and again (TBPROF_STEPS=5-6/20x4):
#     four profiles, each whole (CUPTI detached and attached again each
#     time); tbprof trend lists them; step time after the last (reported)
if in_budget torch_repeating; then
  # 18 steps between windows: each profile written and CUPTI detached before the next
  job "$tbprof" run --steps 5-6/20x4 --logdir "$work/rep" -- env TBPROF_CPU=off $py "$here/torch_loop.py" \
    --steps 80 --times "$work/t_rep" >"$work/rep.out" 2>"$work/rep.err"; rc=$?
  job "$tbprof" trend --json "$work/rep" >"$work/rep_trend.json" 2>>"$work/rep.err"
  if ((rc)) || ! grep -q '^done ' "$work/rep.out"; then
    row torch_repeating FAIL "the job exited $rc before its end: $(tail -2 "$work/rep.err" | tr '\n' ' ')"
  elif [ -d "$work/rep/plugins/profile" ]; then
    check torch_repeating $py "$here/check.py" repeat 5-6/20x4 "$work/rep" "$work/rep_trend.json" "$work/t_rep" \
      "$work/t_none"
  else row torch_repeating FAIL "no profile: $(tail -2 "$work/rep.err" | tr '\n' ' ')"; fi
fi
# 4e. tbprof diff of the first and last of those captures: the same
#     kernels, each launched as often per step; the change reported
if [ -d "$work/rep/plugins/profile" ] && in_budget diff_torch; then
  runs=$(ls -1dtr "$work"/rep/plugins/profile/*/)
  job "$tbprof" diff --json "$(head -1 <<<"$runs")" "$(tail -1 <<<"$runs")" >"$work/rep_diff.json" 2>>"$work/rep.err"
  check diff_torch $py "$here/check.py" diff "$work/rep_diff.json"
fi
# 3f. XLA's NVTX domain "TSL": none of its ranges in 3d's profile (declined
#     by default, so jax.profiler keeps its op names); with
#     TBPROF_XLA_RANGES=on, what its per-op ranges give (reported)
if [ -z "${x3d:-}" ]; then row jax_xla_ranges SKIP "no profile from 3d (jax_steps) to compare with"
elif in_budget jax_xla_ranges; then
  job "$tbprof" run --steps 20,29 --logdir "$work/jax_xla" -- env TBPROF_CPU=off TBPROF_XLA_RANGES=on $py \
    "$here/jax_loop.py" --annotate --steps 40 --sync-every 1 >"$work/jax_xla.out" 2>"$work/jax_xla.err"; rc=$?
  x3f=$(find "$work/jax_xla" -name '*.xplane.pb' 2>/dev/null | head -1)
  if ((rc)) || [ -z "$x3f" ]; then
    row jax_xla_ranges FAIL "rc=$rc, profile ${x3f:-none}: $(tail -2 "$work/jax_xla.err" | tr '\n' ' ')"
  else check jax_xla_ranges $py "$here/check.py" xla_ranges "$x3f" "$x3d"; fi
fi
# 3g. jax.profiler's own trace (steps 5..7) in a job tbprof captures later:
#     its kernels keep their op annotations (tbprof declined XLA's NVTX
#     domain); the job runs on; ours has kernels or names CUPTI's holder
if in_budget coexist_jax; then
  mkdir -p "$work/jaxprof"
  job "$tbprof" run --steps 20,29 --logdir "$work/co_jax" -- env TBPROF_CPU=off $py "$here/jax_loop.py" --annotate \
    --steps 40 --sync-every 1 --jax-profile 5,7 --out "$work/jaxprof" >"$work/co_jax.out" 2>"$work/co_jax.err"; rc=$?
  xj=$(find "$work/co_jax" -name '*.xplane.pb' 2>/dev/null | head -1)
  if [ -n "$xj" ]; then check coexist_jax $py "$here/check.py" coexist_jax "$xj" "$work/jaxprof" "$rc"
  else row coexist_jax FAIL "rc=$rc, no xplane.pb: $(tail -2 "$work/co_jax.err" | tr '\n' ' ')"; fi
fi
# 5e. torch.profiler started by the script inside a --torch-ops capture:
#     tbprof lets go of torch's one profiler slot, the job runs on
coexist tbprof_first_ops ours 3,14 8,12 TBPROF_TORCH_OPS=on

echo
table
# the device tool brings back what is under $OUT: the table, and the
# profiles, logs and step times (torch.profiler's JSON traces only compressed)
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  table >"$OUT/table.txt"
  (cd "$work" && find . -type f -size -40M -print0 | tar -czf "$OUT/outputs.tar.gz" --null -T - &&
     { [ "$(stat -c %s "$OUT/outputs.tar.gz")" -lt 15000000 ] ||
       find . -type f ! -name '*.json' -size -8M -print0 | tar -czf "$OUT/outputs.tar.gz" --null -T -; }) || true
fi
exit $fails
