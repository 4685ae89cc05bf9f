"""fork()ed children that capture with their parent (TBPROF_CHILDREN, on by
default): tests/e2e/progs/children_py.py forks two workers before the
window and a third inside it, sends each one job a step (worker_burn), and
marks steps with the tbprof API. What a user checks: one file per worker
beside the parent's in the parent's run folder, `<host>.pid<worker>`, each
covering the parent's window (the late worker from its fork on), with the
worker's samples under its Python function; the parent's file and the
program's output as without children; none with TBPROF_CHILDREN=off.
Python: Debian's python3 (3.11, tbprof's own trampoline), so CI runs it.
Skipped under TSan (a fork() under its runtime hangs the child)."""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpusamples  # noqa: E402
import tbtest  # noqa: E402

PROG = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "children_py.py")
C_PROG = tbtest.prog("children_c")
STEPS, EARLY = 16, 2
# the late worker, forked inside the window; not under ASan: gcc's libasan
# (12) leaves its allocator locked in a child forked while another thread
# (the agent's, capturing) allocates, and the child's threads hang there
LATE_AT = 8 if tbtest.SANITIZE != "address" else STEPS
LATE = 1 if LATE_AT < STEPS else 0
ASAN_FORK = ("forks during a capture: gcc's libasan leaves its allocator locked in a child forked while "
             "another thread allocates")
UNIT = 600000  # a job: ~30-60 ms of a worker's CPU here


class Children(tbtest.TestCase):
    def setUp(self):
        super().setUp()
        if tbtest.SANITIZE == "thread":
            self.skipTest("a fork() under ThreadSanitizer's runtime hangs the child")
        self.cpu = cpusamples.perf_refused_reason() is None

    def run_prog(self, steps="5,12", unit=UNIT, method="fork", **tb):
        tb.setdefault("cpu", "on" if self.cpu else "off")
        e = tbtest.env(self.logdir, python=True, steps=steps, **tb)
        p = tbtest.run([tbtest.PYTHON, PROG, str(STEPS), str(EARLY), str(LATE_AT), str(unit), method], env=e,
                       timeout=300)
        self.assertExitedOk(p)
        workers = [int(l.split()[2]) for l in p.stdout.splitlines() if l.startswith("worker ")]
        jobs = {int(l.split()[1]): int(l.split()[2]) for l in p.stdout.splitlines() if l.startswith("jobs ")}
        # the program ran as it does alone: every worker did every job sent
        self.assertEqual(len(workers), EARLY + LATE, p.stdout)
        self.assertEqual(jobs, {w: STEPS - (LATE_AT if i == EARLY else 0) for i, w in enumerate(workers)},
                         p.stdout)
        return p, workers

    def by_pid(self, files):
        return {tbtest.load(f).host.stats["pid"]: f for f in files}

    def test_workers_write_beside_their_parent(self):
        p, workers = self.run_prog(gpu=None)  # (the default: on)
        self.check_beside_parent(p, workers, "fork()ed child")

    def test_spawn_workers(self):
        # multiprocessing's "spawn" workers are exec()ed: no page inherited;
        # each asks the parent's agent for it over its socket
        p, workers = self.run_prog(gpu=None, method="spawn")
        self.check_beside_parent(p, workers, "spawned worker")

    def test_forkserver_workers(self):
        # Python 3.14's default start method on Linux: the workers are
        # forked by a forkserver the parent exec()ed; they ask the parent
        p, workers = self.run_prog(gpu=None, method="forkserver")
        self.check_beside_parent(p, workers, "fork()ed child")

    def test_forkserver_workers_of_a_single_threaded_parent(self):
        # TBPROF_SOCKET=auto (the default): a parent with no thread of its
        # own has no agent thread to answer until its window arms; the
        # workers' requests wait for it, and they capture from its begin
        p, workers = self.run_prog(gpu=None, method="forkserver", socket="auto")
        self.check_beside_parent(p, workers, "fork()ed child")

    def test_spawn_workers_of_a_parent_without_socket(self):
        # TBPROF_SOCKET=off in the parent: a spawned worker has nobody to
        # ask, and follows nothing, quietly; the parent's profile as ever
        p, workers = self.run_prog(method="spawn", socket="off")
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, files)
        self.assertNotIn(tbtest.load(files[0]).host.stats["pid"], workers)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)

    def check_beside_parent(self, p, workers, kind):
        files = tbtest.xplanes(self.logdir)
        runs = {os.path.dirname(f) for f in files}
        self.assertEqual(len(runs), 1, files)  # one run folder: the parent's
        pids = self.by_pid(files)
        parent_pid = int(p.stdout.split("pid ")[-1].split()[0])
        self.assertEqual(sorted(pids), sorted([parent_pid] + workers), files)
        parent = tbtest.load(pids[parent_pid])
        self.assertEqual([n for n, _, _ in parent.steps()], list(range(5, 13)))
        pb, pe = parent.host.stats["tbprof_capture_begin_ns"], parent.host.stats["tbprof_capture_end_ns"]
        host = os.path.basename(pids[parent_pid]).split(".pid")[0]
        for i, w in enumerate(workers):
            f = pids[w]
            self.assertEqual(os.path.basename(f), "%s.pid%d.xplane.pb" % (host, w))
            prof = tbtest.load(f)
            st = prof.host.stats
            self.assertEqual(st["tbprof_trigger"], "the parent process' capture (pid %d)" % parent_pid)
            self.assertEqual(prof.steps(), [])
            self.assertNotIn("tbprof_step_source", st)  # (its parent's, copied by the fork: not a worker's)
            self.assertIsNone(prof.plane("/device:GPU:0"))
            self.assertIn(kind + " capturing with its parent", st.get("tbprof_gpu_off_reason", ""))
            # within the parent's window: from its begin (the late worker:
            # from its fork, at step 8) to its end, give or take the poll
            # that tells the worker (at most 100 ms after the parent)
            wb, we = st["tbprof_capture_begin_ns"], st["tbprof_capture_end_ns"]
            self.assertGreaterEqual(wb, pb - 1e6, (i, wb - pb))  # (each process converts to epoch time: ns apart)
            if i < EARLY:
                self.assertLess(wb - pb, 300e6, "worker %d began %.0f ms after its parent" % (i, (wb - pb) / 1e6))
            self.assertLess(abs(we - pe), 300e6, "worker %d ended %.0f ms from its parent" % (i, (we - pe) / 1e6))
            if not self.cpu:
                continue
            # its own work: samples under its Python function, none of the parent's
            c = cpusamples.counts(cpusamples.sampled_lines(prof))
            n = st["tbprof_cpu_samples"]
            burn = c.get("py::worker_burn:" + PROG, [0, 0])[1]
            self.assertGreater(burn, n * 0.5, "worker %d: %d of %d samples under py::worker_burn" % (i, burn, n))
            self.assertNotIn("py::parent_burn:" + PROG, c)
        if self.cpu:
            c = cpusamples.counts(cpusamples.sampled_lines(parent))
            self.assertIn("py::parent_burn:" + PROG, c)
            self.assertNotIn("py::worker_burn:" + PROG, c)
        # `tbprof summary RUN_DIR` says which hosts are whose workers
        if os.path.exists(tbtest.CLI):
            out = tbtest.run([tbtest.CLI, "summary", os.path.dirname(pids[parent_pid])], timeout=120).stdout
            cols = out.split("<column>\n", 1)[1].splitlines()
            head, role = cols[0].split(), [l for l in cols if l.startswith("worker of ")]
            self.assertEqual(len(role), 1, out)
            self.assertEqual(dict(zip(head, role[0][len("worker of "):].split())),
                             dict([("pid%d" % parent_pid, "-")] + [("pid%d" % w, "pid%d" % parent_pid)
                                                                   for w in workers]), out)
        # TensorBoard finds the logdir by the parent's marker; the workers add none
        marks = [f for f in os.listdir(self.logdir) if f.startswith("events.out.tfevents.")]
        self.assertEqual(len(marks), 1, marks)
        self.assertIn(".pid%d." % parent_pid, marks[0])
        self.assertNoPartialFiles(self.logdir)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)

    def test_children_off(self):
        p, workers = self.run_prog(children="off")
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, files)
        self.assertNotIn(tbtest.load(files[0]).host.stats["pid"], workers)

    def test_a_rank_s_workers_get_names_of_their_own(self):
        # a rank's workers inherit RANK: each writes <host>.rank3.pid<W>
        # beside the rank's <host>.rank3, not over it
        e = dict(RANK="3", WORLD_SIZE="4")
        old = {k: os.environ.get(k) for k in e}
        os.environ.update(e)
        try:
            p, workers = self.run_prog()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        names = sorted(os.path.basename(f) for f in tbtest.xplanes(self.logdir))
        host = names[0].split(".rank3")[0]
        self.assertEqual(names, sorted(["%s.rank3.xplane.pb" % host] +
                                       ["%s.rank3.pid%d.xplane.pb" % (host, w) for w in workers]))

    def test_c_child_that_calls_exit_at_once(self):
        # a C program's child follows through the API and ends with _exit()
        # as soon as the parent's capture stops: no destructor runs there,
        # and its profile is written all the same
        # (under ASan the write outlasts the 0.5 s _exit waits: the child ends
        # 2 s after the stop there, and the default build checks the wait)
        later = "2000" if tbtest.SANITIZE == "address" else "0"
        p = tbtest.run([C_PROG, later], env=tbtest.env(self.logdir, cpu="on" if self.cpu else "off"))
        self.assertExitedOk(p)
        m = re.search(r"child (\d+) follow (-?\d+)", p.stdout)
        self.assertTrue(m, p.stdout)
        child = int(m.group(1))
        self.assertEqual(m.group(2), "0", p.stdout)
        self.assertIn("status 3", p.stdout)  # the child's own status
        parent = int(re.search(r"^pid (\d+)", p.stdout, re.M).group(1))
        pids = self.by_pid(tbtest.xplanes(self.logdir))
        self.assertEqual(sorted(pids), sorted([parent, child]), p.stderr)
        prof = tbtest.load(pids[child])
        self.assertEqual(prof.host.stats["tbprof_trigger"], "the parent process' capture (pid %d)" % parent)
        if self.cpu:
            c = cpusamples.counts(cpusamples.sampled_lines(prof))
            n = prof.host.stats["tbprof_cpu_samples"]
            self.assertGreater(c.get("child_spin", [0, 0])[1], n * 0.5, (n, c))
            self.assertNotIn("child_spin", cpusamples.counts(cpusamples.sampled_lines(tbtest.load(pids[parent]))))
        self.assertNoPartialFiles(self.logdir)

    def test_at_most_32_children_per_capture(self):
        if tbtest.SANITIZE == "address":
            self.skipTest(ASAN_FORK)
        # a program that forks a child per task during a capture (a
        # pre-fork server): 36 children, each living 1 s and ending with
        # os._exit; 32 capture with the parent (TB_FOLLOW_MAX), the rest
        # run as they would, and every one ends with its own status
        prog = ("import ctypes, os, time\n"
                "lib = ctypes.CDLL(None)\n"
                "lib.tbprof_start(0)\n"
                "kids = []\n"
                "for i in range(36):\n"
                "    pid = os.fork()\n"
                "    if pid == 0:\n"
                "        time.sleep(1)\n"
                "        os._exit(i % 7)\n"
                "    kids.append((pid, i % 7))\n"
                "bad = [pid for pid, want in kids if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != want]\n"
                "lib.tbprof_stop()\n"
                "print('bad', len(bad), 'pid', os.getpid(), flush=True)\n"
                "time.sleep(0.5)\n")
        p = tbtest.run([tbtest.PYTHON, "-c", prog], env=tbtest.env(self.logdir, python=True), timeout=300)
        self.assertExitedOk(p)
        m = re.search(r"bad (\d+) pid (\d+)", p.stdout)
        self.assertEqual(m.group(1), "0", p.stdout)
        files = tbtest.wait_for_xplanes(self.logdir, 33, timeout=30)
        pids = self.by_pid(files)
        self.assertIn(int(m.group(2)), pids)
        self.assertEqual(len(pids), 33, sorted(pids))
        self.assertNoPartialFiles(self.logdir)

    def test_a_child_that_counts_steps_keeps_its_own_windows(self):
        if tbtest.SANITIZE == "address":
            self.skipTest(ASAN_FORK)
        # a rank forked by its launcher: the launcher captures (tbprof_start)
        # while the rank, following at first, starts counting steps; its
        # first step ends that capture (not written) and its own
        # TBPROF_STEPS window captures it, as without followers
        prog = ("import ctypes, os, time\n"
                "lib = ctypes.CDLL(None)\n"
                "lib.tbprof_start(0)\n"
                "pid = os.fork()\n"
                "if pid == 0:\n"
                "    time.sleep(0.5)\n"
                "    for i in range(8):\n"
                "        lib.tbprof_step()\n"
                "        time.sleep(0.05)\n"
                "    time.sleep(1.5)\n"  # (its own profile written by then)
                "    os._exit(0)\n"
                "os.waitpid(pid, 0)\n"
                "lib.tbprof_stop()\n"
                "print('child', pid, 'pid', os.getpid(), flush=True)\n"
                "time.sleep(0.3)\n")
        p = tbtest.run([tbtest.PYTHON, "-c", prog], env=tbtest.env(self.logdir, python=True, steps="2,4"))
        self.assertExitedOk(p)
        m = re.search(r"child (\d+) pid (\d+)", p.stdout)
        child, parent = int(m.group(1)), int(m.group(2))
        pids = self.by_pid(tbtest.wait_for_xplanes(self.logdir, 2, timeout=30))
        self.assertEqual(sorted(pids), sorted([parent, child]), p.stderr)
        prof = tbtest.load(pids[child])
        self.assertEqual([n for n, _, _ in prof.steps()], [2, 3, 4])
        self.assertEqual(prof.host.stats["tbprof_trigger"], "TBPROF_STEPS 2-4")
        self.assertNotIn(".pid%d.pid" % child, pids[child])

    def test_worker_of_a_killed_parent(self):
        # the parent dies of SIGKILL mid-capture (no end on the page): the
        # worker sees it gone within a second or so, writes what it has
        # into the parent's run folder, and works on
        prog = ("import os, sys, time, ctypes\n"
                "lib = ctypes.CDLL(None)\n"
                "pid = os.fork()\n"
                "if pid == 0:\n"
                "    end = time.monotonic() + 8\n"
                "    while time.monotonic() < end and os.getppid() != 1 and not os.path.exists(sys.argv[1]):\n"
                "        time.sleep(0.01)\n"
                "    time.sleep(3)\n"
                "    open(sys.argv[1] + '.child', 'w').write('alive')\n"
                "    os._exit(0)\n"
                "print(pid, flush=True)\n"
                "lib.tbprof_start(0)\n"
                "time.sleep(60)\n")
        mark = os.path.join(self.tmp, "mark")
        e = tbtest.env(self.logdir, python=True, cpu="on" if self.cpu else "off")
        # the child is reparented when the parent dies; a subreaper (this
        # test) is not pid 1: the child looks for a changed parent instead
        proc = subprocess.Popen([tbtest.PYTHON, "-c", prog, mark], env=e, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        child = int(proc.stdout.readline())
        time.sleep(1.0)
        proc.kill()
        proc.communicate(timeout=30)
        open(mark, "w").close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not os.path.exists(mark + ".child"):
            time.sleep(0.05)
        self.assertTrue(os.path.exists(mark + ".child"), "the worker did not work on")
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=30)
        self.assertEqual(len(files), 1, files)
        self.assertTrue(os.path.basename(files[0]).endswith(".pid%d.xplane.pb" % child), files)
        st = tbtest.load(files[0]).host.stats
        self.assertEqual(st["tbprof_trigger"], "the parent process' capture (pid %d)" % proc.pid)
        self.assertNoPartialFiles(self.logdir)


if __name__ == "__main__":
    tbtest.main()
