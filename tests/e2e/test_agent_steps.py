"""Step windows from TBPROF_STEPS and from the C API, on real processes.

Each test runs tests/e2e/progs/steps.c under LD_PRELOAD, decodes what it
wrote and compares the step events with what the program did (it prints the
epoch-ns start of every step with -s)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402

STEPS = tbtest.prog("steps")


class Printed(dict):
    """{step: epoch ns printed just before its tbprof_step() call}, with
    .after {step: epoch ns just after the call returned} and .stops
    [(before, after)] around each tbprof_stop() call."""

    def __init__(self):
        super().__init__()
        self.after, self.stops = {}, []


def printed_steps(stdout):
    """Printed steps and the end time from `steps -s` output."""
    starts, end = Printed(), None
    for line in stdout.splitlines():
        f = line.split()
        if f and f[0] == "step":
            starts[int(f[1])] = int(f[2])
            starts.after[int(f[1])] = int(f[3])
        elif f and f[0] == "stop":
            starts.stops.append((int(f[1]), int(f[2])))
        elif f and f[0] == "end":
            end = int(f[1])
    return starts, end


class StepWindows(tbtest.TestCase):
    def run_steps(self, args, **tb):
        p = tbtest.run([STEPS, "-s"] + args, env=tbtest.env(self.logdir, **tb))
        self.assertExitedOk(p)
        return p

    def check_window(self, prof, first, last, starts, pid, ms, step_aligned=True):
        steps = prof.steps()
        nums = [n for n, _, _ in steps]
        self.assertEqual(nums, list(range(first, last + 1)), "step numbers in %s" % prof.path)
        for n, ev, line in steps:
            # on the calling thread's line (the main thread: tid == pid)
            self.assertEqual(line.id, pid)
            # starts at the program's tbprof_step call (between the times it
            # printed just before and just after the call: exact under any
            # load), spans to the next step's call or to the tbprof_stop()
            # call that ended the capture between the two
            self.assertGreaterEqual(ev.start_ns, starts[n])
            self.assertLessEqual(ev.start_ns, starts.after[n], "step %d starts late" % n)
            nxt = starts.get(n + 1)
            stop = [s for s in starts.stops if s[0] >= starts.after[n] and (nxt is None or s[1] <= nxt)]
            end = stop[0] if stop else (nxt, starts.after[n + 1]) if nxt is not None else None
            if end:
                self.assertGreaterEqual(ev.end_ns, end[0], "step %d ends early" % n)
                self.assertLessEqual(ev.end_ns, end[1], "step %d ends late" % n)
            self.assertGreaterEqual(ev.dur_ns, ms * 1_000_000 * 0.9, "step %d shorter than its work" % n)
        # nothing on the host plane outside [start of first, start of last+1);
        # an API capture starts when tbprof_start() was called, a moment
        # before the first step's boundary: its window begins there.
        lo = steps[0][1].start_ns
        if not step_aligned:
            lo = min(lo, prof.host.stats.get("tbprof_capture_begin_ns", lo))
        hi = steps[-1][1].end_ns
        for ev in prof.host.events():
            self.assertGreaterEqual(ev.start_ns, lo)
            self.assertLessEqual(ev.start_ns, hi)
        self.assertEqual(prof.host.stats.get("pid"), pid)

    def test_env_window_exact_steps(self):
        p = tbtest.spawn([STEPS, "-s", "-n", "30", "-m", "4"], env=tbtest.env(self.logdir, steps="10,20"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        starts, _ = printed_steps(out)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, files)
        prof = tbtest.load(files[0])
        self.check_window(prof, 10, 20, starts, p.pid, 4)
        self.assertIn("10-20", prof.host.stats.get("tbprof_trigger", ""))
        # the sources were asked for and said why they are off
        self.assertIn("tbprof_gpu_off_reason", prof.host.stats)
        self.assertIn("tbprof_cpu_off_reason", prof.host.stats)
        self.assertTrue(any("gpu" in w for w in prof.warnings), prof.warnings)
        # TensorBoard's marker file and the trace JSON are there too
        self.assertTrue(any(f.endswith(".profile-empty") for f in os.listdir(self.logdir)))
        self.assertTrue(os.path.exists(files[0].replace(".xplane.pb", ".trace.json.gz")))
        self.assertNoPartialFiles(self.logdir)

    def test_dash_form_and_step_num_duplicates_merge(self):
        p = tbtest.spawn([STEPS, "-s", "-N", "-n", "12", "-m", "3"], env=tbtest.env(self.logdir, steps="4-6"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1)
        self.check_window(tbtest.load(files[0]), 4, 6, printed_steps(out)[0], p.pid, 3)

    def test_single_step_and_step_zero(self):
        for spec, first, last in (("5", 5, 5), ("0,2", 0, 2)):
            logdir = os.path.join(self.tmp, "l" + spec.replace(",", "_"))
            p = tbtest.spawn([STEPS, "-s", "-n", "10", "-m", "3"], env=tbtest.env(logdir, steps=spec))
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
            files = tbtest.xplanes(logdir)
            self.assertEqual(len(files), 1, spec)
            self.check_window(tbtest.load(files[0]), first, last, printed_steps(out)[0], p.pid, 3)

    def test_several_windows_are_separate_runs(self):
        # windows far enough apart that a sanitizer build on a loaded
        # machine has written one before the next begins (12-14 was
        # missed once: still writing 3-5)
        p = tbtest.spawn([STEPS, "-s", "-n", "70", "-m", "3"],
                         env=tbtest.env(self.logdir, steps="3-5;25,27;55-56", run="job7"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        starts, _ = printed_steps(out)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 3, files)
        runs = sorted(os.path.basename(os.path.dirname(f)) for f in files)
        self.assertEqual(runs, ["job7_steps_25-27", "job7_steps_3-5", "job7_steps_55-56"])
        for f in files:
            run = os.path.basename(os.path.dirname(f))
            a, b = run.split("_steps_")[1].split("-")
            self.check_window(tbtest.load(f), int(a), int(b), starts, p.pid, 3)

    def runs_and_windows(self, files):
        """{run folder: (first, last)} read from "<run>_steps_A-B" names."""
        out = {}
        for f in files:
            run = os.path.basename(os.path.dirname(f))
            a, b = run.split("_steps_")[1].split("-")
            out[run] = (int(a), int(b))
        return out

    def test_repeating_window_every_p_steps(self):
        # "/P": the window again every P steps, to the end of the job
        ms = 3 * relutil.sanitizer_slowdown()
        p = tbtest.spawn([STEPS, "-s", "-n", "58", "-m", str(ms)],
                         env=tbtest.env(self.logdir, steps="2-3;8-9/20", run="cont"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(tbtest.tbprof_warnings(err), [])
        starts, _ = printed_steps(out)
        files = tbtest.xplanes(self.logdir)
        wins = self.runs_and_windows(files)
        self.assertEqual(sorted(wins.values()), [(2, 3), (8, 9), (28, 29), (48, 49)], sorted(wins))
        for f in files:
            first, last = wins[os.path.basename(os.path.dirname(f))]
            prof = tbtest.load(f)
            self.check_window(prof, first, last, starts, p.pid, ms)
            self.assertIn("%d-%d" % (first, last), prof.host.stats.get("tbprof_trigger", ""))
        self.assertNoPartialFiles(self.logdir)

    def test_repeating_window_count_and_resumed_job(self):
        # "/PxK": K windows in all. A job resumed from a checkpoint numbers
        # its steps from 5002 (tbprof_step_num): the repeats already behind
        # it are skipped in one go, the next due one is captured.
        ms = 2 * relutil.sanitizer_slowdown()
        p = tbtest.spawn([STEPS, "-s", "-N", "-o", "5002", "-n", "55", "-m", str(ms)],
                         env=tbtest.env(self.logdir, steps="5-6/15x340", run="r", log="info"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        starts, _ = printed_steps(out)
        wins = self.runs_and_windows(tbtest.xplanes(self.logdir))
        # 5 + 15k: 5000-5001 (k = 333) ended before step 5002, so 5015,
        # 5030, 5045 (k = 334..336); x340 ends them at k = 339 (5090), past
        # this job's last step (5056)
        self.assertEqual(sorted(wins.values()), [(5015, 5016), (5030, 5031), (5045, 5046)], sorted(wins))
        for f in tbtest.xplanes(self.logdir):
            first, last = wins[os.path.basename(os.path.dirname(f))]
            self.check_window(tbtest.load(f), first, last, starts, p.pid, ms)
        # one line for the skip, not one per missed repeat
        missed = [l for l in err.splitlines() if "missed" in l]
        self.assertEqual(len(missed), 1, missed)
        # (steps long enough that each profile is written before the next
        # window: else it begins at the first step after, as documented)
        p = tbtest.spawn([STEPS, "-N", "-n", "60", "-m", str(2 * relutil.sanitizer_slowdown())],
                         env=tbtest.env(os.path.join(self.tmp, "k2"), steps="3-4/20x2", run="r"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        wins = self.runs_and_windows(tbtest.xplanes(os.path.join(self.tmp, "k2")))
        self.assertEqual(sorted(wins.values()), [(3, 4), (23, 24)], "x2: two windows, then none")

    def test_window_past_the_end_writes_nothing(self):
        p = self.run_steps(["-n", "5", "-m", "1"], steps="10,20")
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        self.assertFalse(os.path.exists(self.logdir), "no trigger: nothing at all under the logdir")
        # a process that used no CUDA says nothing (a helper program of the job)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])

    def test_no_step_marked_is_said_where_cuda_ran(self):
        # TBPROF_STEPS in a process that used CUDA but whose steps no source
        # counted (a script run without the step hooks): one line at exit
        # naming the step sources. A process without CUDA (a launcher, a
        # tool, a compile worker of the same job) says nothing.
        cuda = os.path.join(tbtest.BUILD, "fakecudadrv", "libcuda.so.1")
        load = "import ctypes; ctypes.CDLL(%r)" % cuda
        steps = "; import tbprof; [tbprof.step() for _ in range(5)]"
        short = "TBPROF_STEPS 10-20: the process ended at step 4, before the window; nothing captured"
        for name, code, said in (("cuda", load, True), ("plain", "pass", False), ("short", load + steps, short),
                                 ("short, no cuda", "pass" + steps, False)):
            with self.subTest(name):
                e = tbtest.env(self.logdir, python=True, steps="10,20", python_helper="off")
                e["PYTHONPATH"] = tbtest.PYHELPER
                p = tbtest.run([tbtest.PYTHON, "-c", code], env=e)
                self.assertExitedOk(p)
                w = tbtest.tbprof_warnings(p.stderr)
                if not said:
                    self.assertEqual(w, [])
                    continue
                self.assertEqual(len(w), 1, p.stderr)
                if said is not True:
                    self.assertEqual(w[0].split(": ", 1)[1], said)
                    continue
                self.assertIn("TBPROF_STEPS 10-20: no step was marked in this process", w[0])
                self.assertIn("tbprof.step()", w[0])
                self.assertIn("TBPROF_NVTX_STEP", w[0])

    def test_window_not_begun_at_exit_is_said_where_cuda_ran(self):
        # the same for a process that ends in a step window's lead-in step
        # (the window armed: said nothing before), and for one that ends
        # before TBPROF_DELAY's window begins (said nothing before)
        cuda = os.path.join(tbtest.BUILD, "fakecudadrv", "libcuda.so.1")
        load = "import ctypes; ctypes.CDLL(%r)" % cuda
        armed = "; import tbprof; [tbprof.step() for _ in range(10)]"
        cases = (("armed", load + armed, dict(steps="10,20"),
                  "TBPROF_STEPS 10-20: the process ended at step 9, before the window; nothing captured"),
                 ("delay", load, dict(delay="30", duration="1"), "TBPROF_DELAY 30s: the process ended "),
                 ("delay, no cuda", "pass", dict(delay="30", duration="1"), None))
        for name, code, kw, said in cases:
            with self.subTest(name):
                e = tbtest.env(self.logdir, python=True, python_helper="off", **kw)
                e["PYTHONPATH"] = tbtest.PYHELPER
                p = tbtest.run([tbtest.PYTHON, "-c", code], env=e)
                self.assertExitedOk(p)
                w = tbtest.tbprof_warnings(p.stderr)
                if said is None:
                    self.assertEqual(w, [])
                    continue
                self.assertEqual(len(w), 1, p.stderr)
                self.assertTrue(w[0].split(": ", 1)[1].startswith(said), w[0])
                if name == "delay":
                    self.assertTrue(w[0].endswith("s after start-up, before the window began; nothing captured"),
                                    w[0])
                self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_window_cut_by_exit_keeps_what_ran(self):
        # the program ends at step 8, inside 5..20: steps 5..7 were complete
        p = tbtest.spawn([STEPS, "-s", "-n", "30", "-m", "3", "-X", "8", "-x", "3"],
                         env=tbtest.env(self.logdir, steps="5,20"))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 3, "the job's exit status is unchanged")
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, err)
        nums = [n for n, _, _ in tbtest.load(files[0]).steps()]
        self.assertEqual(nums, [5, 6, 7])
        self.assertNoPartialFiles(self.logdir)

    def test_api_start_stop_from_c(self):
        p = tbtest.spawn([STEPS, "-s", "-n", "20", "-m", "3", "-a", "6,11"], env=tbtest.env(self.logdir))
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, err)
        prof = tbtest.load(files[0])
        self.check_window(prof, 6, 11, printed_steps(out)[0], p.pid, 3, step_aligned=False)
        self.assertIn("api", prof.host.stats.get("tbprof_trigger", ""))
        # tbprof_last_profile() names the file (printed by the program at exit,
        # possibly before the agent finished: then it is empty)
        last = [l for l in out.splitlines() if l.startswith("done")][0].split("last=")[1]
        self.assertIn(last, ("", files[0]))

    def test_back_to_back_api_captures(self):
        # tbprof_stop(); tbprof_start(): the second region must be captured
        # even while the agent is still collecting the first
        n = 4
        p = tbtest.run([tbtest.prog("apiloop"), str(n), "5"], env=tbtest.env(self.logdir))
        self.assertExitedOk(p)
        rcs = [int(l.split()[2]) for l in p.stdout.splitlines() if l.startswith("start ")]
        self.assertEqual(rcs, [0] * n, p.stdout + p.stderr)
        files = tbtest.wait_for_xplanes(self.logdir, n)
        self.assertEqual(len(files), n)
        firsts = sorted(tbtest.load(f).steps()[0][0] for f in files)
        self.assertEqual(firsts, [100 + i for i in range(n)])

    def test_without_preload_nothing_happens(self):
        p = tbtest.run([STEPS, "-n", "12", "-m", "1"], env=tbtest.env(self.logdir, preload=False, steps="2,4"))
        self.assertExitedOk(p)
        self.assertFalse(os.path.exists(self.logdir))


if __name__ == "__main__":
    tbtest.main()
