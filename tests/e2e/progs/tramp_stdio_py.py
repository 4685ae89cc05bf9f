"""tramp_stdio_py.py - a Python job that has its stdout closed when tbprof
turns the perf trampoline on for a capture (run with libtbprof.so
preloaded, a time window set, no PYTHONPERFSUPPORT), as a job does while it
redirects its output: it closes fd 1, waits for the trampoline, runs new
functions (CPython writes their perf map lines), puts its stdout back with
dup2 and runs more new functions. CPython opens its perf map when the
trampoline comes on; opened while fd 1 was free, the map took fd 1, the
dup2 put stdout under CPython's map writer, and map lines landed in the
job's output. Prints "pid P", then "active A" (the trampoline came on while
stdout was closed) and "done"; nothing else.
"""

import os
import sys
import time


def new_functions(first, n):
    for i in range(first, first + n):
        ns = {}
        exec("def f%d(x):\n    return x + %d\n" % (i, i), ns)
        ns["f%d" % i](i)


def main():
    print("pid %d" % os.getpid(), flush=True)
    saved = os.dup(1)
    os.close(1)
    end = time.time() + 20
    while not sys.is_stack_trampoline_active() and time.time() < end:
        new_functions(0, 10)  # the capture's pending call runs between bytecodes
    active = sys.is_stack_trampoline_active()
    new_functions(100, 200)
    os.dup2(saved, 1)
    os.close(saved)
    new_functions(1000, 200)
    print("active %d" % active, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
