"""cpu_split_py.py - a Python program with a known split of CPU time between
two Python functions, for the CPU sampler's accuracy test (CPython 3.12+ with
its perf trampoline on: PYTHONPERFSUPPORT=1, or activated here unless the
second argument is "agent").

burn_a and burn_b run the same loop body; the main loop calls burn_a for 6
units and burn_b for 4, so about 60% of the time is in burn_a. What it was
is measured too: the thread's CPU time around each call (a machine busy
with other work can slow one more than the other). The capture runs
through the tbprof C API (ctypes; no-op without the preload).
Prints "capture BEGIN_NS END_NS", "rounds N", "spent NS_A NS_B" (CPU time
in burn_a and burn_b while capturing) and "pid PID"."""

import ctypes
import sys
import time

UNIT = 20000  # a round (10 units) lasts ~10 ms: far from the sampling period, no aliasing


def burn_a(n):
    x = 0.0
    for _ in range(n):
        x = x * 1.0000001 + 1.0
    return x


def burn_b(n):
    x = 0.0
    for _ in range(n):
        x = x * 1.0000001 + 2.0
    return x


def work(seconds, spent=None):
    """Rounds of burn_a then burn_b for `seconds` of this thread's CPU time
    (as many samples on a loaded machine as on an idle one; at most 20x that
    of wall time); spent: [ns in burn_a, ns in burn_b] of this thread's CPU
    time, added to."""
    end = time.monotonic() + 20 * seconds
    rounds = 0
    cpu = time.thread_time_ns
    cpu_end = cpu() + int(seconds * 1e9)
    while cpu() < cpu_end and time.monotonic() < end:
        t0 = cpu()
        burn_a(6 * UNIT)
        t1 = cpu()
        burn_b(4 * UNIT)
        t2 = cpu()
        if spent is not None:
            spent[0] += t1 - t0
            spent[1] += t2 - t1
        rounds += 1
    return rounds


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.5
    # "agent": the trampoline left to the agent (on for its capture, or not)
    agent = len(sys.argv) > 2 and sys.argv[2] == "agent"
    if not agent and hasattr(sys, "activate_stack_trampoline") and not sys.is_stack_trampoline_active():
        sys.activate_stack_trampoline("perf")
    lib = ctypes.CDLL(None)
    start = getattr(lib, "tbprof_start", None)
    stop = getattr(lib, "tbprof_stop", None)
    if start:
        start.argtypes = [ctypes.c_int64]
    work(0.05)  # warm up: the trampolines of these functions exist before the capture
    begin = time.time_ns()
    if start:
        start(0)
    spent = [0, 0]
    rounds = work(seconds, spent)
    end = time.time_ns()
    if stop:
        stop()
    print("capture %d %d" % (begin, end))
    print("rounds %d" % rounds)
    print("spent %d %d" % tuple(spent))
    print("pid %d" % __import__("os").getpid())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
