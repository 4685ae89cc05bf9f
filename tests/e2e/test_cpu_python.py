"""CPU sampling of a Python program under LD_PRELOAD (each CPython 3.12+ from
pyenv, perf trampoline on): tests/e2e/progs/cpu_split_py.py spends 60% of its
time in the Python function burn_a and 40% in burn_b. Samples must carry
Python frames (`py::burn_a:<file>` from /tmp/perf-<pid>.map), with the
callers found through the trampolines (py::work and py::main above them),
and give the split back within 5 points. CpuPythonTrampoline: without
PYTHONPERFSUPPORT, tbprof turns the trampoline on for a capture only.
Skipped (with the reason) without a CPython >= 3.12, under TSan, or where
perf_event_open is refused."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402
import cpusamples  # noqa: E402
import relutil  # noqa: E402

PROG = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "cpu_split_py.py")


def find_pythons(old=False):
    """CPython >= 3.12 (its perf trampoline writes /tmp/perf-<pid>.map), or
    with old, 3.10 and 3.11 (tbprof's own trampoline): the first found of
    each minor version, TBPROF_TEST_PY312 first."""
    cands = [os.environ.get("TBPROF_TEST_PY312", "")] if not old else []
    root = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    pat = "3.1[01].*" if old else "3.1[2-9]*"
    cands += sorted(glob.glob(os.path.join(root, "versions", pat, "bin", "python3")))
    cands += ["/usr/bin/python3.10", "/usr/bin/python3.11"] if old else ["/usr/bin/python3.12", "/usr/bin/python3.13"]
    found = {}
    for c in cands:
        if not c or not os.path.exists(c):
            continue
        r = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
        v = r.stdout.strip()
        if r.returncode == 0 and (v in ("3.10", "3.11") if old else v >= "3.12") and v not in found:
            found[v] = c
    return sorted(found.items())


def keeps_frame_pointers(python):
    """Whether python was built with -fno-omit-frame-pointer, from its
    build configuration (not the agent's own test of its code)."""
    r = subprocess.run([python, "-c", "import sysconfig; v = sysconfig.get_config_vars(); "
                        "print(any('-fno-omit-frame-pointer' in str(x) for x in v.values()) and "
                        "not any('-fomit-frame-pointer' in str(x) for x in v.values()))"],
                       capture_output=True, text=True)
    return r.stdout.strip() == "True"


class PythonsCase(tbtest.TestCase):
    """Runs each test under every CPython >= 3.12 found (OLD: 3.10 and 3.11);
    removes the perf maps."""

    OLD = False

    def setUp(self):
        super().setUp()
        tbtest.skip_if_python_unsupported(self)
        cpusamples.skip_if_perf_refused(self)
        self.pythons = find_pythons(self.OLD)
        want = "CPython 3.10 or 3.11" if self.OLD else "CPython >= 3.12"
        if not self.pythons:
            print("skip: no %s found" % want)
            self.skipTest("no " + want)
        self.maps = []

    def tearDown(self):
        for m in self.maps:
            try:
                os.unlink(m)
            except OSError:
                pass
        super().tearDown()

    def run_split(self, python, mode, name=None, perf_support=True):
        """cpu_split_py.py under python: (profile, pid, the share of burn_a
        in the CPU time it measured). perf_support: PYTHONPERFSUPPORT=1 (the
        trampoline on from the start), else none; None: the trampoline left
        to the agent (the program does not turn it on)."""
        name = name or "logs-" + os.path.basename(os.path.dirname(os.path.dirname(python)))
        self.logdir = os.path.join(self.tmp, name)
        env = tbtest.env(self.logdir, python=True, cpu="on", cpu_hz=1000, cpu_mode=mode)
        env.pop("PYTHONPERFSUPPORT", None)
        if perf_support:
            env["PYTHONPERFSUPPORT"] = "1"
        p = tbtest.run([python, PROG, "2.0"] + (["agent"] if perf_support is None else []), env=env, timeout=120)
        self.assertExitedOk(p)
        out = {l.split()[0]: l.split()[1:] for l in p.stdout.splitlines() if l.strip()}
        pid = int(out["pid"][0])
        self.maps.append("/tmp/perf-%d.map" % pid)
        spent_a, spent_b = (int(x) for x in out["spent"])
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        return tbtest.load(files[0]), pid, spent_a / (spent_a + spent_b)


class CpuPython(PythonsCase):
    def test_python_split_dwarf(self):
        for version, python in self.pythons:
            with self.subTest(python=version):
                self.check_split(version, python)

    def test_python_split_fp(self):
        # fp stacks (the kernel's walk): Python frames are named where the
        # interpreter keeps frame pointers (built -fno-omit-frame-pointer:
        # 3.15's default), the agent turning the trampoline on for the
        # capture; elsewhere it is left off, and the profile says why
        for version, python in self.pythons:
            with self.subTest(python=version):
                if keeps_frame_pointers(python):
                    self.check_split(version, python, "fp")
                else:
                    self.check_fp_left_off(version, python)

    def check_fp_left_off(self, version, python):
        prof, pid, _ = self.run_split(python, "fp", perf_support=None)
        st = prof.host.stats
        self.assertGreater(st.get("tbprof_cpu_samples", 0), 300, st)
        self.assertTrue(st.get("tbprof_python_trampoline", "").startswith(
            "not turned on: this CPython keeps no frame pointers"), st)
        named = sum(t for name, (s, t) in cpusamples.counts(prof.host.lines).items() if name.startswith("py::"))
        self.assertEqual(named, 0)
        self.assertFalse(os.path.exists("/tmp/perf-%d.map" % pid), "a perf map of a trampoline left off")
        print("python %s (no frame pointers), fp stacks: trampoline left off" % version)

    def check_split(self, version, python, mode="dwarf"):
        # (fp: the agent turns the trampoline on, not PYTHONPERFSUPPORT)
        prof, pid, truth = self.run_split(python, mode, perf_support=True if mode == "dwarf" else None)
        st = prof.host.stats
        n = st.get("tbprof_cpu_samples", 0)
        self.assertGreater(n, 300, st)
        main = prof.host.line(pid)
        self.assertIsNotNone(main, "no line for the main thread")
        c = cpusamples.counts([main])
        by_func = {}
        for name, (s, t) in c.items():
            # (the agent's first request imports atexit on the main thread,
            # through importlib's frozen bootstrap: a sample may land there)
            if name.startswith("py::") and "<frozen importlib" not in name:
                func = name[4:].split(":", 1)[0]
                self.assertTrue(name.endswith(":" + PROG), name)
                by_func[func] = by_func.get(func, 0) + t
        a, b = by_func.get("burn_a", 0), by_func.get("burn_b", 0)
        self.assertGreater(a + b, n * 0.5, by_func)
        share = a / (a + b)
        # truth: the CPU time the program measured around its calls (60% of
        # the work; a machine busy with other work can make it less)
        print("python %s, %s: %d samples, py::burn_a %d, py::burn_b %d: %.1f%% in burn_a (truth %.1f%%), "
              "%d unwinds failed" % (version, mode, n, a, b, share * 100, truth * 100,
                                     st.get("tbprof_unwind_failures", 0)))
        if mode == "fp":
            self.assertTrue(st.get("tbprof_python_trampoline", "").startswith("on during the capture"), st)
        self.assertAlmostEqual(truth, 0.60, delta=0.10)
        self.assertAlmostEqual(share, truth, delta=0.05)
        # the walk goes through the trampolines: burn_a under work under
        # main (fp: the agent's trampoline came on with main() running, so
        # main() has none: work is the first Python frame)
        want = ["main", "work"] if mode == "dwarf" else ["work"]
        under = 0
        for e, anc in cpusamples.walk(main):
            if e.name.startswith("py::burn_a:"):
                pys = [x.name[4:].split(":", 1)[0] for x in anc if x.name.startswith("py::")]
                if pys[-2:] == want if mode == "dwarf" else pys == want:
                    under += e.stats["samples"]
        self.assertGreater(under, a * 0.9, "py::burn_a under py::%s in %d of %d samples" % ("/py::".join(want), under, a))
        # (the count is the process's: under ASan most failures are the
        # agent's own thread, whose instrumented frames outrun its stack
        # copy now and then, ~2.5% of the samples and at times past 5%)
        bar = 0.08 if tbtest.SANITIZE == "address" else 0.05
        self.assertLess(st.get("tbprof_unwind_failures", 0), n * bar, st)

    def test_deep_python_stack_whole(self):
        # 60 Python calls deep: more stack than the first 16 KiB copy and
        # more frames than 128 hold. The thread's copy grows once its walks
        # run past it; from then its samples reach <module> with every call.
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "deep_py.py")
        depth = 60
        for version, python in self.pythons:
            with self.subTest(python=version):
                self.logdir = os.path.join(self.tmp, "deep-" + version)
                env = tbtest.env(self.logdir, python=True, cpu="on", cpu_hz=1000, cpu_mode="dwarf", delay=0,
                                 duration=1.5)
                env["PYTHONPERFSUPPORT"] = "1"
                p = tbtest.run([python, prog, str(depth), "2.0"], env=env, timeout=120)
                self.assertExitedOk(p)
                pid = int(p.stdout.split()[1])
                self.maps.append("/tmp/perf-%d.map" % pid)
                prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
                st = prof.host.stats
                main = prof.host.line(pid)
                self.assertIsNotNone(main, "no line for the main thread")
                whole, leaf = 0, 0
                want = ["<module>", "main"] + ["rec"] * (depth + 1)
                for e, anc in cpusamples.walk(main):
                    if e.name.startswith("py::leaf:"):
                        pys = [x.name[4:].split(":", 1)[0] for x in anc if x.name.startswith("py::")]
                        leaf += e.stats["samples"]
                        whole += e.stats["samples"] if pys == want else 0
                print("python %s: %d of %d samples in leaf() under all %d calls; %d unwinds failed, %d deep threads"
                      % (version, whole, leaf, len(want), st.get("tbprof_unwind_failures", 0),
                         st.get("tbprof_cpu_deep_stack_threads", 0)))
                self.assertGreater(leaf, 150, st)  # ~1,500 on an idle machine
                # (the samples before the copy grew are cut: a few polls' worth
                # on a loaded machine)
                self.assertGreater(whole, leaf - max(80, leaf // 10), st)
                self.assertGreaterEqual(st.get("tbprof_cpu_deep_stack_threads", 0), 1, st)
                # the capture began before the interpreter: on by PYTHONPERFSUPPORT, and said so
                self.assertTrue(st.get("tbprof_python_trampoline", "").startswith("on"), st)

    def test_python_frames_while_the_gpu_waited(self):
        # hostwait_py.py: the summary names the Python function the
        # launching thread ran while the GPU waited for it
        import test_tools_real as real
        real.skip_without_fake_gpu_or_perf(self)
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "hostwait_py.py")
        for version, python in self.pythons:
            with self.subTest(python=version):
                self.logdir = os.path.join(self.tmp, "wait-" + version)
                p, files = real.run_hostwait(self, [python, prog, "10"], python=True, cpu_mode="dwarf",
                                             PYTHONPERFSUPPORT="1")
                self.maps += ["/tmp/perf-%s.map" % l.split()[1] for l in p.stdout.splitlines() if l.startswith("pid ")]
                real.check_while_waiting(self, files[0], "py::prep_batch:" + prog)

def check_off_under_another_evaluator(case):
    """progs/evalswap_py.py: the capture stops while another frame
    evaluator is installed over the trampoline (as during a torch.compile'd
    call), which puts it back after: the trampoline must not stay on (every
    Python call would pay for it after the capture)."""
    prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "evalswap_py.py")
    lib = tbtest.prog("libevalswap.so")
    for version, python in case.pythons:
        with case.subTest(python=version):
            case.logdir = os.path.join(case.tmp, "evalswap-" + version)
            env = tbtest.env(case.logdir, python=True, cpu="on", cpu_hz=499, log="info")
            env.pop("PYTHONPERFSUPPORT", None)
            p = tbtest.run([python, prog, lib], env=env, timeout=120)
            case.assertExitedOk(p)
            case.maps.append("/tmp/perf-%s.map" % p.stdout.split()[1])
            got = re.search(r"evaluator during (\d) under (\d) back (\d) after (\d) in ([\d.]+) s", p.stdout)
            case.assertIsNotNone(got, p.stdout + p.stderr)
            print("python %s: %s" % (version, got.group(0)))
            # the trampoline on (2), the other one over it (1), the
            # trampoline back (2), then the default evaluator (0)
            case.assertEqual(got.groups()[:4], ("2", "1", "2", "0"), p.stderr)
            if not case.OLD:  # (the stop did meet the other one, and asked again)
                case.assertIn("python: the perf trampoline stays on after the capture for now", p.stderr)
                case.assertIn("python: the perf trampoline is off, ", p.stderr)


class CpuPythonTrampoline(PythonsCase):
    """tbprof turns CPython's perf trampoline on for a capture only (it costs
    every Python call while on): progs/tramp_py.py, run with no
    PYTHONPERFSUPPORT and a 1 s time window, records per iteration whether a
    capture is on and whether the trampoline is, and forks a child during
    the capture."""

    PROG = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "tramp_py.py")

    def test_off_after_a_stop_under_another_evaluator(self):
        # 3.12+: a stop that found the other evaluator over CPython's
        # trampoline asks again until it is back, and turns it off then
        check_off_under_another_evaluator(self)

    def tramp_env(self, name, **tb):
        """A fresh logdir `name`, and the environment of a job whose
        trampoline only tbprof turns on (no PYTHONPERFSUPPORT), CPU sampling
        on, TBPROF_* from tb."""
        self.logdir = os.path.join(self.tmp, name)
        env = tbtest.env(self.logdir, python=True, cpu="on", **tb)
        env.pop("PYTHONPERFSUPPORT", None)
        return env

    def run_tramp(self, python, name, duration="1", args=("2.2",), **kw):
        env = self.tramp_env(name, cpu_hz=499, delay="0.5", duration=duration)
        env.update(kw)
        p = tbtest.run([python, self.PROG] + list(args), env=env, timeout=120)
        self.assertExitedOk(p)
        pid = int(p.stdout.split()[1])
        self.maps.append("/tmp/perf-%d.map" % pid)
        iters = [tuple(int(x) for x in l.split()[1:]) for l in p.stdout.splitlines() if l.startswith("iter ")]
        child = [l.split()[1] for l in p.stdout.splitlines() if l.startswith("child ")]
        # (a child of a job with PYTHONPERFSUPPORT keeps CPython's own map)
        self.maps += ["/tmp/perf-%s.map" % l.split()[2] for l in p.stdout.splitlines() if l.startswith("child ")]
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        return tbtest.load(files[0]), pid, iters, child

    def py_share(self, prof, pid):
        """Share of the main thread's samples under py::burn (a frame entered
        after the trampoline went on)."""
        main = prof.host.line(pid)
        c = cpusamples.counts([main])
        n = sum(s for s, _ in c.values())
        burn = sum(t for name, (_, t) in c.items() if name.startswith("py::burn:"))
        return burn / max(n, 1), n

    def test_a_loop_that_never_gives_up_the_gil(self):
        # a pure-Python loop on the only thread: CPython 3.12 runs the
        # agent's pending call only when its main thread switches the GIL
        # (a thread of ours asks for it); on for the capture (0.5-1.5 s),
        # off again after it, Python frames in the profile (before, on
        # 3.12: never on during the capture; the off request of a capture
        # that began with two threads could leave it on)
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "tramp_spin_py.py")
        for version, python in self.pythons:
            with self.subTest(python=version):
                env = self.tramp_env("spin-" + version, cpu_hz=499, delay="0.5", duration="1")
                p = tbtest.run([python, prog, "4.0"], env=env, timeout=120)
                self.assertExitedOk(p)
                pid = int(p.stdout.split()[1])
                self.maps.append("/tmp/perf-%d.map" % pid)
                rec = [(float(a), int(b)) for a, b in (l.split() for l in p.stdout.splitlines()[1:])]
                # (the script's clock starts after the interpreter's start-up,
                # later under a sanitizer: the capture's 1 s from the first
                # record with it on, which is within 1.5 s of the script's start)
                t_on = next((t for t, a in rec if a), None)
                self.assertTrue(t_on is not None and t_on < 1.5, rec)
                during = [a for t, a in rec if t_on <= t <= t_on + 0.8]
                after = [a for t, a in rec if t >= t_on + 2.0]
                print("python %s: on in %d of %d records during the capture, %d of %d after it"
                      % (version, sum(during), len(during), sum(after), len(after)))
                self.assertTrue(during and all(during), rec)
                self.assertTrue(after and not any(after), rec)
                prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
                share, n = self.py_share(prof, pid)
                self.assertGreater(n, 100, prof.host.stats)
                self.assertGreater(share, 0.5, prof.host.stats)  # py::burn, entered after it came on

    def test_sigterm_during_the_capture_leaves_no_map(self):
        # the trampoline tbprof turned on writes /tmp/perf-<pid>.map, which
        # its Python atexit hook removes; SIGTERM during the capture ends the
        # job without atexit: the agent removes it as the job dies
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "tramp_spin_py.py")
        for version, python in self.pythons:
            with self.subTest(python=version):
                env = self.tramp_env("term-" + version, delay="0.3", duration="20")
                p = tbtest.spawn([python, prog, "30"], env=env)
                pid = int(tbtest.read_until(p, "pid").split()[1])
                m = "/tmp/perf-%d.map" % pid
                self.maps.append(m)
                deadline = time.time() + 20
                while not os.path.exists(m) and time.time() < deadline:
                    time.sleep(0.05)
                self.assertTrue(os.path.exists(m), "the trampoline never came on")
                time.sleep(0.3)
                p.send_signal(signal.SIGTERM)
                p.communicate(timeout=60)
                self.assertEqual(p.returncode, -signal.SIGTERM)
                self.assertEqual(len(tbtest.xplanes(self.logdir)), 1)
                self.assertFalse(os.path.exists(m), m)

    def test_turned_on_while_the_job_has_stdout_closed(self):
        # the trampoline comes on (and CPython opens its perf map) while the
        # job has fd 1 closed; the job then puts its stdout back with dup2:
        # its output holds what it printed, no map lines (before: CPython's
        # map had taken fd 1, and its lines went to the job's stdout)
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "tramp_stdio_py.py")
        for version, python in self.pythons:
            with self.subTest(python=version):
                env = self.tramp_env("stdio-" + version, cpu_hz=499, delay="0.3", duration="1")
                p = tbtest.run([python, prog], env=env, timeout=120)
                self.assertExitedOk(p)
                lines = p.stdout.splitlines()
                self.maps.append("/tmp/perf-%s.map" % lines[0].split()[1])
                self.assertEqual(lines[1:], ["active 1", "done"], p.stdout[:2000])

    def test_on_for_the_capture_only(self):
        for version, python in self.pythons:
            with self.subTest(python=version):
                prof, pid, iters, child = self.run_tramp(python, "tramp-" + version)
                on = [i for i, (cap, _) in enumerate(iters) if cap]
                # (an iteration is 5 ms of CPU; on a loaded machine far longer)
                self.assertGreaterEqual(len(on), 3, "iterations while capturing: %d" % len(on))
                # (one iteration of slack at each end: the trampoline is
                # asked for as the sampler starts, just before the window
                # is marked begun, and the agent may be descheduled between)
                before, during, after = iters[:max(on[0] - 1, 0)], iters[on[0] + 1:on[-1] + 1], iters[on[-1] + 2:]
                # (under a sanitizer on a loaded machine Python's start-up
                # can outlast the 0.5 s delay: no iteration before it then)
                self.assertTrue(after, "no idle iterations after the capture")
                # idle: never on (it would cost every Python call)
                self.assertEqual([a for _, a in before + after if a], [], "trampoline on while idle")
                # capturing: on from the main thread's next bytecode
                self.assertEqual([a for _, a in during if not a], [], "trampoline off during the capture")
                self.assertEqual(child, ["0"], "a child forked during the capture keeps the trampoline")
                st = prof.host.stats
                self.assertTrue(st.get("tbprof_python_trampoline", "").startswith("on during the capture"), st)
                share, n = self.py_share(prof, pid)
                print("python %s: trampoline on for %d of %d iterations (the capture's), py::burn in %.0f%% of %d "
                      "main-thread samples" % (version, len(on), len(iters), share * 100, n))
                self.assertGreater(share, 0.6)
                # the map CPython wrote for our trampolines goes with the process
                self.assertFalse(os.path.exists("/tmp/perf-%d.map" % pid), "perf map left in /tmp")

    def test_off_at_the_window_end_while_the_gpu_drains(self):
        # the GPU source's stop can take seconds (CUPTI waits for GPU work
        # still running; here a fake CUPTI whose cuptiActivityDisable takes
        # 700 ms): the CPU sampler stops first, so the trampoline goes off
        # at the window's end, not after the GPU's stop (before: the 140
        # iterations of those 700 ms with it on, at its cost per call)
        fake = os.path.join(tbtest.BUILD, "fakecupti", "libcupti.so")
        if not os.path.exists(fake):
            self.skipTest("built without CUPTI")
        script = os.path.join(self.tmp, "empty_script")
        open(script, "w").close()
        for version, python in self.pythons:
            with self.subTest(python=version):
                report = os.path.join(self.tmp, "fake-%s.log" % version)
                prof, pid, iters, _ = self.run_tramp(
                    python, "drain-" + version, args=("4",),
                    LD_PRELOAD=tbtest.with_shim(tbtest.preload_value(), tbtest.BARE_LIBCUDA),
                    TBPROF_GPU="on", TBPROF_CUPTI_PATH=fake, TBFAKE_CUPTI_SCRIPT=script, TBFAKE_CUPTI_DISABLE_MS="700",
                    TBFAKE_CUPTI_REPORT=report)
                self.assertNotIn("tbprof_gpu_off_reason", prof.host.stats)
                with open(report) as f:  # the slow disable (kind 10, concurrent kernels) did run
                    self.assertIn("disable 10", f.read().splitlines())
                self.assertTrue(prof.host.stats.get("tbprof_python_trampoline", "").startswith("on during the capture"),
                                prof.host.stats)
                on = [i for i, (cap, _) in enumerate(iters) if cap]
                self.assertTrue(on, "no iteration while capturing")
                self.assertTrue(any(a for _, a in iters[on[0] + 1:on[-1] + 1]), "trampoline never on")
                after = iters[on[-1] + 2:]
                # (2.5 s of 5 ms iterations, fewer under a sanitizer)
                self.assertGreater(len(after), 100 // relutil.sanitizer_slowdown(), "the job ended too soon after the window")
                self.assertEqual([a for _, a in after if a], [], "trampoline on after the window")

    def test_capture_cut_by_the_exit(self):
        # the window (10 s) outlasts the job (1.5 s): the capture is written
        # at exit with the Python names from the map, and the map CPython
        # wrote for our trampolines goes with the process all the same
        for version, python in self.pythons:
            with self.subTest(python=version):
                prof, pid, iters, _ = self.run_tramp(python, "cut-" + version, duration="10", args=["1.5"])
                self.assertTrue(iters and iters[-1][0], "the capture was not on at the end")
                share, n = self.py_share(prof, pid)
                print("python %s: capture cut by the exit: py::burn in %.0f%% of %d main-thread samples"
                      % (version, share * 100, n))
                self.assertGreater(share, 0.6)
                self.assertFalse(os.path.exists("/tmp/perf-%d.map" % pid), "perf map left in /tmp")

    def test_stale_map_of_an_earlier_pid(self):
        # pids wrap (pid_max 32768 on many machines) and CPython never removes
        # its maps: a map for this pid, older than the process, is another
        # process's. Before, CPython appended to it, and it stayed behind as
        # "not ours" (the CI failure of test_on_for_the_capture_only)
        for version, python in self.pythons:
            with self.subTest(python=version):
                prof, pid, iters, _ = self.run_tramp(python, "stale-" + version, TRAMP_STALE_MAP="1")
                self.assertTrue(any(c for c, _ in iters), "no iteration while capturing")
                self.assertFalse(os.path.exists("/tmp/perf-%d.map" % pid), "perf map left in /tmp")
                share, _ = self.py_share(prof, pid)
                self.assertGreater(share, 0.6)

    def test_left_alone_when_the_job_has_it_on(self):
        for version, python in self.pythons:
            with self.subTest(python=version):
                prof, pid, iters, _ = self.run_tramp(python, "keep-" + version, PYTHONPERFSUPPORT="1")
                self.assertTrue(all(a for _, a in iters), "PYTHONPERFSUPPORT's trampoline turned off")
                self.assertEqual(prof.host.stats.get("tbprof_python_trampoline"),
                                 "on for the whole run (PYTHONPERFSUPPORT=1 or the program)")
                self.assertTrue(os.path.exists("/tmp/perf-%d.map" % pid), "the job's own perf map removed")

    def test_always_names_the_frames_entered_before(self):
        # TBPROF_PY_TRAMPOLINE=always: on from start-up (PYTHONPERFSUPPORT=1
        # set by the agent), so the loop's own frame (main, entered before
        # the capture) is named too, at the trampoline's cost while idle
        for version, python in self.pythons:
            with self.subTest(python=version):
                prof, pid, iters, _ = self.run_tramp(python, "always-" + version, TBPROF_PY_TRAMPOLINE="always")
                self.assertTrue(all(a for _, a in iters), "off in some iteration")
                self.assertEqual(prof.host.stats.get("tbprof_python_trampoline"),
                                 "on for the whole run (PYTHONPERFSUPPORT=1 or the program)")
                main = prof.host.line(pid)
                under_main = sum(e.stats["samples"] for e, anc in cpusamples.walk(main)
                                 if e.name.startswith("py::burn:") and
                                 any(a.name.startswith("py::main:") for a in anc))
                share, n = self.py_share(prof, pid)
                self.assertGreater(under_main, share * n * 0.9, "py::burn under py::main")

    def test_many_captures_switch_one_trampoline(self):
        # 30 API captures in one process: on in each, off after each, and
        # CPython's trampoline made once (activating it every time would take
        # a code-extra slot and write every function's map line again each
        # time: after 255 the interpreter refuses, with it left on)
        prog = os.path.join(self.tmp, "many.py")
        with open(prog, "w") as f:
            f.write(
                "import ctypes, os, sys, time\n"
                "lib = ctypes.CDLL(None)\n"
                "def f(x):\n    return x + 1\n"
                "def work(t):\n"
                "    end = time.monotonic() + t\n"
                "    while time.monotonic() < end:\n        f(1)\n"
                "m = '/tmp/perf-%d.map' % os.getpid()\n"
                "print('pid', os.getpid(), flush=True)\n"
                "lib.tbprof_last_profile.restype = ctypes.c_char_p\n"
                "for i in range(30):\n"
                "    lib.tbprof_start(0)\n"
                "    work(0.02)\n"
                "    on = sys.is_stack_trampoline_active()\n"
                "    last = lib.tbprof_last_profile()\n"
                "    lib.tbprof_stop()\n"
                # until this capture's profile is written: the CPU source
                # stopped (and asked for the trampoline off) before that;
                # tbprof_capturing() is 0 as soon as the stop is asked for,
                # which on a loaded machine was before the agent thread got
                # to it
                "    end = time.monotonic() + 60\n"
                "    while lib.tbprof_last_profile() == last and time.monotonic() < end:\n"
                "        time.sleep(0.001)\n"
                # 3.12 runs a pending call from another thread once the main
                # thread has let go of the GIL (3.13: at its next bytecode)
                "    time.sleep(0.005)\n"
                "    work(0.01)\n"
                "    print('cap', i, int(on), int(sys.is_stack_trampoline_active()),\n"
                "          os.path.getsize(m) if os.path.exists(m) else 0, flush=True)\n")
        for version, python in self.pythons:
            with self.subTest(python=version):
                env = self.tramp_env("many-" + version, trace_json="off")
                p = tbtest.run([python, prog], env=env, timeout=300)
                self.assertExitedOk(p)
                self.maps.append("/tmp/perf-%s.map" % p.stdout.split()[1])
                caps = [tuple(int(x) for x in l.split()[1:]) for l in p.stdout.splitlines() if l.startswith("cap ")]
                self.assertEqual(len(caps), 30, p.stderr)
                self.assertEqual([i for i, on, _, _ in caps if not on], [], "off during a capture")
                self.assertEqual([i for i, _, after, _ in caps if after], [], "on after a capture")
                sizes = {size for _, _, _, size in caps}
                self.assertEqual(len(sizes), 1, "the perf map grew after the first capture: %s" % sorted(sizes))

    def test_off_switch(self):
        for version, python in self.pythons:
            with self.subTest(python=version):
                prof, pid, iters, _ = self.run_tramp(python, "off-" + version, TBPROF_PY_TRAMPOLINE="off")
                self.assertFalse(any(a for _, a in iters))
                self.assertNotIn("tbprof_python_trampoline", prof.host.stats)
                self.assertLess(self.py_share(prof, pid)[0], 0.01)


class CpuPythonFramesBefore(PythonsCase):
    """Frames the main thread entered before a capture turned the trampoline
    on are named from its frame list (agent/pyframes.h): each CPython 3.10
    to 3.13 found (3.10 and 3.11: tbprof's trampoline; 3.12, 3.13:
    CPython's). progs/pre_frames_py.py: main() -> map() -> outer() ->
    spin() entered before the capture; spin() returns during it, then
    outer(), then main() calls after(). progs/again_frames_py.py: a second
    capture inside a function the first one's trampoline called."""

    PROG = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "pre_frames_py.py")

    def setUp(self):
        super().setUp()
        # (3.14's frame layout is not read: its frames stay unnamed)
        self.pythons = [(v, p) for v, p in find_pythons(True) + find_pythons(False)
                        if tuple(int(x) for x in v.split(".")) <= (3, 13)]
        # Debian's (a PGO build: the pending call runs from the evaluator's
        # .cold part) besides pyenv's, which find_pythons prefers
        deb = "/usr/bin/python3.11"
        if os.path.exists(deb) and all(os.path.realpath(p) != os.path.realpath(deb) for _, p in self.pythons):
            self.pythons.append(("3.11 (Debian)", deb))

    @staticmethod
    def py_paths(line):
        """{(py:: names from the root, file left off): self samples}"""
        paths = {}
        for e, anc in cpusamples.walk(line):
            n = e.stats.get("self_samples", 0)
            if n:
                path = tuple(x.name[:x.name.index(":", 4)] for x in anc + [e] if x.name.startswith("py::"))
                paths[path] = paths.get(path, 0) + n
        return paths

    def test_frames_entered_before_the_capture(self):
        for version, python in self.pythons:
            with self.subTest(python=version):
                self.logdir = os.path.join(self.tmp, "before-" + version.replace(" ", "_"))
                env = tbtest.env(self.logdir, python=True, cpu="on", cpu_hz=499, delay="0.5", duration="1.5")
                env.pop("PYTHONPERFSUPPORT", None)
                p = tbtest.run([python, self.PROG], env=env, timeout=120)
                self.assertExitedOk(p)
                pid = int(p.stdout.split()[1])
                self.maps.append("/tmp/perf-%d.map" % pid)
                prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
                paths = self.py_paths(prof.host.line(pid))
                total = sum(paths.values())
                base = ("py::<module>", "py::main")
                spin = sum(n for k, n in paths.items() if k[:4] == base + ("py::outer", "py::spin"))
                outer_own = paths.get(base + ("py::outer",), 0)
                after = sum(n for k, n in paths.items() if "py::after" in k)
                after_whole = sum(n for k, n in paths.items() if k[:3] == base + ("py::after",))
                stale = sum(n for k, n in paths.items() if "py::after" in k and ("py::outer" in k or "py::spin" in k))
                burn = sum(n for k, n in paths.items() if k[-1:] == ("py::burn",))
                burn_whole = sum(n for k, n in paths.items() if k in (base + ("py::outer", "py::spin", "py::burn"),
                                                                      base + ("py::after", "py::burn")))
                stat = prof.host.stats.get("tbprof_python_trampoline", "")
                print("python %s: %d main-thread samples; under <module>/main/outer/spin %d, in outer itself %d, "
                      "under after %d (%d under <module>/main/after, %d with spin or outer kept); py::burn %d (%d "
                      "with its callers); %s" % (version, total, spin, outer_own, after, after_whole, stale, burn,
                                                 burn_whole, stat))
                self.assertIn("named from its frame list, in ", stat)
                # spin() ran for 0.4 s of the 1.5 s capture, outer() by
                # itself for 0.3 s, after() for 0.8 s (by the clock: a
                # loaded machine shifts the CPU each phase got)
                self.assertGreater(spin, total * 0.05, paths)
                self.assertGreater(outer_own, total * 0.03, paths)
                self.assertGreater(after, total * 0.1, paths)
                # outer() and spin() had returned: after() sits under main()
                self.assertGreater(after_whole, after * 0.9, paths)
                self.assertEqual(stale, 0, paths)
                # a call made during the capture (named by the trampoline)
                # sits under the frames named from the list, and never
                # under a caller other than its own (a frame dropped from
                # between: spin's, as it returned)
                self.assertGreater(burn_whole, burn * 0.8, paths)
                misplaced = sum(n for k, n in paths.items() if "py::burn" in k[1:] and
                                k[k.index("py::burn") - 1] not in ("py::spin", "py::after"))
                self.assertEqual(misplaced, 0, paths)
                named = int(re.search(r"in (\d+) of its samples", stat).group(1))
                self.assertGreater(named, total * 0.85, stat)


    def test_frames_entered_before_an_earlier_capture(self):
        # progs/again_frames_py.py: the second capture begins in phase(),
        # which the first capture's trampoline called and which still
        # runs: the C stack cannot be walked past that trampoline at the
        # snapshot, and the frames below it (<module>, main) keep the first
        # snapshot's checks
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "again_frames_py.py")
        for version, python in self.pythons:
            with self.subTest(python=version):
                self.logdir = os.path.join(self.tmp, "again-" + version.replace(" ", "_"))
                env = tbtest.env(self.logdir, python=True, cpu="on", cpu_hz=499)
                env.pop("PYTHONPERFSUPPORT", None)
                p = tbtest.run([python, prog], env=env, timeout=120)
                self.assertExitedOk(p)
                pid = int(p.stdout.split()[1])
                self.maps.append("/tmp/perf-%d.map" % pid)
                first, second = re.search(r"^profiles (\S+) (\S+)$", p.stdout, re.M).groups()
                base = ("py::<module>", "py::main", "py::phase")
                for which, path in (("first", first), ("second", second)):
                    prof = tbtest.load(path)
                    paths = self.py_paths(prof.host.line(pid))
                    total = sum(paths.values())
                    spin = sum(n for k, n in paths.items() if "py::spin" in k)
                    whole = sum(n for k, n in paths.items() if k[:4] == base + ("py::spin",))
                    # (spin under another caller, or labels other than <module>/main below phase; a
                    # sample left unlabelled shows phase/spin alone)
                    misplaced = sum(n for k, n in paths.items() if "py::spin" in k and
                                    k[:4] != base + ("py::spin",) and k[:2] != base[2:] + ("py::spin",))
                    stat = prof.host.stats.get("tbprof_python_trampoline", "")
                    named = re.search(r"in (\d+) of its samples", stat)
                    print("python %s, %s capture: %d main-thread samples, %d in spin (%d under <module>/main/phase, "
                          "%d misplaced); %s" % (version, which, total, spin, whole, misplaced, stat))
                    self.assertIsNotNone(named, stat)
                    # (the first: 0.3 s of spin, then its stop's wait)
                    self.assertGreater(spin, total * (0.6 if which == "second" else 0.3), paths)
                    self.assertGreater(whole, spin * 0.9, paths)
                    self.assertEqual(misplaced, 0, paths)
                    self.assertGreater(int(named.group(1)), whole * 0.9, stat)


class CpuPythonOwnTrampoline(PythonsCase):
    """CPython 3.10 and 3.11 have no perf trampoline: tbprof sets its own
    frame evaluator for a capture, which runs each Python call through a
    stub of its own, named in /tmp/perf-<pid>.map. /usr/bin/python3 is 3.11
    on Debian 12, so this runs in CI."""

    OLD = True

    def test_python_split_through_our_trampoline(self):
        # cpu_split_py.py starts the capture with tbprof_start(): its main()
        # and <module> are running by then, named from the frame list
        for version, python in self.pythons:
            with self.subTest(python=version):
                prof, pid, truth = self.run_split(python, "dwarf", "own-" + version, perf_support=False)
                st = prof.host.stats
                self.assertTrue(st.get("tbprof_python_trampoline", "").startswith("on during the capture"), st)
                main = prof.host.line(pid)
                self.assertIsNotNone(main, "no line for the main thread")
                n = st.get("tbprof_cpu_samples", 0)
                c = cpusamples.counts([main])
                a, b = c.get("py::burn_a:" + PROG, (0, 0))[1], c.get("py::burn_b:" + PROG, (0, 0))[1]
                under = sum(e.stats["samples"] for e, anc in cpusamples.walk(main)
                            if e.name.startswith(("py::burn_a:", "py::burn_b:"))
                            and [x.name for x in anc if x.name.startswith("py::")] ==
                            ["py::<module>:" + PROG, "py::main:" + PROG, "py::work:" + PROG])
                share = a / max(a + b, 1)
                print("python %s (tbprof's trampoline): %d samples, py::burn_a %d, py::burn_b %d: %.1f%% in burn_a "
                      "(truth %.1f%%), %d unwinds failed" % (version, n, a, b, share * 100, truth * 100,
                                                             st.get("tbprof_unwind_failures", 0)))
                self.assertGreater(a + b, n * 0.5, "burn_a/burn_b in %d of %d samples" % (a + b, n))
                self.assertAlmostEqual(share, truth, delta=0.05)
                # the unwinder steps over our stubs as over CPython's: each
                # burn_* sits under py::work, the caller named, and that under
                # the frames entered before the capture
                self.assertGreater(under, (a + b) * 0.9, "under <module>/main/work in %d of %d" % (under, a + b))
                self.assertLess(st.get("tbprof_unwind_failures", 0), n * 0.05, st)
                # the map we wrote goes with the process
                self.assertFalse(os.path.exists("/tmp/perf-%d.map" % pid), "perf map left in /tmp")

    def test_off_after_a_stop_under_another_evaluator(self):
        # (tbprof's own evaluator turns itself off at its next call)
        check_off_under_another_evaluator(self)

    def test_deep_recursion_runs_as_without_tbprof(self):
        # a recursion the job runs fine by itself (3.11 makes Python calls
        # without the C stack) would overflow the C stack with every call
        # nesting through the evaluator: it goes off partway, and says so
        # (before: SIGSEGV at 20,000 calls on 3.11)
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "deep_rec_py.py")
        for version, python in self.pythons:
            with self.subTest(python=version):
                depth = 60000 if version == "3.11" else 12000  # (3.10 nests in C by itself: ~20,000 fit 8 MiB)
                self.logdir = os.path.join(self.tmp, "deep-" + version)
                env = tbtest.env(self.logdir, python=True, cpu="on")
                env.pop("PYTHONPERFSUPPORT", None)
                p = tbtest.run([python, prog, str(depth)], env=env, timeout=120)
                self.assertExitedOk(p)
                self.assertIn("depth %d" % depth, p.stdout)
                self.maps.append("/tmp/perf-%s.map" % p.stdout.split()[1])
                st = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0]).host.stats
                self.assertIn("turned off during the capture: a deep Python recursion",
                              st.get("tbprof_python_trampoline", ""), st)


if __name__ == "__main__":
    tbtest.main()
