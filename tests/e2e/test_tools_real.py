"""test_tools_real.py - `tbprof summary`, `convert` and `flame` on profiles
that the agent wrote for real programs under LD_PRELOAD: the steps.c loop
(TBPROF_STEPS) and cpu_split.c (60% of CPU time in burn_a, 40% in burn_b).
The figures the CLI prints are checked against the file decoded in Python
(tbtest.load) and against what the programs did."""

import json
import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402
import cpusamples  # noqa: E402

CLI = tbtest.CLI


def cli(*args):
    return tbtest.run([CLI] + list(args), timeout=120)


class RealProfiles(tbtest.TestCase):
    def test_steps_loop(self):
        p = tbtest.run([tbtest.prog("steps"), "-n", "20", "-m", "4"],
                       env=tbtest.env(self.logdir, steps="5,14"), timeout=120)
        self.assertExitedOk(p)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        prof = tbtest.load(files[0])
        steps = prof.steps()
        r = cli("summary", "--json", self.logdir)
        self.assertEqual(r.returncode, 0, r.stderr)
        h = json.loads(r.stdout)["hosts"][0]
        self.assertEqual(h["steps"]["count"], len(steps))
        self.assertEqual([s["num"] for s in h["steps"]["list"]], [n for n, _, _ in steps])
        self.assertEqual([s["dur_ns"] for s in h["steps"]["list"]], [e.dur_ns for _, e, _ in steps])
        self.assertGreaterEqual(h["steps"]["min_ns"], 4000000)  # 4 ms of work each
        self.assertEqual(h["gpus"], 0)
        r = cli("summary", self.logdir)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Steps: %d captured" % len(steps), r.stdout)
        self.assertIn("trigger: ", r.stdout)

    def test_capture_length_of_an_idle_process(self):
        # a 0.5 s time window over a process that sleeps through it (an idle
        # server): nothing to record, but the capture lasted 0.5 s, as the
        # profile's tbprof_capture_begin_ns/_end_ns say, and the summary's
        # figures "cover the whole capture" (README). It said "capture 0 ns":
        # the span of the events, of which there were none
        p = tbtest.run(["sleep", "1.5"], env=tbtest.env(self.logdir, cpu="on", duration="0.5", delay="0.2"),
                       timeout=120)
        self.assertExitedOk(p)
        prof = tbtest.load(tbtest.wait_for_xplanes(self.logdir, 1)[0])
        b, e = prof.host.stats["tbprof_capture_begin_ns"], prof.host.stats["tbprof_capture_end_ns"]
        self.assertAlmostEqual(e - b, 500000000, delta=50000000)
        r = cli("summary", "--json", self.logdir)
        self.assertEqual(r.returncode, 0, r.stderr)
        h = json.loads(r.stdout)["hosts"][0]
        self.assertEqual((h["begin_ns"], h["end_ns"], h["capture_ns"]), (b, e, e - b))
        r = cli("summary", self.logdir)
        self.assertRegex(r.stdout, r"capture (4\d\d\.\d\d ms|5\d\d\.\d\d ms)")

    def test_trend_of_a_job_that_slows_down(self):
        # a job whose steps grow from 2 to 12 ms, captured 3 steps every 25
        # (TBPROF_STEPS=5-7/25): `tbprof trend` lists the captures oldest
        # first with the step time the program printed for those steps
        # (about 2.5, 5, 7.5 and 10 ms on an idle machine)
        p = tbtest.run([tbtest.prog("steps"), "-s", "-n", "101", "-m", "2", "-M", "12"],
                       env=tbtest.env(self.logdir, steps="5-7/25", run="slow"), timeout=120)
        self.assertExitedOk(p)
        starts = {}
        for line in p.stdout.splitlines():
            f = line.split()
            if f[0] == "step":
                starts[int(f[1])] = (int(f[2]), int(f[3]))  # before and after its tbprof_step()
        r = cli("trend", "--json", self.logdir)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = json.loads(r.stdout)["runs"]
        firsts = [5, 30, 55, 80]
        self.assertEqual([x["run"] for x in rows], ["slow_steps_%d-%d" % (a, a + 2) for a in firsts])
        for x, a in zip(rows, firsts):
            self.assertEqual((x["hosts"], x["steps"]), (1, 3), x)
            # steps a..a+2 span from step a's tbprof_step() call to step a+3's
            lo = (starts[a + 3][0] - starts[a][1]) / 3
            hi = (starts[a + 3][1] - starts[a][0]) / 3
            self.assertGreaterEqual(x["step_mean_ns"], lo - 1, x["run"])
            self.assertLessEqual(x["step_mean_ns"], hi + 1, x["run"])
        # (not asserted: that each is slower than the one before, which a
        # loaded machine can upset; the means above are what happened)
        for x in rows:
            self.assertAlmostEqual(x["vs_first"], x["step_mean_ns"] / rows[0]["step_mean_ns"], places=3)
        r = cli("trend", self.logdir)
        self.assertIn("Mean step time: first ", r.stdout)
        # (the slowest run named after it where that is not the last one)
        self.assertRegex(r.stdout, r"last [\d.]+ ms \([\d.]+x\)(; slowest [\d.]+ ms in slow_steps_\d+-\d+ "
                                   r"\([\d.]+x\))?\n")
        self.assertRegex(r.stdout, r"\nslow_steps_80-82 .*x\s+-\s+-\s+-\n",
                         "no GPU traced: no busy or waiting share, no kernel")

    def test_cpu_split(self):
        cpusamples.skip_if_perf_refused(self)
        src = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "cpu_split.c")
        exe = cpusamples.build(src, os.path.join(self.tmp, "cpu_split"), ["-fno-omit-frame-pointer"])
        p = tbtest.run([exe, "-t", "2", "-m", "1200"],
                       env=tbtest.env(self.logdir, cpu="on", cpu_hz=1000, cpu_mode="fp"), timeout=120)
        self.assertExitedOk(p)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        prof = tbtest.load(files[0])
        # independent count: the self_samples of every span in the file
        lines = cpusamples.sampled_lines(prof)
        selfs = sum(e.stats.get("self_samples", 0) for ln in lines for e in ln.events)
        self.assertGreater(selfs, 200)

        r = cli("summary", "--json", "--top", "1000", files[0])
        self.assertEqual(r.returncode, 0, r.stderr)
        h = json.loads(r.stdout)["hosts"][0]
        self.assertEqual(h["cpu"]["samples"], selfs)
        funcs = {f["name"]: f for f in h["cpu"]["functions"]}
        self.assertEqual(sum(f["self"] for f in funcs.values()), selfs)
        a, b = funcs["burn_a"]["self"], funcs["burn_b"]["self"]
        # truth: the CPU time the program measured in each (60% of the work)
        spent = [int(x) for ln in p.stdout.splitlines() if ln.startswith("spent ") for x in ln.split()[1:]]
        truth = spent[0] / (spent[0] + spent[1])
        print("burn_a %d, burn_b %d: %.1f%% (truth %.1f%%)" % (a, b, 100.0 * a / (a + b), truth * 100))
        self.assertAlmostEqual(truth, 0.60, delta=0.10)
        self.assertAlmostEqual(a / (a + b), truth, delta=0.06)
        folded = os.path.join(self.tmp, "cpu.folded")
        r = cli("convert", files[0], "--to", folded)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(folded, encoding="utf-8") as f:
            rows = [ln.rsplit(" ", 1) for ln in f.read().splitlines()]
        self.assertEqual(sum(int(n) for _, n in rows), selfs)
        self.assertTrue(any(s.endswith(";worker;burn_a") for s, _ in rows), rows[:5])
        # summary's "total" of a function = samples of the stacks that hold it
        under_worker = sum(int(n) for s, n in rows if "worker" in s.split(";")[1:])
        self.assertEqual(funcs["worker"]["total"], under_worker)
        self.assertEqual(funcs["burn_a"]["self"],
                         sum(int(n) for s, n in rows if s.split(";")[-1] == "burn_a"))

        ss = os.path.join(self.tmp, "cpu.speedscope.json")
        r = cli("convert", files[0], "--to", ss)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(ss, encoding="utf-8") as f:
            js = json.load(f)
        self.assertEqual(sum(sum(pr["weights"]) for pr in js["profiles"]), selfs)

        svg = os.path.join(self.tmp, "cpu.svg")
        r = cli("flame", files[0], "-o", svg)
        self.assertEqual(r.returncode, 0, r.stderr)
        root = ET.parse(svg).getroot()
        titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
        self.assertIn("all (%d samples, 100.00%%; self 0)" % selfs, titles)
        self.assertTrue(any(t.startswith("burn_a (") for t in titles))

    def test_gpu_through_fake_cupti(self):
        """Kernels, copies and busy time from the scripted fake libcupti
        (CUPTI builds only): the figures are the script's."""
        import test_gpu_fake as gf
        skip_without_fake_gpu(self)
        script = os.path.join(self.tmp, "script")
        with open(script, "w") as f:
            f.write(gf.SCRIPT)
        e = tbtest.with_cuda(tbtest.env(self.logdir, gpu="on", cupti_path=gf.FAKE))
        e["TBFAKE_CUPTI_SCRIPT"] = script
        e["TBFAKE_CUPTI_REPORT"] = os.path.join(self.tmp, "report")
        # records stamped when the program launches its work in the first
        # captured step (-G), not when tracing is enabled: see test_gpu_fake
        e["TBFAKE_CUPTI_AT_LAUNCH"] = "1"
        p = tbtest.run([tbtest.prog("steps"), "-G", "-n", "8", "-m", "20", "-a", "1,6"], env=e)
        self.assertExitedOk(p)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        r = cli("summary", "--json", files[0])
        self.assertEqual(r.returncode, 0, r.stderr)
        h = json.loads(r.stdout)["hosts"][0]
        self.assertEqual(h["gpus"], 1)
        self.assertEqual(h["gpu_events"], 6)
        k = {x["name"]: x for x in h["kernels"]["top"]}
        self.assertEqual((k["relu_kernel"]["count"], k["relu_kernel"]["total_ns"]), (2, 39000))
        self.assertEqual((k["sgemm_128x64"]["count"], k["sgemm_128x64"]["total_ns"]), (1, 100000))
        self.assertIsNotNone(k["relu_kernel"]["occ_pct"])
        c = h["copies"]
        self.assertEqual((c["H2D"]["bytes"], c["H2D"]["total_ns"]), (1048576, 98000))
        self.assertEqual((c["D2H"]["bytes"], c["D2H"]["total_ns"]), (4096, 10000))
        self.assertEqual(h["memsets"], {"count": 1, "total_ns": 2000})
        # the script's intervals do not overlap: busy = their sum
        self.assertEqual(h["gpu"]["busy_ns"], 20000 + 19000 + 100000 + 98000 + 10000 + 2000)
        self.assertLessEqual(sum(s["gpu_busy_ns"] for s in h["steps"]["list"]), h["gpu"]["busy_ns"])

    def test_cpu_while_the_gpu_waited(self):
        """hostwait.c (see HOSTWAIT_SCRIPT): the program works in
        prep_batch() for each 40 ms step's first 20 ms and sleeps the rest,
        while the GPU waits for it 38 ms. The summary's account of the
        launching thread meanwhile, from its real CPU samples."""
        skip_without_fake_gpu_or_perf(self)
        src = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "hostwait.c")
        exe = cpusamples.build(src, os.path.join(self.tmp, "hostwait"), ["-fno-omit-frame-pointer"])
        _, files = run_hostwait(self, [exe, "10"], cpu_mode="fp")
        check_while_waiting(self, files[0], "prep_batch")


def skip_without_fake_gpu(tc):
    import test_gpu_fake as gf
    if not tbtest.WITH_CUPTI or not os.path.exists(gf.FAKE):
        print("skip: GPU tracing not built (no fake libcupti)")
        tc.skipTest("GPU tracing not built")


def skip_without_fake_gpu_or_perf(tc):
    skip_without_fake_gpu(tc)
    cpusamples.skip_if_perf_refused(tc)


# hostwait.c's and hostwait_py.py's GPU work, 10 rounds of 40 ms: the launch
# call ends 38 ms into the round and its kernel runs to the round's end
# (the fake repeats a script 1 us after its last record ends)
HOSTWAIT_SCRIPT = ("runtime name=cudaLaunchKernel_v7000 cbid=211 tid=main corr=901 start=37990 end=38010\n"
                   "kernel name=relu_kernel start=38020 end=39999 stream=7 corr=901 grid=80,1,1 block=512,1,1 "
                   "regs=16\n")


def run_hostwait(tc, argv, python=False, cpu_mode="fp", **env):
    """Run a hostwait program (10 rounds) under the agent with the fake
    libcupti replaying HOSTWAIT_SCRIPT and CPU sampling at 1 kHz (env: more
    variables); the finished process and the xplane.pb files written."""
    import test_gpu_fake as gf
    script = os.path.join(tc.tmp, "script")
    with open(script, "w") as f:
        f.write(gf.DEVICE + HOSTWAIT_SCRIPT)
    e = tbtest.with_cuda(tbtest.env(tc.logdir, python=python, gpu="on", cupti_path=gf.FAKE, cpu="on", cpu_hz=1000,
                                    cpu_mode=cpu_mode))
    e.update(env)
    e.update({"TBFAKE_CUPTI_SCRIPT": script, "TBFAKE_CUPTI_AT_LAUNCH": "1", "TBFAKE_CUPTI_REPEAT": "10"})
    p = tbtest.run(argv, env=e, timeout=120)
    tc.assertExitedOk(p)
    return p, tbtest.wait_for_xplanes(tc.logdir, 1)


def check_while_waiting(tc, xplane, prep):
    """In each of 10 steps of 40 ms the GPU waited for the CPU 38 ms, 20 of
    them with the thread in `prep` (the name of its frame in the summary),
    the rest asleep: the summary's on-CPU time, nearly all in `prep`, and
    off-CPU time."""
    r = cli("summary", "--json", xplane)
    tc.assertEqual(r.returncode, 0, r.stderr)
    h = json.loads(r.stdout)["hosts"][0]
    tc.assertEqual(h["steps"]["count"], 10)
    tc.assertEqual(h["gpu_events"], 10)
    g = h["gpu"]
    w = g["while_waiting"]
    print("waits %.1f ms: on CPU %.1f ms (%s), off CPU %.1f ms" % (
        g["idle_cpu_ns"] / 1e6, w["on_cpu_ns"] / 1e6,
        ", ".join("%s %.1f" % (x["function"], x["ns"] / 1e6) for x in w["top"][:3]), w["off_cpu_ns"] / 1e6))
    tc.assertEqual(w["on_cpu_ns"] + w["off_cpu_ns"] + w["unsampled_ns"], g["idle_cpu_ns"])
    tc.assertEqual(w["unsampled_ns"], 0)
    # the GPU waited for the CPU 38 of each 40 ms
    tc.assertGreater(g["idle_cpu_ns"], 0.9 * g["window_ns"])
    # on CPU about 20 of the 38 ms (hostwait.c: 195 ms of 380 on an idle
    # machine; less where other work preempts the thread, which is then
    # off CPU: 100 ms beside two busy loops on 2 cores), nearly all in
    # prep; asleep in wait_batch the rest
    tc.assertEqual(w["top"][0]["function"], prep)
    # (code without frame pointers that prep calls, a sanitizer's runtime
    # and the vDSO's clock_gettime, shows as functions of their own in fp
    # stacks: TSan's interceptors took 12.5 of 190 ms once, leaving prep 89%)
    runtime = sum(x["ns"] for x in w["top"] if x["function"].startswith(("__tsan", "__asan", "__ubsan",
                                                                           "__sanitizer", "__interceptor",
                                                                           "[linux-vdso")))
    tc.assertGreater(w["top"][0]["ns"], 0.9 * (w["on_cpu_ns"] - runtime))
    tc.assertGreater(w["on_cpu_ns"], 0.1 * g["idle_cpu_ns"])
    tc.assertLess(w["on_cpu_ns"], 0.65 * g["idle_cpu_ns"])
    tc.assertGreater(w["off_cpu_ns"], 0.4 * g["idle_cpu_ns"])
    r = cli("summary", xplane)
    tc.assertRegex(r.stdout, r"\n  while the GPU waited for the CPU, the launching thread was on CPU [\d.]+% of that "
                             r"time, off CPU [\d.]+%\n")
    tc.assertIn("%  " + prep + "\n", r.stdout)

if __name__ == "__main__":
    tbtest.main()
