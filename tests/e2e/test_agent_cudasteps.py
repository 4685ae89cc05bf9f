"""Steps from cudaProfilerStart/Stop (and cuProfilerStart/Stop), on real processes.

tests/e2e/progs/cudasteps.c marks each step with a cudaProfilerStart/Stop
pair around some host work and prints when it called them; the CUDA runtime is
tests/fakecuda's libcudart.so, which counts the calls that reach it. Each test
runs it under LD_PRELOAD=libtbprof.so, decodes the profile and compares the
step events with the ranges the program made. No GPU, no CUPTI needed."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402

PROG = tbtest.prog("cudasteps")
FAKE = os.path.join(tbtest.BUILD, "fakecuda", "libcudart.so")
# ns: printing and scheduling between the program's clock read and the call
# (longer under the sanitizers: CI once saw 16 ms under TSan on a busy VM)
SLACK = 5_000_000 * {"address": 2, "thread": 4}.get(tbtest.SANITIZE, 1)


def parse(stdout):
    ranges, rc, fwd = {}, None, None
    for line in stdout.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "range":
            ranges[int(f[1])] = (int(f[2]), int(f[3]))
        elif f[0] == "rc":
            rc = tuple(int(x.split("=")[1]) for x in f[1:])
        elif f[0] == "forwarded":
            fwd = tuple(int(x.split("=")[1]) for x in f[1:])
    return ranges, rc, fwd


class CudaProfilerSteps(tbtest.TestCase):
    def run_prog(self, args, logdir=None, **tb):
        p = tbtest.spawn([PROG] + args, env=tbtest.env(logdir or self.logdir, **tb))
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        return p.pid, out, err

    def check_steps(self, prof, first, last, ranges, pid, ms, ends_at_stop=True):
        steps = prof.steps()
        self.assertEqual([n for n, _, _ in steps], list(range(first, last + 1)), prof.path)
        for n, ev, line in steps:
            start, stop = ranges[n]
            self.assertEqual(line.id, pid, "step %d on the calling thread's line" % n)
            # begins at the cudaProfilerStart call
            self.assertGreaterEqual(ev.start_ns, start)
            # (the window's first boundary may wait for the sources to start)
            wait = prof.host.stats.get("tbprof_start_wait_ns", 0) if n == first else 0
            self.assertLess(ev.start_ns - start, SLACK + wait, "step %d starts late" % n)
            self.assertGreaterEqual(ev.dur_ns, ms * 1e6 * 0.9, "step %d shorter than its work" % n)
            if n < last:
                # runs to the next start
                self.assertLessEqual(abs(ev.end_ns - ranges[n + 1][0]), SLACK)
            elif ends_at_stop:
                # the window's last step ends at its cudaProfilerStop: the
                # capture stopped there, not at the next start
                self.assertLessEqual(ev.end_ns, stop)
                self.assertLess(ev.end_ns, ranges[n + 1][0] if n + 1 in ranges else stop + 1)
        end = prof.host.stats.get("tbprof_capture_end_ns")
        if ends_at_stop:
            self.assertLessEqual(end, ranges[last][1], "capture ended at the last step's stop")
        for ev in prof.host.events():
            self.assertGreaterEqual(ev.start_ns, steps[0][1].start_ns)
            self.assertLessEqual(ev.end_ns, end)

    def one_profile(self, logdir=None):
        files = tbtest.xplanes(logdir or self.logdir)
        self.assertEqual(len(files), 1, files)
        return tbtest.load(files[0])

    def test_runtime_linked_globally(self):
        pid, out, err = self.run_prog(["-n", "8", "-m", "3", "-g", "4", "-L", FAKE], steps="2,4")
        ranges, rc, fwd = parse(out)
        self.assertEqual(fwd, (8, 8), "every call reached the real runtime")
        self.assertEqual(rc, (0, 0))
        self.check_steps(self.one_profile(), 2, 4, ranges, pid, 3)
        self.assertEqual(tbtest.tbprof_warnings(err), [])
        self.assertNoPartialFiles(self.logdir)

    def test_api_steps_first_then_cuda_ranges_are_ignored(self):
        # tbprof_step() and cudaProfilerStart mark the same steps: steps are
        # counted once, from the API, which marked one first
        pid, out, err = self.run_prog(["-n", "8", "-m", "3", "-g", "4", "-L", FAKE, "-a"], steps="2,4")
        ranges, rc, fwd = parse(out)
        api = [int(l.split()[2]) for l in out.splitlines() if l.startswith("api ")]
        self.assertEqual(api, list(range(8)), "tbprof_step() numbered every step once")
        self.assertEqual(fwd, (8, 8))
        self.assertEqual(rc, (0, 0))
        # the API's step runs to the next tbprof_step(), not to the stop
        self.check_steps(self.one_profile(), 2, 4, ranges, pid, 3, ends_at_stop=False)
        st = self.one_profile().host.stats
        self.assertEqual(st.get("tbprof_step_source"), "tbprof_step()")
        self.assertGreaterEqual(st.get("tbprof_steps_ignored", 0), 5)
        self.assertEqual([w.split(": ", 1)[1] for w in tbtest.tbprof_warnings(err)],
                         ["steps are counted from tbprof_step(), which marked one first; step boundaries from "
                          "cudaProfilerStart/Stop are ignored"])

    def test_runtime_loaded_locally_is_found(self):
        # RTLD_LOCAL (as a Python extension's dependency): RTLD_NEXT cannot
        # see it; the wrapper finds it among the loaded objects. The fake's
        # return code comes back unchanged.
        e = tbtest.env(self.logdir, steps="1,3")
        e["FAKECUDA_RC"] = "7"
        p = tbtest.spawn([PROG, "-n", "6", "-m", "3", "-l", FAKE], env=e)
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        ranges, rc, fwd = parse(out)
        self.assertEqual(fwd, (6, 6))
        self.assertEqual(rc, (7, 7))
        self.check_steps(self.one_profile(), 1, 3, ranges, p.pid, 3)

    def test_runtime_loaded_locally_while_another_thread_loads_a_library(self):
        # the look-up among the loaded objects meets another thread's
        # dlopen() (a shim makes them meet): both return, the call is
        # forwarded and counted, the job ends
        shim = tbtest.prog("libdlopen_race.so")
        other = os.path.join(tbtest.BUILD, "fakecudadrv", "libcuda.so.1")
        if not os.path.exists(shim) or not os.path.exists(other):
            self.skipTest("shim or fake libcuda (built with CUPTI only) not built")
        e = tbtest.env(self.logdir, steps="1,2")
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
        e["TBTEST_DLOPEN_OTHER"] = other
        p = tbtest.spawn([PROG, "-n", "4", "-m", "2", "-l", FAKE], env=e)
        try:
            out, err = p.communicate(timeout=30 * relutil.sanitizer_slowdown())
        except Exception:
            p.kill()
            out, err = p.communicate()
            self.fail("the job hung in its first cudaProfilerStart (loader deadlock): " + err)
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("other loaded: yes", err)
        ranges, rc, fwd = parse(out)
        self.assertEqual(fwd, (4, 4))
        self.check_steps(self.one_profile(), 1, 2, ranges, p.pid, 2)

    def test_runtime_unloaded_by_the_job(self):
        # a job that dlclose()s its CUDA runtime (a plugin unloaded) and
        # calls cudaProfilerStart again: the wrapper does not jump into
        # unmapped code; the runtime it forwards to stays loaded
        for flag in ("-l", "-L"):
            with self.subTest(flag=flag):
                p = tbtest.run([PROG, "-n", "3", "-m", "1", flag, FAKE, "-c"], env=tbtest.env(self.logdir))
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertIn("after dlclose start=0 stop=0", p.stdout)
                self.assertEqual(parse(p.stdout)[2], (3, 3))

    def test_driver_api(self):
        pid, out, _ = self.run_prog(["-D", "-n", "6", "-m", "3", "-L", FAKE], steps="3")
        ranges, rc, fwd = parse(out)
        self.assertEqual(fwd, (6, 6))
        self.check_steps(self.one_profile(), 3, 3, ranges, pid, 3)

    def test_single_range_is_step_zero(self):
        # nsys-style: one start/stop pair around the region of interest
        pid, out, _ = self.run_prog(["-1", "-n", "5", "-m", "4", "-g", "30", "-L", FAKE], steps="0")
        ranges, _, fwd = parse(out)
        self.assertEqual(fwd, (1, 1))
        prof = self.one_profile()
        self.check_steps(prof, 0, 0, ranges, pid, 20)
        # and nothing of the 30 ms after the stop
        self.assertLessEqual(prof.host.stats["tbprof_capture_end_ns"], ranges[0][1])

    def test_no_cuda_runtime_returns_success(self):
        pid, out, err = self.run_prog(["-n", "6", "-m", "3"], steps="2,3")
        ranges, rc, fwd = parse(out)
        self.assertEqual(rc, (0, 0))
        self.assertEqual(fwd, (-1, -1))
        self.check_steps(self.one_profile(), 2, 3, ranges, pid, 3)
        # one warning, once, for the first call
        self.assertEqual(len(tbtest.tbprof_warnings(err)), 1, err)
        self.assertOneWarning(err, "cudaProfilerStart")

    def test_off_forwards_without_counting(self):
        pid, out, err = self.run_prog(["-n", "6", "-m", "2", "-L", FAKE], steps="1,2", cuda_steps="off")
        _, rc, fwd = parse(out)
        self.assertEqual(fwd, (6, 6))
        self.assertEqual(rc, (0, 0))
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_idle_without_window_writes_nothing(self):
        pid, out, err = self.run_prog(["-n", "6", "-m", "1", "-L", FAKE])
        self.assertEqual(parse(out)[2], (6, 6))
        self.assertFalse(os.path.exists(self.logdir))
        self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_bad_mode_warns_once_and_uses_on(self):
        pid, out, err = self.run_prog(["-n", "5", "-m", "2", "-L", FAKE], steps="1,2", cuda_steps="sometimes")
        self.assertOneWarning(err, "TBPROF_CUDA_STEPS")
        self.check_steps(self.one_profile(), 1, 2, parse(out)[0], pid, 2)

    def test_callback_mode_is_not_offered(self):
        # a CUPTI-callback mode would hold CUPTI while idle; not built: one
        # warning naming the variable, the wrappers count as with "on"
        pid, out, err = self.run_prog(["-n", "5", "-m", "2", "-L", FAKE], steps="1,2", cuda_steps="callback")
        ranges, _, fwd = parse(out)
        self.assertEqual(fwd, (5, 5))
        self.assertIn("on | off", self.assertOneWarning(err, "TBPROF_CUDA_STEPS"))
        self.check_steps(self.one_profile(), 1, 2, ranges, pid, 2)

    def test_real_cuda_runtime(self):
        # the toolkit's shared libcudart: the wrapper forwards to it and hands
        # back exactly what it returns (an error code on a machine without a
        # GPU driver, 0 on a GPU machine), and the steps are counted
        real = [p for p in ("/usr/local/cuda/lib64/libcudart.so", "/usr/local/cuda/lib/libcudart.so")
                if os.path.exists(p)]
        if not real:
            self.skipTest("no CUDA toolkit libcudart.so here")
        direct = tbtest.run([PROG, "-n", "4", "-m", "1", "-L", real[0]], env=tbtest.env(preload=False))
        self.assertExitedOk(direct)
        want = parse(direct.stdout)[1]
        pid, out, _ = self.run_prog(["-n", "6", "-m", "3", "-L", real[0]], steps="2,3")
        ranges, rc, _ = parse(out)
        self.assertEqual(rc, want, "same return codes as the runtime called directly")
        self.check_steps(self.one_profile(), 2, 3, ranges, pid, 3)

    def test_without_preload_the_program_runs(self):
        p = tbtest.run([PROG, "-n", "3", "-m", "1", "-L", FAKE], env=tbtest.env(self.logdir, preload=False))
        self.assertExitedOk(p)
        self.assertEqual(parse(p.stdout)[2], (3, 3))


if __name__ == "__main__":
    tbtest.main()
