"""fork_cost.py N MODE - N times: os.fork(), the child os._exit(0)s at
once, the parent waits for it. MODE capture: inside a tbprof capture
(tbprof_start through ctypes), else idle. Prints the mean wall time per
fork+exit+wait in microseconds (bench_children.sh)."""

import ctypes
import os
import sys
import time


def main():
    n, mode = int(sys.argv[1]), sys.argv[2]
    lib = ctypes.CDLL(None)
    start = getattr(lib, "tbprof_start", None)
    if mode == "capture" and start:
        start(0)
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    dt = time.perf_counter() - t0
    if mode == "capture" and start:
        lib.tbprof_stop()
    print("us_per_fork %.1f" % (dt / n * 1e6))


if __name__ == "__main__":
    main()
