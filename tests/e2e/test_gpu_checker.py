"""The real-GPU checker (tests/gpu/check.py) run here on what tbprof wrote
through the fake libcupti, so the script the GPU machine runs is known to
decode our output and to fail when the output does not match.

The fake replays one step of cuda_steps-like work (kernels, one from a CUDA
graph, copies, a memset, an allocation and free, a stream sync, the API
calls that caused them) as CUDA 13's CUPTI names it (mangled kernel names,
launches through __cudaLaunchKernel); the expectations file is what
cuda_steps prints.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import cpusamples
import relutil
import tbtest

FAKE = os.path.join(tbtest.BUILD, "fakecupti", "libcupti.so")
CHECK = os.path.join(tbtest.SRC, "tests", "gpu", "check.py")
FAKE_LIBCUDA = os.path.join(tbtest.BUILD, "fakecudadrv", "libcuda.so.1")
PACK = os.path.join(tbtest.SRC, "tests", "gpu", "pack.sh")
NVCC = os.environ.get("NVCC", "/usr/local/cuda/bin/nvcc")

SCRIPT = """\
device id=0 name=FakeGPU sms=132 cc=9.0 clock=1980000 membw=3352000000 memsize=85899345920 warp=32 maxwarps=64 maxblocks=32 regs=65536 smem=233472
context ctx=1 dev=0
runtime name=cudaMemcpyAsync_v3020 cbid=41 tid=main corr=201 start=1000 end=1003
memcpy kind=htod src=pinned dst=device bytes=1048576 async=1 start=1010 end=1100 stream=7 corr=201
runtime name=__cudaLaunchKernel_v13000 cbid=505 tid=main corr=202 start=1004 end=1006
kernel name=_Z12scale_kernelPffi start=1101 end=1120 stream=7 corr=202 grid=64,1,1 block=256,1,1 regs=16
runtime name=__cudaLaunchKernel_v13000 cbid=505 tid=main corr=203 start=1007 end=1009
kernel name=_Z12scale_kernelPffi start=1121 end=1140 stream=7 corr=203 grid=64,1,1 block=256,1,1 regs=16
runtime name=__cudaLaunchKernel_v13000 cbid=505 tid=main corr=204 start=1010 end=1012
kernel name=_Z10add_kernelPfPKfi start=1141 end=1160 stream=7 corr=204 grid=32,2,1 block=128,2,1 regs=16
runtime name=cudaGraphLaunch_v10000 cbid=311 tid=main corr=205 start=1013 end=1020
kernel name=_Z12graph_kernelPfi start=1161 end=1170 stream=7 corr=205 grid=16,1,1 block=64,1,1 regs=16 graph=4
runtime name=cudaMemsetAsync_v3020 cbid=51 tid=main corr=206 start=1021 end=1023
memset bytes=65536 mem=device async=1 start=1171 end=1175 stream=7 corr=206
runtime name=cudaMalloc_v3020 cbid=20 tid=main corr=207 start=1024 end=1030
malloc addr=0x7000 bytes=262144 mem=device dev=0 ctx=1 stream=7 corr=207 start=1028
runtime name=cudaFree_v3020 cbid=22 tid=main corr=208 start=1031 end=1035
free addr=0x7000 bytes=262144 mem=device dev=0 ctx=1 stream=7 corr=208 start=1033
runtime name=cudaMemcpy_v3020 cbid=31 tid=main corr=209 start=1036 end=1200
memcpy kind=dtoh src=device dst=pageable bytes=65536 async=0 start=1180 end=1190 stream=9 corr=209
sync type=stream stream=7 corr=210 start=1201 end=1205
marker id=1 name=forward tid=main start=1003 end=1013
"""

EXPECT = """\
per_step kernel scale_kernel 2 grid 64,1,1 block 256,1,1
per_step kernel add_kernel 1 grid 32,2,1 block 128,2,1
per_step graph_kernel graph_kernel 1 grid 16,1,1 block 64,1,1
per_step memcpy MemcpyH2D 1 bytes 1048576
per_step memcpy MemcpyD2H 1 bytes 65536
per_step memset Memset 1 bytes 65536
per_step memory MemoryAlloc 1 bytes 262144
per_step memory MemoryFree 1 bytes 262144
per_step sync Stream_Sync 1
per_step api cudaLaunchKernel 3
per_step api cudaGraphLaunch 1
per_step api cudaMemcpyAsync 1
per_step api cudaMemcpy 1
per_step api cudaMemsetAsync 1
"""


def run_check(*args, **env):
    """check.py with the decoders of this build (TBGPU), as the GPU machine runs it."""
    return subprocess.run([sys.executable, CHECK] + [str(a) for a in args],
                          env=dict(os.environ, TBGPU=tbtest.BUILD, **env), capture_output=True, text=True, timeout=120)


class GpuChecker(tbtest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.prof_tmp = tbtest.tempfile.mkdtemp(prefix="tbprof_checker_")
        script = os.path.join(cls.prof_tmp, "script.txt")
        with open(script, "w") as f:
            f.write(SCRIPT)
        logdir = os.path.join(cls.prof_tmp, "logs")
        e = tbtest.with_cuda(tbtest.env(logdir, gpu="on", cupti_path=FAKE, trace_json="on"))
        e.update({"TBFAKE_CUPTI_SCRIPT": script, "TBFAKE_CUPTI_AT_LAUNCH": "1"})
        # -G: the scripted work is launched in the first captured step
        cls.run_out = tbtest.run([tbtest.prog("steps"), "-G", "-n", "8", "-m", "5", "-a", "2,4"], env=e)
        xs = tbtest.xplanes(logdir)
        cls.xplane = xs[0] if len(xs) == 1 else None

    @classmethod
    def tearDownClass(cls):
        tbtest.shutil.rmtree(cls.prof_tmp, ignore_errors=True)
        super().tearDownClass()

    def check(self, *args, expect=EXPECT):
        self.assertIsNotNone(self.xplane, self.run_out.stderr)
        ex = os.path.join(self.tmp, "expect.txt")
        with open(ex, "w") as f:
            f.write(expect)
        p = run_check("cuda", self.xplane, ex, *args)
        res = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
        self.assertEqual(len(res), 1, p.stdout + p.stderr)
        return p.returncode, res[0]

    def test_matching_output_passes(self):
        rc, line = self.check("1")
        self.assertEqual(rc, 0, line)
        self.assertIn("RESULT cuda_program PASS", line)
        self.assertIn("'graph_kernel': 1", line)
        self.assertIn("3 named by NVTX ranges", line)  # the three launches inside "forward"

    def device_stats(self, name):
        """The profile decoded, its GPU plane, and the (event, stat) pairs of
        the string stat `name` on it."""
        xs = tbtest.xplane_pb2.XSpace()
        with open(self.xplane, "rb") as f:
            xs.ParseFromString(f.read())
        dev = [p for p in xs.planes if p.name == "/device:GPU:0"][0]
        sid = [i for i, m in dev.stat_metadata.items() if m.name == name][0]
        return xs, dev, [(e, st) for l in dev.lines for e in l.events for st in e.stats if st.metadata_id == sid]

    def check_altered(self, xs):
        """check.py cuda on the altered profile xs: its output (it must fail)."""
        bad = os.path.join(self.tmp, "bad.xplane.pb")
        with open(bad, "wb") as f:
            f.write(xs.SerializeToString())
        ex = os.path.join(self.tmp, "expect.txt")
        with open(ex, "w") as f:
            f.write(EXPECT)
        p = run_check("cuda", bad, ex, "1")
        self.assertEqual(p.returncode, 1, p.stdout)
        return p.stdout

    def test_wrong_nvtx_range_fails(self):
        # one kernel's nvtx_range names another range; another loses its own
        xs, dev, named = self.device_stats("nvtx_range")
        self.assertEqual(len(named), 3)
        sm = dev.stat_metadata
        other = max(sm) + 1
        sm[other].id = other
        sm[other].name = "backward"
        named[0][1].ref_value = other
        named[1][0].stats.remove(named[1][1])
        out = self.check_altered(xs)
        self.assertIn("nvtx_range 'backward', expected 'forward'", out)
        self.assertIn("nvtx_range None, expected 'forward'", out)

    def test_wrong_tf_op_fails(self):
        # the op xprof shows for a kernel must be its innermost range too
        xs, _, ops = self.device_stats("tf_op")
        self.assertEqual(len(ops), 3)  # the three launches inside "forward"
        ops[0][0].stats.remove(ops[0][1])
        self.assertIn("tf_op None, expected 'forward'", self.check_altered(xs))

    def fake_xprof(self, outputs):
        """A stand-in xprof package whose converter answers each tool with
        outputs[tool] (raises for a tool not in it). The PYTHONPATH for it."""
        root = os.path.join(self.tmp, "fake_xprof")
        conv = os.path.join(root, "xprof", "convert")
        os.makedirs(conv, exist_ok=True)
        for d in (os.path.join(root, "xprof"), conv):
            open(os.path.join(d, "__init__.py"), "w").close()
        with open(os.path.join(conv, "raw_to_tool_data.py"), "w") as f:
            # (as xprof: a failed conversion returns None; the checker must
            # not let it write cached results beside the profile)
            f.write("OUT = %r\n\n\ndef xspace_to_tool_data(paths, tool, params):\n"
                    "    if params.get('use_saved_result') is not False:\n"
                    "        raise ValueError('asked to cache results beside the profile')\n"
                    "    if tool not in OUT:\n        raise ValueError('no tool ' + tool)\n"
                    "    v = OUT[tool]\n"
                    "    return (None if v is None else v.encode()), 'application/json'\n" % (outputs,))
        return root

    def test_xprof_ops_reads_the_op_pages(self):
        ks = '{"rows":[{"c":[{"v":"sgemm"},{"v":"aten::mm"}]},{"c":[{"v":"sgemm"},{"v":"MmBackward0"}]}]}'
        ok = {"kernel_stats": ks, "framework_op_stats": '[{"v":"aten::mm"}]', "trace_viewer@": "TensorFlow Ops",
              "overview_page": '{"p": {"steptime_ms_average": "9.3", "compute_ms_average": "4.4"}}'}
        p = run_check("xprof_ops", self.xplane, PYTHONPATH=self.fake_xprof(ok))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("RESULT xprof_torch_ops PASS kernel_stats op names 2 (MmBackward0, aten::mm); framework op "
                      "stats list aten:: ops; trace viewer op line yes; overview: steptime_ms_average 9.3 ms, "
                      "compute_ms_average 4.4 ms", p.stdout)
        # an older plugin: the page is tensorflow_stats; no overview: reported only
        old = dict(ok, tensorflow_stats=ok["framework_op_stats"])
        del old["framework_op_stats"], old["overview_page"]
        p = run_check("xprof_ops", self.xplane, PYTHONPATH=self.fake_xprof(old))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # no op names: fails, saying where
        p = run_check("xprof_ops", self.xplane, PYTHONPATH=self.fake_xprof(dict(ok, kernel_stats="{}")))
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("kernel_stats names no torch op (2 bytes)", p.stdout)
        # a conversion that failed (xprof returns no data): named as such
        p = run_check("xprof_ops", self.xplane, PYTHONPATH=self.fake_xprof(dict(ok, kernel_stats=None)))
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("kernel_stats: the tool returned no data", p.stdout)

    def test_xprof_steps(self):
        # 2g/3h: xprof's Overview per-step table (a stand-in's canned page)
        # against the kernel time per step in our profile
        def page(*ms):
            return json.dumps([{"cols": [{"id": "stepnum", "type": "string"},
                                         {"id": "deviceComputeTimeMs", "type": "number"}],
                                "rows": [{"c": [{"v": str(i)}, {"v": v}]} for i, v in enumerate(ms)]}])
        p = run_check("xprof_steps", "xprof_steps_torch", self.xplane,
                      PYTHONPATH=self.fake_xprof({"overview_page": page(5.0, 5.0, 5.0)}))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"RESULT xprof_steps_torch PASS 3 steps in xprof's overview, device compute "
                                   r"5\.000 ms per step; ours: 3 steps, [0-9.]+ ms of kernels per step")
        # its steps without the GPU work of other threads: far below ours
        p = run_check("xprof_steps", "xprof_steps_jax", self.xplane,
                      PYTHONPATH=self.fake_xprof({"overview_page": page(0.00001, 0.00001)}))
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("GPU work from other threads not in its steps?", p.stdout)
        # no steps at all
        p = run_check("xprof_steps", "xprof_steps_jax", self.xplane,
                      PYTHONPATH=self.fake_xprof({"overview_page": "[]"}))
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("xprof's overview has no step with device compute (0 tables with stepnum)", p.stdout)

    def fake_jax(self, mangle=""):
        """A stand-in jax package whose profiler.ProfileData reads the XSpace
        with this build's decoder, as JAX's reader would, then, by mangle:
        "durations": every event 0 ns long; "events": one GPU event less.
        The PYTHONPATH for it."""
        root = os.path.join(self.tmp, "fake_jax")
        pkg = os.path.join(root, "jax")
        os.makedirs(pkg, exist_ok=True)
        open(os.path.join(pkg, "__init__.py"), "w").close()
        with open(os.path.join(pkg, "profiler.py"), "w") as f:
            f.write('''import types
import xplane_pb2
MANGLE = %r


class ProfileData:
    @classmethod
    def from_serialized_xspace(cls, data):
        xs = xplane_pb2.XSpace()
        xs.ParseFromString(data)
        pd = cls()
        pd.planes = []
        for p in xs.planes:
            lines = []
            for l in p.lines:
                evs = [types.SimpleNamespace(name=p.event_metadata[e.metadata_id].name,
                                             duration_ns=0 if MANGLE == "durations" else e.duration_ps / 1e3)
                       for e in l.events]
                if MANGLE == "events" and p.name.startswith("/device:GPU:") and evs:
                    evs.pop()
                lines.append(types.SimpleNamespace(name=l.name, events=evs))
            pd.planes.append(types.SimpleNamespace(name=p.name, lines=lines))
        return pd
''' % mangle)
        return root

    def test_jax_profiledata_reads_what_we_wrote(self):
        # 3: JAX's reader must find the same events, names and durations
        # in our XSpace as our own decoder, not merely load it
        p = run_check("jax", self.xplane, PYTHONPATH=self.fake_jax())
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"RESULT jax_profiledata PASS planes \[.*'/device:GPU:0'.*\], \d+ events, "
                                   r"\d+ on the GPU \(4 kernels\) with the same names and [\d.]+ us in all")
        p = run_check("jax", self.xplane, PYTHONPATH=self.fake_jax("durations"))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("/device:GPU:0: durations add up to 0 ns, ours ", p.stdout)
        p = run_check("jax", self.xplane, PYTHONPATH=self.fake_jax("events"))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"/device:GPU:0: (\d+) events, ours (?!\1)\d+")

    def test_xprof_ops_skips_without_xprof(self):
        # xprof is on the GPU machine, not here: the row says so, and passes on
        if importlib.util.find_spec("xprof") or importlib.util.find_spec("tensorboard_plugin_profile"):
            self.skipTest("xprof is installed here")
        p = run_check("xprof_ops", self.xplane)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("RESULT xprof_torch_ops SKIP neither xprof", p.stdout)

    def test_wrong_counts_fail_and_say_what(self):
        rc, line = self.check("2")  # two steps' worth expected, one captured
        self.assertEqual(rc, 1, line)
        self.assertIn("FAIL", line)
        self.assertIn("scale_kernel: 2 launches, expected 4", line)

    def test_wrong_grid_fails(self):
        rc, line = self.check("1", expect=EXPECT.replace("grid 32,2,1", "grid 32,1,1"))
        self.assertEqual(rc, 1, line)
        self.assertIn("add_kernel: kernel_details", line)

    def test_memory_event_off_its_call_fails(self):
        # the allocation's record names a correlation id no cudaMalloc has:
        # its host MemoryAllocation lands on the "GPU memory" line
        script = os.path.join(self.tmp, "script.txt")
        with open(script, "w") as f:
            f.write(SCRIPT.replace("corr=207 start=1028", "corr=299 start=1028"))
        logdir = os.path.join(self.tmp, "logs")
        e = tbtest.with_cuda(tbtest.env(logdir, gpu="on", cupti_path=FAKE, trace_json="on"))
        e.update({"TBFAKE_CUPTI_SCRIPT": script, "TBFAKE_CUPTI_AT_LAUNCH": "1"})
        self.assertEqual(tbtest.run([tbtest.prog("steps"), "-G", "-n", "8", "-m", "5", "-a", "2,4"], env=e).returncode, 0)
        ex = os.path.join(self.tmp, "expect.txt")
        with open(ex, "w") as f:
            f.write(EXPECT)
        p = run_check("cuda", tbtest.xplanes(logdir)[0], ex, "1")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("1 MemoryAllocation events not inside a cudaMalloc on their line", p.stdout)

    def test_graph_work_unlinked_after_reattach(self):
        # two captures, CUPTI detached and attached again in between, by a
        # CUPTI 13.0 (which numbers graph launches wrongly once re-attached):
        # both pass, the second with its graph work counted as unlinked;
        # without that count, the unlinked graph kernel fails the check
        script = os.path.join(self.tmp, "script.txt")
        with open(script, "w") as f:
            f.write(SCRIPT)
        logdir = os.path.join(self.tmp, "logs")
        e = tbtest.env(logdir, gpu="on", cupti_path=FAKE, trace_json="on", steps="2-3;7-8")
        e.update({"TBFAKE_CUPTI_SCRIPT": script, "TBFAKE_CUPTI_AT_LAUNCH": "1", "TBFAKE_CUPTI_VERSION": "130001"})
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], FAKE_LIBCUDA)
        ms = 30 * relutil.sanitizer_slowdown()
        p = tbtest.run([tbtest.prog("steps"), "-G", "-n", "11", "-m", str(ms)], env=e)
        self.assertEqual(p.returncode, 0, p.stderr)
        xs = sorted(tbtest.xplanes(logdir))
        self.assertEqual(len(xs), 2, p.stderr)
        ex = os.path.join(self.tmp, "expect.txt")
        with open(ex, "w") as f:
            f.write(EXPECT)
        out = [run_check("cuda", x, ex, "1") for x in xs]
        self.assertEqual([o.returncode for o in out], [0, 0], [o.stdout for o in out])
        self.assertNotIn("unlinked", out[0].stdout)
        self.assertIn("graph work unlinked (CUPTI re-attached): 2", out[1].stdout)
        xsp = tbtest.xplane_pb2.XSpace()
        with open(xs[1], "rb") as f:
            xsp.ParseFromString(f.read())
        host = [pl for pl in xsp.planes if pl.name == "/host:CPU"][0]
        sid = [i for i, m in host.stat_metadata.items() if m.name == "tbprof_cuda_graph_uncorrelated"][0]
        for st in [st for st in host.stats if st.metadata_id == sid]:
            host.stats.remove(st)
        bad = os.path.join(self.tmp, "bad.xplane.pb")
        with open(bad, "wb") as f:
            f.write(xsp.SerializeToString())
        o = run_check("cuda", bad, ex, "1")
        self.assertEqual(o.returncode, 1, o.stdout)
        self.assertIn("have no host call with their correlation_id (e.g. graph_kernel", o.stdout)
        self.assertIn("host cudaGraphLaunch: 0, expected 1", o.stdout)

    def test_jax_capture(self):
        # a capture with every kernel linked passes and says how many threads
        # made CUDA calls; a kernel whose launching call is missing fails
        self.assertIsNotNone(self.xplane, self.run_out.stderr)
        p = run_check("jax_capture", self.xplane)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn("RESULT jax_capture PASS 4 kernels (1 from CUDA graphs, 3 names)", p.stdout)
        self.assertIn("CUDA calls from 1 threads, most cudaLaunchKernel 3", p.stdout)
        xs = tbtest.xplane_pb2.XSpace()
        with open(self.xplane, "rb") as f:
            xs.ParseFromString(f.read())
        dev = [pl for pl in xs.planes if pl.name == "/device:GPU:0"][0]
        cid = [i for i, m in dev.stat_metadata.items() if m.name == "correlation_id"][0]
        ev = [e for l in dev.lines for e in l.events
              if dev.event_metadata[e.metadata_id].name.startswith("add_kernel")][0]
        for st in [st for st in ev.stats if st.metadata_id == cid]:
            ev.stats.remove(st)
        bad = os.path.join(self.tmp, "bad.xplane.pb")
        with open(bad, "wb") as f:
            f.write(xs.SerializeToString())
        p = run_check("jax_capture", bad)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("1 of 7 GPU events have no host call with their correlation_id (e.g. add_kernel", p.stdout)

    def test_jax_steps_wrong_source_and_empty_steps_fail(self):
        # the fixture's steps come from tbprof_step() and only step 2 has
        # GPU work: the JAX steps check names both faults
        self.assertIsNotNone(self.xplane, self.run_out.stderr)
        p = run_check("jax_steps", self.xplane, "2,4")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("step source 'tbprof_step()'", p.stdout)
        self.assertIn("steps without kernels: [3, 4]", p.stdout)
        p = run_check("jax_steps", self.xplane, "2,5")
        self.assertIn("steps [2, 3, 4], expected 2..5", p.stdout)

    def test_from_start(self):
        # 1d: a capture from start-up (TBPROF_DURATION) of a job that loads
        # CUDA at its first step and launches work all along (a kernel every
        # 2 ms for 6 s, 20 ms steps), until its exit: PASS. The fixture (GPU
        # tracing on from the window's start, kernels in its first step
        # only): FAIL, naming both
        script = os.path.join(self.tmp, "script.txt")
        with open(script, "w") as f:
            f.write(SCRIPT.splitlines()[0] + "\n" + "\n".join(
                l for l in SCRIPT.splitlines() if "corr=202" in l) + "\n")
        logdir = os.path.join(self.tmp, "logs")
        e = tbtest.with_cuda_path(tbtest.env(logdir, gpu="on", cupti_path=FAKE, duration="60"))
        e.update({"TBFAKE_CUPTI_SCRIPT": script, "TBFAKE_CUPTI_AT_LAUNCH": "1", "TBFAKE_CUPTI_REPEAT": "3000"})
        p = tbtest.run([tbtest.prog("steps"), "-G", "-n", "10", "-m", str(20 * relutil.sanitizer_slowdown()),
                        "-L", "0"], env=e)
        self.assertExitedOk(p)
        xs = tbtest.xplanes(logdir)
        self.assertEqual(len(xs), 1, p.stderr)
        c = run_check("from_start", xs[0], 10)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertRegex(c.stdout, r"RESULT gpu_from_start PASS GPU tracing on \d+\.\d\d s into the capture, once "
                                   r"CUDA loaded; 10 steps, \d+ kernels, every step with its kernels")
        self.assertIsNotNone(self.xplane, self.run_out.stderr)
        c = run_check("from_start", self.xplane, 3)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("no tbprof_gpu_start_delay_ns: GPU tracing was not started late; steps without kernels: [3, 4]",
                      c.stdout)

    def test_ranks_names_what_differs(self):
        # two ranks' profiles: the fixture's (steps 2..4 from the API, GPU
        # work in step 2 only) twice, in one folder, then in two
        self.assertIsNotNone(self.xplane, self.run_out.stderr)
        one = os.path.join(self.tmp, "run")
        os.makedirs(one)
        a, b = (os.path.join(one, n + ".xplane.pb") for n in ("r0", "r1"))
        for x in (a, b):
            tbtest.shutil.copy(self.xplane, x)
        p = run_check("ranks", 3, a, b)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("r0.xplane.pb: steps without kernels: [3, 4]", p.stdout)
        self.assertIn("r1.xplane.pb: trigger 'api", p.stdout)
        self.assertNotIn("run folders differ", p.stdout)
        self.assertNotIn("different steps", p.stdout)
        p = run_check("ranks", 4, a, b)
        self.assertIn("r0.xplane.pb: steps [2, 3, 4], expected 4 in a row", p.stdout)
        other = os.path.join(self.tmp, "other")
        os.makedirs(other)
        c = os.path.join(other, "r1.xplane.pb")
        tbtest.shutil.copy(self.xplane, c)
        p = run_check("ranks", 3, a, c)
        self.assertIn("run folders differ", p.stdout)
        p = run_check("ranks", 3, a)
        self.assertIn("1 profiles, expected 2", p.stdout)

    def test_workers(self):
        # a trainer and its fork()ed workers as tbprof wrote them here (the
        # children test's program, steps 5-12, two workers, no GPU): the
        # files found and told apart; no kernels, so with kernels wanted it
        # fails saying so; too few workers, too
        if tbtest.SANITIZE == "thread":
            self.skipTest("fork()ed followers are off under ThreadSanitizer")
        prog = os.path.join(tbtest.SRC, "tests", "e2e", "progs", "children_py.py")
        cpu = "on" if cpusamples.perf_refused_reason() is None else "off"
        p = tbtest.run([tbtest.PYTHON, prog, "16", "2", "16", "600000"],  # (~30-60 ms a step: time to join)
                       env=tbtest.env(self.logdir, python=True, steps="5,12", cpu=cpu), timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        run = os.path.dirname(tbtest.xplanes(self.logdir)[0])
        p = run_check("workers", "torch_workers_x", run, 8, 2, 0, "worker_burn")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("RESULT torch_workers_x PASS trainer ", p.stdout)
        self.assertIn(": 8 steps; 2 workers captured with it", p.stdout)
        p = run_check("workers", "torch_workers_x", run, 8, 2, 1)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("trainer: steps without kernels: [5, 6, 7, 8, 9, 10, 11, 12]", p.stdout)
        self.assertIn("gpu_off_reason 'TBPROF_GPU=off'", p.stdout)
        p = run_check("workers", "torch_workers_x", run, 9, 3, 0)
        self.assertIn("trainer: steps [5, 6, 7, 8, 9, 10, 11, 12], expected 9", p.stdout)
        self.assertIn("2 workers' profiles, expected 3 at least", p.stdout)
        if cpu == "on":  # the workers' own function, not the parent's
            p = run_check("workers", "torch_workers_x", run, 8, 2, 0, "parent_burn")
            self.assertIn("no parent_burn in the workers'", p.stdout)

    def gpu_flame(self, text):
        f = os.path.join(self.tmp, "gpu.folded")
        with open(f, "w") as fh:
            fh.write(text)
        p = run_check("gpu_flame", f, "torch_loop.py")
        return p.returncode, p.stdout.strip()

    def test_gpu_flame(self):
        loop = "python;py::<module>:/x/torch_loop.py;py::main:/x/torch_loop.py;"
        rc, line = self.gpu_flame(loop + "py::forward:/t/linear.py;sgemm 700\n"
                                  + loop + "MemcpyH2D 100\n"
                                  + "python;[no CPU sample around the call];relu 200\n")
        self.assertEqual(rc, 0, line)
        self.assertIn("RESULT gpu_flame PASS 80% of 0.0 ms GPU time under torch_loop.py frames (20% unsampled)",
                      line)
        self.assertIn("py::main:/x/torch_loop.py 80%", line)
        rc, line = self.gpu_flame("python;py::run:/y/other.py;sgemm 700\n" + loop + "relu 300\n")
        self.assertEqual(rc, 1, line)
        self.assertIn("FAIL 30%", line)
        rc, line = self.gpu_flame("python;[no CPU sample around the call];relu 200\n")
        self.assertEqual(rc, 0, line)
        self.assertIn("SKIP every launch without CPU samples", line)

    def torch_nvtx(self, inner):
        nv = tbtest.prog("nvtx_steps")
        if tbtest.run([nv, "-n", "0"], env=tbtest.env(preload=False)).returncode == 77:
            self.skipTest("nvtx_steps was built without the NVTX headers")
        logdir = os.path.join(self.tmp, inner)
        p = tbtest.run([nv, "-n", "8", "-m", "2", "-i", inner], env=tbtest.env(logdir, steps="3,6", nvtx_step="step"))
        self.assertEqual(p.returncode, 0, p.stderr)
        xs = tbtest.xplanes(logdir)
        self.assertEqual(len(xs), 1)
        c = run_check("torch_nvtx", xs[0])
        return c.returncode, c.stdout.strip()

    def test_torch_nvtx_ranges(self):
        rc, line = self.torch_nvtx("forward,backward")
        self.assertEqual(rc, 0, line)
        self.assertIn("RESULT torch_nvtx_ranges PASS 4 steps; ranges {'forward': 4, 'backward': 4}", line)
        rc, line = self.torch_nvtx("fwd,bwd")
        self.assertEqual(rc, 1, line)
        self.assertIn("0 forward ranges for 4 steps", line)

    def test_torch_nvtx_ranges_with_gpu_tracing_and_no_kernel(self):
        # GPU tracing on (a GPU plane, a copy on it) and not one kernel: the
        # claim that kernels carry their range cannot pass by having none
        self.torch_nvtx("forward,backward")
        path = tbtest.xplanes(os.path.join(self.tmp, "forward,backward"))[0]
        xs = tbtest.xplane_pb2.XSpace()
        with open(path, "rb") as f:
            xs.ParseFromString(f.read())
        gpu = xs.planes.add(id=99, name="/device:GPU:0")
        gpu.event_metadata[1].id, gpu.event_metadata[1].name = 1, "MemcpyH2D"
        line = gpu.lines.add(id=7, name="Stream #7(MemcpyH2D)", timestamp_ns=xs.planes[0].lines[0].timestamp_ns)
        line.events.add(metadata_id=1, offset_ps=1000, duration_ps=5000)
        with open(path, "wb") as f:
            f.write(xs.SerializeToString())
        c = run_check("torch_nvtx", path)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("no kernel in the profile, though GPU tracing was on", c.stdout)

    def test_capture_facts(self):
        # the facts the note needs from a real job: which libcupti, the pool,
        # buffers filled, drops; a host-only profile fails and says why
        c = run_check("capture", self.xplane)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertRegex(c.stdout, r"RESULT cupti_capture INFO \S*fakecupti/libcupti.so \(CUPTI API \d+, "
                                   r"cuptiSubscribe_v2 \(13.2 params\)\); pool \d+ x \d+; buffers filled [1-9]\d*; "
                                   r"CUPTI dropped 0; pool ran out 0; start wait [\d.]+ ms; "
                                   r"drain [\d.]+ ms, all complete; incomplete records 0; buffers kept 0; "
                                   r"odd kernel records 0; "
                                   r"teardown on: cuptiFinalize after the capture.*; host calls sharing a "
                                   r"correlation id: 0 of [1-9]\d* \(none\); sync events .*; slow calls: none\n")
        # a protobuf runtime too new for the packed xplane_pb2 (protoc 3.21):
        # the same XSpace built from the descriptor inside it, same answer
        f = run_check("capture", self.xplane, TBGPU_PB_FALLBACK="1")
        self.assertEqual((f.returncode, f.stdout), (c.returncode, c.stdout), f.stderr)
        c = run_check("capture", self.host_only_profile("hostonly", cupti_path=os.path.join(self.tmp, "none.so")))
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("RESULT cupti_capture FAIL GPU capture off: libcupti not found", c.stdout)

    def test_summary_facts(self):
        # 2h: tbprof summary --json on the profile adds up against the
        # profile itself; a summary whose figures do not fails and says so
        self.assertIsNotNone(self.xplane, self.run_out.stderr)
        nsteps = len([e for e in tbtest.load(self.xplane).plane("/host:CPU").events() if e.stats.get("_r")])
        self.assertGreater(nsteps, 0)
        sj = os.path.join(self.tmp, "summary.json")
        p = tbtest.run([tbtest.CLI, "summary", "--json", "--top", "100000", self.xplane])
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(sj, "w") as f:
            f.write(p.stdout)
        c = run_check("summary", sj, self.xplane, nsteps)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertRegex(c.stdout, r"RESULT summary_torch PASS 4 kernels; GPU busy [\d.]+%; idle: waiting for the CPU "
                                   r"[\d.]+% \(its thread on CPU \d+%, top \S.*; off CPU \d+%\), launched and queued [\d.]+%, other [\d.]+% of step time; "
                                   r"launch calls [1-9]\d*, [\d.]+ us each; communication kernels 0 \(exposed 0\.0%\); "
                                   r"syncs \d+, [\d.]+ ms, most in \S+\n")
        js = json.loads(p.stdout)
        js["hosts"][0]["kernels"]["top"][0]["count"] += 1
        g = js["hosts"][0]["gpu"]
        g["idle_cpu_ns"] = g["idle_queued_ns"] = 0
        js["hosts"][0]["syncs"]["count"] += 1
        with open(sj, "w") as f:
            json.dump(js, f)
        c = run_check("summary", sj, self.xplane, nsteps + 1)
        self.assertEqual(c.returncode, 1, c.stdout + c.stderr)
        self.assertRegex(c.stdout, r"RESULT summary_torch FAIL kernels 5, \d+ ns; the profile holds 4, \d+ ns; "
                                   r"\d+ steps, expected \d+; GPU idle \d+ ns, none of it joined to a launching call; "
                                   r"syncs (\d+), (\d+) ns; the profile holds (?!\1,)\d+, \2 ns\n")

    def test_diff_facts(self):
        # 4e: tbprof diff --json of two captures of one loop (here the same
        # profile twice, one given as its run folder with a trailing slash):
        # the same kernels as often per step passes; a kernel launched more
        # often in one, or found in one only, fails and says which
        self.assertIsNotNone(self.xplane, self.run_out.stderr)
        dj = os.path.join(self.tmp, "diff.json")
        p = tbtest.run([tbtest.CLI, "diff", "--json", self.xplane, os.path.dirname(self.xplane) + "/"])
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(dj, "w") as f:
            f.write(p.stdout)
        c = run_check("diff", dj)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertRegex(c.stdout, r"RESULT diff_torch PASS 3 kernel names, each launched as often per step; step "
                                   r"[\d.]+ -> [\d.]+ ms \(\+0\.0%\); kernel time per step \+0\.0%; most moved: ")
        js = json.loads(p.stdout)
        js["kernels"][0]["b_count"] += 1
        js["kernels"][1]["a_count"] = 0
        with open(dj, "w") as f:
            json.dump(js, f)
        c = run_check("diff", dj)
        self.assertEqual(c.returncode, 1, c.stdout + c.stderr)
        self.assertRegex(c.stdout, r"RESULT diff_torch FAIL 1 kernels in one capture only: \['[^']+'\]; "
                                   r"launches per step differ: \['[^']+ [\d.]+ -> [\d.]+'\]\n")

    def test_after_capture(self):
        # 4a: step times after a capture within 5% of no tbprof, from a
        # capture that detached CUPTI; slower, or teardown off, fails
        def times(name, ms):
            path = os.path.join(self.tmp, name)
            with open(path, "w") as f:
                f.write("".join("%.6f\n" % (ms / 1e3) for _ in range(40)))
            return path
        none, fast, slow = times("none", 10.0), times("fast", 10.1), times("slow", 11.5)
        c = run_check("after_capture", self.xplane, fast, none, slow)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertIn("RESULT idle_after_capture PASS steps 10..29 after a capture of 3..7: 10.100 ms vs none "
                      "10.000 ms (limit +5%); CUPTI left attached (TBPROF_CUPTI_TEARDOWN=off): 11.500 ms; "
                      "teardown on: cuptiFinalize", c.stdout)
        c = run_check("after_capture", self.xplane, slow, none, slow)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("RESULT idle_after_capture FAIL", c.stdout)
        off = self.host_only_profile("teardown_off", TBPROF_CUPTI_TEARDOWN="off")
        c = run_check("after_capture", off, fast, none, os.path.join(self.tmp, "missing"))
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("attached (TBPROF_CUPTI_TEARDOWN=off): ?; teardown off (TBPROF_CUPTI_TEARDOWN=off)", c.stdout)

    def test_repeat(self):
        # 4d: a job captured four times (TBPROF_STEPS=5/20x4 here: the fake's
        # work is launched in each capture's first step; 19 steps between
        # windows for each write and CUPTI detach, under a sanitizer too):
        # each profile its step with kernels, tbprof trend lists them; a
        # fifth window expected, or trend missing, fails and says so
        logdir = os.path.join(self.tmp, "rep")
        script = os.path.join(self.prof_tmp, "script.txt")
        e = tbtest.env(logdir, gpu="on", cupti_path=FAKE, steps="5/20x4")
        e.update({"TBFAKE_CUPTI_SCRIPT": script, "TBFAKE_CUPTI_AT_LAUNCH": "1"})
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], FAKE_LIBCUDA)  # CUPTI detached after each
        # (10 ms steps: the 19 between windows must outlast a write and a
        # CUPTI detach; at 5 ms under TSan on a busy CI VM one did not)
        p = tbtest.run([tbtest.prog("steps"), "-G", "-n", "80", "-m", str(10 * relutil.sanitizer_slowdown())], env=e)
        self.assertExitedOk(p)
        trend = os.path.join(self.tmp, "trend.json")
        with open(trend, "w") as f:
            f.write(tbtest.run([tbtest.CLI, "trend", "--json", logdir]).stdout)
        times, rep = os.path.join(self.tmp, "times"), os.path.join(self.tmp, "rep_times")
        with open(times, "w") as f:
            f.write("0.010\n" * 80)
        with open(rep, "w") as f:  # the second window's start took 50 ms (CUPTI attached there)
            f.write("0.010\n" * 24 + "0.050\n" + "0.010\n" * 55)
        c = run_check("repeat", "5/20x4", logdir, trend, rep, times)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertIn("RESULT torch_repeating PASS 4 captures [(5, 5), (25, 25), (45, 45), (65, 65)], kernels in "
                      "every step; trend means [", c.stdout)
        self.assertIn("steps 67..79 after the last capture 10.000 ms; the steps at each window's start 10.0, 50.0, "
                      "10.0, 10.0 ms; none 10.000 ms", c.stdout)
        c = run_check("repeat", "5/20x5", logdir, trend, times, times)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("windows [(5, 5), (25, 25), (45, 45), (65, 65)], expected [(5, 5), (25, 25), (45, 45), (65, 65), "
                      "(85, 85)]", c.stdout)
        c = run_check("repeat", "5/20x4", logdir, os.path.join(self.tmp, "none.json"), times, times)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("tbprof trend --json: ", c.stdout)
        # trend finding no run at all (it read another logdir, or none of
        # the profiles) fails as well
        empty = os.path.join(self.tmp, "empty.json")
        with open(empty, "w") as f:
            f.write('{"runs": []}\n')
        c = run_check("repeat", "5/20x4", logdir, empty, times, times)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("RESULT torch_repeating FAIL tbprof trend: []", c.stdout)

    def torch_cmp(self, events, calls=()):
        trace = os.path.join(self.tmp, "torch_trace.json")
        with open(trace, "w") as f:
            json.dump({"traceEvents": [{"ph": "X", "cat": "kernel", "name": n, "ts": i, "dur": d}
                                       for i, (n, d) in enumerate(events)] +
                                      [{"ph": "X", "cat": "cuda_runtime", "name": n, "ts": i, "dur": 1}
                                       for i, n in enumerate(calls)]}, f)
        c = run_check("torch", self.xplane, trace)
        return c.returncode, c.stdout.strip()

    def test_torch_vs_torch_profiler(self):
        # torch.profiler's trace of the same kernels (durations in us, as
        # Kineto writes them), one name left mangled as Kineto leaves long
        # ones: the same kernels, counts and GPU time
        same = [("scale_kernel(float*, float, int)", 19), ("_Z12scale_kernelPffi", 19),
                ("add_kernel(float*, float const*, int)", 19), ("graph_kernel(float*, int)", 9)]
        # runtime calls reported side by side (not judged), with those only
        # torch.profiler has: ours are the 9 of the fixture's step
        rc, line = self.torch_cmp(same, ["cudaLaunchKernel"] * 3 + ["cudaStreamIsCapturing"] * 2)
        self.assertEqual(rc, 0, line)
        self.assertIn("RESULT torch_vs_torch_profiler PASS 3 kernel names, 4 launches, GPU time 0.066 vs 0.066 ms; "
                      "runtime calls 9 vs 5 (only torch.profiler's: cudaStreamIsCapturing)", line)
        rc, line = self.torch_cmp(same[:3])
        self.assertEqual(rc, 1, line)
        self.assertIn("names differ: only ours ['graph_kernel(float*, int)'], only torch []", line)
        rc, line = self.torch_cmp(same + [same[0]])
        self.assertIn("scale_kernel(float*, float, int): 2 vs 3 launches", line)
        rc, line = self.torch_cmp([(n, d * 1.1) for n, d in same])
        self.assertEqual(rc, 1, line)
        self.assertIn("total GPU time 0.066 ms vs 0.073 ms (9.1%)", line)

    def coexist(self, name, want, xplane, kernels=1, rc=0):
        trace = os.path.join(self.tmp, "torch_trace.json")
        if kernels is None:
            trace = os.path.join(self.tmp, "missing.json")
        else:
            with open(trace, "w") as f:
                json.dump({"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k%d" % i, "ts": i, "dur": 1}
                                           for i in range(kernels)]}, f)
        c = run_check("coexist", name, want, xplane, trace, rc)
        return c.returncode, c.stdout.strip()

    def torch_ops(self, name, backward=True, stray=False, shapes=0):
        """check.py torch_ops on a profile of torch op ranges (CUPTI marker
        records) around three launches: aten::mm, aten::relu and, with
        backward, MmBackward0 (else aten::add); with stray, a fourth launch
        outside every range. shapes: the first that many ranges with their
        input shapes (record_shapes), and check.py torch_shapes instead."""
        q = lambda n: n.replace(",", "%2C").replace(" ", "%20").replace("=", "%3D").replace("[", "%5B").replace(
            "]", "%5D")
        third = "MmBackward0" if backward else "aten::add"
        script = SCRIPT.split("runtime", 1)[0]
        for i, (op, k) in enumerate((("aten::mm", "sgemm"), ("aten::relu", "relu"), (third, "sgemm"))):
            t = 1000 + 10 * i
            sizes = ", sizes = [[2, %d], [%d, 4]]" % (i + 2, i + 2) if i < shapes else ""
            script += ("marker id=%d name=%s tid=main start=%d end=%d\n" % (i + 1, q("%s, seq = %d, op_id = %d%s" % (
                op, i, 50 + i, sizes)), t, t + 9) +
                "runtime name=__cudaLaunchKernel_v13000 cbid=505 tid=main corr=%d start=%d end=%d\n" % (
                    301 + i, t + 2, t + 4) +
                "kernel name=%s start=%d end=%d stream=7 corr=%d grid=8,1,1 block=128,1,1 regs=16\n" % (
                    k, 1100 + 100 * i, 1150 + 100 * i, 301 + i))
        if stray:
            script += ("runtime name=__cudaLaunchKernel_v13000 cbid=505 tid=main corr=310 start=1040 end=1042\n"
                       "kernel name=copy start=1500 end=1510 stream=7 corr=310 grid=1,1,1 block=32,1,1 regs=8\n")
        x = self.scripted_profile(name, script)
        if shapes:
            c = run_check("torch_shapes", x)
            return c.returncode, c.stdout.strip()
        times = []
        for n, ms in (("t_ops", 10.5), ("t_cap", 10.0)):
            times.append(os.path.join(self.tmp, n))
            with open(times[-1], "w") as f:
                f.write("%f\n" % (ms / 1e3) * 40)
        c = run_check("torch_ops", x, *times)
        return c.returncode, c.stdout.strip()

    def scripted_profile(self, name, script):
        """The one xplane.pb of steps 2..4 of a job whose first captured
        step replays `script` through the fake libcupti."""
        path = os.path.join(self.tmp, name + ".txt")
        with open(path, "w") as f:
            f.write(script)
        logdir = os.path.join(self.tmp, name)
        e = tbtest.with_cuda(tbtest.env(logdir, gpu="on", cupti_path=FAKE))
        e.update({"TBFAKE_CUPTI_SCRIPT": path, "TBFAKE_CUPTI_AT_LAUNCH": "1"})
        p = tbtest.run([tbtest.prog("steps"), "-G", "-n", "8", "-m", "2", "-a", "2,4"], env=e)
        self.assertEqual(p.returncode, 0, p.stderr)
        xs = tbtest.xplanes(logdir)
        self.assertEqual(len(xs), 1, p.stderr)
        return xs[0]

    def test_xla_ranges(self):
        # 3f: no range in XLA's domain "TSL" with it declined; with it on,
        # how many kernels its ranges name. A declined profile with TSL
        # ranges fails.
        tsl = SCRIPT.replace("marker id=1 name=forward tid=main start=1003 end=1013",
                             "marker id=1 name=fusion.1 domain=TSL tid=main start=1003 end=1013")
        self.assertNotEqual(tsl, SCRIPT)
        on = self.scripted_profile("tsl_on", tsl)
        c = run_check("xla_ranges", on, self.xplane)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertIn("RESULT jax_xla_ranges PASS off: none in TSL; on: 1 TSL ranges, 3/4 kernels named "
                      "(fusion.1 3)", c.stdout)
        c = run_check("xla_ranges", on, on)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("1 ranges in domain TSL with TBPROF_XLA_RANGES off (e.g. 'fusion.1')", c.stdout)

    def test_torch_ops(self):
        rc, line = self.torch_ops("ops")
        self.assertEqual(rc, 0, line)
        self.assertIn("RESULT torch_ops PASS 3 steps, 3 op ranges (3 names), 3/3 kernels named; GPU time by op: "
                      "aten::mm 0.05 ms, aten::relu 0.05 ms, MmBackward0 0.05 ms; "
                      "step 10.500 ms with ops vs 10.000 ms capturing without", line)
        rc, line = self.torch_ops("noback", backward=False)
        self.assertEqual(rc, 1, line)
        self.assertIn("no kernel carries a backward op", line)
        rc, line = self.torch_ops("stray", stray=True)
        self.assertEqual(rc, 1, line)
        self.assertIn("3 of 4 kernels carry an op", line)

    def test_torch_shapes(self):
        # 2f: --torch-shapes' names keep the op's, the shapes as torch_args
        rc, line = self.torch_ops("shapes", shapes=3)
        self.assertEqual(rc, 0, line)
        self.assertIn("RESULT torch_shapes PASS 3 op ranges, 3 with shapes, e.g. aten::mm: sizes = [[2, 2], [2, 4]]",
                      line)
        rc, line = self.torch_ops("few_shapes", shapes=1)  # record_shapes did not take
        self.assertEqual(rc, 1, line)
        self.assertIn("1 of 3 op ranges carry their shapes", line)

    def test_coexist_jax(self):
        # 3g: jax.profiler's trace (here a fake-CUPTI profile standing in:
        # 3 of its 4 kernels annotated) next to ours (host-only, CUPTI held)
        ours = self.host_only_profile("held_by_xla", TBFAKE_CUPTI_SUBSCRIBER="XLA's CUPTI tracer")
        theirs = os.path.dirname(self.xplane)
        c = run_check("coexist_jax", ours, theirs, 0)
        self.assertEqual(c.returncode, 0, c.stdout + c.stderr)
        self.assertIn("RESULT coexist_jax PASS jax.profiler: 4 kernels, 3 with op annotations; ours: host-only "
                      "(another CUPTI client", c.stdout)
        # its kernels without op names (XLA fed NVTX instead), the job failing
        bare = self.scripted_profile("bare", SCRIPT.replace("marker id=1 name=forward tid=main start=1003 end=1013\n",
                                                            ""))
        c = run_check("coexist_jax", ours, os.path.dirname(bare), 1)
        self.assertEqual(c.returncode, 1, c.stdout)
        self.assertIn("the job exited 1; only 0 of jax.profiler's 4 kernels carry op annotations", c.stdout)

    def host_only_profile(self, name, **kw):
        # steps 2..3 of a job whose GPU capture is refused (kw: its cause)
        logdir = os.path.join(self.tmp, name)
        e = tbtest.with_cuda(tbtest.env(logdir, steps="2,3", gpu="on", cupti_path=kw.pop("cupti_path", FAKE)))
        e.update(kw)
        p = tbtest.run([tbtest.prog("steps"), "-n", "6", "-m", "1"], env=e)
        self.assertEqual(p.returncode, 0, p.stderr)
        return tbtest.xplanes(logdir)[0]

    def test_coexist_torch_first(self):
        # torch.profiler held CUPTI: we are host-only and say why; its trace has kernels
        x = self.host_only_profile("held", TBFAKE_CUPTI_SUBSCRIBER="CUPTI for Kineto")
        rc, line = self.coexist("torch_first", "either", x, kernels=3)
        self.assertEqual(rc, 0, line)
        self.assertIn("RESULT coexist_torch_first PASS ours host-only (another CUPTI client", line)
        self.assertIn("torch.profiler: 3 kernels", line)
        # its trace lost, the job failing, or us off for another cause: FAIL
        rc, line = self.coexist("torch_first", "either", x, kernels=0)
        self.assertEqual(rc, 1, line)
        self.assertIn("torch.profiler's trace has no kernels", line)
        rc, line = self.coexist("torch_first", "either", x, kernels=None, rc=1)
        self.assertIn("the job exited 1; torch.profiler's trace has no trace, no kernels", line)
        x = self.host_only_profile("nolib", cupti_path=os.path.join(self.tmp, "none.so"))
        rc, line = self.coexist("torch_first", "either", x, kernels=3)
        self.assertEqual(rc, 1, line)
        self.assertIn("GPU off for another reason: libcupti not found", line)

    def test_coexist_tbprof_first(self):
        # the fake launches its work in the first captured step only (2 of 2..4):
        # what torch.profiler taking our buffers mid-window would look like
        rc, line = self.coexist("tbprof_first", "ours", self.xplane)
        self.assertEqual(rc, 1, line)
        self.assertRegex(line, r"RESULT coexist_tbprof_first FAIL steps without kernels: \[3, 4\] of \[2, 3, 4\]; "
                               r"ours: kernels per step \{2: 4, 3: 0, 4: 0\}")

    def test_missing_nvtx_ranges_fail(self):
        rc, line = self.check("1", "3,6")
        self.assertEqual(rc, 1, line)
        self.assertIn("NVTX ranges on the host", line)


class GpuScript(tbtest.TestCase):
    """tests/gpu/pack.sh and the run.sh it packs, dry-run here: no GPU, so
    every row fails or SKIPs; what is checked is what the script does
    around the rows (the libraries it sets up, its time bounds, its order)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if tbtest.SANITIZE:
            raise unittest.SkipTest("the GPU machine runs the plain build")
        if not os.access(NVCC, os.X_OK):
            raise unittest.SkipTest("no nvcc (%s): pack.sh builds the CUDA test program" % NVCC)
        if not os.path.exists(os.path.join(tbtest.BUILD, "python", "xplane_pb2.py")):
            raise unittest.SkipTest("no xplane_pb2.py in the build (protoc)")
        cls.pack_tmp = tempfile.mkdtemp(prefix="tbprof_gpupack_")
        cls.gpu = os.path.join(cls.pack_tmp, ".gpu")
        cls.packed = subprocess.run(["bash", PACK, tbtest.BUILD], env=dict(os.environ, TBGPU_PACK_OUT=cls.gpu),
                                    capture_output=True, text=True, timeout=600)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(getattr(cls, "pack_tmp", ""), ignore_errors=True)
        super().tearDownClass()

    def run_script(self, hide=(), timeout=120, **env):
        """bash .gpu/run.sh (TBGPU_* from env), where hide: system libraries
        made unloadable (/dev/null bound over them in a mount namespace of
        its own), as on a machine without them. (stdout, seconds taken)."""
        self.assertEqual(self.packed.returncode, 0, self.packed.stdout + self.packed.stderr)
        e = tbtest.env(preload=False, gpu=None, cpu=None, socket=None)
        e.update(PYTHON=sys.executable, TMPDIR=self.tmp)
        e.update({k: str(v) for k, v in env.items()})
        cmd = ["bash", os.path.join(self.gpu, "run.sh")]
        if hide:
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   "for f in %s; do mount --bind /dev/null \"$f\" || exit 99; done; exec \"$@\"" % " ".join(hide),
                   "sh"] + cmd
        t0 = time.monotonic()
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)
        if p.returncode == 99 or "unshare failed" in p.stderr:
            self.skipTest("cannot hide libraries here (unshare -m, mount --bind): %s" % p.stderr[-200:])
        return p.stdout, time.monotonic() - t0

    def table(self, out):
        """{row name: (result, detail)} from the table run.sh prints last."""
        rows = {}
        for line in out.split("\nCHECK ", 1)[-1].splitlines()[1:]:
            w = line.split(None, 1)
            if len(w) == 2 and "  " in line:
                name = line[:30].rstrip()
                res, _, detail = line[31:].partition(" ")
                rows[name] = (res, detail.strip())
        return rows

    def test_packed_libunwind_used_where_the_machine_has_none(self):
        # the GPU machine has no libunwind: the copy pack.sh puts beside
        # libtbprof.so needs its libunwind.so.8, which the loader must find
        # there too, or CPU stacks fall back to frame pointers (Python's
        # frames and row 4c lost)
        libs = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
        hide = sorted({l.rsplit(" => ", 1)[1].strip() for l in libs.splitlines()
                       if " => " in l and l.split()[0] in ("libunwind.so.8", "libunwind-x86_64.so.8")})
        out, _ = self.run_script(hide=hide, TBGPU_BUDGET_S=0)
        doctor = self.table(out).get("doctor")
        self.assertIsNotNone(doctor, out)
        self.assertIn("stackcopy stacks", doctor[1])


    def test_the_issues_rows_first(self):
        # the rows that decide the GPU issue, (1) the CUDA program, (2)
        # torch.profiler's comparison, (3) JAX's reader and (4) the step
        # times, before every other row: a run short of time SKIPs the others
        out, _ = self.run_script(TBGPU_BUDGET_S=0)
        rows = list(self.table(out))
        issue = ["doctor", "cuda_program (profiler)", "cuda_program (nvtx)", "torch_vs_torch_profiler",
                 "torch_nvtx_ranges", "cupti_in_torch_job", "jax_profiledata", "idle_overhead"]
        self.assertEqual(rows[:len(issue)], issue, out)
        self.assertIn("jax_capture", rows)
        self.assertEqual(self.table(out)["idle_overhead"][0], "SKIP")


    def test_the_run_ends_in_time_whatever_its_jobs_do(self):
        # every PyTorch and JAX job hangs (a stand-in python that sleeps on
        # them): rows started before the budget ran out must not take the
        # run past TBGPU_END_S (the device's limit kills the run, and
        # table.txt and the outputs with it); rows after it SKIP, saying so
        fake = os.path.join(self.tmp, "python")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\ncase "$1" in *torch_loop.py|*jax_loop.py) exec sleep 300;; esac\n'
                    'exec "%s" "$@"\n' % sys.executable)
        os.chmod(fake, 0o755)
        out_dir = os.path.join(self.tmp, "out")
        os.makedirs(out_dir)
        out, took = self.run_script(timeout=150, PYTHON=fake, OUT=out_dir, TBGPU_BUDGET_S=1000, TBGPU_JOB_S=40,
                                    TBGPU_END_S=12)
        self.assertLess(took, 45, out)
        rows = self.table(out)
        self.assertEqual(rows["torch_vs_torch_profiler"][0], "FAIL", out)
        self.assertEqual(rows["jax_capture"], ("SKIP", "the run's end reached (TBGPU_END_S=12)"), out)
        with open(os.path.join(out_dir, "table.txt")) as f:
            self.assertIn("jax_capture", f.read())


if __name__ == "__main__":
    tbtest.main()
