"""children_py.py - a Python parent with fork()ed workers, as a PyTorch data
loader has them, for the test that the workers capture with their parent.

The parent forks `early` workers before any capture and marks steps with
the tbprof API (tbprof_step through ctypes; no-op without the preload).
Each step it sends every worker one job (a pipe) and waits for the answers;
a worker spends each job in worker_burn(), the parent its own share in
parent_burn(). At step `late_at` it forks one more worker (joining a
capture under way when the window holds that step). After `steps` steps
the workers are told to end and are waited for.

With a multiprocessing start method ("spawn", "forkserver") the workers
are that method's Processes, each with a Pipe, instead of os.fork()s: the
workers a DataLoader starts under Python 3.14's default (forkserver), or
with multiprocessing_context="spawn".

Prints "worker N PID" per worker (in start order), "jobs PID COUNT" as each
worker ends, and "pid PID" for the parent.
argv: steps early late_at [unit [method]]"""

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


def serve(next_job, done):
    """A worker's loop: each job (a size; 0 or None: the end) burnt, then
    answered."""
    jobs = 0
    while True:
        n = next_job()
        if not n:
            break
        worker_burn(n)
        jobs += 1
        done()
    say("jobs %d %d" % (os.getpid(), jobs))


def worker(rfd, wfd):
    """A fork()ed worker's body: the jobs down a pipe, then os._exit."""
    with os.fdopen(rfd, "rb", buffering=0) as r, os.fdopen(wfd, "wb", buffering=0) as w:
        def next_job():
            b = r.read(8)
            return int.from_bytes(b, "little") if len(b) == 8 else None
        serve(next_job, lambda: w.write(b"k"))
    os._exit(0)


def mp_worker(conn):
    """A multiprocessing Process's body: the jobs down its Pipe."""
    def next_job():
        try:
            return int.from_bytes(conn.recv_bytes(), "little")
        except EOFError:
            return None
    serve(next_job, lambda: conn.send_bytes(b"k"))


class MpWorker:
    def __init__(self, ctx):
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=mp_worker, args=(theirs,))
        self.proc.start()
        theirs.close()
        self.pid = self.proc.pid

    def send(self, n):
        self.conn.send_bytes(n.to_bytes(8, "little"))

    def wait(self):
        self.conn.recv_bytes()

    def end(self):
        self.send(0)

    def join(self):
        self.proc.join()
        self.conn.close()


class ForkWorker:
    def __init__(self, workers):
        to_r, to_w = os.pipe()
        back_r, back_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(to_w)
            os.close(back_r)
            for o in workers:  # the other workers' ends
                os.close(o.w)
                os.close(o.r)
            worker(to_r, back_w)
        os.close(to_r)
        os.close(back_w)
        self.pid, self.w, self.r = pid, to_w, back_r

    def send(self, n):
        os.write(self.w, n.to_bytes(8, "little"))

    def wait(self):
        os.read(self.r, 1)

    def end(self):
        self.send(0)
        os.close(self.w)

    def join(self):
        os.waitpid(self.pid, 0)
        os.close(self.r)


def start_worker(workers, ctx):
    w = MpWorker(ctx) if ctx else ForkWorker(workers)
    workers.append(w)
    say("worker %d %d" % (len(workers), w.pid))


def main():
    steps, early, late_at = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    unit = int(sys.argv[4]) if len(sys.argv) > 4 else 200000
    method = sys.argv[5] if len(sys.argv) > 5 else "fork"
    ctx = None
    if method != "fork":
        import multiprocessing
        ctx = multiprocessing.get_context(method)
    lib = ctypes.CDLL(None)
    step = getattr(lib, "tbprof_step", None)
    workers = []
    for _ in range(early):
        start_worker(workers, ctx)
    for s in range(steps):
        if step:
            step()
        if s == late_at:
            start_worker(workers, ctx)
        for w in workers:
            w.send(unit)
        parent_burn(unit // 2)
        for w in workers:
            w.wait()
    for w in workers:
        w.end()
    for w in workers:
        w.join()
    say("pid %d" % os.getpid())
    time.sleep(0.05)


if __name__ == "__main__":
    main()
