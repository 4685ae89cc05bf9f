#!/usr/bin/env bash
# tools/build.sh [BUILD_DIR] [extra cmake args...]: configure + build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/build}; shift || true
cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$dir.cmake.log" 2>&1 || {
  cat "$dir.cmake.log" >&2; exit 1; }
cmake --build "$dir" -j"$(nproc)" 2>&1 | grep -E 'warning|error|Error' >&2 || true
cmake --build "$dir" -j"$(nproc)" >/dev/null
