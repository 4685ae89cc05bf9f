#!/usr/bin/env bash
# Install what building and testing tbprof needs (Debian/Ubuntu packages).
# `setup.sh fuzz` also installs clang with its libFuzzer runtime (the
# clang-fuzz suite of tests/run.sh). Idempotent: does nothing when everything
# is present. Needs root or sudo.
set -euo pipefail
# (libc6-dbg: libc's detached symbols, found by build ID: its internal
# functions get names in CPU samples, and test_symbols checks that they do)
pkgs=(build-essential cmake pkg-config zlib1g-dev protobuf-c-compiler libprotobuf-c-dev
      libunwind-dev liblzma-dev protobuf-compiler python3 python3-protobuf libc6-dbg)
fuzz=0; [ "${1:-}" = fuzz ] && { fuzz=1; pkgs+=(clang); }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
updated=0
install() {
  echo "tbprof setup: installing $*" >&2
  ((updated)) || { $SUDO apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  install "${missing[@]}"
fi
# libFuzzer: in clang's own package on some releases, libclang-rt-N-dev on
# others (Debian 12)
fuzzer_links() {
  echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; return (int)(n & 0); }' |
    clang -fsanitize=fuzzer -x c - -o /dev/null 2>/dev/null
}
if ((fuzz)) && ! fuzzer_links; then
  install "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev"
  fuzzer_links || { echo "tbprof setup: clang cannot link a libFuzzer target" >&2; exit 1; }
fi
