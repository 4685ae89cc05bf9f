"""tramp_py.py SECONDS - a Python loop whose perf trampoline tbprof turns on
for a capture only (run with libtbprof.so preloaded, a time window set, and
no PYTHONPERFSUPPORT). Each iteration calls step() -> burn() for ~5 ms of
CPU and records whether a capture is on (tbprof_capturing()) and whether
the trampoline is (sys.is_stack_trampoline_active()). Halfway into the
capture it forks a child that reports its own trampoline state. With
TRAMP_STALE_MAP set, it first leaves /tmp/perf-<pid>.map as an earlier
process with its pid would have (one line naming py::stale_leftover, an
hour old).
Prints: "pid P", "iter CAPTURING ACTIVE" per iteration, "child ACTIVE PID".
"""

import ctypes
import os
import sys
import time


def burn(n):
    x = 0
    for i in range(n):
        x += i * i
    return x


def step():
    t = time.thread_time()
    while time.thread_time() - t < 0.005:
        burn(2000)


def main():
    seconds = float(sys.argv[1])
    capturing = ctypes.CDLL(None).tbprof_capturing
    print("pid %d" % os.getpid(), flush=True)
    if os.environ.get("TRAMP_STALE_MAP"):
        m = "/tmp/perf-%d.map" % os.getpid()
        with open(m, "w") as f:
            f.write("7f0000001000 100000 py::stale_leftover:/old/job.py\n")
        old = time.time() - 3600
        os.utime(m, (old, old))
    end = time.time() + seconds
    forked = False
    first_on = None
    out = []
    while time.time() < end:
        step()
        c = capturing()
        out.append("iter %d %d" % (c, sys.is_stack_trampoline_active()))
        if c and first_on is None:
            first_on = time.time()
        if c and not forked and time.time() - first_on > 0.3:
            forked = True
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(w, b"%d" % sys.is_stack_trampoline_active())
                os._exit(0)
            os.close(w)
            state = os.read(r, 8).decode()
            os.close(r)
            os.waitpid(pid, 0)
            out.append("child %s %d" % (state, pid))
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    main()
