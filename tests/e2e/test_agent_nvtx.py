"""Steps from NVTX ranges whose name matches TBPROF_NVTX_STEP, on real processes.

tests/e2e/progs/nvtx_steps.c is built against the NVTX v3 headers (header-
only: its first NVTX call dlopen()s NVTX_INJECTION64_PATH). It names its step
ranges "step 0", "step 1", ... (with inner "fwd"/"bwd" ranges that must not
count) and prints when it opened and closed each. Under LD_PRELOAD with
TBPROF_NVTX_STEP the preload points NVTX at libtbprof.so; each test decodes
the profile and compares its steps with the ranges the program made."""

import json
import os
import time
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402

PROG = tbtest.prog("nvtx_steps")


def parse(stdout, offset=0):
    ranges, info = {}, {}
    for line in stdout.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "range":
            # (time before the range call, time at its end, time after the call returned)
            ranges[int(f[1]) + offset] = (int(f[2]), int(f[3]), int(f[4]))
        elif "=" in f[0]:
            k, v = line.split("=", 1)
            info[k] = v
    return ranges, info


def have_nvtx_headers():
    if not os.path.exists(PROG):
        return False
    p = tbtest.run([PROG, "-n", "0"], env=tbtest.env(preload=False))
    return p.returncode != 77


@unittest.skipUnless(have_nvtx_headers(), "nvtx_steps was built without the NVTX v3 headers (no CUDA toolkit)")
class NvtxBase(tbtest.TestCase):
    def run_prog(self, args, logdir=None, extra_env=None, **tb):
        e = tbtest.env(logdir or self.logdir, **tb)
        e.pop("NVTX_INJECTION64_PATH", None)
        e.update(extra_env or {})
        p = tbtest.spawn([PROG] + args, env=e)
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err)
        return p.pid, out, err

    def one_profile(self, logdir=None):
        files = tbtest.xplanes(logdir or self.logdir)
        self.assertEqual(len(files), 1, files)
        return tbtest.load(files[0])

    def check_steps(self, prof, first, last, ranges, pid, ms, ends_at_range_end=True):
        steps = prof.steps()
        self.assertEqual([n for n, _, _ in steps], list(range(first, last + 1)), prof.path)
        for n, ev, line in steps:
            start, end, called = ranges[n]
            self.assertEqual(line.id, pid)
            # the step begins inside the range call: between the times the
            # program read just before it and just after it returned
            self.assertGreaterEqual(ev.start_ns, start)
            self.assertLessEqual(ev.start_ns, called, "step %d starts late" % n)
            self.assertGreaterEqual(ev.dur_ns, ms * 1e6 * 0.9)
            if n < last:
                nxt = ranges[n + 1]
                self.assertGreaterEqual(ev.end_ns, nxt[0], "step %d ends early" % n)
                self.assertLessEqual(ev.end_ns, nxt[2], "step %d runs past the next" % n)
            elif ends_at_range_end:
                # the window's last range closed: the capture stopped there
                self.assertLessEqual(ev.end_ns, end)
        cap_end = prof.host.stats["tbprof_capture_end_ns"]
        if ends_at_range_end:
            self.assertLessEqual(cap_end, ranges[last][1])
        for ev in prof.host.events():
            self.assertGreaterEqual(ev.start_ns, steps[0][1].start_ns)
            self.assertLessEqual(ev.end_ns, cap_end)



@unittest.skipUnless(have_nvtx_headers(), "nvtx_steps was built without the NVTX v3 headers (no CUDA toolkit)")
class NvtxSteps(NvtxBase):
    def test_each_range_api(self):
        for kind in ("push", "pushw", "pushex", "start", "domain", "mark"):
            with self.subTest(kind=kind):
                logdir = os.path.join(self.tmp, kind)
                pid, out, err = self.run_prog(["-k", kind, "-n", "8", "-m", "3", "-g", "3"], logdir=logdir,
                                              steps="2,4", nvtx_step="step")
                ranges, info = parse(out)
                self.assertEqual(os.path.realpath(info["nvtx_path"]), os.path.realpath(tbtest.LIB))
                if kind not in ("start", "mark"):
                    self.assertEqual(info["level"], "0", "push returns the level: injection attached")
                # a mark has no end: the last step runs to the next mark
                prof = self.one_profile(logdir)
                self.check_steps(prof, 2, 4, ranges, pid, 3, ends_at_range_end=kind != "mark")
                self.assertEqual(tbtest.tbprof_warnings(err), [])
                # the ranges that began steps say so (no op: tf_op skips them);
                # the inner ranges do not
                evs = prof.host.line(pid).events
                marked = sorted(e.name for e in evs if e.stats.get("tbprof_step_range") == 1)
                self.assertEqual(marked, [] if kind == "mark" else ["step 2", "step 3", "step 4"])
                self.assertTrue([e for e in evs if e.name == "fwd"])

    def test_named_nvtx_steps_win_over_a_default_source(self):
        # TBPROF_NVTX_STEP set by the user, and a program that calls
        # cudaProfilerStart() once before its loop (nsys' capture-range
        # habit): the NVTX ranges count the steps. Before, the default
        # TBPROF_CUDA_STEPS=on claimed counting at that call and the named
        # ranges were ignored: the window 2-4 was never reached. Asked for
        # both (TBPROF_CUDA_STEPS=on), the first source still wins.
        pid, out, err = self.run_prog(["-n", "8", "-m", "3", "-g", "3", "-P"], steps="2,4", nvtx_step="step")
        ranges, info = parse(out)
        self.assertEqual(info.get("profiler_start"), "0", out)
        self.check_steps(self.one_profile(), 2, 4, ranges, pid, 3)
        # (no CUDA runtime in this test program: the call is not forwarded)
        self.assertEqual([w for w in tbtest.tbprof_warnings(err) if "no CUDA library defines it" not in w], [])
        logdir = os.path.join(self.tmp, "both")
        _, _, err = self.run_prog(["-n", "8", "-m", "3", "-g", "3", "-P"], logdir=logdir, steps="2,4",
                                  nvtx_step="step", cuda_steps="on")
        self.assertIn("steps are counted from cudaProfilerStart/Stop", err)

    def test_number_in_name_is_the_step(self):
        # ranges "step 10".."step 17": TBPROF_STEPS=12,14 means those names,
        # not the 12th..14th range (there are only 8)
        pid, out, _ = self.run_prog(["-n", "8", "-o", "10", "-m", "2"], steps="12,14", nvtx_step="step")
        ranges, _ = parse(out, offset=10)
        self.check_steps(self.one_profile(), 12, 14, ranges, pid, 2)

    def test_registered_step_names_past_the_string_cap(self):
        # as the Python nvtx package does: each step's name ("step 1000000",
        # "step 1000001", ...) registered (nvtxDomainRegisterStringA) and
        # pushed by handle. 45,000 unique names are more than tbprof keeps
        # (1 MiB of strings, ~30,000 of these): the steps past that still
        # count, so a window late in the job is captured, their ranges
        # recorded unnamed. Before, ranges named by strings past the cap
        # were no steps: no profile at all
        n, off = 45000, 1000000
        first, last = off + n - 5, off + n - 3
        pid, out, err = self.run_prog(["-k", "domain", "-n", str(n), "-o", str(off), "-m", "0", "-g", "0"],
                                      steps="%d,%d" % (first, last), nvtx_step="step")
        ranges, _ = parse(out, offset=off)
        self.assertEqual(len(ranges), n)
        prof = self.one_profile()
        self.check_steps(prof, first, last, ranges, pid, 0)
        marked = [e.name for e in prof.host.line(pid).events if e.stats.get("tbprof_step_range") == 1]
        self.assertEqual(marked, ["(unnamed)"] * 3)
        self.assertOneWarning(err, "registered strings")

    def test_unnumbered_names_count(self):
        pid, out, _ = self.run_prog(["-n", "8", "-u", "-p", "train_step", "-m", "2"], steps="3,5",
                                    nvtx_step="train")
        ranges, _ = parse(out)
        self.check_steps(self.one_profile(), 3, 5, ranges, pid, 2)

    def test_regex_with_group(self):
        pid, out, _ = self.run_prog(["-n", "8", "-p", "iter", "-o", "100", "-m", "2"], steps="101,102",
                                    nvtx_step="/^iter ([0-9]+)$/")
        ranges, _ = parse(out, offset=100)
        self.check_steps(self.one_profile(), 101, 102, ranges, pid, 2)

    def test_regex_without_group_counts(self):
        pid, out, _ = self.run_prog(["-n", "6", "-p", "iter", "-o", "100", "-m", "2"], steps="1,2",
                                    nvtx_step="/^it/")
        ranges, _ = parse(out)  # counted from 0: range i is step i
        self.check_steps(self.one_profile(), 1, 2, ranges, pid, 2)

    def test_regex_is_not_run_for_each_range(self):
        # each step pushes 1000 "tiny" ranges and "fwd"/"bwd"/"loss", none a
        # step: with a regex pattern, only the step ranges run it (counted by
        # a regexec shim). Before, every push did, ~65 ns each on a 2-core VM
        # (5x the idle cost of a range). The patterns probe where a name can
        # be ruled out without the regex: an optional or repeated letter, an
        # alternation (where each name still runs it: the shim counts), an
        # unanchored literal
        import relutil
        shim = tbtest.prog("libcount_regexec.so")
        n = 8
        counted = False
        for pattern, few in (("/^epoch|^step ([0-9]+)/", False), ("/^step ([0-9]+)$/", True),
                             ("/^st(ep)? ([0-9]+)$/", True), ("/^stex*p ([0-9]+)/", True),
                             ("/ep ([0-9]+)$/", True), ("/^s.ep ([0-9]+)/", True)):
            with self.subTest(pattern=pattern):
                logdir = os.path.join(self.tmp, str(len(os.listdir(self.tmp))))
                e = tbtest.env(logdir, steps="2,4", nvtx_step=pattern)
                e.pop("NVTX_INJECTION64_PATH", None)
                e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
                p = tbtest.spawn([PROG, "-n", str(n), "-m", "2", "-r", "1000"], env=e)
                out, err = p.communicate(timeout=120)
                self.assertEqual(p.returncode, 0, err)
                ranges, _ = parse(out)
                self.check_steps(self.one_profile(logdir), 2, 4, ranges, p.pid, 2)
                calls = [int(l.split("=")[1]) for l in err.splitlines() if l.startswith("regexec_calls=")]
                self.assertEqual(len(calls), 1, err)
                if not few:
                    # (ASan's own regexec interceptor passes the shim by)
                    counted = calls[0] >= n * 1000
                elif counted:  # at most the step ranges and the pattern check at start-up
                    self.assertLessEqual(calls[0], 2 * n, pattern)

    def test_off_and_unset_means_no_injection(self):
        pid, out, err = self.run_prog(["-n", "6", "-m", "1"], steps="1,2", nvtx="off")
        _, info = parse(out)
        self.assertEqual(info["nvtx_path"], "")
        self.assertEqual(info["level"], "-2", "NVTX with no tool attached")
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_other_tool_keeps_its_injection(self):
        other = os.path.join(self.tmp, "libother_nvtx_tool.so")
        pid, out, err = self.run_prog(["-n", "6", "-m", "1"], steps="1,2", nvtx_step="step",
                                      extra_env={"NVTX_INJECTION64_PATH": other})
        _, info = parse(out)
        self.assertEqual(info["nvtx_path"], other, "left as it was")
        line = self.assertOneWarning(err, "NVTX_INJECTION64_PATH")
        self.assertIn(other, line)
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_bad_regex_warns_once(self):
        pid, out, err = self.run_prog(["-n", "4", "-m", "1"], steps="1,2", nvtx_step="/([a-/")
        self.assertOneWarning(err, "TBPROF_NVTX_STEP")
        # NVTX steps off; the injection stays for recording ranges (TBPROF_NVTX)
        self.assertTrue(parse(out)[1]["nvtx_path"].endswith("libtbprof.so"))
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_costly_regex_refused_before_it_is_compiled(self):
        # glibc's regcomp wrote s{1,30000} out 30000 times: 7 GB and 16 s in
        # the job's process at start-up. Refused now, with one warning
        t0 = time.monotonic()
        pid, out, err = self.run_prog(["-n", "4", "-m", "1"], steps="1,2", nvtx_step="/step_s{1,30000}/")
        line = self.assertOneWarning(err, "TBPROF_NVTX_STEP")
        self.assertIn("at most 1000 pieces", line)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_non_matching_names_are_not_steps(self):
        pid, out, err = self.run_prog(["-n", "6", "-m", "1", "-p", "epoch"], steps="1,2", nvtx_step="step")
        _, info = parse(out)
        self.assertEqual(info["level"], "0", "attached")
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        self.assertFalse(os.path.exists(self.logdir))


@unittest.skipUnless(have_nvtx_headers(), "nvtx_steps was built without the NVTX v3 headers (no CUDA toolkit)")
class NvtxRanges(NvtxBase):
    """TBPROF_NVTX (default on): the program's NVTX ranges and marks are on its
    thread's /host:CPU line, recorded by tbprof's own NVTX injection."""

    def nvtx_events(self, prof, pid):
        line = prof.host.line(pid)
        return [e for e in line.events if e.name != "train"] if line else []

    def check_step_contents(self, prof, pid, steps, ms, names=None):
        evs = self.nvtx_events(prof, pid)
        names = names or ["step %d" % k for k in steps]
        tops = [e for e in evs if e.name in names]
        self.assertEqual(sorted(e.name for e in tops), sorted(names), [e.name for e in evs][:20])
        for name in ("fwd", "bwd", "loss"):
            got = [e for e in evs if e.name == name]
            self.assertEqual(len(got), len(steps), "%s: %d, expected one per captured step" % (name, len(got)))
            for e in got:  # nested in one of the step ranges
                self.assertTrue(any(t.start_ns <= e.start_ns and e.end_ns <= t.end_ns for t in tops),
                                "%s at %d is in no step range" % (name, e.start_ns))
                if name == "loss":
                    self.assertEqual(e.dur_ns, 0, "a mark is an instant")
                else:
                    self.assertGreaterEqual(e.dur_ns, ms / 2 * 1e6 * 0.9)
        for t in tops:
            self.assertGreaterEqual(t.dur_ns, ms * 1e6 * 0.9)
        return evs

    def test_ranges_and_marks_in_a_step_window(self):
        pid, out, err = self.run_prog(["-n", "10", "-m", "3"], steps="3,6", nvtx_step="step")
        prof = self.one_profile()
        self.check_step_contents(prof, pid, range(3, 7), 3)
        self.assertEqual(prof.host.stats.get("tbprof_nvtx_dropped"), 0)
        self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_summary_lists_the_ranges(self):
        # the step ranges are all named "main", like the program's sampled
        # function main(): a range and a sampled frame each keep their kind
        pid, out, err = self.run_prog(["-n", "8", "-m", "20", "-u", "-p", "main"], steps="3,6", nvtx_step="main",
                                      cpu="on")
        r = tbtest.run([tbtest.CLI, "summary", "--json", self.logdir])
        self.assertEqual(r.returncode, 0, r.stderr)
        h = json.loads(r.stdout)["hosts"][0]
        nv = {x["name"]: x for x in h["nvtx"]["top"]}
        self.assertEqual(sorted(nv), ["bwd", "fwd", "loss", "main"], h["nvtx"])
        for name in ("main", "fwd", "bwd", "loss"):
            self.assertEqual(nv[name]["count"], 4, name)  # steps 3..6
        self.assertEqual(h["nvtx"]["count"], 16)
        self.assertGreaterEqual(nv["main"]["min_ns"], 20e6 * 0.9)
        self.assertGreaterEqual(nv["fwd"]["min_ns"], 10e6 * 0.9)
        self.assertEqual(nv["loss"]["max_ns"], 0, "a mark is an instant")
        self.assertEqual([x["name"] for x in h["nvtx"]["top"]][0], "main", "by total time")
        if h["cpu"]["samples"]:
            self.assertIn("main", [f["name"] for f in h["cpu"]["functions"]])
        text = tbtest.run([tbtest.CLI, "summary", self.logdir]).stdout
        self.assertIn("NVTX ranges (4 distinct names, 16 ranges and marks", text)

    def test_fork_inside_a_range_during_a_capture(self):
        # the child is forked inside step 4's "fwd", pops it, makes its own
        # ranges and exits: it writes nothing; the parent's profile is whole
        pid, out, err = self.run_prog(["-n", "10", "-m", "4", "-f", "4"], steps="3,6", nvtx_step="step")
        self.assertRegex(out, r"child \d+ status 0")
        prof = self.one_profile()
        self.check_step_contents(prof, pid, range(3, 7), 4)
        names = {e.name for e in self.nvtx_events(prof, pid)}
        self.assertNotIn("child", names)
        self.assertNotIn("child mark", names)
        self.assertEqual(prof.host.stats.get("tbprof_nvtx_dropped"), 0)
        self.assertEqual(tbtest.tbprof_warnings(err), [])
        self.assertNoPartialFiles(self.logdir)

    def test_recorded_without_a_step_pattern(self):
        # steps from the API are not there: a time window instead, well
        # inside the program's ~0.5 s of steps (a loaded machine, or a
        # sanitizer build, can take 0.1 s and more to reach the first)
        pid, out, err = self.run_prog(["-n", "100", "-m", "4", "-g", "1"], delay="0.2", duration="0.1")
        _, info = parse(out)
        self.assertTrue(info["nvtx_path"].endswith("libtbprof.so"), info)
        prof = self.one_profile()
        evs = self.nvtx_events(prof, pid)
        fwd = [e for e in evs if e.name == "fwd"]
        self.assertGreaterEqual(len(fwd), 5, [e.name for e in evs])
        steps = [e for e in evs if e.name.startswith("step ")]
        self.assertGreaterEqual(len(steps), 5)
        # ranges open when the capture began are not there; those open at its end are cut there
        cap_end = prof.host.stats["tbprof_capture_end_ns"]
        self.assertTrue(all(e.end_ns <= cap_end for e in evs))

    def test_wide_registered_and_start_end_names(self):
        for kind in ("pushw", "domain", "start", "pushex"):
            with self.subTest(kind=kind):
                logdir = os.path.join(self.tmp, kind)
                pid, out, err = self.run_prog(["-n", "8", "-m", "2", "-k", kind], logdir=logdir, steps="2,4",
                                              nvtx_step="step")
                self.check_step_contents(self.one_profile(logdir), pid, range(2, 5), 2)

    def test_domains_nest_apart_and_are_named(self):
        # each step: "dom a" pushed in domain tbtest.a, then "dom b" in
        # tbtest.b, then tbtest.a popped before tbtest.b. NVTX nests per
        # domain, so "dom a" ends first; the step ranges themselves are in
        # domain "tbtest" (-k domain)
        ms = 8
        pid, out, err = self.run_prog(["-n", "8", "-m", str(ms), "-k", "domain", "-d"], steps="2,4",
                                      nvtx_step="step")
        _, info = parse(out)
        self.assertEqual(info.get("same_domain"), "1", "a domain created twice is one handle")
        prof = self.one_profile()
        evs = self.check_step_contents(prof, pid, range(2, 5), ms)
        a = sorted((e for e in evs if e.name == "dom a"), key=lambda e: e.start_ns)
        b = sorted((e for e in evs if e.name == "dom b"), key=lambda e: e.start_ns)
        self.assertEqual((len(a), len(b)), (3, 3), [e.name for e in evs])
        for ea, eb in zip(a, b):
            self.assertEqual(ea.stats.get("tbprof_nvtx_domain"), "tbtest.a", ea)
            self.assertEqual(eb.stats.get("tbprof_nvtx_domain"), "tbtest.b", eb)
            # a: [push a, pop a], b: [push b, pop b], b pushed ms/4 into a,
            # a popped ms/4 before b: each spans at least ms/2 of spinning
            self.assertLess(ea.start_ns, eb.start_ns)
            self.assertLess(ea.end_ns, eb.end_ns, "popping tbtest.a ended tbtest.b's range")
            for e in (ea, eb):
                self.assertGreaterEqual(e.dur_ns, ms / 2 * 1e6 * 0.9, e)
        for e in evs:
            if e.name.startswith("step "):
                self.assertEqual(e.stats.get("tbprof_nvtx_domain"), "tbtest", e)
            elif e.name in ("fwd", "bwd", "loss"):
                self.assertNotIn("tbprof_nvtx_domain", e.stats, "the default domain has no name")
        self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_domain_created_after_many_registered_strings(self):
        # 40,000 uniquely named registered step names fill tbprof's 1 MiB of
        # registered strings; then the program creates two domains (a
        # library's first use late in a job) and nests ranges in them: they
        # are still domains of their own, named. Before, a domain past the
        # strings' cap was refused: its ranges were in the default domain,
        # unnamed, sharing its push/pop stack
        n, off = 40000, 1000000
        first, last = off + n - 5, off + n - 3
        pid, out, err = self.run_prog(["-k", "domain", "-n", str(n), "-o", str(off), "-m", "0", "-g", "0", "-d",
                                       "-a", str(n - 10)], steps="%d,%d" % (first, last), nvtx_step="step")
        prof = self.one_profile()
        evs = self.nvtx_events(prof, pid)
        for name, dom in (("dom a", "tbtest.a"), ("dom b", "tbtest.b")):
            got = [e.stats.get("tbprof_nvtx_domain") for e in evs if e.name == name]
            self.assertEqual(got, [dom] * 3, name)
        self.assertOneWarning(err, "registered strings")

    def test_xla_domain_declined_unless_asked(self):
        # XLA asks for the domain "TSL" once; given a handle it annotates
        # with NVTX instead of its own profiler's stack. By default tbprof
        # answers as no tool does (NULL): no "TSL" ranges, the others as
        # ever. TBPROF_XLA_RANGES=on: the handle, and its ranges recorded
        for on, want in ((None, 0), ("on", 1)):
            with self.subTest(xla_ranges=on):
                logdir = os.path.join(self.tmp, "xla_%s" % on)
                pid, out, err = self.run_prog(["-n", "6", "-m", "4", "-x"], logdir=logdir, steps="2,3",
                                              nvtx_step="step", xla_ranges=on)
                _, info = parse(out)
                self.assertEqual(info.get("tsl_domain"), str(want), out)
                evs = self.check_step_contents(self.one_profile(logdir), pid, range(2, 4), 4)
                hlo = [e for e in evs if e.name == "fusion.1"]  # the HLO op, from XLA's encoding
                self.assertEqual(len(hlo), 2 * want, [e.name for e in evs])
                for e in hlo:
                    self.assertEqual(e.stats.get("tbprof_nvtx_domain"), "TSL", e)
                    self.assertEqual(e.stats.get("xla_annotation"), "hlo_op=fusion.1,unique_hlo_op_id=7", e)
                self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_utf8_names(self):
        pid, out, err = self.run_prog(["-n", "8", "-m", "2", "-k", "pushw", "-p", "\u00e9tape"], steps="2,3",
                                      nvtx_step="\u00e9tape")
        self.check_step_contents(self.one_profile(), pid, range(2, 4), 2,
                                 names=["\u00e9tape %d" % k for k in range(2, 4)])

    def test_off(self):
        pid, out, err = self.run_prog(["-n", "10", "-m", "2"], steps="3,4", nvtx_step="step", nvtx="off")
        prof = self.one_profile()
        self.assertEqual(sorted(e.name for e in self.nvtx_events(prof, pid)), [])
        self.assertNotIn("tbprof_nvtx_dropped", prof.host.stats)

    def test_another_tool_owns_nvtx(self):
        other = os.path.join(self.tmp, "libother_nvtx_tool.so")
        pid, out, err = self.run_prog(["-n", "10", "-m", "2", "-g", "1"], delay="0.02", duration="0.05",
                                      extra_env={"NVTX_INJECTION64_PATH": other})
        self.assertEqual(parse(out)[1]["nvtx_path"], other)
        self.assertEqual(tbtest.tbprof_warnings(err), [], "no warning without a step pattern")
        prof = self.one_profile()
        self.assertEqual(self.nvtx_events(prof, pid), [])
        self.assertIn(other, prof.host.stats.get("tbprof_nvtx_off_reason", ""))
        self.assertTrue(any("nvtx ranges off" in w and other in w for w in prof.warnings), prof.warnings)

    def test_pushes_without_pops_keep_recording(self):
        # each step pushes "leak" and never pops it: by step 70 the thread is
        # 70 levels deep, and its ranges there are recorded as at level 0
        pid, out, err = self.run_prog(["-n", "80", "-m", "2", "-g", "0", "-l"], steps="70,72", nvtx_step="step")
        prof = self.one_profile()
        self.check_step_contents(prof, pid, range(70, 73), 2)
        self.assertEqual(prof.host.stats.get("tbprof_nvtx_dropped"), 0)
        self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_deep_nesting_keeps_the_outer_and_inner_levels(self):
        # 100 nested "deep" ranges in each step, under its step range: the
        # step range and "fwd"/"bwd" are there, and every "deep" range either
        # is, inside its step, or is counted as dropped, with one warning
        n, deep = 6, 100
        pid, out, err = self.run_prog(["-n", str(n), "-m", "4", "-D", str(deep)], steps="2,4", nvtx_step="step")
        prof = self.one_profile()
        evs = self.check_step_contents(prof, pid, range(2, 5), 4)
        tops = [e for e in evs if e.name.startswith("step ")]
        got = [e for e in evs if e.name == "deep"]
        for e in got:
            self.assertTrue(any(t.start_ns <= e.start_ns and e.end_ns <= t.end_ns for t in tops), e)
        dropped = prof.host.stats.get("tbprof_nvtx_dropped", 0)
        self.assertGreater(len(got), 3 * 60)
        self.assertEqual(len(got) + dropped, 3 * deep, (len(got), dropped))
        self.assertTrue(any("NVTX" in w and "deep" in w for w in prof.warnings), prof.warnings)

    def test_ranges_before_the_window_take_no_records(self):
        # TBPROF_BUFFER_MB=1: 1024 range records; each step makes ~605. The
        # sources start at step 2, the window is step 3 alone: its ranges
        # fit, and step 2's (not in the profile) must not take their place
        pid, out, err = self.run_prog(["-n", "5", "-m", "1", "-r", "600"], steps="3,3", nvtx_step="step",
                                      buffer_mb="1")
        prof = self.one_profile()
        self.check_step_contents(prof, pid, [3], 1)
        self.assertEqual(len([e for e in self.nvtx_events(prof, pid) if e.name == "tiny"]), 600)
        self.assertEqual(prof.host.stats.get("tbprof_nvtx_dropped"), 0)
        self.assertEqual(tbtest.tbprof_warnings(err), [])

    def test_full_buffer_drops_and_says_so(self):
        # TBPROF_BUFFER_MB=1: 64 KiB for NVTX, 1024 range records
        pid, out, err = self.run_prog(["-n", "6", "-m", "1", "-r", "3000"], steps="2,3", nvtx_step="step",
                                      buffer_mb="1")
        prof = self.one_profile()
        evs = self.nvtx_events(prof, pid)
        dropped = prof.host.stats.get("tbprof_nvtx_dropped", 0)
        self.assertGreater(dropped, 0)
        self.assertLessEqual(len(evs), 1024)
        # every range the two steps made is either there or counted
        self.assertGreaterEqual(len(evs) + dropped, 2 * (3000 + 4))
        self.assertTrue(any("NVTX" in w and "dropped" in w for w in prof.warnings), prof.warnings)
        self.assertEqual(len([l for l in tbtest.tbprof_warnings(err) if "NVTX" in l]), 1, err)


if __name__ == "__main__":
    tbtest.main()
