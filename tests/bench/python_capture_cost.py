"""python_capture_cost.py - what a capture's Python trampoline costs a
call-bound loop (bench_python_capture.sh): ns per small Python call while
tbprof is idle, while a capture runs (the trampoline on: CPython's on 3.12+,
tbprof's own on 3.10 and 3.11; CPU sampling at 499 Hz too), and after it,
in one process; min of 5 runs each. Prints one line:
"VERSION IDLE_NS CAPTURING_NS AFTER_NS". Needs libtbprof.so preloaded."""
import ctypes
import sys
import time


def f(x):
    return x + 1


def loop(n):
    t = time.perf_counter()
    for i in range(n):
        f(i)
    return (time.perf_counter() - t) / n * 1e9


def main():
    lib = ctypes.CDLL(None)
    lib.tbprof_start.argtypes = [ctypes.c_int64]
    n = 1_000_000
    loop(n)
    idle = min(loop(n) for _ in range(5))
    lib.tbprof_start(0)
    time.sleep(0.3)  # the trampoline comes on at the main thread's next bytecodes
    on = min(loop(n) for _ in range(5))
    lib.tbprof_stop()
    time.sleep(0.5)
    after = min(loop(n) for _ in range(5))
    print("%d.%d %.1f %.1f %.1f" % (sys.version_info[0], sys.version_info[1], idle, on, after))


main()
