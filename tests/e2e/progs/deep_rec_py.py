"""deep_rec_py.py - a Python job that recurses DEPTH calls deep while a
capture runs (started and stopped through the tbprof C API, with ctypes;
no-op without the preload), with sys.setrecursionlimit raised for it, as
a parser or a tree walk may. CPython 3.11 runs such a recursion without
the C stack; with a frame evaluator set (tbprof's trampoline on 3.10 and
3.11), each call nests in C. Prints "pid PID" and "depth DEPTH" once the
recursion returned."""
import ctypes
import os
import sys
import time


def rec(n):
    return 0 if n == 0 else 1 + rec(n - 1)


def main():
    depth = int(sys.argv[1])
    sys.setrecursionlimit(depth + 1000)
    print("pid %d" % os.getpid(), flush=True)
    lib = ctypes.CDLL(None)
    start = getattr(lib, "tbprof_start", None)
    stop = getattr(lib, "tbprof_stop", None)
    if start:
        start.argtypes = [ctypes.c_int64]
        start(0)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # the trampoline comes on between bytecodes
        rec(10)
    print("depth %d" % rec(depth), flush=True)
    if stop:
        stop()


if __name__ == "__main__":
    main()
