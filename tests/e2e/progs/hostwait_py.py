"""hostwait_py.py - hostwait.c in Python: a host-bound loop with (fake) GPU
work, for what `tbprof summary` says the launching thread did while the GPU
waited for it, named by Python frames (CPython 3.12+ with its perf
trampoline on: PYTHONPERFSUPPORT=1, or activated here).

    hostwait_py.py [rounds]     (default 8)

Starts a capture through the tbprof C API (ctypes), waits until GPU tracing
is on, and has the fake libcupti stamp its script at t0 (tbfake_cupti_launch,
with TBFAKE_CUPTI_AT_LAUNCH=1). Then `rounds` rounds of 40 ms from t0, each a
step (tbprof_step at its start): Python work in prep_batch() until 20 ms into
the round, then time.sleep() in wait_batch() until the round ends. The
test's script has each round's launch call end 38 ms into it. Then
tbprof_stop(); prints "pid PID" and "done"."""

import ctypes
import os
import sys
import time

ROUND_S = 0.040
BUSY_S = 0.020


def prep_batch(until):
    x = 0.0
    while time.time() < until:
        for _ in range(200):
            x = x * 1.0000001 + 1.0
    return x


def wait_batch(until):
    while True:
        left = until - time.time()
        if left <= 0:
            return
        time.sleep(left)


def wait_until(cond, what):
    end = time.monotonic() + 30
    while not cond():
        if time.monotonic() > end:
            print("gave up waiting for " + what, file=sys.stderr)
            return
        time.sleep(0.001)


def fake_launch():
    """The fake libcupti's launch hook, where the agent has loaded it: 1
    stamped now, 2 already, 0 GPU tracing not on yet."""
    try:
        lib = ctypes.CDLL("libcupti.so", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return 0
    f = getattr(lib, "tbfake_cupti_launch", None)
    return f() if f else 0


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    if hasattr(sys, "activate_stack_trampoline") and not sys.is_stack_trampoline_active():
        sys.activate_stack_trampoline("perf")
    lib = ctypes.CDLL(None)
    start, stop, step = (getattr(lib, n, None) for n in ("tbprof_start", "tbprof_stop", "tbprof_step"))
    capturing = getattr(lib, "tbprof_capturing", None)
    prep_batch(time.time() + 0.01)  # warm up: the functions' trampolines exist before the capture
    wait_batch(time.time() + 0.001)
    if start:
        start.argtypes = [ctypes.c_int64]
        if start(0) == 0 and capturing:
            wait_until(capturing, "tbprof_capturing()")
    wait_until(fake_launch, "GPU tracing (tbfake_cupti_launch)")
    t0 = time.time()
    for k in range(rounds):
        if step:
            step()
        prep_batch(t0 + k * ROUND_S + BUSY_S)
        wait_batch(t0 + (k + 1) * ROUND_S)
    if stop:
        stop()
    print("pid %d" % os.getpid())
    print("done")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
