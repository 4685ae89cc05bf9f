#!/usr/bin/env bash
# tests/run.sh: set up, build and run every test CI runs:
#   1. the default build (GPU tracing built when cupti.h is found), all tests;
#   2. ASan+UBSan build: unit tests, CPU end-to-end tests and the fake-CUPTI
#      GPU tests (the agent's CUPTI path under the sanitizer);
#   3. TSan build: the same;
#   4. clang build with ASan+UBSan (which checks more than gcc's) and
#      libFuzzer: the unit tests, and a fixed-seed pass of each
#      coverage-guided target over its seeds (tests/fuzz/lf_*.c);
#   5. aarch64 cross build (Grace Hopper hosts), warnings as errors, and its
#      portable unit tests under qemu-user.
# TBPROF_QUICK=1 runs only (1). Prints "N passed, N failed, N flaky" at
# the end: a failed test is run once more, alone, and counts as flaky (not
# failed) when it passes then; see run_suite for when it is not.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/tools/setup.sh" || { echo "setup failed"; exit 1; }
jobs=$(nproc)
pass=0; fail=0; failed=(); flaky=()
suites=0 skipped=0
run_suite() { # name build-dir ctest-args...
  local name=$1 dir=$2; shift 2
  suites=$((suites+1))
  echo "=== $name: build ($dir)"
  if ! bash "$root/tools/build.sh" "$dir" "${SUITE_CMAKE[@]}"; then
    echo "=== $name: BUILD FAILED"; fail=$((fail+1)); failed+=("$name:build"); return
  fi
  echo "=== $name: ctest $*"
  local log=$dir.ctest.log
  (cd "$dir" && ctest --output-on-failure -j"$jobs" "$@") 2>&1 | tee "$log" | grep -vE '^\s*$' | grep -E 'Test +#|tests passed|FAIL|Failed|Error' || true
  local p f
  p=$(grep -cE 'Test +#.* Passed' "$log"); f=$(grep -cE 'Test +#.*(\*\*\*|Failed|Not Run|Timeout)' "$log")
  pass=$((pass+p)); fail=$((fail+f))
  # a suite that ran no test (a label filter matching nothing, a CMake
  # change that registered none) must not read as a clean one
  if ((p + f == 0)); then
    echo "=== $name: ran no test"; fail=$((fail+1)); failed+=("$name:no tests")
  fi
  local bad=() t
  while read -r t; do bad+=("$t"); done < <(grep -E 'Test +#.*(\*\*\*|Failed|Not Run|Timeout)' "$log" | awk '{print $4}')
  # Timing tests (sample shares, windows) can miss on a loaded 2-core
  # machine: each failed test runs once more, alone, and one that passes
  # then is counted as flaky, printed, and not as failed. Never for more
  # than two failures in a suite (that is breakage, not load), nor where a
  # sanitizer reported (the log holds only failed tests' output).
  if ((${#bad[@]} > 0 && ${#bad[@]} <= 2)) &&
     ! grep -qE 'ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|runtime error:' "$log"; then
    for t in "${bad[@]}"; do
      echo "=== $name: $t failed; running it again alone"
      if (cd "$dir" && ctest --output-on-failure -R "^${t//./\\.}\$") > "$dir.rerun.log" 2>&1; then
        echo "=== $name: FLAKY: $t passed when run again (its first failure is above)"
        fail=$((fail-1)); pass=$((pass+1)); flaky+=("$name:$t")
      else
        grep -E 'Test +#|FAIL|Error' "$dir.rerun.log"
        failed+=("$name:$t")
      fi
    done
  else
    for t in "${bad[@]}"; do failed+=("$name:$t"); done
  fi
}
SUITE_CMAKE=(); run_suite default "$root/build"
if [ "${TBPROF_QUICK:-0}" != 1 ]; then
  SUITE_CMAKE=(-DTBPROF_SANITIZE=address); run_suite asan "$root/build-asan" -L 'unit|cpu|gpu'
  SUITE_CMAKE=(-DTBPROF_SANITIZE=thread);  run_suite tsan "$root/build-tsan" -L 'unit|cpu|gpu'
  if bash "$root/tools/setup.sh" fuzz; then
    SUITE_CMAKE=(-DCMAKE_C_COMPILER=clang -DTBPROF_SANITIZE=fuzzer); run_suite clang-fuzz "$root/build-fuzz" -L 'unit|libfuzzer'
  else
    echo "=== clang-fuzz: SETUP FAILED"; fail=$((fail+1)); failed+=("clang-fuzz:setup")
  fi
  bash "$root/tools/setup.sh" cross; rc=$?
  if ((rc == 0)); then
    # a folder configured without the toolchain keeps its compiler (CMake
    # ignores a toolchain file given later): it would build for this machine
    grep -q '^CMAKE_TOOLCHAIN_FILE:.*aarch64-linux-gnu.cmake' "$root/build-aarch64/CMakeCache.txt" 2>/dev/null ||
      rm -rf "$root/build-aarch64"
    SUITE_CMAKE=(-DCMAKE_TOOLCHAIN_FILE="$root/tools/aarch64-linux-gnu.cmake" -DTBPROF_WERROR=ON)
    run_suite aarch64 "$root/build-aarch64" -L portable
  elif ((rc == 3)); then
    echo "=== aarch64: SKIPPED (setup.sh cross: Debian's arm64 archive only)"; skipped=$((skipped+1))
  else
    echo "=== aarch64: SETUP FAILED"; fail=$((fail+1)); failed+=("aarch64:setup")
  fi
fi
want=$((5 - skipped)); [ "${TBPROF_QUICK:-0}" = 1 ] && want=1
if ((suites != want)); then echo "ran $suites of $want suites"; fail=$((fail+1)); failed+=("suites"); fi
((fail)) && printf 'failed: %s\n' "${failed[@]}"
((${#flaky[@]})) && printf 'flaky (failed once, then passed alone): %s\n' "${flaky[@]}"
echo "$pass passed, $fail failed, ${#flaky[@]} flaky"
((fail == 0))
