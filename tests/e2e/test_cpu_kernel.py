"""Kernel time in the CPU samples, on a real C program under LD_PRELOAD.

tests/e2e/progs/kernel_split.c splits one thread's CPU time between
user_work (arithmetic) and read_zero (read system calls on /dev/zero: the
kernel clears the buffer, so that time is kernel time), and prints what it
measured: the thread CPU time in each function and getrusage's user/system
time.

Where kernel mode may be sampled (root or CAP_PERFMON, or
kernel.perf_event_paranoid <= 1), the samples must give both back: the
share of samples with the "[kernel]" leaf and read_zero's share each within
16 points of read_zero's measured share of the thread's CPU time (alone they
agree within 3; a loaded machine drifts), read_zero mostly "[kernel]", and the kernel samples under
read_zero. Where it is refused (a shim makes
perf_event_open refuse kernel-mode events with EACCES, as paranoid=2 does
for a user; and, when the test runs as root, really so for the program run
as nobody), the capture goes on with user space only, silently, and says
so in tbprof_cpu_time: no "[kernel]" frames, and read_zero then shows only
its user-space part, at least 15 points under its measured share."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402
import cpusamples  # noqa: E402
import relutil  # noqa: E402


def parse(stdout):
    out = {}
    for line in stdout.splitlines():
        f = line.split()
        if f and f[0] in ("tid", "capture", "spent", "rusage"):
            out[f[0]] = [int(x) for x in f[1:]]
    return out


class CpuKernel(tbtest.TestCase):
    def setUp(self):
        super().setUp()
        cpusamples.skip_if_perf_refused(self)

    def capture(self, shim=None, nobody=False, min_samples=300):
        e = tbtest.env(self.logdir, cpu="on", cpu_hz=1000)
        prog = tbtest.prog("kernel_split")
        if shim:
            if not os.path.exists(shim):
                self.skipTest("shim not built")
            e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
        if nobody:  # copies another user can run, and a logdir it can write
            prog, lib = relutil.shared_copy(self.tmp, [prog, tbtest.LIB])
            e["LD_PRELOAD"] = relutil.preload_with(lib)
            os.makedirs(self.logdir, exist_ok=True)
            os.chmod(self.logdir, 0o1777)
        p = subprocess.run([prog, "-m", "1500"], env=e, capture_output=True, text=True, timeout=120,
                           preexec_fn=relutil.as_nobody if nobody else None)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)
        info = parse(p.stdout)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        line = prof.host.line(info["tid"][0])
        self.assertIsNotNone(line, "no line for the main thread")
        self.assertEqual(cpusamples.nesting_errors(line), [])
        c = cpusamples.counts([line])
        n = sum(v[0] for v in c.values())  # self counts: every sample once
        self.assertGreater(n, min_samples, c)
        user, read = info["spent"]
        utime, stime = info["rusage"]
        return prof, line, c, n, read / (user + read), stime / (utime + stime)

    def test_kernel_time_sampled(self):
        prof, line, c, n, read_truth, sys_truth = self.capture()
        how = prof.host.stats.get("tbprof_cpu_time")
        if how != "user and kernel":
            self.skipTest("kernel time not sampled here: %s" % how)
        kernel = c.get("[kernel]", [0, 0])[0]
        read = c.get("read_zero", [0, 0])[1]
        print("kernel: %d of %d samples in [kernel] = %.1f%% (system time %.1f%%); read_zero %.1f%% "
              "(measured %.1f%%)" % (kernel, n, 100 * kernel / n, 100 * sys_truth, 100 * read / n,
                                     100 * read_truth))
        self.assertGreater(sys_truth, 0.25, "the program spent too little time in the kernel to test")
        # getrusage's split of user and system time is itself sampled at
        # the scheduler tick on most kernels (on a loaded VM it said 38%
        # system where read_zero alone took 52% of the thread's CPU); the
        # thread CPU clock around read_zero is exact, and its time is
        # nearly all kernel: the kernel samples are measured against that.
        # Alone, the two agree within 3 points (here, also beside three busy
        # loops); beside other tests they drifted 10 points (default build),
        # 13 (a sanitizer's) and once 14 (CI, 2026-12-07: 46% of samples
        # where the clock said read_zero took 60%)
        self.assertAlmostEqual(kernel / n, read_truth, delta=0.16)
        self.assertAlmostEqual(read / n, read_truth, delta=0.16)
        self.assertGreater(kernel, read * 0.8)
        # "[kernel]" is a leaf on the user stack it ran for: under the
        # system call made by read_zero
        under = sum(e.stats.get("self_samples", 0) for e, anc in cpusamples.walk(line)
                    if e.name == "[kernel]" and any(a.name == "read_zero" for a in anc))
        self.assertGreaterEqual(under, kernel * 0.9, "[kernel] under read_zero in %d of %d" % (under, kernel))
        self.assertTrue(all(not any(a.name == "[kernel]" for a in anc)
                            for e, anc in cpusamples.walk(line)), "[kernel] must be a leaf")

    def test_kernel_time_refused_user_space_only(self):
        # user space only: about half the CPU time is sampled, and the run is
        # 1.5 s of wall time: on a busy machine (ctest -j3) 292 samples came
        self.check_user_only(self.capture(tbtest.prog("libno_kernel_perf.so"), min_samples=150))

    def test_kernel_time_refused_for_a_user_by_paranoid(self):
        # the real refusal: a user without CAP_PERFMON where
        # kernel.perf_event_paranoid >= 2 (the default)
        if not relutil.can_be_nobody():
            self.skipTest("needs root (runs the program as nobody)")
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            paranoid = int(f.read())
        if paranoid < 2:
            self.skipTest("kernel.perf_event_paranoid=%d lets every user sample kernel time" % paranoid)
        got = self.check_user_only(self.capture(nobody=True, min_samples=150))
        self.assertIn("perf_event_paranoid=%d" % paranoid, got)

    def check_user_only(self, captured):
        prof, line, c, n, read_truth, sys_truth = captured
        how = prof.host.stats.get("tbprof_cpu_time", "")
        # the sysctl named where it is the cause (>= 2), else the error
        self.assertRegex(how, r"^user space only \((kernel\.perf_event_paranoid=\d+ refuses kernel time|"
                              r"kernel time refused: EACCES)\)$")
        self.assertNotIn("[kernel]", c)
        read = c.get("read_zero", [0, 0])[1]
        print("user space only: read_zero %.1f%% of %d samples (measured %.1f%% of CPU time)"
              % (100 * read / n, n, 100 * read_truth))
        # the kernel's part of read_zero is not seen: its share falls well
        # below what the program measured
        self.assertLess(read / n, read_truth - 0.15)
        self.assertGreater(c.get("user_work", [0, 0])[1] + read, n * 0.9, c)
        return how


if __name__ == "__main__":
    tbtest.main()
