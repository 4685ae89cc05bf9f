"""test_tools_convert.py - `tbprof convert` and `tbprof flame` on profiles
with known CPU samples and GPU events (written with protoc's Python code):
folded lines sum to the sample count, speedscope JSON parses and matches,
the Chrome trace parses (plain and gzip), the SVG is well-formed XML with
one frame per call-tree node, names escaped; errors are actionable."""

import gzip
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_tools_summary as ts  # noqa: E402  (profile builders, CLI runner)
from test_tools_summary import Plane, run, write, xplane_pb2  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def sampled_space(hostname="node1", nasty=True):
    """CPU samples on two threads; a frame name that needs escaping."""
    sp = xplane_pb2.XSpace()
    sp.hostnames.append(hostname)
    h = Plane(sp, "/host:CPU")
    a, b = h.line(1, "python"), h.line(2, "dataloader")
    odd = 'op<float>& "x" \u00e9' if nasty else "op"
    spans = [(a, "main", 0, 1000, 20, None), (a, "step", 10, 600, 12, 2),
             (a, "fwd", 20, 200, 6, 6), (a, "bwd", 300, 200, 4, 1), (a, odd, 310, 50, 3, 3),
             (a, "main", 2000, 100, 2, 2),  # the same stack later: merges in folded output
             (b, "load", 0, 500, 7, 3), (b, "decode;jpeg", 10, 100, 4, 4)]
    for ln, name, start, dur, n, self_n in spans:
        stats = {"samples": n}
        if self_n:
            stats["self_samples"] = self_n
        h.event(ln, name, start, dur, **stats)
    h.event(a, "train", 0, 1000, _r=1, step_num=1)
    h.plane_stat("tbprof_cpu_samples", 29)
    return sp.SerializeToString()


# stacks and self counts of sampled_space (with thread roots)
WANT = {"python;main": 8 + 2, "python;main;step": 2, "python;main;step;fwd": 6,
        "python;main;step;bwd": 1, 'python;main;step;bwd;op<float>& "x" \u00e9': 3,
        "dataloader;load": 3, "dataloader;load;decode:jpeg": 4}


def parse_folded(text):
    out = {}
    for line in text.splitlines():
        stack, n = line.rsplit(" ", 1)
        out[stack] = out.get(stack, 0) + int(n)
    return out


def launched_space():
    """GPU work and the sampled stacks around its launches (1 kHz): main
    [0, 10 ms) > py::step [0.2, 9 ms) > fwd [0.5, 6 ms) on "python"; k_a
    launched at 2 ms (inside fwd), k_b at 9.5 ms (main only), k_c whose
    launch is not in the profile."""
    ms = 1000000
    sp = xplane_pb2.XSpace()
    sp.hostnames.append("node1")
    h = Plane(sp, "/host:CPU")
    h.plane_stat("tbprof_cpu_hz", 1000)
    t = h.line(1, "python")
    h.event(t, "main", 0, 10 * ms, samples=10)
    h.event(t, "py::step:/x/loop.py", ms // 5, 9 * ms - ms // 5, samples=8)
    h.event(t, "fwd", ms // 2, 6 * ms - ms // 2, samples=5, self_samples=5)
    h.event(t, "cudaLaunchKernel", 2 * ms, 5000, correlation_id=11)
    h.event(t, "cudaLaunchKernel", 9 * ms + ms // 2, 5000, correlation_id=12)
    g = Plane(sp, "/device:GPU:0")
    s = g.line(7, "Stream #7(Kernel)")
    g.event(s, "k_a", 3 * ms, 300000, correlation_id=11, kernel_details=ts.kd())
    g.event(s, "k_b", 9 * ms + 600000, 100000, correlation_id=12, kernel_details=ts.kd())
    g.event(s, "k_c", 9 * ms + 800000, 50000, correlation_id=99, kernel_details=ts.kd())
    return sp.SerializeToString()


GPU_WANT = {"python;main;py::step:/x/loop.py;fwd;k_a": 300000, "python;main;k_b": 100000,
            "[CUDA call not in the capture];k_c": 50000}


class Convert(ts.Base):
    def setUp(self):
        super().setUp()
        self.file = write(os.path.join(self.rundir, "node1.xplane.pb"), sampled_space())

    def out(self, name):
        return os.path.join(self.tmp, name)

    def test_folded(self):
        for name in ("cpu.folded", "cpu.txt"):
            p = run("convert", self.file, "--to", self.out(name))
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(self.out(name), encoding="utf-8") as f:
                got = parse_folded(f.read())
            self.assertEqual(got, WANT)
            self.assertEqual(sum(got.values()), 29)
        p = run("convert", self.logdir, "--to", "-", "--format", "folded", "--no-threads")
        self.assertEqual(p.returncode, 0, p.stderr)
        got = parse_folded(p.stdout)
        self.assertEqual(got["main;step;fwd"], 6)
        self.assertEqual(sum(got.values()), 29)
        self.assertNotIn("python", p.stdout)

    def test_speedscope(self):
        out = self.out("cpu.speedscope.json")
        p = run("convert", self.file, "--to", out)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(out, encoding="utf-8") as f:
            js = json.load(f)
        self.assertEqual(js["$schema"], "https://www.speedscope.app/file-format-schema.json")
        frames = [fr["name"] for fr in js["shared"]["frames"]]
        self.assertEqual(len(frames), len(set(frames)))
        self.assertIn('op<float>& "x" \u00e9', frames)
        self.assertIn("decode;jpeg", frames)  # JSON keeps names as they are
        profs = {p["name"]: p for p in js["profiles"]}
        self.assertEqual(set(profs), {"python", "dataloader"})
        got = {}
        for name, pr in profs.items():
            self.assertEqual(pr["type"], "sampled")
            self.assertEqual(len(pr["samples"]), len(pr["weights"]))
            self.assertEqual(pr["endValue"] - pr["startValue"], sum(pr["weights"]))
            for stack, w in zip(pr["samples"], pr["weights"]):
                key = ";".join([name] + [frames[i].replace(";", ":") for i in stack])
                got[key] = got.get(key, 0) + w
        self.assertEqual(got, WANT)

    def test_chrome_trace(self):
        for name, opener in (("t.json", open), ("t.json.gz", gzip.open)):
            out = self.out(name)
            p = run("convert", self.file, "--to", out)
            self.assertEqual(p.returncode, 0, p.stderr)
            with opener(out, "rt", encoding="utf-8") as f:
                js = json.load(f)
            names = [e.get("name") for e in js["traceEvents"] if e.get("ph") == "X"]
            self.assertIn("train", names)
            self.assertIn("fwd", names)
        # several hosts: a trace is one host's, say which file to take
        write(os.path.join(self.rundir, "node2.xplane.pb"), sampled_space("node2"))
        p = run("convert", self.logdir, "--to", self.out("all.json.gz"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("holds 2 profiles", p.stderr)
        self.assertIn("node1.xplane.pb --to", p.stderr)
        self.assertFalse(os.path.exists(self.out("all.json.gz")))

    def test_two_hosts_folded(self):
        write(os.path.join(self.rundir, "node2.xplane.pb"), sampled_space("node2", nasty=False))
        p = run("convert", self.logdir, "--to", self.out("both.folded"))
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(self.out("both.folded"), encoding="utf-8") as f:
            got = parse_folded(f.read())
        self.assertEqual(sum(got.values()), 58)
        self.assertEqual(got["node1: python;main;step;fwd"], 6)
        self.assertEqual(got["node2: python;main;step;bwd;op"], 3)

    def test_errors(self):
        p = run("convert", self.file, "--to", self.out("x.zip"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot tell the format from", p.stderr)
        p = run("convert", self.file, "--to", os.path.join(self.tmp, "no", "such", "dir.folded"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot write", p.stderr)
        p = run("convert", self.file)
        self.assertEqual(p.returncode, 2)
        self.assertIn("usage: tbprof convert", p.stderr)
        # no samples: say why (the warning recorded in the profile), write nothing
        nos = write(os.path.join(self.tmp, "nos.xplane.pb"), ts.second_host())
        p = run("convert", nos, "--to", self.out("nos.folded"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("no CPU samples", p.stderr)
        self.assertIn("perf_event_open: Permission denied", p.stderr)
        self.assertFalse(os.path.exists(self.out("nos.folded")))
        self.assertEqual([f for f in os.listdir(self.tmp) if ".tmp." in f], [])

    def test_gpu_time_by_launching_stack(self):
        f = write(os.path.join(self.tmp, "gpu", "node1.xplane.pb"), launched_space())
        p = run("convert", f, "--gpu", "--to", self.out("gpu.folded"))
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(self.out("gpu.folded"), encoding="utf-8") as fh:
            self.assertEqual(parse_folded(fh.read()), GPU_WANT)
        p = run("convert", f, "--gpu", "--to", self.out("gpu.speedscope.json"))
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(self.out("gpu.speedscope.json"), encoding="utf-8") as fh:
            js = json.load(fh)
        self.assertEqual({pr["unit"] for pr in js["profiles"]}, {"nanoseconds"})
        self.assertEqual(sum(sum(pr["weights"]) for pr in js["profiles"]), 450000)
        # a trace has the GPU work already; a profile without GPU work says so
        p = run("convert", f, "--gpu", "--to", self.out("t.json.gz"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("--gpu makes folded stacks or speedscope", p.stderr)
        p = run("convert", self.file, "--gpu", "--to", self.out("none.folded"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("no GPU work", p.stderr)
        self.assertFalse(os.path.exists(self.out("none.folded")))
        # tbprof summary: each call's deepest Python frame, else its deepest frame
        p = run("summary", "--json", f)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["hosts"][0]["gpu_launchers"], {
            "total_ns": 450000, "unsampled_ns": 0, "no_call_ns": 50000,
            "top": [{"function": "py::step:/x/loop.py", "gpu_ns": 300000}, {"function": "main", "gpu_ns": 100000}]})
        p = run("summary", f)
        self.assertRegex(p.stdout, r"GPU work by launching function \(450.0 us of GPU work\):\n.*\n.*\n.*\n"
                                   r"\s+300.0 us\s+66.7%\s+"
                                   r"py::step:/x/loop.py\n\s+100.0 us\s+22.2%\s+main\n\s+50.0 us\s+11.1%\s+"
                                   r"\[CUDA call not in the capture\]\n")
        # none of it with a call in the capture: the section says so, on
        # its rows of their own (before: left out of the text, in --json only)
        sp = xplane_pb2.XSpace()
        sp.ParseFromString(launched_space())
        host = [pl for pl in sp.planes if pl.name == "/host:CPU"][0]
        for ln in host.lines:
            del ln.events[3:]  # the two cudaLaunchKernel calls
        f2 = write(os.path.join(self.tmp, "gpu2", "node1.xplane.pb"), sp.SerializeToString())
        p = run("summary", f2)
        self.assertRegex(p.stdout, r"GPU work by launching function \(450.0 us of GPU work\):\n.*\n.*\n.*\n"
                                   r"\s+450.0 us\s+100.0%\s+\[CUDA call not in the capture\]\n")

    def test_fifo_symlink_and_device_outputs_are_not_replaced(self):
        """--to a named pipe, a symlink or a device writes into it; it never
        puts a regular file in its place (as root, --to /dev/null must not
        replace the system's /dev/null)."""
        import stat
        # a FIFO with a reader: the content goes down the pipe, the FIFO stays
        fifo = self.out("pipe.folded")
        os.mkfifo(fifo)
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer's open returns
        try:
            p = run("convert", self.file, "--to", fifo)
            self.assertEqual(p.returncode, 0, p.stderr)
            data = b""
            while True:
                chunk = os.read(rfd, 65536)  # b"" at EOF (writer gone, or never came)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(rfd)
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced")
        self.assertEqual(parse_folded(data.decode()), WANT)
        # a symlink to a file: the target gets the content, the link stays a link
        os.mkdir(self.out("real"))
        target = os.path.join(self.out("real"), "cpu.folded")
        write(target, b"old\n")
        link = self.out("link.folded")
        os.symlink(target, link)
        p = run("convert", self.file, "--to", link)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.islink(link))
        self.assertEqual(os.readlink(link), target)
        with open(target, encoding="utf-8") as f:
            self.assertEqual(parse_folded(f.read()), WANT)
        # a dangling relative symlink: the file is made where it points
        dangling = self.out("dangling.svg")
        os.symlink("real/new.svg", dangling)
        p = run("flame", self.file, "-o", dangling)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.islink(dangling))
        ET.parse(os.path.join(self.out("real"), "new.svg"))
        for d in (self.tmp, self.out("real")):
            self.assertEqual([f for f in os.listdir(d) if ".tmp." in f], [])
        # a link to this process's stdout (what /dev/stdout is): into the pipe
        out = self.out("stdout.folded")
        os.symlink("/proc/self/fd/1", out)
        p = run("convert", self.file, "--to", out)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(parse_folded(p.stdout), WANT)
        self.assertTrue(os.path.islink(out))
        # a character device of our own (a null device; making one needs root)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            null = self.out("null")
            os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            for args in (("convert", self.file, "--to", null, "--format", "folded"),
                         ("flame", self.file, "-o", null)):
                p = run(*args)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertTrue(stat.S_ISCHR(os.lstat(null).st_mode), "%s replaced the device" % args[0])

    def test_progress_only_for_terminals_or_large_inputs(self):
        p = run("convert", self.file, "--to", self.out("q.folded"))
        self.assertEqual(p.stderr, "")  # small input, stderr a pipe: quiet


class LargeInputs(ts.Base):
    def synth(self, kernels):
        p = run("synth", self.logdir, "--kernels", str(kernels), "--gpus", "2", "--steps", "20", "--run", "big",
                "--host", "node1")
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout.strip()

    def test_ls_counts_events_without_loading_the_profile(self):
        """`tbprof ls` lists every file of every run with its event count: it
        must not need the memory (and time) of decoding each whole profile,
        about 12 times its size, for a number."""
        import resource  # noqa: F401  (os.wait4's rusage)
        pb = self.synth(400000)
        size = os.path.getsize(pb)
        p = run("dump", "--json", pb)
        self.assertEqual(p.returncode, 0, p.stderr)
        events = json.loads(p.stdout)["events"]
        out = os.path.join(self.tmp, "ls.json")
        with open(out, "w") as f:
            proc = subprocess.Popen([ts.CLI, "ls", "--json", self.logdir], stdout=f, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, proc.stderr.read())
        with open(out, encoding="utf-8") as f:
            files = {x["name"]: x for x in json.load(f)["runs"][0]["files"]}
        self.assertEqual(files["node1.xplane.pb"]["events"], events)
        self.assertEqual(files["node1.xplane.pb"]["bytes"], size)
        peak = usage.ru_maxrss * 1024
        self.assertLess(peak, 2 * size + (96 << 20), "ls of a %d MB profile peaked at %d MB" % (size >> 20, peak >> 20))

    def test_reading_a_profile_needs_a_few_times_its_size(self):
        """Every tool decodes the whole profile: protobuf-c's unpacked form
        is several times the file's size, and unpacking every plane at once
        (then building the profile beside it) took 12 times the file's size
        (a 1 GB capture: 12 GB). One plane at a time: about 5 times."""
        if os.environ.get("TBPROF_SANITIZE"):
            self.skipTest("a sanitizer's own memory is most of the peak")
        p = run("synth", self.logdir, "--kernels", "400000", "--gpus", "8", "--steps", "20", "--run", "big8",
                "--host", "node1")
        self.assertEqual(p.returncode, 0, p.stderr)
        pb = p.stdout.strip()
        size = os.path.getsize(pb)
        with open(os.devnull, "w") as devnull:
            proc = subprocess.Popen([ts.CLI, "dump", "--json", pb], stdout=devnull, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, proc.stderr.read())
        peak = usage.ru_maxrss * 1024
        self.assertLess(peak, 8 * size + (64 << 20),
                        "dump of a %d MB profile peaked at %d MB" % (size >> 20, peak >> 20))

    def test_progress_for_a_large_run_folder_or_logdir(self):
        """Progress goes to stderr when the input is 64 MB or larger: the
        profiles a logdir or run folder stands for, not only a file named
        on the command line."""
        write(os.path.join(self.rundir, "node1.xplane.pb"), sampled_space())
        big = os.path.join(self.rundir, "node0.xplane.pb")  # 64 MB, not a profile (sparse: no disk)
        with open(big, "wb") as f:
            f.truncate(64 << 20)
        for args in (("convert", self.logdir, "--to", os.path.join(self.tmp, "a.folded")),
                     ("flame", self.rundir, "-o", os.path.join(self.tmp, "a.svg"))):
            with self.subTest(args[0]):
                p = run(*args)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertIn("tbprof %s: reading %s (67.1 MB)..." % (args[0], big), p.stderr)
                self.assertIn("skipping %s: not an XSpace" % big, p.stderr)
                self.assertIn("reading %s (0.0 MB)" % os.path.join(self.rundir, "node1.xplane.pb"), p.stderr)


class Flame(ts.Base):
    def test_svg(self):
        f = write(os.path.join(self.rundir, "node1.xplane.pb"), sampled_space())
        out = os.path.join(self.tmp, "cpu.svg")
        p = run("flame", f, "-o", out, "--width", "1000")
        self.assertEqual(p.returncode, 0, p.stderr)
        root = ET.parse(out).getroot()  # well-formed XML
        self.assertEqual(root.tag, SVG + "svg")
        frames = {}
        for g in root.iter(SVG + "g"):
            title = g.find(SVG + "title").text
            rect = g.find(SVG + "rect")
            name, rest = title.rsplit(" (", 1)
            n = int(rest.split(" ")[0])
            frames.setdefault(name, []).append((n, float(rect.get("width"))))
        # call tree nodes: all, 2 threads, main step fwd bwd op load decode
        self.assertEqual(sum(len(v) for v in frames.values()), 10)
        self.assertEqual(frames["all"], [(29, 980.0)])  # 1000 px less 2 x 10 px margins
        self.assertEqual(frames['op<float>& "x" \u00e9'][0][0], 3)
        self.assertEqual(frames["decode;jpeg"][0][0], 4)
        for name, v in frames.items():
            for n, w in v:
                self.assertAlmostEqual(w, 980.0 * n / 29, delta=0.01, msg=name)
        self.assertIn("CPU flame graph: node1", ET.tostring(root, encoding="unicode"))
        # --to, as convert takes it: the same file
        again = os.path.join(self.tmp, "again.svg")
        p = run("flame", f, "--to", again, "--width", "1000")
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(out, "rb") as a, open(again, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_gpu_svg(self):
        f = write(os.path.join(self.rundir, "node1.xplane.pb"), launched_space())
        out = os.path.join(self.tmp, "gpu.svg")
        p = run("flame", f, "--gpu", "-o", out)
        self.assertEqual(p.returncode, 0, p.stderr)
        root = ET.parse(out).getroot()
        titles = {g.find(SVG + "title").text.split(" (")[0]: g.find(SVG + "title").text
                  for g in root.iter(SVG + "g")}
        self.assertEqual(set(titles), {"all", "python", "main", "py::step:/x/loop.py", "fwd", "k_a", "k_b",
                                       "[CUDA call not in the capture]", "k_c"})
        self.assertIn("all (450.000 us, 100.00%", titles["all"])
        self.assertIn("k_a (300.000 us, 66.67%", titles["k_a"])
        text = ET.tostring(root, encoding="unicode")
        self.assertIn("GPU time by launching stack: node1", text)
        self.assertIn("450.000 us of GPU work", text)
        p = run("flame", f, "--gpu", "--no-threads", "-o", out)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = run("flame", write(os.path.join(self.tmp, "c", "n.xplane.pb"), sampled_space()), "--gpu", "-o", out)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no GPU work", p.stderr)

    def test_no_samples(self):
        f = write(os.path.join(self.rundir, "n.xplane.pb"), ts.second_host())
        p = run("flame", f, "-o", os.path.join(self.tmp, "x.svg"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("no CPU samples", p.stderr)
        p = run("flame", self.tmp, "-o", os.path.join(self.tmp, "x.svg"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("no profile under", p.stderr)


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2 if "-v" in sys.argv else 1, argv=[sys.argv[0]])
