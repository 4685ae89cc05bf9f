#!/usr/bin/env bash
# Install what building and testing tbprof needs (Debian/Ubuntu packages).
# `setup.sh fuzz` also installs clang with its libFuzzer runtime (the
# clang-fuzz suite of tests/run.sh); `setup.sh cross` the aarch64 cross
# compiler and qemu-user (its aarch64 suite). Idempotent: does nothing when everything
# is present. Needs root or sudo.
set -euo pipefail
# (libc6-dbg: libc's detached symbols, found by build ID: its internal
# functions get names in CPU samples, and test_symbols checks that they do)
pkgs=(build-essential cmake pkg-config zlib1g-dev protobuf-c-compiler libprotobuf-c-dev
      libunwind-dev liblzma-dev protobuf-compiler python3 python3-protobuf libc6-dbg)
fuzz=0; [ "${1:-}" = fuzz ] && { fuzz=1; pkgs+=(clang); }
# `setup.sh cross`: the aarch64 cross build of tests/run.sh (Debian's cross
# compiler, the arm64 libraries it links, qemu-user to run its tests)
cross=0
if [ "${1:-}" = cross ]; then
  cross=1
  # arm64 packages come from the same archive on Debian; Ubuntu serves them
  # from ports.ubuntu.com, which needs sources of its own (exit 3: skipped)
  os=$( . /etc/os-release 2>/dev/null && echo "${ID:-}")
  if [ "$os" != debian ]; then
    echo "tbprof setup: the aarch64 cross build installs Debian's arm64 packages; this is '${os:-unknown}'" >&2
    exit 3
  fi
  # (libc6 and libstdc++6 of arm64: what qemu runs the tests with; the cross
  # packages' own copies are for linking)
  pkgs+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user libprotobuf-c-dev:arm64 zlib1g-dev:arm64
         libc6:arm64 libstdc++6:arm64)
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
updated=0
install() {
  echo "tbprof setup: installing $*" >&2
  ((updated)) || { $SUDO apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# (the arm64 package lists are then fetched by install's apt-get update)
if ((cross)) && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
fi
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
