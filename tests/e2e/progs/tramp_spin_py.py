"""tramp_spin_py.py SECONDS - a single-threaded pure-Python loop that never
gives up the interpreter's lock (no sleep, no I/O, no C call that releases
it) for SECONDS of wall time, recording every ~20 ms whether CPython's perf
trampoline is on. CPython 3.12 runs a pending call added from another
thread only when its main thread switches the lock: tbprof's request to
turn the trampoline on (a capture's start) and off (its end) must still get
through. Prints "pid P" and, at the end, "t ACTIVE" per record (t: seconds
since start)."""

import os
import sys
import time

from tramp_py import burn  # (this folder is sys.path[0]; its main() runs only as a script)


def main():
    print("pid", os.getpid(), flush=True)
    t0 = time.monotonic()
    end = t0 + float(sys.argv[1])
    rec, nxt = [], t0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= nxt:
            rec.append((now - t0, sys.is_stack_trampoline_active()))
            nxt = now + 0.02
        burn(200)
    for t, a in rec:
        print("%.3f %d" % (t, a))


main()
