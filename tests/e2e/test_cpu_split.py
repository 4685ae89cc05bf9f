"""CPU sampling accuracy on a real C program under LD_PRELOAD.

tests/e2e/progs/cpu_split.c runs 3 workers (and a 4th created and ended
during the capture) that spend 60% of their CPU time in burn_a and 40% in
burn_b (the program measures its workers' CPU time in each, which load on
the machine can move). The profile's sample spans must give the measured
split back within 5 points, on every worker's own line, nested properly, inside the capture
window, in both stack modes:
  - fp: frame-pointer callchains, program built -fno-omit-frame-pointer;
  - dwarf: stack copies unwound with libunwind, program built WITHOUT frame
    pointers (only .eh_frame can find the callers).
Skipped (with the reason) where perf_event_open is refused."""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402
import cpusamples  # noqa: E402
import relutil  # noqa: E402

SRC = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "cpu_split.c")


def parse(stdout):
    out = {"worker": []}
    for line in stdout.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "worker":
            out["worker"].append(int(f[1]))
        elif f[0] == "late":
            out["late"] = int(f[1])
        elif f[0] == "capture":
            out["capture"] = (int(f[1]), int(f[2]))
        elif f[0] == "pid":
            out["pid"] = int(f[1])
        elif f[0] == "spent":
            a, b = int(f[1]), int(f[2])
            out["truth"] = a / (a + b)
    return out


class CpuSplit(tbtest.TestCase):
    def setUp(self):
        super().setUp()
        cpusamples.skip_if_perf_refused(self)

    def capture(self, cflags, mode):
        exe = cpusamples.build(SRC, os.path.join(self.tmp, "cpu_split"), cflags)
        p = tbtest.run([exe, "-t", "3", "-m", "1500", "-l", "300,900"],
                       env=tbtest.env(self.logdir, cpu="on", cpu_hz=1000, cpu_mode=mode), timeout=120)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)
        info = parse(p.stdout)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        self.assertEqual(len(files), 1)
        self.assertNoPartialFiles(self.logdir)
        return tbtest.load(files[0]), info

    def check(self, prof, info, mode):
        host = prof.host
        st = host.stats
        n = st.get("tbprof_cpu_samples", 0)
        self.assertEqual(st.get("tbprof_cpu_mode"), "fp" if mode == "fp" else "stackcopy")
        self.assertEqual(st.get("tbprof_cpu_hz"), 1000)
        # 1.5 s of 3-4 busy threads on this (shared, 2-core) machine at 1 kHz
        self.assertGreater(n, 300, st)
        self.assertLess(st.get("tbprof_cpu_samples_lost", 0), n * 0.05, st)
        lines = cpusamples.sampled_lines(prof)
        # every self sample is on some span, except those of spans the agent
        # trims for starting after the stop request (taken before the agent
        # thread got to stop the sampler)
        selfs = sum(e.stats.get("self_samples", 0) for l in lines for e in l.events)
        self.assertLessEqual(selfs, n)
        self.assertGreaterEqual(selfs, n * 0.97)
        # each worker (and the late thread, found by a rescan) on its own line
        tids = info["worker"] + [info["late"]]
        for i, tid in enumerate(tids):
            line = host.line(tid)
            self.assertIsNotNone(line, "no line for thread %d" % tid)
            self.assertEqual(line.name, "late" if tid == info["late"] else "worker%d" % i)
            c = cpusamples.counts([line])
            self.assertGreater(c.get("burn_a", [0, 0])[1], 5, "thread %d: %s" % (tid, c))
            self.assertGreater(c.get("burn_b", [0, 0])[1], 3, "thread %d: %s" % (tid, c))
            self.assertEqual(cpusamples.nesting_errors(line), [])
        # the split, over all workers
        c = cpusamples.counts([host.line(t) for t in tids])
        a, b = c["burn_a"][1], c["burn_b"][1]
        share = a / (a + b)
        truth = info["truth"]
        print("%s: %d samples, burn_a %d, burn_b %d: %.1f%% in burn_a (truth %.1f%%, 60%% of the work)"
              % (mode, n, a, b, share * 100, truth * 100))
        self.assertAlmostEqual(truth, 0.60, delta=0.10)
        self.assertAlmostEqual(share, truth, delta=0.05)
        # burn_a is the leaf but for its one short call to store_result()
        self.assertLessEqual(c["burn_a"][0], a)
        self.assertGreaterEqual(c["burn_a"][0], a * 0.98)
        # the callers were found: burn_a under worker() under the thread start
        found_caller = 0
        for t in tids:
            for e, anc in cpusamples.walk(host.line(t)):
                if e.name == "burn_a" and anc and anc[-1].name == "worker":
                    found_caller += e.stats["samples"]
        self.assertGreater(found_caller, a * 0.9, "burn_a under worker in %d of %d samples" % (found_caller, a))
        # spans inside the capture (the program printed its bounds around start/stop)
        lo, hi = info["capture"]
        for l in lines:
            for e in l.events:
                if "samples" in e.stats:
                    self.assertGreaterEqual(e.start_ns, lo - 20_000_000)
                    self.assertLessEqual(e.end_ns, hi + 200_000_000)
        # the late thread's samples lie within the late part of the capture
        late = [e for e in host.line(info["late"]).events if "samples" in e.stats]
        self.assertGreater(min(e.start_ns for e in late), lo + 250_000_000)

    def test_fp_mode_with_frame_pointers(self):
        prof, info = self.capture(["-fno-omit-frame-pointer"], "fp")
        self.check(prof, info, "fp")

    def test_dwarf_mode_without_frame_pointers(self):
        prof, info = self.capture(["-fomit-frame-pointer"], "dwarf")
        self.check(prof, info, "dwarf")
        self.assertLess(prof.host.stats.get("tbprof_unwind_failures", 0),
                        prof.host.stats["tbprof_cpu_samples"] * 0.05)


class CpuManyThreads(tbtest.TestCase):
    """tests/e2e/progs/idle_busy.c: many waiting threads made first, then 4
    busy ones (a JVM, a PyTorch job). Rings start small and grow where they
    fill, and the GPU source's share of TBPROF_BUFFER_MB goes to them where
    it does not start: every thread is sampled (before: the first 17 here
    took the rings, and none of the busy ones had a sample)."""

    def setUp(self):
        super().setUp()
        cpusamples.skip_if_perf_refused(self)

    def run_mix(self, nidle, **kw):
        # (times scaled under a sanitizer: under TSan the 124 threads came up
        # late in the window, and the busy ones had 9-20 samples)
        k = relutil.sanitizer_slowdown()
        env = tbtest.env(self.logdir, cpu="on", delay=0.5 * k, duration=1.0 * k, **kw)
        p = tbtest.run([tbtest.prog("idle_busy"), str(nidle), "4", str(2.0 * k)], env=env, timeout=120)
        self.assertExitedOk(p)
        if "cannot map a ring buffer" in p.stderr:  # not root: perf_event_mlock_kb, RLIMIT_MEMLOCK
            self.skipTest("the locked-memory limit caps the rings here")
        busy = [int(l.split()[1]) for l in p.stdout.splitlines() if l.startswith("busy ")]
        self.assertEqual(len(busy), 4, p.stdout)
        prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
        per = {tid: sum(e.stats.get("self_samples", 0) for e in prof.host.line(tid).events)
               if prof.host.line(tid) else 0 for tid in busy}
        return p, prof.host.stats, per

    def test_busy_threads_after_many_idle_ones(self):
        # TBPROF_GPU=on: here CUPTI does not start (no GPU), so its share goes on
        p, st, per = self.run_mix(120, gpu="on")
        if "tbprof_gpu_off_reason" not in st:
            self.skipTest("GPU tracing started here: its share stays its own")
        print("120 idle + 4 busy: %d threads sampled, %d not; busy threads' samples %s"
              % (st.get("tbprof_cpu_threads", 0), st.get("tbprof_cpu_threads_unsampled", 0), sorted(per.values())))
        self.assertGreaterEqual(st.get("tbprof_cpu_threads", 0), 125, st)
        self.assertEqual(st.get("tbprof_cpu_threads_unsampled", 0), 0, st)
        for tid, n in per.items():
            self.assertGreater(n, 20, "busy thread %d: %s" % (tid, per))
        self.assertFalse([w for w in tbtest.tbprof_warnings(p.stderr) if "cpu sampling" in w], p.stderr)

    def test_rings_used_up_one_warning(self):
        # more threads than the rings' share holds (1 MiB of buffers in all)
        p, st, per = self.run_mix(40, buffer_mb=1)
        self.assertGreater(st.get("tbprof_cpu_threads_unsampled", 0), 0, st)
        w = [w for w in tbtest.tbprof_warnings(p.stderr) if "cpu sampling" in w]
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn("TBPROF_BUFFER_MB", w[0])


class CpuJitCode(tbtest.TestCase):
    """tests/e2e/progs/jitspin.c: a program spinning in code it generated
    (oneDNN's kernels in a CPU PyTorch job, 19% of its samples): the profile
    says what its [unknown] samples are and how to name them; named through
    the JIT's perf map, they are not warned about. Either way the samples
    keep their callers (the kernel has no unwind tables and uses %rbp as
    data: they are found by scanning its stack)."""

    def setUp(self):
        super().setUp()
        cpusamples.skip_if_perf_refused(self)

    def spin(self, *args):
        k = relutil.sanitizer_slowdown()
        logdir = os.path.join(self.tmp, "logs-" + "-".join(args or ("plain",)))
        env = tbtest.env(logdir, cpu="on", delay=0.3 * k, duration=0.8 * k)
        p = tbtest.run([tbtest.prog("jitspin"), str(1.5 * k)] + list(args), env=env, timeout=120)
        if p.returncode == 77:
            self.skipTest("executable memory refused here: " + p.stderr.strip())
        self.assertExitedOk(p)
        prof = tbtest.load(tbtest.wait_for_xplanes(logdir, 1)[0])
        pid = int(p.stdout.split()[1])
        line = prof.host.line(pid)
        self.assertIsNotNone(line, p.stderr)
        selfs = {}
        for e in line.events:
            selfs[e.name] = selfs.get(e.name, 0) + e.stats.get("self_samples", 0)
        jit = [w for w in prof.warnings if "outside any loaded object" in w]
        # the kernel's own samples, and how many of them have its callers
        self.in_kernel = self.with_callers = 0
        for e, anc in cpusamples.walk(line):
            if e.name in ("[unknown]", "jit_spin_kernel") and e.stats.get("self_samples", 0):
                self.in_kernel += e.stats["self_samples"]
                names = [a.name for a in anc]
                if names[-1:] and names[-1].startswith("run_kernel") and "main" in names:
                    self.with_callers += e.stats["self_samples"]
        return prof, selfs, jit

    def assert_callers_kept(self):
        self.assertGreater(self.in_kernel, 0)
        self.assertGreaterEqual(self.with_callers, self.in_kernel * 0.95, (self.with_callers, self.in_kernel))

    def test_jit_samples_are_explained(self):
        prof, selfs, jit = self.spin()
        total = sum(selfs.values())
        self.assertGreater(selfs.get("[unknown]", 0), total * 0.5, selfs)
        self.assertEqual(len(jit), 1, prof.warnings)
        self.assertIn("ONEDNN_JIT_PROFILE=2", jit[0])
        self.assertRegex(jit[0], r"^cpu sampling: \d+ of \d+ samples \(\d+%\)")
        self.assert_callers_kept()

    def test_named_by_the_perf_map_not_warned(self):
        prof, selfs, jit = self.spin("map")
        total = sum(selfs.values())
        self.assertGreater(selfs.get("jit_spin_kernel", 0), total * 0.5, selfs)
        self.assertEqual(selfs.get("[unknown]", 0), 0, selfs)
        self.assertEqual(jit, [], prof.warnings)
        self.assert_callers_kept()


class CpuStrippedProgram(tbtest.TestCase):
    """A stripped program (its .dynsym has none of its own functions) with
    its debug file beside it, as a distribution's -dbgsym package puts it
    under /usr/lib/debug: its functions are named from the debug file."""

    def setUp(self):
        super().setUp()
        cpusamples.skip_if_perf_refused(self)
        if not (shutil.which("objcopy") and shutil.which("strip")):
            self.skipTest("no objcopy or strip (binutils)")

    def test_named_from_the_debug_file(self):
        prog = os.path.join(self.tmp, "idle_busy")
        shutil.copy(tbtest.prog("idle_busy"), prog)
        for cmd in (["objcopy", "--only-keep-debug", prog, prog + ".debug"], ["strip", "--strip-all", prog],
                    ["objcopy", "--add-gnu-debuglink=" + prog + ".debug", prog]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
        k = relutil.sanitizer_slowdown()
        env = tbtest.env(self.logdir, cpu="on", delay=0.3 * k, duration=0.8 * k)
        p = tbtest.run([prog, "2", "2", str(1.5 * k)], env=env, timeout=120)
        self.assertExitedOk(p)
        prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
        busy = [int(l.split()[1]) for l in p.stdout.splitlines() if l.startswith("busy ")]
        self.assertEqual(len(busy), 2, p.stdout)
        for tid in busy:
            names = {e.name for e in prof.host.line(tid).events} if prof.host.line(tid) else set()
            self.assertIn("busy", names, (tid, sorted(names)))
            self.assertNotIn("[idle_busy]", names, (tid, sorted(names)))


class CpuLibraryLoadedMidCapture(tbtest.TestCase):
    """A library dlopen()ed after the capture started, built without frame
    pointers: the stacks of samples taken in it must reach the program's
    frames (the unwinder learns of the new object before it unwinds them),
    not stop at the library's first frame."""

    def setUp(self):
        super().setUp()
        cpusamples.skip_if_perf_refused(self)

    def test_stacks_through_a_library_loaded_during_the_capture(self):
        src = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "dlburn", "dlburn.c")
        lib = os.path.join(self.tmp, "libdlburn.so")
        cc = os.environ.get("CC", "gcc")
        r = subprocess.run([cc, "-O2", "-g", "-fomit-frame-pointer", "-shared", "-fPIC", src, "-o", lib],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        p = tbtest.run([tbtest.prog("dlopen_burn"), lib, "1000"],
                       env=tbtest.env(self.logdir, cpu="on", cpu_hz=1000, cpu_mode="dwarf"), timeout=120)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        inner = full = 0
        for line in cpusamples.sampled_lines(prof):
            for e, anc in cpusamples.walk(line):
                if e.name != "lib_inner":
                    continue
                n = e.stats.get("self_samples", 0) + sum(
                    k.stats.get("self_samples", 0) for k, a in cpusamples.walk(line)
                    if k.name == "[kernel]" and a and a[-1] is e)
                inner += n
                names = [a.name for a in anc]
                if names[-3:] == ["main", "caller_in_main", "lib_burn"]:
                    full += n
        print("library loaded mid-capture: %d of %d samples in lib_inner reach main" % (full, inner))
        self.assertGreater(inner, 300)
        self.assertGreaterEqual(full, inner * 0.95)


class CpuLibraryUnloadedMidCapture(tbtest.TestCase):
    """A library dlclose()d during the capture: the samples taken in it
    before are named after it, though the agent names frames when the
    capture is collected, when it is gone, and another library may have
    been mapped at its place (the loader reuses the address range)."""

    def setUp(self):
        super().setUp()
        cpusamples.skip_if_perf_refused(self)

    def build(self, name, inner):
        src = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "dlburn", "dlburn.c")
        lib = os.path.join(self.tmp, name)
        cc = os.environ.get("CC", "gcc")
        r = subprocess.run([cc, "-O2", "-g", "-shared", "-fPIC", "-Dlib_inner=" + inner, src, "-o", lib],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return lib

    def check(self, mode):
        first = self.build("libfirst.so", "first_inner")
        second = self.build("libsecond.so", "second_inner")
        p = tbtest.run([tbtest.prog("dlopen_burn"), first, "700", second],
                       env=tbtest.env(self.logdir, cpu="on", cpu_hz=1000, cpu_mode=mode), timeout=120)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)
        self.assertIn("unloaded 1", p.stdout)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        count = {}
        for line in cpusamples.sampled_lines(prof):
            for e, anc in cpusamples.walk(line):
                count[e.name] = count.get(e.name, 0) + e.stats.get("self_samples", 0)
        same = [l for l in p.stdout.splitlines() if l.startswith("same_address")]
        print("%s, %s: first_inner %d, second_inner %d, [unknown] %d, [libfirst.so] %d" % (
            mode, same, count.get("first_inner", 0), count.get("second_inner", 0),
            count.get("[unknown]", 0), count.get("[libfirst.so]", 0)))
        # 700 ms of CPU in each at 1 kHz
        self.assertGreater(count.get("first_inner", 0), 200, count)
        self.assertGreater(count.get("second_inner", 0), 200, count)

    def test_names_of_an_unloaded_library_dwarf(self):
        self.check("dwarf")

    def test_names_of_an_unloaded_library_fp(self):
        self.check("fp")


class CpuLibunwindBeside(tbtest.TestCase):
    def test_libunwind_beside_the_agent(self):
        # a machine without libunwind: the README's answer is a copy beside
        # libtbprof.so. libunwind-x86_64.so.8 needs libunwind.so.8, which the
        # loader looks for among the objects loaded and in its path, never
        # beside the library that needs it: without the agent loading it
        # from there first, the copy failed to load and stacks fell back to
        # frame pointers (Python's frames lost)
        cpusamples.skip_if_perf_refused(self)
        libs = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
        sys_libs = {l.split()[0]: os.path.realpath(l.rsplit(" => ", 1)[1].strip()) for l in libs.splitlines()
                    if " => " in l and l.split()[0] in ("libunwind.so.8", "libunwind-x86_64.so.8")}
        if len(sys_libs) != 2:
            self.skipTest("no system libunwind to copy: %s" % sys_libs)
        d = os.path.join(self.tmp, "lib")
        os.makedirs(d)
        shutil.copy2(tbtest.LIB, d)
        for name, path in sys_libs.items():
            shutil.copy2(path, os.path.join(d, name))
        e = tbtest.env(self.logdir, cpu="on", cpu_hz=1000, cpu_mode="dwarf")
        e["LD_PRELOAD"] = relutil.preload_with(os.path.join(d, os.path.basename(tbtest.LIB)))
        hide = " ".join(sorted(set(sys_libs.values())))
        p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            'for f in %s; do mount --bind /dev/null "$f" || exit 99; done; exec "$@"' % hide, "sh",
                            tbtest.prog("kernel_split"), "-m", "300"], env=e, capture_output=True, text=True,
                           timeout=120)
        if p.returncode == 99 or "unshare failed" in p.stderr:
            self.skipTest("cannot hide libraries here (unshare -m, mount --bind): %s" % p.stderr[-200:])
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)
        prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
        self.assertEqual(prof.host.stats.get("tbprof_cpu_mode"), "stackcopy", prof.host.stats)

    def test_libunwind_missing_one_warning(self):
        # no libunwind to load (here: TBPROF_LIBUNWIND naming no file): dwarf
        # stacks fall back to frame pointers with one warning that says why
        # (the README's promise). There were two, the second one wrong:
        # "libunwind-x86_64.so.8 not found (...)" and then "built without
        # libunwind", of a build that has it
        cpusamples.skip_if_perf_refused(self)
        missing = os.path.join(self.tmp, "nowhere", "libunwind-x86_64.so.8")
        e = tbtest.env(self.logdir, cpu="on", cpu_hz=1000, cpu_mode="dwarf", libunwind=missing)
        p = tbtest.run([tbtest.prog("kernel_split"), "-m", "100"], env=e)
        self.assertExitedOk(p)
        warns = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(warns), 1, p.stderr)
        self.assertIn(missing, warns[0])
        self.assertIn("frame-pointer stacks", warns[0])
        self.assertNotIn("built without", p.stderr)
        prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
        self.assertEqual(prof.host.stats.get("tbprof_cpu_mode"), "fp", prof.host.stats)


if __name__ == "__main__":
    tbtest.main()
