# CMake toolchain: cross-build tbprof for 64-bit Arm Linux (Grace Hopper and
# other aarch64 GPU hosts) with Debian's cross compiler, the arm64 -dev
# packages (`tools/setup.sh cross` installs both) and, for tests, qemu-user:
#   tools/build.sh build-aarch64 -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-linux-gnu.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
# headers: the arm64 packages' and the host's arch-independent ones (CUDA's)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
# ctest runs the test programs under qemu-user, with the arm64 C library of
# Debian's multiarch libc6:arm64 (the cross package's own ld.so, mixed with
# it, hangs at the first pthread_create)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
