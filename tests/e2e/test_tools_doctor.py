"""`tbprof doctor`: a 0.3 s test capture in a child says, per source, ready or
off with the reason the agent recorded, and the exit status says whether
both work. GPU through the fake libcupti (ready) and a missing one (off);
CPU sampling refused by a seccomp filter (cpu_noperf) is named too."""

import os
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402

FAKE = os.path.join(tbtest.BUILD, "fakecupti", "libcupti.so")


class Doctor(tbtest.TestCase):
    def doctor(self, *args, wrap=(), logdir=None, cuda=True, **extra):
        """`tbprof doctor args`; cuda: a (bare, fake) libcuda.so.1 for its
        test capture to load, as on a machine with a driver."""
        env = tbtest.env()
        if cuda:
            tbtest.with_cuda_path(env)
        env.update(extra)
        env["TMPDIR"] = self.tmp
        env["TBPROF_LOGDIR"] = logdir or os.path.join(self.tmp, "logs")
        p = tbtest.run(list(wrap) + [tbtest.CLI, "doctor"] + list(args), env=env, timeout=120)
        self.assertEqual([f for f in os.listdir(self.tmp) if f.startswith("tbprof-doctor")], [],
                         "the test capture's folder is removed")
        return p

    def line(self, p, what):
        m = re.search(r"^  %s +(.*)$" % what, p.stdout, re.M)
        self.assertIsNotNone(m, p.stdout + p.stderr)
        return m.group(1)

    def test_gpu_ready_with_a_working_libcupti(self):
        if not os.path.exists(FAKE):
            self.skipTest("built without CUPTI")
        p = self.doctor("--cupti", FAKE)
        self.assertEqual(self.line(p, "agent"), "ready: a profile was written")
        self.assertRegex(self.line(p, "GPU tracing"),
                         r"^ready: %s \(CUPTI API \d+, cuptiSubscribe_v2 \(13.2 params\)\)$" % re.escape(FAKE))
        # what becomes of CUPTI after each capture (TBPROF_CUPTI_TEARDOWN);
        # with a CUPTI 13.0 (the fake's header) what that costs CUDA graphs
        self.assertEqual(self.line(p, "CUPTI after"),
                         "on: cuptiFinalize after the capture (TBPROF_CUPTI_TEARDOWN=auto); this CUPTI "
                         "(API 130001) numbers CUDA-graph launches wrongly once attached again: later "
                         "captures write graph work without correlation ids")
        fixed = self.doctor("--cupti", FAKE, TBFAKE_CUPTI_VERSION="130101")
        self.assertEqual(self.line(fixed, "CUPTI after"),
                         "on: cuptiFinalize after the capture (TBPROF_CUPTI_TEARDOWN=auto)")
        self.assertNotIn("CUPTI warning", p.stdout + fixed.stdout)
        # CUDA 13.0's first libcupti: its stop can deadlock, and the fix is named
        ga = self.doctor("--cupti", FAKE, TBFAKE_CUPTI_VERSION="130000")
        self.assertRegex(self.line(ga, "CUPTI warning"), r"\(CUPTI API 130000\), whose cuptiActivityDisable can "
                         r"deadlock .* libcupti 13\.0\.85 or later")
        cpu = self.line(p, "CPU sampling")
        # ready where perf_event works; either way the status says both or not
        self.assertEqual(p.returncode, 0 if cpu.startswith("ready:") else 1, p.stdout)
        if cpu.startswith("ready:"):
            self.assertRegex(cpu, r"^ready: [1-9]\d* samples in 0.3 s \(\w+ stacks; (user and kernel|user space "
                                  r"only \([^)]*\))\)$")

    def test_gpu_off_names_the_cause(self):
        missing = os.path.join(self.tmp, "nowhere", "libcupti.so")
        p = self.doctor("--cupti", missing)
        self.assertEqual(p.returncode, 1, p.stdout)
        gpu = self.line(p, "GPU tracing")
        if os.path.exists(FAKE):
            self.assertEqual(gpu, "off: libcupti not found at TBPROF_CUPTI_PATH=%s" % missing)
        else:
            self.assertTrue(gpu.startswith("off: "), gpu)

    def test_libcupti_from_python_packages(self):
        # a machine with pip's CUDA and no toolkit (the usual PyTorch box):
        # no libcupti for a plain program, but python3's packages have one
        # (nvidia/cu13/lib), which PyTorch and JAX jobs load themselves: the
        # doctor says so, names it for TBPROF_CUPTI_PATH, and tests with it.
        # A python3 first on PATH stands in for that environment's; the
        # toolkit here, if any, is hidden in a mount namespace
        if not os.path.exists(FAKE):
            self.skipTest("built without CUPTI")
        wrap = []
        if os.path.exists("/usr/local/cuda"):
            if os.geteuid() != 0 or not shutil.which("unshare"):
                self.skipTest("a CUDA toolkit here, and no mount namespace to hide it")
            empty = os.path.join(self.tmp, "empty")
            os.mkdir(empty)
            wrap = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /usr/local/cuda && exec "$@"', empty]
        pybin = os.path.join(self.tmp, "pybin")
        os.mkdir(pybin)
        pip = os.path.join(self.tmp, "site-packages", "nvidia", "cu13", "lib", "libcupti.so.13")
        os.makedirs(os.path.dirname(pip))
        shutil.copy(FAKE, pip)
        with open(os.path.join(pybin, "python3"), "w") as f:
            f.write("#!/bin/sh\necho %s\n" % pip)
        os.chmod(os.path.join(pybin, "python3"), 0o755)
        p = self.doctor(wrap=wrap, PATH=pybin + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        self.assertRegex(self.line(p, "libcupti"), r"^none for a plain program \(no CUDA toolkit\); python3's "
                         r"packages have %s, which PyTorch and JAX jobs load themselves" % re.escape(pip))
        self.assertRegex(self.line(p, "GPU tracing"), r"^ready: %s " % re.escape(pip))
        # without one there either: off, naming the search
        with open(os.path.join(pybin, "python3"), "w") as f:
            f.write("#!/bin/sh\necho\n")
        p = self.doctor(wrap=wrap, PATH=pybin + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        self.assertNotIn("  libcupti ", p.stdout)
        self.assertRegex(self.line(p, "GPU tracing"), r"^off: libcupti not found \(not loaded, TBPROF_CUPTI_PATH unset")
        # a python3 that never answers is given 10 s, then left
        with open(os.path.join(pybin, "python3"), "w") as f:
            f.write("#!/bin/sh\nexec sleep 60\n")
        t0 = time.time()
        p = self.doctor(wrap=wrap, PATH=pybin + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        self.assertLess(time.time() - t0, 45)
        self.assertNotIn("  libcupti ", p.stdout)
        self.assertRegex(self.line(p, "GPU tracing"), r"^off: libcupti not found")

    def test_no_driver(self):
        # a machine without a CUDA driver: the child cannot load libcuda, so
        # GPU tracing never starts, and the line says so (not "libcupti
        # not found" or a CUPTI error)
        try:
            import ctypes
            ctypes.CDLL("libcuda.so.1")
            self.skipTest("a CUDA driver is installed here")
        except OSError:
            pass
        p = self.doctor("--cupti", FAKE, cuda=False)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertRegex(self.line(p, "GPU tracing"), r"^off: no CUDA driver here \(libcuda.so.1: cannot open ")

    def test_cpu_refused_names_the_cause(self):
        p = self.doctor("--cupti", FAKE, wrap=[tbtest.prog("cpu_noperf")])
        if p.returncode == 3:
            self.skipTest("seccomp filters unavailable here: " + p.stderr.strip())
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("off: perf_event_open refused (EACCES", self.line(p, "CPU sampling"))

    def test_logdir(self):
        p = self.doctor("--cupti", FAKE)
        self.assertEqual(self.line(p, "logdir"), "ready: %s/logs (to be made under %s)" % (self.tmp, self.tmp))
        blocker = os.path.join(self.tmp, "file")
        with open(blocker, "w") as f:
            f.write("x")
        p = self.doctor("--cupti", FAKE, logdir=os.path.join(blocker, "logs"))
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertEqual(self.line(p, "logdir"), "off: %s/logs: %s: not a folder" % (blocker, blocker))

    def fake_python3(self, says, chatter=0):
        """A folder whose python3 prints `says` whatever it is asked (the
        doctor's questions: its version, pip's libcupti), after `chatter`
        lines of a site hook's output."""
        d = os.path.join(self.tmp, "bin-%d-%s" % (chatter, says.replace(" ", "_")))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "python3"), "w") as f:
            f.write("#!/bin/sh\n")
            for i in range(chatter):
                f.write("echo 'a site hook says hello, line %d, and then some more words'\n" % i)
            f.write("echo '%s'\n" % says)
        os.chmod(os.path.join(d, "python3"), 0o755)
        return d + ":" + os.environ.get("PATH", "/usr/bin:/bin")

    def test_python_frames(self):
        # whether python3's jobs get their functions named in the CPU
        # samples, by version (tbprof's own trampoline on 3.10 and 3.11)
        if not self.line(self.doctor("--cupti", FAKE), "CPU sampling").startswith("ready:"):
            self.skipTest("CPU sampling off here: no Python frames line")
        cases = [("3 12 0 x86_64", "python3 3.12: named in CPU samples during captures (CPython's perf trampoline)"),
                 ("3 13 1 x86_64", "python3 3.13: not named: a free-threaded build (tbprof leaves its trampoline off)"),
                 ("3 11 0 x86_64", "python3 3.11: named in CPU samples during captures (tbprof's own trampoline)"),
                 ("3 10 0 aarch64", "python3 3.10: not named: tbprof's own trampoline for 3.10 and 3.11 is "
                                    "x86-64's (this is aarch64)"),
                 ("3 9 0 x86_64", "python3 3.9: not named: CPython 3.9 has no perf trampoline, and tbprof's own "
                                  "needs 3.10 or later (py-spy names them)")]
        for says, want in cases:
            with self.subTest(says=says):
                p = self.doctor("--cupti", FAKE, PATH=self.fake_python3(says))
                self.assertEqual(self.line(p, "Python frames"), want)
        # the answer after 8 KB of a site hook's output (more than the doctor's buffer)
        p = self.doctor("--cupti", FAKE, PATH=self.fake_python3("3 11 0 x86_64", chatter=150))
        self.assertIn("python3 3.11: named", self.line(p, "Python frames"))
        # fp stacks: named where the evaluator's first bytes (sent as hex)
        # set up a frame pointer, as the agent tells
        fp_code = ("554889e5" + "41574156").ljust(128, "0")  # push %rbp; mov %rsp,%rbp
        nofp_code = "4157415641554154".ljust(128, "0")         # push %r15 ... (gcc's -O2)
        fp_cases = [("3 11 0 x86_64 " + nofp_code, "3.11: not named in fp stacks: this CPython keeps no frame pointers"),
                    ("3 13 0 x86_64 " + fp_code, "3.13: named in CPU samples during captures (frame-pointer stacks"),
                    ("3 13 0 x86_64 -", "3.13: named in frame-pointer stacks only where this CPython keeps frame "
                                        "pointers (not told: no ctypes)"),
                    ("3 13 0 x86_64", "3.13: named in frame-pointer stacks only where")]
        for says, want in fp_cases:
            with self.subTest(says=says[:20]):
                p = self.doctor("--cupti", FAKE, PATH=self.fake_python3(says), TBPROF_CPU_MODE="fp")
                self.assertIn(want, self.line(p, "Python frames"))
        # off as the agent reads it: any case, 0/no, or a bad value
        for off in ("off", "OFF", "0", "no", "bogus"):
            p = self.doctor("--cupti", FAKE, PATH=self.fake_python3("3 11 0 x86_64"), TBPROF_PY_TRAMPOLINE=off)
            self.assertEqual(self.line(p, "Python frames"), "python3 3.11: not named (TBPROF_PY_TRAMPOLINE=off)",
                             off)
        # the real python3 here, as it is
        p = self.doctor("--cupti", FAKE)
        self.assertRegex(self.line(p, "Python frames"), r"^python3 3\.\d+: ")
        # a python3 that does not answer (a site hook on a dead network
        # mount): given up on after 10 s, and said so
        slow = os.path.join(self.tmp, "slow-bin")
        os.makedirs(slow, exist_ok=True)
        with open(os.path.join(slow, "python3"), "w") as f:
            f.write("#!/bin/sh\nexec sleep 60\n")
        os.chmod(os.path.join(slow, "python3"), 0o755)
        t0 = time.monotonic()
        p = self.doctor("--cupti", FAKE, PATH=slow + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        self.assertEqual(self.line(p, "Python frames"), "not checked: python3 did not answer within 10 s")
        self.assertLess(time.monotonic() - t0, 40, "the doctor waited on it")
        # no python3 at all: no line (CPU sampling ready all the same)
        empty = os.path.join(self.tmp, "empty-bin")
        os.makedirs(empty, exist_ok=True)
        p = self.doctor("--cupti", FAKE, PATH=empty)
        self.assertTrue(self.line(p, "CPU sampling").startswith("ready:"), p.stdout)
        self.assertNotIn("Python frames", p.stdout)

    def test_bad_option(self):
        p = self.doctor("--frobnicate")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown option '--frobnicate'", p.stderr)

    def test_install_path_with_a_space(self):
        """ld.so splits LD_PRELOAD at spaces and colons: `tbprof run` and
        `doctor` from such an install say so (exit 2) instead of running the
        job with nothing preloaded."""
        import shutil
        root = os.path.join(self.tmp, "with space")
        os.makedirs(os.path.join(root, "bin"))
        os.makedirs(os.path.join(root, "lib"))
        cli = shutil.copy2(tbtest.CLI, os.path.join(root, "bin", "tbprof"))
        lib = shutil.copy2(tbtest.LIB, os.path.join(root, "lib", "libtbprof.so"))
        env = tbtest.env(preload=False)
        env["TMPDIR"] = self.tmp
        marker = os.path.join(self.tmp, "ran")
        p = tbtest.run([cli, "run", "--logdir", self.logdir, "--", "touch", marker], env=env)
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("tbprof run: cannot preload %s: its path has a space, and ld.so splits LD_PRELOAD" % lib,
                      p.stderr)
        self.assertFalse(os.path.exists(marker), "the job ran without the agent")
        p = tbtest.run([cli, "doctor"], env=env)
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("tbprof doctor: cannot preload %s: its path has a space, and ld.so splits LD_PRELOAD" % lib,
                      p.stderr)
        self.assertEqual([f for f in os.listdir(self.tmp) if f.startswith("tbprof-doctor")], [])


if __name__ == "__main__":
    tbtest.main()
