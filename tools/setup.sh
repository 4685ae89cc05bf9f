#!/usr/bin/env bash
# Install what building and testing tbprof needs (Debian/Ubuntu packages).
# Idempotent: does nothing when everything is present. Needs root or sudo.
set -euo pipefail
pkgs=(build-essential cmake pkg-config zlib1g-dev protobuf-c-compiler libprotobuf-c-dev
      libunwind-dev liblzma-dev protobuf-compiler python3 python3-protobuf)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tbprof setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
