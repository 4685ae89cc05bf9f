"""Process lifecycle under the agent: fork, exec, exit and SIGTERM during a
capture, an unusable logdir. The job's behaviour (exit status, output) must
not change; files are complete or absent, never partial."""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402

STEPS = tbtest.prog("steps")
SLOW_FINI = tbtest.prog("libslow_fini.so")


def nums(path):
    return [n for n, _, _ in tbtest.load(path).steps()]


class Lifecycle(tbtest.TestCase):
    def test_fork_child_writes_nothing_parent_intact(self):
        # the child is forked at step 1, inside the window, works 200 ms and exits
        p = tbtest.run([STEPS, "-f", "-n", "20", "-m", "5"], env=tbtest.env(self.logdir, steps="0,12"))
        self.assertExitedOk(p)
        self.assertIn("status 0", p.stdout)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, files)
        prof = tbtest.load(files[0])
        self.assertEqual(nums(files[0]), list(range(0, 13)))
        child = int(p.stdout.split("child ")[1].split()[0])
        self.assertNotEqual(prof.host.stats["pid"], child)
        self.assertNoPartialFiles(self.logdir)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])

    def test_exec_child_reads_its_own_env(self):
        # the exec'd child (8 steps) sees TBPROF_STEPS too and writes its own file
        p = tbtest.spawn([STEPS, "-e", "-n", "12", "-m", "5"], env=tbtest.env(self.logdir, steps="2,4"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        child = int(out.split("child ")[1].split()[0])
        self.assertIn("status 0", out)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 2, files)
        pids = sorted(tbtest.load(f).host.stats["pid"] for f in files)
        self.assertEqual(pids, sorted([p.pid, child]))
        for f in files:
            self.assertEqual(nums(f), [2, 3, 4])
        # file stems differ by pid, so the two never collide
        self.assertEqual(len(set(os.path.basename(f) for f in files)), 2)

    def test_job_closes_every_fd_and_reuses_the_numbers(self):
        # a daemon-style job closes every fd it did not open (tbprof's
        # control socket and wake-up pipe among them) and opens files of its
        # own, which get those numbers: tbprof reads none of the job's data,
        # does not spin on fds that are gone, says once that the socket
        # trigger is off, and an API capture afterwards still works
        files = []
        for i in range(3):
            f = os.path.join(self.tmp, "data%d" % i)
            with open(f, "w") as fh:
                fh.write("content-%d-" % i + "x" * 100)
            files.append(f)
        e = tbtest.env(self.logdir, socket="on")  # (tsan.supp: the job's close of our fds is the case itself)
        p = tbtest.run([tbtest.prog("closefds")] + files, env=e)
        self.assertExitedOk(p)
        lines = dict(l.split(" ", 1) for l in p.stdout.splitlines() if " " in l and not l.startswith("file"))
        got = [l.split(" ", 2)[2] for l in p.stdout.splitlines() if l.startswith("file ")]
        self.assertEqual(got, ["content-%d-" % i + "x" * 100 for i in range(3)], "the job's files read whole")
        self.assertLess(float(lines["cpu_ms"]), 300 * relutil.sanitizer_slowdown(), "CPU time of an idle second")
        self.assertEqual(lines["start"], "0")
        self.assertTrue(lines["last"].endswith(".xplane.pb") and os.path.exists(lines["last"]), p.stdout)
        self.assertIn("tbprof_start", tbtest.load(lines["last"]).host.stats["tbprof_trigger"])
        warns = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(warns), 1, p.stderr)
        self.assertIn("control socket", warns[0])

    def run_launcher(self, text, env):
        """progs/closefds -f: a file holding `text`, opened after every other
        fd was closed, read by a forked child."""
        f = os.path.join(self.tmp, "data")
        with open(f, "w") as fh:
            fh.write(text)
        return tbtest.run([tbtest.prog("closefds"), "-f", f], env=env, timeout=30 * relutil.sanitizer_slowdown())

    def test_launcher_closes_every_fd_then_forks(self):
        # a single-threaded launcher (no agent thread: TBPROF_SOCKET=auto)
        # closes every fd it did not open, opens a file that gets the
        # control socket's number, and forks a worker: the worker keeps
        # the file (before: the fork handler closed the number in the child)
        p = self.run_launcher("the launcher's file", tbtest.env(self.logdir, socket="auto"))
        self.assertExitedOk(p)
        self.assertIn("fd 3", p.stdout)  # (the socket's number: the first fd tbprof opens)
        self.assertIn("child the launcher's file", p.stdout, p.stderr)

    def test_fork_handler_before_ours_starts_a_thread(self):
        # a library whose fork child handler starts a thread, registered
        # before tbprof's (listed after libtbprof.so in LD_PRELOAD, it is
        # initialized first), so it runs first in the child: in a single-threaded
        # job (the thread is the child's first) the child carries on
        # (before: the pthread_create hook waited for the lock tbprof holds
        # across fork(), and the child hung for ever)
        shim = tbtest.prog("libatfork_thread.so")
        if not os.path.exists(shim):
            self.skipTest("shim not built")
        e = tbtest.env(self.logdir, socket="auto")
        e["LD_PRELOAD"] += ":" + shim
        p = self.run_launcher("x", e)
        self.assertExitedOk(p)
        self.assertIn("child x", p.stdout, p.stderr)
        self.assertIn("atfork thread ran", p.stderr)

    def test_job_closes_every_fd_mid_capture_then_gets_sigterm(self):
        # the job closes tbprof's SIGTERM pipe with the rest of its fds
        # during a capture, then is sent SIGTERM: it dies of it, as it
        # would without tbprof (before: the handler wrote its byte to the
        # closed number and the job ran on)
        p = tbtest.run([tbtest.prog("closefds"), "-t"], env=tbtest.env(self.logdir, socket="off"), timeout=60)
        self.assertIn("capturing 1", p.stdout, p.stderr)
        self.assertNotIn("survived", p.stdout, p.stderr)
        self.assertEqual(p.returncode, -signal.SIGTERM, p.stderr)

    def test_relative_logdir_of_exec_children_after_a_chdir(self):
        # TBPROF_LOGDIR=logs is taken against the directory the job started
        # in; a child the job starts after it chdir()ed (mp.spawn ranks
        # under Hydra's output folder) writes there too, not under the
        # child's own working directory
        start, elsewhere = os.path.join(self.tmp, "start"), os.path.join(self.tmp, "elsewhere")
        os.makedirs(start)
        os.makedirs(elsewhere)
        p = subprocess.Popen([STEPS, "-D", elsewhere, "-e", "-n", "12", "-m", "5"], env=tbtest.env("logs", steps="2,4"),
                             cwd=start, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        child = int(out.split("child ")[1].split()[0])
        self.assertEqual(tbtest.xplanes(os.path.join(elsewhere, "logs")), [])
        files = tbtest.xplanes(os.path.join(start, "logs"))
        self.assertEqual(sorted(tbtest.load(f).host.stats["pid"] for f in files), sorted([p.pid, child]))

    def test_sigterm_mid_capture(self):
        p = tbtest.spawn([STEPS, "-r", "-n", "2000", "-m", "5"], env=tbtest.env(self.logdir, steps="3,1500"))
        tbtest.read_until(p, "ready")
        time.sleep(0.5)
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        took = time.time() - t0
        self.assertEqual(p.returncode, -signal.SIGTERM, "still dies of SIGTERM\n" + err)
        self.assertLess(took, 5, "bounded flush")
        self.assertNotIn("done", out)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, err)
        n = nums(files[0])
        self.assertGreater(len(n), 5)
        self.assertEqual(n, list(range(3, 3 + len(n))))
        self.assertNoPartialFiles(self.logdir)

    def test_sigterm_with_the_jobs_own_handler(self):
        # the job handles SIGTERM itself (ends its loop, exits 7): we never
        # replace its handler; its clean exit writes the window so far
        p = tbtest.spawn([STEPS, "-r", "-T", "-n", "2000", "-m", "5"], env=tbtest.env(self.logdir, steps="3,1500"))
        tbtest.read_until(p, "ready")
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 7, err)
        self.assertIn("done", out)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, err)
        n = nums(files[0])
        self.assertEqual(n, list(range(3, 3 + len(n))))
        self.assertNoPartialFiles(self.logdir)

    def test_sigterm_when_idle_is_untouched(self):
        p = tbtest.spawn([STEPS, "-r", "-n", "2000", "-m", "5"], env=tbtest.env(self.logdir, steps="1000,1001"))
        tbtest.read_until(p, "ready")
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, -signal.SIGTERM)
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_exit_status_kept_with_capture_at_exit(self):
        p = tbtest.run([STEPS, "-n", "10", "-m", "2", "-x", "42"], env=tbtest.env(self.logdir, steps="5,100"))
        self.assertExitedOk(p, 42)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1)
        self.assertEqual(nums(files[0]), [5, 6, 7, 8, 9])
        self.assertNoPartialFiles(self.logdir)

    def slow_exit_env(self, **tbprof):
        """The job's exit goes on 1.5 s after tbprof's destructor ran (a
        shim's destructor, run after ours: listed after libtbprof.so)."""
        if not os.path.exists(SLOW_FINI):
            self.skipTest("shim not built")
        e = relutil.env(self.logdir, **tbprof)
        e["LD_PRELOAD"] = e["LD_PRELOAD"] + ":" + SLOW_FINI
        e["TBTEST_FINI_MS"] = "1500"
        return e

    def test_no_capture_starts_once_exit_began(self):
        # a time window due after exit() began (TBPROF_DELAY=0.3 s, the job
        # is done in ~20 ms, its exit takes 1.5 s more): not started, nothing
        # written, nothing said (it would overlap CUDA's teardown)
        p = tbtest.run([STEPS, "-n", "10", "-m", "1"], env=self.slow_exit_env(delay="0.3", duration="0.3"))
        self.assertExitedOk(p)
        self.assertIn("fini done", p.stdout)
        self.assertEqual(tbtest.xplanes(self.logdir), [], p.stderr)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])
        # a socket start then is refused, saying why; status still answers
        p = tbtest.spawn([STEPS, "-n", "10", "-m", "1"], env=self.slow_exit_env())
        pid = int(tbtest.read_until(p, "fini ").split()[1])
        answers = [relutil.ctl(pid, req) for req in ("start duration=0.2", "start duration=0.2 every=0.5",
                                                      "start steps=2", "start steps=20-21", "status")]
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        for a in answers[:4]:
            self.assertEqual(a, "error: the process is exiting: no new capture", answers)
        self.assertTrue(answers[4].startswith("state=idle"), answers)
        self.assertEqual(tbtest.xplanes(self.logdir), [], err)

    def test_unwritable_logdir(self):
        blocker = os.path.join(self.tmp, "file")
        with open(blocker, "w") as f:
            f.write("x")
        logdir = os.path.join(blocker, "logs")  # under a regular file: ENOTDIR
        p = tbtest.run([STEPS, "-n", "12", "-m", "2"], env=tbtest.env(logdir, steps="2,4"))
        self.assertExitedOk(p)
        self.assertIn("done 12", p.stdout)
        w = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn("not written", w[0])
        self.assertIn(logdir, w[0])


if __name__ == "__main__":
    tbtest.main()
