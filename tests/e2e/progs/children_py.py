"""children_py.py - a Python parent with fork()ed workers, as a PyTorch data
loader has them, for the test that the workers capture with their parent.

The parent forks `early` workers before any capture and marks steps with
the tbprof API (tbprof_step through ctypes; no-op without the preload).
Each step it sends every worker one job (a pipe) and waits for the answers;
a worker spends each job in worker_burn(), the parent its own share in
parent_burn(). At step `late_at` it forks one more worker (joining a
capture under way when the window holds that step). After `steps` steps
the workers are told to end and are waited for.

Prints "worker N PID" per worker (in fork order), "jobs PID COUNT" as each
worker ends, and "pid PID" for the parent.
argv: steps early late_at [unit]"""

import ctypes
import os
import sys
import time


def burn(n):
    x = 0.0
    for _ in range(n):
        x = x * 1.0000001 + 1.0
    return x


def worker_burn(n):
    return burn(n)


def parent_burn(n):
    return burn(n)


def say(line):
    """One write per line: the workers share the parent's stdout."""
    os.write(1, (line + "\n").encode())


def worker(rfd, wfd):
    jobs = 0
    with os.fdopen(rfd, "rb", buffering=0) as r, os.fdopen(wfd, "wb", buffering=0) as w:
        while True:
            b = r.read(8)
            if len(b) < 8:
                break
            n = int.from_bytes(b, "little")
            if n == 0:
                break
            worker_burn(n)
            jobs += 1
            w.write(b"k")
    say("jobs %d %d" % (os.getpid(), jobs))
    os._exit(0)


def fork_worker(workers):
    to_r, to_w = os.pipe()
    back_r, back_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_w)
        os.close(back_r)
        for _pid, a, b in workers:  # the other workers' ends
            os.close(a)
            os.close(b)
        worker(to_r, back_w)
    os.close(to_r)
    os.close(back_w)
    workers.append((pid, to_w, back_r))
    say("worker %d %d" % (len(workers), pid))


def main():
    steps, early, late_at = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    unit = int(sys.argv[4]) if len(sys.argv) > 4 else 200000
    lib = ctypes.CDLL(None)
    step = getattr(lib, "tbprof_step", None)
    workers = []
    for _ in range(early):
        fork_worker(workers)
    for s in range(steps):
        if step:
            step()
        if s == late_at:
            fork_worker(workers)
        for _pid, w, _r in workers:
            os.write(w, unit.to_bytes(8, "little"))
        parent_burn(unit // 2)
        for _pid, _w, r in workers:
            os.read(r, 1)
    for pid, w, r in workers:
        os.write(w, (0).to_bytes(8, "little"))
        os.close(w)
    for pid, w, r in workers:
        os.waitpid(pid, 0)
        os.close(r)
    say("pid %d" % os.getpid())
    time.sleep(0.05)


if __name__ == "__main__":
    main()
