"""Triggers on running processes: the control socket, the opt-in signal and
`tbprof trigger`; each checked by decoding the profile that was written."""

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402

STEPS = tbtest.prog("steps")
FAKE_CUPTI = os.path.join(tbtest.BUILD, "fakecupti", "libcupti.so")
FAST_CLOCK = tbtest.prog("libfast_clock.so")


def ctl(pid, line, raw=None, timeout=5):
    """Send one request to pid's control socket, return the answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # closed on a timeout too
        s.settimeout(timeout)
        s.connect(relutil.addr(pid))
        s.sendall(raw if raw is not None else (line + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def cmdline(pid):
    with open("/proc/%s/cmdline" % pid) as f:
        return f.read()


def reap(p):
    if p.poll() is None:
        p.kill()
    p.communicate()


def step_nums(prof):
    return [n for n, _, _ in prof.steps()]


class Triggers(tbtest.TestCase):
    def start_job(self, args, **tb):
        p = tbtest.spawn([STEPS, "-r"] + args, env=tbtest.env(self.logdir, **tb))
        self.addCleanup(reap, p)
        tbtest.read_until(p, "ready")
        return p

    def finish(self, p, code=0):
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, code, err)
        return out, err

    def test_socket_steps_status_and_busy(self):
        p = self.start_job(["-n", "300", "-m", "10"])
        time.sleep(0.2)
        st = ctl(p.pid, "status")
        self.assertTrue(st.startswith("state=idle"), st)
        self.assertIn("last=-", st)
        ans = ctl(p.pid, "start steps=3")
        self.assertTrue(ans.startswith("capture started"), ans)
        self.assertEqual(ctl(p.pid, "start duration=1"), "already capturing")
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=30)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        nums = step_nums(prof)
        self.assertEqual(len(nums), 3, nums)
        self.assertEqual(nums, list(range(nums[0], nums[0] + 3)))
        self.assertIn("socket steps=3", prof.host.stats["tbprof_trigger"])
        # status names the file once written
        deadline = time.time() + 10
        while time.time() < deadline:
            st = ctl(p.pid, "status")
            if "state=idle" in st and files[0] in st:
                break
            time.sleep(0.05)
        self.assertIn("last=" + files[0], st)
        self.assertIn("captures=1", st)
        # and a second capture works the same way (repeatable)
        self.assertTrue(ctl(p.pid, "start steps=2").startswith("capture started"))
        files = tbtest.wait_for_xplanes(self.logdir, 2, timeout=30)
        self.assertEqual(len(files), 2)
        p.kill()
        p.communicate()

    def wait_status(self, pid, want, timeout=30):
        deadline = time.time() + timeout
        while True:
            st = ctl(pid, "status")
            if want in st or time.time() > deadline:
                return st
            time.sleep(0.05)

    def test_socket_step_window_captures_exactly_those_steps(self):
        p = self.start_job(["-n", "600", "-m", "10", "-t", "1"])
        now = int(self.wait_status(p.pid, "step=2").split("step=")[1].split()[0])
        a, b = now + 15, now + 18
        for line in ["start steps=%d-%d" % (now - 1, now + 3),   # begun already
                     "start steps=9-5", "start steps=5-", "start steps=-5", "start steps=1-2000000",
                     "start steps=%d-%d duration=1" % (a, b), "start steps=3 steps=4",
                     "start steps=%d-%d run=../up" % (a, b), "start duration=1 run=.hidden",
                     "start duration=1 run=a/b", "start duration=1 run=", "start duration=1 run=" + "r" * 65]:
            ans = ctl(p.pid, line)
            self.assertTrue(ans.startswith("error"), "%r -> %r" % (line, ans))
        now = int(ctl(p.pid, "status").split("step=")[1].split()[0])
        a, b = now + 30, now + 33  # 0.3 s ahead, asked for right away
        ans = ctl(p.pid, "start steps=%d-%d run=job-7.a_b" % (a, b))
        self.assertTrue(ans.startswith("capture waiting: steps %d-%d" % (a, b)), ans)
        st = ctl(p.pid, "status")
        self.assertIn("waiting=steps_%d-%d" % (a, b), st)
        ans = ctl(p.pid, "start duration=1")
        self.assertTrue(ans.startswith("already capturing"), "one capture at a time: %r" % ans)
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=60)
        self.assertEqual(len(files), 1)
        self.assertEqual(os.path.basename(os.path.dirname(files[0])), "job-7.a_b", "the run folder asked for")
        prof = tbtest.load(files[0])
        self.assertEqual(step_nums(prof), list(range(a, b + 1)))
        self.assertEqual(prof.host.stats["tbprof_trigger"], "socket steps=%d-%d" % (a, b))
        st = self.wait_status(p.pid, "captures=1")
        self.assertNotIn("waiting=", st)
        p.kill()
        p.communicate()

    def test_socket_repeating_window(self):
        # `start steps=A-B every=P count=K`: a running job captured again and
        # again, each repeat in its own run folder, exactly its steps
        p = self.start_job(["-n", "2000", "-m", "5", "-t", "1"])
        now = int(self.wait_status(p.pid, "step=2").split("step=")[1].split()[0])
        for line in ["start steps=2 every=2", "start steps=5-7 every=3", "start duration=1 every=0.5",
                     "start steps=2 count=3", "start steps=2 every=20 count=0", "start steps=2 every=x"]:
            ans = ctl(p.pid, line)
            self.assertTrue(ans.startswith("error"), "%r -> %r" % (line, ans))
        now = int(ctl(p.pid, "status").split("step=")[1].split()[0])
        a = now + 20
        # 48 steps (240 ms) between windows: each written before the next, under a sanitizer too
        ans = ctl(p.pid, "start steps=%d-%d every=50 count=3 run=rep" % (a, a + 1))
        self.assertTrue(ans.startswith("capture waiting: steps %d-%d, again every 50 steps (3 in all)" % (a, a + 1)),
                        ans)
        self.assertIn("waiting=steps_%d-%d_repeating" % (a, a + 1), ctl(p.pid, "status"))
        files = tbtest.wait_for_xplanes(self.logdir, 3, timeout=60)
        runs = sorted(os.path.basename(os.path.dirname(f)) for f in files)
        self.assertEqual(runs, sorted("rep_steps_%d-%d" % (a + k, a + k + 1) for k in (0, 50, 100)))
        for f in files:
            first = int(os.path.basename(os.path.dirname(f)).split("_")[-1].split("-")[0])
            prof = tbtest.load(f)
            self.assertEqual(step_nums(prof), [first, first + 1])
            self.assertIn("every 50 steps (3 in all)", prof.host.stats["tbprof_trigger"])
        st = self.wait_status(p.pid, "captures=3")
        self.assertNotIn("waiting=", st, "count=3: no fourth")
        # steps=N every=P until stop: the first from the next step; stop
        # cancels the repeats (and the capture, if one is under way)
        ans = ctl(p.pid, "start steps=2 every=30 run=rep2")
        self.assertTrue(ans.startswith("capture "), ans)
        self.assertIn("again every 30 steps until stop", ans)
        tbtest.wait_for_xplanes(os.path.join(self.logdir), 4, timeout=60)
        ans = ctl(p.pid, "stop")
        self.assertTrue(ans in ("capture stopping; its repeats cancelled",) or
                        (ans.startswith("capture cancelled: it was waiting for steps") and
                         ans.endswith("and its repeats")), ans)
        had = 4 + (ans.startswith("capture stopping"))
        step = lambda: int(ctl(p.pid, "status").split("step=")[1].split()[0])  # noqa: E731
        until = step() + 70  # two periods and more
        deadline = time.time() + 60
        while step() < until and time.time() < deadline:
            time.sleep(0.05)
        st = ctl(p.pid, "status")
        self.assertNotIn("waiting=", st)
        self.assertEqual(len(tbtest.xplanes(self.logdir)), had, "nothing after stop")
        p.kill()
        p.communicate()

    def test_socket_step_window_from_the_next_step(self):
        # A = the step after the running one: the window arms at once (its
        # step A-1 is under way), and holds exactly A..B
        p = self.start_job(["-n", "40", "-m", "300", "-t", "1"])
        step = lambda: int(ctl(p.pid, "status").split("step=")[1].split()[0])  # noqa: E731
        first = step()
        while step() == first:  # just past a boundary: ~300 ms before the next
            time.sleep(0.005)
        now = step()
        ans = ctl(p.pid, "start steps=%d-%d" % (now + 1, now + 2))
        self.assertTrue(ans.startswith("capture waiting: steps %d-%d" % (now + 1, now + 2)), ans)
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=60)
        prof = tbtest.load(files[0])
        self.assertEqual(step_nums(prof), [now + 1, now + 2])
        # armed during step A-1: the sources were on before A, which did not wait for them
        self.assertNotIn("tbprof_start_wait_ns", prof.host.stats)
        p.kill()
        p.communicate()

    def test_socket_step_window_can_be_cancelled(self):
        p = self.start_job(["-n", "600", "-m", "10", "-t", "1"])
        now = int(self.wait_status(p.pid, "step=1").split("step=")[1].split()[0])
        ans = ctl(p.pid, "start steps=%d-%d" % (now + 100000, now + 100002))
        self.assertTrue(ans.startswith("capture waiting"), ans)
        ans = ctl(p.pid, "stop")
        self.assertTrue(ans.startswith("capture cancelled"), ans)
        self.assertNotIn("waiting=", ctl(p.pid, "status"))
        # nothing left armed: a new request is taken, and is the only capture
        self.assertTrue(ctl(p.pid, "start steps=2").startswith("capture started"))
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=30)
        self.assertEqual(len(step_nums(tbtest.load(files[0]))), 2)
        p.kill()
        p.communicate()

    def test_socket_malformed_requests_get_errors(self):
        p = self.start_job(["-n", "150", "-m", "10"])
        bad = ["", "garbage", "start steps=abc", "start steps=-1", "start steps=0", "start duration=-3",
               "start duration=abc", "start nonsense=1", "stop", "x" * 20]
        for line in bad:
            ans = ctl(p.pid, line)
            self.assertTrue(ans.startswith("error"), "%r -> %r" % (line, ans))
        self.assertTrue(ctl(p.pid, None, raw=b"A" * 10000).startswith("error"))
        self.assertTrue(ctl(p.pid, None, raw=bytes(range(256)) + b"\n").startswith("error"))
        # a client that connects and says nothing is dropped, the job runs on
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(relutil.addr(p.pid))
        time.sleep(0.5)
        s.close()
        self.assertTrue(ctl(p.pid, "status").startswith("state=idle"))
        self.finish(p)
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_socket_answers_a_client_that_shuts_its_write_side(self):
        # `printf 'status\n' | socat - ABSTRACT-CONNECT:...`, `nc -N`, or a
        # script that shutdown(SHUT_WR)s after its request: the request is
        # whole (its newline came), so it is answered and acted on (before:
        # taken for a client that left, dropped without a word)
        p = self.start_job(["-n", "300", "-m", "10"], socket="on")
        st = relutil.ctl_raw(p.pid, b"status\n", shut=True)
        self.assertTrue(st.startswith("state=idle"), repr(st))
        deadline = time.time() + 30  # a steps request needs a step marked (slow under the sanitizers)
        while re.search(r" step=-1 ", st) and time.time() < deadline:
            time.sleep(0.05)
            st = relutil.ctl_raw(p.pid, b"status\n", shut=True)
        ans = relutil.ctl_raw(p.pid, b"start steps=2\n", shut=True)
        self.assertTrue(ans.startswith("capture started"), repr(ans))
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=30)
        self.assertEqual(len(step_nums(tbtest.load(files[0]))), 2)
        p.kill()
        p.communicate()

    def start_sleep(self, seconds):
        """`sleep` under the agent (a process without steps), once its socket
        answers (it appears once the constructor ran); (process, status)."""
        p = subprocess.Popen(["sleep", str(seconds)], env=tbtest.env(self.logdir), stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        deadline = time.time() + 5
        while True:
            try:
                return p, ctl(p.pid, "status")
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.02)

    def test_socket_duration_on_a_process_without_steps(self):
        p, st = self.start_sleep(5)
        self.assertIn("state=idle", st)
        self.assertTrue(ctl(p.pid, "start steps=3").startswith("error"), "no steps seen")
        self.assertTrue(ctl(p.pid, "start duration=0.3").startswith("capture started"))
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=20)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        h = prof.host.stats
        span = (h["tbprof_capture_end_ns"] - h["tbprof_capture_begin_ns"]) / 1e9
        self.assertGreater(span, 0.25)
        self.assertLess(span, 1.5)
        self.assertEqual(step_nums(prof), [])
        p.kill()
        p.wait()

    def test_time_window_repeats_every(self):
        # TBPROF_EVERY: a process without steps (a server) captured every
        # 0.7 s from TBPROF_DELAY, three times in all (x3), each its own run
        env = tbtest.env(self.logdir, delay="0.3", duration="0.2", every="0.7x3", run="tw")
        t0 = time.time_ns()
        p = subprocess.run(["sleep", "3.2"], env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])
        files = tbtest.xplanes(self.logdir)
        runs = sorted(os.path.basename(os.path.dirname(f)) for f in files)
        self.assertEqual(runs, ["tw_time_0.3-0.5s", "tw_time_1-1.2s", "tw_time_1.7-1.9s"],
                         "x3: a fourth (2.4 s in, within the job) is not captured")
        for f in files:
            run = os.path.basename(os.path.dirname(f))
            start = float(run.split("_time_")[1].split("-")[0])
            h = tbtest.load(f).host.stats
            self.assertGreaterEqual(h["tbprof_capture_begin_ns"] - t0, start * 1e9, run)
            self.assertLess(h["tbprof_capture_begin_ns"] - t0, (start + 1.0) * 1e9, run)
            span = (h["tbprof_capture_end_ns"] - h["tbprof_capture_begin_ns"]) / 1e9
            self.assertGreater(span, 0.18, run)
            self.assertLess(span, 1.5, run)
            self.assertIn("TBPROF_EVERY 0.7s", h["tbprof_trigger"])
        # the same from `tbprof run --every`; a bad value stops it before the job
        logdir = os.path.join(self.tmp, "cli")
        p = tbtest.run([tbtest.CLI, "run", "--every", "0.5x1", "--duration", "0.1", "--run", "cli", "--logdir",
                        logdir, "--", "sleep", "1.2"], env=tbtest.env(), timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        runs = [os.path.basename(os.path.dirname(f)) for f in tbtest.xplanes(logdir)]
        self.assertEqual(runs, ["cli_time_0.5-0.6s"])
        p = tbtest.run([tbtest.CLI, "run", "--every", "10q", "true"], env=tbtest.env(), timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--every '10q'", p.stderr)

    def test_time_window_repeats_skipped_warn_once(self):
        # repeats that fall inside another capture (a step window here) are
        # skipped: one warning for the first, the rest at info level
        p = tbtest.run([STEPS, "-n", "60", "-m", "20"], timeout=120,
                       env=tbtest.env(self.logdir, steps="1-55", duration="0.1", every="0.3x3"))
        self.assertExitedOk(p)
        w = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn("skipped: a capture is already on (later ones skipped so are logged at info level)", w[0])
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, files)
        self.assertEqual(step_nums(tbtest.load(files[0]))[:2], [1, 2])

    def test_socket_time_repeats(self):
        # `start duration=S every=T count=K` on a process without steps (a
        # server): S seconds now and every T seconds, each its own run
        # folder (NAME_1, NAME_2, ...: ranks asked together agree); stop
        # ends the repeats
        p, _ = self.start_sleep(30)
        for line in ["start duration=0.5 every=0.5", "start duration=0.2 every=x", "start duration=0.2 count=2",
                     "start duration=0.2 every=1 count=0"]:
            ans = ctl(p.pid, line)
            self.assertTrue(ans.startswith("error"), "%r -> %r" % (line, ans))
        t0 = time.time_ns()
        ans = ctl(p.pid, "start duration=0.2 every=0.7 count=3 run=tr")
        self.assertEqual(ans, "capture started: duration 0.2 s, again every 0.7 s (3 in all)")
        self.assertTrue(ctl(p.pid, "start steps=2-3 every=10").startswith("already capturing"))
        files = tbtest.wait_for_xplanes(self.logdir, 3, timeout=60)
        self.assertEqual(sorted(os.path.basename(os.path.dirname(f)) for f in files), ["tr_1", "tr_2", "tr_3"])
        for f in files:
            k = int(os.path.basename(os.path.dirname(f)).split("_")[1]) - 1
            h = tbtest.load(f).host.stats
            self.assertGreaterEqual(h["tbprof_capture_begin_ns"] - t0, k * 0.7e9 - 0.05e9, f)
            self.assertIn("socket duration=0.2s every=0.7s, %d of 3" % (k + 1), h["tbprof_trigger"])
        st = self.wait_status(p.pid, "captures=3")
        self.assertNotIn("waiting=", st, "count=3: no fourth")
        # until stop: stop between two ends them
        ans = ctl(p.pid, "start duration=0.1 every=0.6")
        self.assertIn("until stop", ans)
        tbtest.wait_for_xplanes(self.logdir, 4, timeout=60)
        self.assertIn("waiting=time_every_0.6s", self.wait_status(p.pid, "state=idle"))
        ans = ctl(p.pid, "stop")
        self.assertIn(ans, ("capture cancelled: the time window's repeats", "capture stopping; its repeats cancelled"))
        had = 4 + ans.startswith("capture stopping")
        time.sleep(1.5)
        self.assertEqual(len(tbtest.xplanes(self.logdir)), had, "nothing after stop")
        self.assertNotIn("waiting=", ctl(p.pid, "status"))
        # from the CLI
        if os.path.exists(tbtest.CLI):
            r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--duration", "0.1", "--every", "0.5", "--count", "2",
                            "--run", "cli"], timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("captures again every 0.5 s, 2 in all", r.stderr)
            self.assertTrue(r.stdout.splitlines()[-1].endswith(".xplane.pb"), r.stdout)
            files = tbtest.wait_for_xplanes(self.logdir, had + 2, timeout=60)
            self.assertEqual(sorted(os.path.basename(os.path.dirname(f)) for f in files if "/cli_" in f),
                             ["cli_1", "cli_2"])
        p.kill()
        p.wait()

    def test_socket_refuses_another_user(self):
        if os.getuid() != 0:
            self.skipTest("needs root to connect as another uid")
        p = self.start_job(["-n", "100", "-m", "10"])
        code = ("import socket,sys\n"
                "s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM)\n"
                "s.connect('\\0'+sys.argv[1])\n"
                "try:\n    s.sendall(b'start steps=2\\n')\nexcept OSError:\n    pass\n"
                "print(s.recv(200).decode().strip())\n")
        r = subprocess.run([sys.executable, "-c", code, relutil.addr(p.pid)[1:]], capture_output=True, text=True,
                           preexec_fn=lambda: os.setuid(65534), timeout=30)
        self.assertIn("permission denied", r.stdout, r.stderr)
        self.assertTrue(ctl(p.pid, "status").startswith("state=idle"), "nothing started")
        self.finish(p)
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_socket_off(self):
        p = self.start_job(["-n", "50", "-m", "5"], socket="off")
        with self.assertRaises(OSError):
            ctl(p.pid, "status")
        self.finish(p)

    # ---- TBPROF_SOCKET=auto (the default): served once the process has a thread ----

    AUTO_JOB = (
        "import os, sys, threading, time\n"
        "def tasks():\n"
        "    return sorted(open('/proc/self/task/%s/comm' % t).read().strip() for t in os.listdir('/proc/self/task'))\n"
        "print('single', tasks(), flush=True)\n"
        "sys.stdin.readline()\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait, name='worker')\n"
        "t.start()\n"
        "time.sleep(0.1)\n"
        "print('threaded', tasks(), flush=True)\n"
        "sys.stdin.readline()\n"
        "stop.set()\n"
        "t.join()\n")

    def test_socket_auto_serves_once_the_process_has_a_thread(self):
        self.need_cli()
        tbtest.skip_if_python_unsupported(self)
        e = tbtest.env(self.logdir, python=True, socket=None)  # the default
        p = subprocess.Popen([tbtest.PYTHON, "-c", self.AUTO_JOB], env=e, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.addCleanup(reap, p)
        single = tbtest.read_until(p, "single")
        if not tbtest.SANITIZE:  # sanitizer runtimes start threads of their own
            self.assertNotIn("tbprof-agent", single, "no agent thread in a single-threaded process")
        # the socket is there, but nobody answers yet: the CLI says why at
        # once, and a raw client that gives up leaves a request in the queue
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--duration", "0.2"], timeout=30)
        if not tbtest.SANITIZE:
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("TBPROF_SOCKET=on", r.stderr)
            with self.assertRaises(socket.timeout):
                ctl(p.pid, "start duration=0.2", timeout=0.3)
        p.stdin.write("go\n")
        p.stdin.flush()
        threaded = tbtest.read_until(p, "threaded")
        self.assertIn("tbprof-agent", threaded, "the job's first thread started the agent's")
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--duration", "0.3"], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        path = r.stdout.splitlines()[-1]
        self.assertTrue(path.endswith(".xplane.pb") and os.path.exists(path), r.stdout)
        self.assertIn("socket duration=0.3s", tbtest.load(path).host.stats["tbprof_trigger"])
        p.stdin.write("end\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        # the request queued while nobody served it was dropped, not run late
        self.assertEqual(tbtest.xplanes(self.logdir), [path])

    def test_socket_on_serves_a_single_threaded_process(self):
        p = self.start_job(["-n", "300", "-m", "10"], socket="on")
        deadline = time.time() + 10
        while True:  # the thread names itself once it runs
            comms = []
            for t in os.listdir("/proc/%d/task" % p.pid):
                with open("/proc/%d/task/%s/comm" % (p.pid, t)) as f:
                    comms.append(f.read().strip())
            if "tbprof-agent" in comms or time.time() > deadline:
                break
            time.sleep(0.02)
        self.assertIn("tbprof-agent", comms)
        self.assertTrue(ctl(p.pid, "status").startswith("state=idle"))
        p.kill()

    def test_signal_trigger_opt_in(self):
        p = self.start_job(["-n", "200", "-m", "10"], signal="USR2")
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGUSR2)
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=30)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        nums = step_nums(prof)
        self.assertEqual(nums, list(range(nums[0], nums[0] + 5)))
        self.assertIn("signal SIGUSR2", prof.host.stats["tbprof_trigger"])
        self.finish(p)

    def test_ranks_left_out(self):
        # TBPROF_RANKS=0,2-4 in a job's processes: rank 3 (RANK) and rank 2
        # (srun's SLURM_PROCID alone) capture TBPROF_STEPS' window; rank 5
        # and a process with no rank (a launcher) do not, and say so once
        # at info level
        cases = [("rank3", {"RANK": "3"}, 1), ("srun2", {"SLURM_PROCID": "2"}, 1),
                 ("rank5", {"RANK": "5", "SLURM_PROCID": "3"}, 0), ("none", {"LOCAL_RANK": "0"}, 0)]
        for name, extra, n in cases:
            with self.subTest(name):
                logdir = os.path.join(self.tmp, name)
                e = tbtest.env(logdir, steps="2,3", ranks="0,2-4", log="info")
                for k in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "LOCAL_RANK"):
                    e.pop(k, None)
                e.update(extra)
                p = tbtest.run([STEPS, "-n", "6", "-m", "2"], env=e)
                self.assertExitedOk(p)
                xs = tbtest.xplanes(logdir)
                self.assertEqual([step_nums(tbtest.load(x)) for x in xs], [[2, 3]] * n, p.stderr)
                said = [l for l in p.stderr.splitlines() if "not one of TBPROF_RANKS" in l]
                self.assertEqual(len(said), 1 - n, p.stderr)
        # at the default level a rank left out says nothing, nor does a
        # process with no rank that did not use the GPU (a launcher); one
        # that did (a job run without a launcher: TBPROF_RANKS=0 meant it)
        # is warned about once, at its exit
        for name, rank, cuda, warned in (("rank5", "5", True, 0), ("launcher", None, False, 0),
                                         ("unranked", None, True, 1)):
            with self.subTest(name):
                logdir = os.path.join(self.tmp, "quiet-" + name)
                e = tbtest.env(logdir, steps="2,3", ranks="0,2-4")
                for k in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
                    e.pop(k, None)
                if rank:
                    e["RANK"] = rank
                if cuda:
                    tbtest.with_cuda(e)
                p = tbtest.run([STEPS, "-n", "6", "-m", "2"], env=e)
                self.assertExitedOk(p)
                self.assertEqual(tbtest.xplanes(logdir), [])
                w = tbtest.tbprof_warnings(p.stderr)
                self.assertEqual(len(w), warned, p.stderr)
                if warned:
                    self.assertIn("TBPROF_RANKS: this process used the GPU but has no rank variable", w[0])
        # the same through `tbprof run --ranks`
        self.need_cli()
        for ranks, n in (("0", 1), ("1-7", 0)):
            logdir = os.path.join(self.tmp, "cli" + ranks)
            e = tbtest.env(preload=False)
            e["RANK"] = "0"
            p = tbtest.run([tbtest.CLI, "run", "--ranks", ranks, "--steps", "2,3", "--logdir", logdir, "--no-gpu",
                            "--no-cpu", "--", STEPS, "-n", "6", "-m", "2"], env=e)
            self.assertExitedOk(p)
            self.assertEqual(len(tbtest.xplanes(logdir)), n, p.stderr)

    def test_ranks_left_out_ignore_the_signal(self):
        # `pkill -USR2 -f train.py` reaches every rank: one that TBPROF_RANKS
        # leaves out lives on (the signal caught, ignored, said once) and
        # writes nothing; `tbprof trigger PID` still captures it
        e = tbtest.env(self.logdir, signal="USR2", ranks="0", log="info")
        e["RANK"] = "1"
        p = tbtest.spawn([STEPS, "-r", "-n", "300", "-m", "10"], env=e)
        self.addCleanup(reap, p)
        tbtest.read_until(p, "ready")
        time.sleep(0.3)
        for _ in range(2):
            os.kill(p.pid, signal.SIGUSR2)
            time.sleep(0.3)
        self.assertIsNone(p.poll())
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        ans = ctl(p.pid, "start steps=3")
        self.assertTrue(ans.startswith("capture started"), ans)
        self.assertEqual(len(tbtest.wait_for_xplanes(self.logdir, 1, timeout=30)), 1)
        out, err = self.finish(p)
        # (a capture the signals had started would be a second profile, or
        # would have made the socket's request busy)
        xs = tbtest.xplanes(self.logdir)
        self.assertEqual(len(xs), 1, err)
        prof = tbtest.load(xs[0])
        self.assertEqual(len(step_nums(prof)), 3)
        self.assertIn("socket steps=3", prof.host.stats["tbprof_trigger"])
        self.assertEqual(len([l for l in err.splitlines() if "signal ignored" in l]), 1, err)
        self.assertEqual(len([l for l in err.splitlines() if "rank 1, not one of TBPROF_RANKS" in l]), 1, err)

    def test_signal_taken_over_by_the_job_is_named(self):
        # a runtime that installs its handler after our constructor (the
        # JVM's SIGUSR2, node's SIGUSR1, PostgreSQL's): the trigger cannot
        # work; one warning (the agent looks 1 and 5 s after start-up) says
        # so, and the job's handler runs
        prog = ("import signal, time\n"
                "got = []\n"
                "signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))\n"
                "print('ready', flush=True)\n"
                "end = time.time() + 30\n"
                "while not got and time.time() < end:\n"
                "    time.sleep(0.05)\n"
                "print('own handler' if got else 'no signal', flush=True)\n")
        p = tbtest.spawn([sys.executable, "-c", prog], env=tbtest.env(self.logdir, python=True, signal="USR2"))
        self.addCleanup(reap, p)
        tbtest.read_until(p, "ready")
        err, deadline = "", time.time() + 20
        while "has since installed its own handler" not in err and time.time() < deadline:
            r, _, _ = select.select([p.stderr], [], [], max(0.0, deadline - time.time()))
            if not r:
                break
            line = p.stderr.readline()
            if not line:
                break
            err += line
        os.kill(p.pid, signal.SIGUSR2)
        out, rest = p.communicate(timeout=60)
        err += rest
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("own handler", out)
        w = tbtest.tbprof_warnings(err)
        self.assertEqual(len(w), 1, err)
        self.assertIn("TBPROF_SIGNAL=USR2: the job has since installed its own handler", w[0])
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_step_roundup_aligns_triggered_steps(self):
        # TBPROF_STEP_ROUNDUP=25: the signal's five steps, and a socket
        # steps=N request, begin at the next step number divisible by 25
        p = self.start_job(["-n", "600", "-m", "5", "-t", "1"], signal="USR2", step_roundup="25")
        now = int(self.wait_status(p.pid, "step=3").split("step=")[1].split()[0])
        os.kill(p.pid, signal.SIGUSR2)
        files = tbtest.wait_for_xplanes(self.logdir, 1, timeout=60)
        nums = step_nums(tbtest.load(files[0]))
        self.assertEqual(len(nums), 5, nums)
        self.assertEqual(nums[0] % 25, 0, nums)
        self.assertGreater(nums[0], now)
        self.assertEqual(nums, list(range(nums[0], nums[0] + 5)))
        self.assertIn("TBPROF_STEP_ROUNDUP=25", tbtest.load(files[0]).host.stats["tbprof_trigger"])
        st = self.wait_status(p.pid, "captures=1")
        now = int(st.split("step=")[1].split()[0])
        ans = ctl(p.pid, "start steps=2 run=rounded")
        a = int(re.search(r"capture waiting: steps (\d+)-", ans).group(1))
        self.assertEqual(a % 25, 0, ans)
        self.assertGreater(a, now, ans)
        files = tbtest.wait_for_xplanes(self.logdir, 2, timeout=60)
        got = [f for f in files if "/rounded/" in f]
        self.assertEqual(len(got), 1, files)
        self.assertEqual(step_nums(tbtest.load(got[0])), [a, a + 1])
        p.kill()
        p.communicate()

    def test_api_capture_stopped_before_its_sources_were_on_says_so(self):
        # tbprof_start() waits 1 s for the sources; GPU tracing taking longer
        # to come up (CUPTI's first load: a fake whose subscribe takes 2.5 s)
        # leaves the region before tbprof_stop() uncovered: nothing can be
        # written, and one warning says so (before: an info line only, so by
        # default no file and no word)
        if not os.path.exists(FAKE_CUPTI):
            self.skipTest("fake libcupti not built")
        script = os.path.join(self.tmp, "script")
        with open(script, "w") as f:
            f.write("")
        e = tbtest.with_cuda(tbtest.env(self.logdir, gpu="on", cupti_path=FAKE_CUPTI, cpu="off"))
        e["TBFAKE_CUPTI_SCRIPT"] = script
        e["TBFAKE_CUPTI_SUBSCRIBE_MS"] = "2500"
        p = tbtest.run([STEPS, "-n", "10", "-m", "10", "-a", "2,4"], env=e, timeout=60)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        w = [l for l in tbtest.tbprof_warnings(p.stderr) if "nothing written" in l]
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn("'api tbprof_start' ended before it began", w[0])
        self.assertIn("before its sources were on", w[0])

    def test_time_window_cut_by_exit_before_its_sources_were_on(self):
        # TBPROF_DURATION in a CUDA process (libcuda loaded) that ends while
        # GPU tracing is still coming up (a subscribe of 1 s): the warning
        # names the exit, not slow start-up (before: "starting them took
        # longer than it ran"). A process without CUDA (a helper program of
        # the job) never loads CUPTI: its window begins at once and its
        # host-only profile is written, without a warning
        if not os.path.exists(FAKE_CUPTI):
            self.skipTest("fake libcupti not built")
        script = os.path.join(self.tmp, "script")
        with open(script, "w") as f:
            f.write("")
        for name, cuda in (("cuda", True), ("no cuda", False)):
            with self.subTest(name):
                self.logdir = os.path.join(self.tmp, name.replace(" ", "_"))
                e = tbtest.env(self.logdir, python=True, gpu="on", cupti_path=FAKE_CUPTI, cpu="off", duration="3",
                               python_helper="off")
                if cuda:
                    tbtest.with_cuda(e)
                e["TBFAKE_CUPTI_SCRIPT"] = script
                e["TBFAKE_CUPTI_SUBSCRIBE_MS"] = "1000"  # (the exit waits 2 s for it)
                p = tbtest.run([tbtest.PYTHON, "-c", "import time; time.sleep(0.3)"], env=e, timeout=60)
                self.assertExitedOk(p)
                if not cuda:
                    self.assertEqual([l for l in tbtest.tbprof_warnings(p.stderr) if "profile written" not in l], [],
                                     p.stderr)
                    xs = tbtest.xplanes(self.logdir)
                    self.assertEqual(len(xs), 1, p.stderr)
                    self.assertIn("did not load CUDA", tbtest.load(xs[0]).host.stats["tbprof_gpu_off_reason"])
                    continue
                self.assertEqual(tbtest.xplanes(self.logdir), [])
                w = [l for l in tbtest.tbprof_warnings(p.stderr) if "ended before it began" in l]
                self.assertEqual(len(w), 1, p.stderr)
                self.assertIn("the process exited before its sources were on; nothing written", w[0])

    def test_socket_steps_longer_than_five_minutes_in_all(self):
        # `tbprof trigger PID --steps 5` on a job whose steps take 100 s
        # (a large model): all 5 are captured; the 300 s bound is on a job
        # that stops stepping, counted from its last step (before: from the
        # request, so the capture was cut after 3 steps, without a word).
        # The job's clock runs 100x (a shim): 100 s steps take 1 s here.
        if not os.path.exists(FAST_CLOCK):
            self.skipTest("shim not built")
        e = tbtest.env(self.logdir, socket="on", cpu="off", gpu="off", nvtx="off", start_wait_ms="0")
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], FAST_CLOCK)
        p = tbtest.spawn([STEPS, "-r", "-n", "12", "-m", "100000"], env=e)
        self.addCleanup(reap, p)
        tbtest.read_until(p, "ready")
        self.wait_status(p.pid, "step=0")
        ans = ctl(p.pid, "start steps=5")
        self.assertTrue(ans.startswith("capture started"), ans)
        # asked as `tbprof trigger` does, every 100 ms (the agent's timeouts
        # are on the real clock: each answer has it look at the fast one)
        self.wait_status(p.pid, "captures=1", timeout=60)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        nums = step_nums(prof)
        self.assertEqual(nums, list(range(nums[0], nums[0] + 5)), prof.host.stats["tbprof_trigger"])
        p.kill()
        p.communicate()

    def test_signal_is_off_by_default(self):
        # no TBPROF_SIGNAL: SIGUSR2 keeps its default action (terminate)
        p = self.start_job(["-n", "200", "-m", "10"])
        os.kill(p.pid, signal.SIGUSR2)
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, -signal.SIGUSR2)
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_tbprof_trigger_cli(self):
        self.need_cli()
        p = self.start_job(["-n", "300", "-m", "10"])
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--steps", "4"], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("capture started"), r.stdout)
        path = lines[-1]
        self.assertTrue(path.endswith(".xplane.pb") and os.path.exists(path), r.stdout)
        self.assertEqual(len(step_nums(tbtest.load(path))), 4)
        st = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--status"])
        self.assertEqual(st.returncode, 0, st.stderr)
        self.assertIn("last=" + path, st.stdout)
        p.kill()
        p.communicate()
        # no agent in that process any more / never had one
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--steps", "2"])
        self.assertEqual(r.returncode, 1)
        q = subprocess.Popen(["sleep", "3"], env=tbtest.env(self.logdir, preload=False))
        r = tbtest.run([tbtest.CLI, "trigger", str(q.pid)])
        q.kill()
        q.wait()
        self.assertEqual(r.returncode, 1)
        self.assertIn("no tbprof agent", r.stderr)
        # a child fork()ed without exec (a PostgreSQL backend, a data-loader
        # worker): the agent is there, its socket is the parent's
        prog = "import os, time\npid = os.fork()\nif pid: print(pid, flush=True); os.waitpid(pid, 0)\nelse: time.sleep(3)\n"
        q = tbtest.spawn([sys.executable, "-c", prog], env=tbtest.env(self.logdir, python=True))
        child = int(q.stdout.readline())
        r = tbtest.run([tbtest.CLI, "trigger", str(child)])
        q.kill()
        os.kill(child, signal.SIGKILL)
        q.communicate()
        self.assertEqual(r.returncode, 1)
        self.assertIn("has libtbprof.so loaded but no control socket of its own", r.stderr)
        self.assertIn("fork()ed without exec", r.stderr)
        r = tbtest.run([tbtest.CLI, "trigger", "notapid"])
        self.assertEqual(r.returncode, 2)

    def test_tbprof_trigger_cli_logdir_with_spaces(self):
        # a logdir with a space in its path ("My Drive", "run 3"): the CLI
        # prints each profile's whole path, the second time too (before: it
        # cut the status line's last= at the space, printed "/tmp/.../my"
        # and then, that cut path unchanged, said the next capture "ended
        # without a profile")
        self.need_cli()
        self.logdir = os.path.join(self.tmp, "my logs", "run 3")
        p = self.start_job(["-n", "400", "-m", "10", "-t", "1"])
        printed = []
        for _ in range(2):
            r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--steps", "2"], timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            path = r.stdout.splitlines()[-1]
            self.assertTrue(path.endswith(".xplane.pb") and os.path.exists(path), r.stdout)
            self.assertEqual(len(step_nums(tbtest.load(path))), 2)
            printed.append(path)
        self.assertEqual(printed, tbtest.xplanes(self.logdir))
        p.kill()
        p.communicate()

    def test_tbprof_trigger_while_a_profile_is_written(self):
        # a trigger while the job writes another profile (its TBPROF_STEPS
        # window's): the path that comes next in status is that one's, not
        # the trigger's. The CLI waits for the write first, then prints the
        # profile of the capture it asked for (before: the window's)
        self.need_cli()
        shim = tbtest.prog("libslow_profile_write.so")
        if not os.path.exists(shim):
            self.skipTest("shim not built")
        # (the agent answers between the pieces of a write: a window with
        # CPU samples has several, each made 300 ms slower)
        e = tbtest.env(self.logdir, steps="3,200", trace_json="on", cpu="on", cpu_hz=1000)
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
        e["TBTEST_SLOW_WRITE_MS"] = "300"
        p = tbtest.spawn([STEPS, "-r", "-n", "3000", "-m", "5", "-t", "1"], env=e)
        self.addCleanup(reap, p)
        tbtest.read_until(p, "ready")
        deadline = time.time() + 30
        st = ""
        while "state=writing" not in st and time.time() < deadline:
            st = ctl(p.pid, "status")
            time.sleep(0.01)
        self.assertIn("state=writing", st)
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--steps", "2"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        path = r.stdout.splitlines()[-1]
        self.assertTrue(path.endswith(".xplane.pb") and os.path.exists(path), r.stdout)
        trig = tbtest.load(path).host.stats.get("tbprof_trigger", "")
        self.assertFalse(trig.startswith("TBPROF_STEPS"), "printed the window's profile: %s (%s)" % (path, trig))
        self.assertEqual(len(tbtest.xplanes(self.logdir)), 2)
        p.kill()
        p.communicate()

    def test_tbprof_trigger_every(self):
        # tbprof trigger --steps N --every P --count K: the first profile's
        # path printed as usual, a note on the repeats; then K in all
        self.need_cli()
        p = self.start_job(["-n", "3000", "-m", "5"])
        for bad in (["--every", "2", "--steps", "2"], ["--every", "5"], ["--count", "3", "--steps", "2"],
                    ["--steps", "2", "--every", "x"]):
            r = tbtest.run([tbtest.CLI, "trigger", str(p.pid)] + bad)
            self.assertEqual(r.returncode, 2, bad)
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--steps", "2", "--every", "60", "--count", "3", "--run",
                        "cli"], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("again every 60 steps (3 in all)", r.stdout.splitlines()[0])
        self.assertIn("captures again every 60 steps, 3 in all, each in its own run folder", r.stderr)
        a = int(re.search(r"steps (\d+)-", r.stdout).group(1))
        files = tbtest.wait_for_xplanes(self.logdir, 3, timeout=60)
        self.assertEqual(sorted(os.path.basename(os.path.dirname(f)) for f in files),
                         sorted("cli_steps_%d-%d" % (a + k, a + k + 1) for k in (0, 60, 120)))
        # the first one, once written (the CLI asks every 100 ms; the next
        # is written 300 ms later; the agent need not be idle then)
        self.assertEqual(r.stdout.splitlines()[-1], [f for f in files if "_steps_%d-" % a in f][0])
        self.assertNotIn("waiting=", self.wait_status(p.pid, "captures=3"))
        p.kill()
        p.communicate()

    def test_tbprof_trigger_several_processes_same_steps_one_folder(self):
        self.need_cli()
        # two "ranks" at different step numbers and speeds
        p = self.start_job(["-n", "3000", "-m", "4", "-t", "1"])
        time.sleep(0.3)
        q = self.start_job(["-n", "3000", "-m", "7", "-t", "1"])
        lst = tbtest.run([tbtest.CLI, "trigger", "--list"])
        self.wait_status(q.pid, "step=1")  # both are stepping (a process without steps is left out)
        self.assertEqual(lst.returncode, 0, lst.stderr)
        for pid in (p.pid, q.pid):
            self.assertRegex(lst.stdout, r"(?m)^%d +idle +(\d+|-) +0  .*steps" % pid)  # "-": no step yet
        # --all reaches every agent of this user (read-only here: ctest runs other tests' jobs beside)
        st = tbtest.run([tbtest.CLI, "trigger", "--all", "--status"])
        for pid in (p.pid, q.pid):
            self.assertRegex(st.stdout, r"(?m)^%d: state=idle step=-?\d+ captures=0" % pid)
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), str(q.pid), "--steps", "4"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        paths = [line for line in r.stdout.splitlines() if line.endswith(".xplane.pb")]
        self.assertEqual(len(paths), 2, r.stdout)
        self.assertEqual(len({os.path.dirname(x) for x in paths}), 1, "one run folder: %s" % paths)
        got = [step_nums(tbtest.load(x)) for x in paths]
        self.assertEqual(len(got[0]), 4, got)
        self.assertEqual(got[0], got[1], "the same step numbers in both")
        self.assertEqual(got[0], list(range(got[0][0], got[0][0] + 4)))
        # --at-step: a window given by number; --stop cancels it while it waits
        st = ctl(p.pid, "status")
        far = int(st.split("step=")[1].split()[0]) + 100000
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--steps", "2", "--at-step", str(far), "--no-wait"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("capture waiting: steps %d-%d" % (far, far + 1), r.stdout)
        lst = tbtest.run([tbtest.CLI, "trigger", "--list"])
        self.assertRegex(lst.stdout, r"(?m)^%d +waiting:%d-%d " % (p.pid, far, far + 1))
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--stop"])
        self.assertIn("capture cancelled", r.stdout)
        # given up on after --timeout: the window is taken back, not left to fire later
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--steps", "2", "--at-step", str(far), "--timeout", "0.5"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("1 profile not written after 0.5 s", r.stderr)
        self.assertIn("process %d: capture cancelled" % p.pid, r.stderr)
        self.assertNotIn("waiting=", ctl(p.pid, "status"))
        for x in (p, q):
            x.kill()
            x.communicate()

    def test_jobs_in_pid_namespaces_that_share_the_network(self):
        # two containers on the host's network (hostNetwork pods) with a job
        # each at pid 1 of its own pid namespace: both get their socket (the
        # second was refused, "Address already in use": both wanted
        # @tbprof.<uid>.1), and `tbprof trigger` given the host's pids
        # reaches each
        self.need_cli()
        wrap = ["unshare", "--pid", "--fork", "--mount-proc"]
        if not shutil.which("unshare") or tbtest.run(wrap + ["true"]).returncode != 0:
            self.skipTest("unshare --pid needs root (CAP_SYS_ADMIN)")
        jobs = []
        for _ in range(2):
            e = tbtest.env(self.logdir, preload=False)
            p = tbtest.spawn(wrap + ["env", "LD_PRELOAD=" + tbtest.preload_value(), STEPS, "-r", "-n", "3000",
                                     "-m", "10"], env=e)
            self.addCleanup(reap, p)
            tbtest.read_until(p, "ready")
            with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
                inner = int(f.read().split()[0])  # the job: pid 1 in its namespace
            with open("/proc/%d/status" % inner) as f:
                self.assertRegex(f.read(), r"NSpid:\s+%d\s+1\n" % inner)
            jobs.append((p, inner))
        lst = tbtest.run([tbtest.CLI, "trigger", "--list"])
        for _, inner in jobs:
            self.assertNotRegex(lst.stdout, r"(?m)^1 ", "pid 1 of another namespace is not ours to list")
            r = tbtest.run([tbtest.CLI, "trigger", str(inner), "--duration", "0.3", "--run", "ns%d" % inner],
                           timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("capture started: duration 0.3 s", r.stdout)
            paths = [x for x in r.stdout.splitlines() if x.endswith(".xplane.pb")]
            self.assertEqual(len(paths), 1, r.stdout)
            self.assertIn("/ns%d/" % inner, paths[0])
            self.assertEqual(tbtest.load(paths[0]).host.stats["tbprof_trigger"], "socket duration=0.3s")
        for p, inner in jobs:
            os.kill(inner, signal.SIGKILL)  # killing unshare alone leaves it running
            _, err = p.communicate(timeout=60)
            self.assertNotIn("control socket off", err)

    def test_tbprof_trigger_gives_up_on_a_stopped_process(self):
        self.need_cli()
        p = self.start_job(["-n", "3000", "-m", "5"])
        ctl(p.pid, "status")
        os.kill(p.pid, signal.SIGSTOP)
        self.addCleanup(lambda: p.poll() is None and os.kill(p.pid, signal.SIGCONT))
        # fill its listen backlog: a blocking connect() would now wait forever
        held = []
        for _ in range(64):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(relutil.addr(p.pid))
            except BlockingIOError:
                s.close()
                break
            held.append(s)
        self.addCleanup(lambda: [s.close() for s in held])
        t0 = time.monotonic()
        lst = tbtest.run([tbtest.CLI, "trigger", "--list"], timeout=60)
        self.assertRegex(lst.stdout, r"(?m)^%d +no-answer " % p.pid)
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--status"], timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("process %d did not answer within 10 s" % p.pid, r.stderr)
        self.assertLess(time.monotonic() - t0, 30, "bounded by the request timeouts")
        os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.communicate()

    def test_tbprof_trigger_waits_through_a_silent_agent(self):
        # the agent thread does not answer while it writes a profile (seconds,
        # for a large one): a few silent seconds are not "the process ended"
        self.need_cli()
        p = self.start_job(["-n", "3000", "-m", "5"])
        cli = subprocess.Popen([tbtest.CLI, "trigger", str(p.pid), "--duration", "0.5"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: cli.poll() is None and cli.kill())
        self.assertTrue(cli.stdout.readline().startswith("capture started"))
        os.kill(p.pid, signal.SIGSTOP)
        time.sleep(3.5)
        os.kill(p.pid, signal.SIGCONT)
        out, err = cli.communicate(timeout=60)
        self.assertEqual(cli.returncode, 0, err)
        path = out.splitlines()[-1]
        self.assertTrue(path.endswith(".xplane.pb") and os.path.exists(path), out + err)
        p.kill()
        p.communicate()

    def test_tbprof_trigger_tree_finds_the_ranks_under_a_launcher(self):
        self.need_cli()
        # a single-threaded launcher (sh, preloaded too) with two ranks under it
        # a single-threaded process with the agent under it too (sleep): left out
        cmd = 'sleep 60 & LD_PRELOAD="$RANK_PRELOAD" %s -n 3000 -m 5 -t 1 & ' \
              'LD_PRELOAD="$RANK_PRELOAD" %s -n 3000 -m 5 -t 1 & wait' % (STEPS, STEPS)
        env = tbtest.env(self.logdir, socket=None)
        env["RANK_PRELOAD"] = env["LD_PRELOAD"]
        # a fork under TSan's runtime hangs in the child: there, the shell and sleep run without the agent
        preloaded_sh = tbtest.SANITIZE != "thread"
        if not preloaded_sh:
            del env["LD_PRELOAD"]
        sh = tbtest.spawn(["sh", "-c", cmd], env=env)
        self.addCleanup(lambda: subprocess.run(["pkill", "-KILL", "-P", str(sh.pid)]) and reap(sh))
        deadline = time.time() + 30
        while time.time() < deadline:  # both ranks stepping, their sockets served
            kids = subprocess.run(["pgrep", "-P", str(sh.pid)], capture_output=True, text=True).stdout.split()
            try:
                kids = [k for k in kids if "steps" in cmdline(k)]
                if len(kids) == 2 and all("step=" in ctl(int(k), "status", timeout=0.5) for k in kids):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        r = tbtest.run([tbtest.CLI, "trigger", str(sh.pid), "--tree", "--duration", "0.3", "--run", "launch1"],
                       timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        if preloaded_sh:
            self.assertIn("1 single-threaded process under %d left out" % sh.pid, r.stderr)
        paths = sorted(line for line in r.stdout.splitlines() if line.endswith(".xplane.pb"))
        self.assertEqual(len(paths), 2, r.stdout)
        ranks = sorted(int(re.search(r"pid(\d+)", x).group(1)) for x in paths)
        self.assertNotIn(sh.pid, ranks)
        for x in paths:
            self.assertEqual(os.path.basename(os.path.dirname(x)), "launch1")
            self.assertIn("socket duration=0.3s", tbtest.load(x).host.stats["tbprof_trigger"])
        subprocess.run(["pkill", "-KILL", "-P", str(sh.pid)])
        sh.communicate(timeout=30)
        # nothing under it any more
        r = tbtest.run([tbtest.CLI, "trigger", str(os.getpid()), "--tree", "--status"])
        self.assertEqual(r.returncode, 1)

    def test_tbprof_trigger_tree_given_the_job_itself_says_so(self):
        # --tree with the training process's own pid (its data-loader
        # workers run no agent of their own): the job itself is named, with
        # the command that captures it
        self.need_cli()
        job = tbtest.spawn([STEPS, "-n", "3000", "-m", "5", "-t", "1"], env=tbtest.env(self.logdir, socket=None))
        self.addCleanup(lambda: job.poll() is None and (job.kill(), job.communicate()))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if "step=" in ctl(job.pid, "status", timeout=0.5):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        r = tbtest.run([tbtest.CLI, "trigger", str(job.pid), "--tree", "--status"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no process under %d runs the tbprof agent; %d itself does" % (job.pid, job.pid), r.stderr)
        self.assertIn("`tbprof trigger %d` without --tree" % job.pid, r.stderr)


if __name__ == "__main__":
    tbtest.main()
