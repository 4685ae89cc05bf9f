"""deep_py.py DEPTH SECONDS - a Python stack DEPTH calls deep (rec() calling
itself), burning CPU at its leaf (leaf()) for SECONDS of the thread's CPU
time, for the CPU sampler's deep-stack test: under CPython's perf
trampoline each Python call costs ~600 bytes of C stack and ~4 native
frames, so 60 calls outgrow a 16 KiB stack copy and 128 frames. Prints
"pid PID". The capture is the caller's (TBPROF_DURATION)."""

import os
import sys
import time


def leaf(seconds):
    x = 0.0
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        for _ in range(1000):
            x = x * 1.0000001 + 1.0
    return x


def rec(depth, seconds):
    if depth == 0:
        return leaf(seconds)
    return rec(depth - 1, seconds)


def main():
    print("pid", os.getpid(), flush=True)
    rec(int(sys.argv[1]), float(sys.argv[2]))


main()
