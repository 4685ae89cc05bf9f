"""mp_cost.py N METHOD - N times: a multiprocessing Process with the start
method METHOD (spawn, forkserver) that does nothing, started and joined.
Prints the mean wall time per start+join in microseconds
(bench_children.sh). The forkserver is started before the clock."""

import multiprocessing
import sys
import time


def noop():
    pass


def main():
    n, method = int(sys.argv[1]), sys.argv[2]
    ctx = multiprocessing.get_context(method)
    p = ctx.Process(target=noop)  # (the forkserver, once)
    p.start()
    p.join()
    t0 = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    dt = time.perf_counter() - t0
    print("us_per_process %.1f" % (dt / n * 1e6))


if __name__ == "__main__":
    main()
