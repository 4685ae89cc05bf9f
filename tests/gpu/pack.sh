#!/usr/bin/env bash
# tests/gpu/pack.sh [build-dir]: gather what the GPU machine needs into ./.gpu/
# (git-ignored): the preload library and CLI with the shared libraries they
# need beyond glibc, the protoc-generated Python decoders, the Python
# helper, the CUDA test program (built here with nvcc) and the scripts.
# Then on the GPU machine: bash .gpu/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
out=${TBGPU_PACK_OUT:-$root/.gpu}  # elsewhere for the dry-run tests (tests/e2e/test_gpu_checker.py)
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
for f in "$build/lib/libtbprof.so" "$build/bin/tbprof" "$build/python/xplane_pb2.py"; do
  [ -e "$f" ] || { echo "pack.sh: $f missing: build first (tools/build.sh $build)" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out/lib" "$out/bin" "$out/deps/dl" "$out/python" "$out/share/tbprof"
cp "$build/lib/libtbprof.so" "$out/lib/"
cp "$build/bin/tbprof" "$out/bin/"
cp "$build"/python/*_pb2.py "$out/python/"
cp -r "$root/tools/python" "$out/share/tbprof/python"
cp "$root"/tests/gpu/{run.sh,check.py,torch_loop.py,jax_loop.py} "$out/"
# H100/H200 are sm_90; compute_90 PTX lets a newer GPU JIT it. The shared
# cudart (not nvcc's static default), so cudaProfilerStart/Stop go through
# the dynamic linker to tbprof's wrappers; this toolkit's libcudart travels
# in cudart/ (found through the RUNPATH), and its libcupti in cupti/ for a
# machine whose Python has none
cuda_home=$(cd "$(dirname "$nvcc")/.." && pwd)
mkdir -p "$out/cudart" "$out/cupti"
"$nvcc" -O2 -cudart shared -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90 -Xlinker -rpath -Xlinker '$ORIGIN/../cudart' \
  -o "$out/bin/cuda_steps" "$root/tests/gpu/cuda_steps.cu" -ldl
cp -P "$cuda_home"/lib64/libcudart.so.* "$out/cudart/"
for d in "$cuda_home/extras/CUPTI/lib64" "$cuda_home/lib64"; do
  if ls "$d"/libcupti.so.* >/dev/null 2>&1; then cp -P "$d"/libcupti.so.* "$out/cupti/"; break; fi
done
# libraries beyond glibc (protobuf-c for the CLI, zlib, lzma, ...): the GPU
# machine has no Debian packages; run.sh puts deps/ on LD_LIBRARY_PATH only
# where something is missing there
for f in "$out/lib/libtbprof.so" "$out/bin/tbprof"; do
  { ldd "$f" | awk '/=> \// {print $3}' |
      grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' || true; } |
    while read -r so; do cp -Lf "$so" "$out/deps/"; done
done
# dlopen()ed, so ldd does not list them: libz (trace.json.gz) and liblzma
# (libunwind needs it) in deps/dl/ (run.sh uses them only where the machine
# has none), libunwind (DWARF unwinding) next to libtbprof.so, where the
# agent looks after the machine's own (run.sh puts lib/ on the loader's
# path where there is none: the copy needs libunwind.so.8 beside it)
for so in libz.so.1 liblzma.so.5 libunwind-x86_64.so.8 libunwind.so.8; do
  # awk reads to the end: an early exit would SIGPIPE ldconfig, and with
  # pipefail that stopped this script now and then (exit 141)
  p=$(/sbin/ldconfig -p 2>/dev/null | awk -v n="$so" '$1 == n && /x86-64/ && !f {print $NF; f = 1}')
  [ -n "$p" ] || continue
  case $so in libunwind*) cp -Lf "$p" "$out/lib/" ;; *) cp -Lf "$p" "$out/deps/dl/" ;; esac
done
# libtbprof.so must not need libcupti (it is dlopen()ed at the first capture)
if readelf -d "$out/lib/libtbprof.so" | grep -q 'NEEDED.*cupti'; then
  echo "pack.sh: libtbprof.so NEEDS libcupti: refusing" >&2; exit 1
fi
echo "packed into $out:"; (cd "$out" && find . -type f | sort | sed 's/^/  /')
