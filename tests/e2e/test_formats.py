"""test_formats.py - the files tbprof writes, read by independent readers.

A synthetic capture (`tbprof synth`, written by the agent's own
tb_profile_write) is decoded by protoc, by python protobuf (xplane_pb2), its
Chrome trace by python's json, its tfevents file by a from-scratch TFRecord
reader; `tbprof dump`/`ls` are checked against those, and on bad input.
"""
import collections
import decimal
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

BUILD = os.environ.get("TBPROF_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
SRC = os.environ.get("TBPROF_SRC", os.path.join(os.path.dirname(__file__), "../.."))
TBPROF = os.path.join(BUILD, "bin", "tbprof")
sys.path.insert(0, os.path.join(BUILD, "python"))
try:
    import xplane_pb2  # noqa: E402
    import event_pb2  # noqa: E402
except ImportError as e:  # protoc missing at build time
    xplane_pb2 = None
    IMPORT_ERROR = str(e)

KERNELS = 3000
GPUS = 2
STEPS = 6


def run(*args, check=True):
    p = subprocess.run([TBPROF, *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"tbprof {' '.join(args)} -> {p.returncode}\n{p.stderr}")
    return p


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class Formats(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if xplane_pb2 is None:
            raise unittest.SkipTest("python protobuf bindings not built: " + IMPORT_ERROR)
        cls.tmp = tempfile.mkdtemp(prefix="tbprof_formats_")
        cls.logdir = os.path.join(cls.tmp, "logs")
        out = run("synth", cls.logdir, "--kernels", str(KERNELS), "--gpus", str(GPUS),
                  "--steps", str(STEPS), "--run", "run_a", "--host", "node1")
        cls.pb = out.stdout.strip()
        with open(cls.pb, "rb") as f:
            cls.raw = f.read()
        cls.space = xplane_pb2.XSpace.FromString(cls.raw)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- layout ------------------------------------------------------------
    def test_layout(self):
        self.assertEqual(self.pb, os.path.join(self.logdir, "plugins/profile/run_a/node1.xplane.pb"))
        self.assertTrue(os.path.exists(os.path.join(self.logdir, "plugins/profile/run_a/node1.trace.json.gz")))
        ev = glob.glob(os.path.join(self.logdir, "events.out.tfevents.*.node1.profile-empty"))
        self.assertEqual(len(ev), 1)
        leftovers = [n for n in os.listdir(os.path.dirname(self.pb)) if n.startswith(".")]
        self.assertEqual(leftovers, [])

    def test_second_writer_same_name_gets_own_file(self):
        logdir = os.path.join(self.tmp, "twice")
        a = run("synth", logdir, "--kernels", "10", "--run", "r", "--host", "h").stdout.strip()
        b = run("synth", logdir, "--kernels", "20", "--run", "r", "--host", "h").stdout.strip()
        self.assertTrue(a.endswith("/r/h.xplane.pb"), a)
        self.assertTrue(b.endswith("/r/h.1.xplane.pb"), b)
        ls = json.loads(run("ls", logdir, "--json").stdout)
        files = {f["name"]: f for f in ls["runs"][0]["files"]}
        # 10 and 20 kernels: launches + kernels + one step each
        self.assertEqual(files["h.xplane.pb"]["events"], 10 * 2 + 10)
        self.assertEqual(files["h.1.xplane.pb"]["events"], 20 * 2 + 10)

    def test_synth_without_gpus(self):
        # --gpus 0: a CPU-only capture, its steps and no GPU plane (it wrote
        # an empty GPU plane and no steps)
        logdir = os.path.join(self.tmp, "cpuonly")
        pb = run("synth", logdir, "--gpus", "0", "--steps", "4", "--run", "r", "--host", "h").stdout.strip()
        with open(pb, "rb") as f:
            sp = xplane_pb2.XSpace.FromString(f.read())
        self.assertEqual([p.name for p in sp.planes], ["/host:CPU"])
        host = sp.planes[0]
        names = [(host.event_metadata[e.metadata_id].name, e.duration_ps) for l in host.lines for e in l.events]
        self.assertEqual(names, [("train", 10**9)] * 4)

    # ---- independent decoders ------------------------------------------------
    def test_protoc_decodes(self):
        if not shutil.which("protoc"):
            self.skipTest("protoc not installed")
        p = subprocess.run(["protoc", "--decode=tensorflow.profiler.XSpace", "-I", os.path.join(SRC, "proto"),
                            os.path.join(SRC, "proto", "xplane.proto")], input=self.raw, capture_output=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        text = p.stdout.decode()
        self.assertIn('name: "/host:CPU"', text)
        self.assertIn('name: "/device:GPU:1"', text)
        self.assertEqual(text.count("events {"), KERNELS * 2 + STEPS)

    def test_python_protobuf_view(self):
        sp = self.space
        names = [p.name for p in sp.planes]
        self.assertEqual(names, ["/host:CPU"] + [f"/device:GPU:{g}" for g in range(GPUS)])
        total = sum(len(l.events) for p in sp.planes for l in p.lines)
        self.assertEqual(total, KERNELS * 2 + STEPS)
        host = sp.planes[0]
        ev_names = collections.Counter(host.event_metadata[e.metadata_id].name
                                       for l in host.lines for e in l.events)
        self.assertEqual(ev_names["cudaLaunchKernel"], KERNELS)
        self.assertEqual(ev_names["train"], STEPS)
        # line timestamps: earliest event; offsets/durations in ps
        for p in sp.planes:
            self.assertGreater(len(p.event_metadata), 0)
            for k, m in p.event_metadata.items():
                self.assertEqual(k, m.id)
            for l in p.lines:
                offs = [e.offset_ps for e in l.events]
                self.assertEqual(min(offs), 0)
                self.assertEqual(offs, sorted(offs))
                end = max(e.offset_ps + e.duration_ps for e in l.events)
                self.assertEqual(l.duration_ps, end)
                for e in l.events:
                    self.assertEqual(e.offset_ps % 1000, 0)
                    self.assertEqual(e.duration_ps % 1000, 0)
        # step roots carry _r=1 and step_num 0..STEPS-1
        smeta = {k: m.name for k, m in host.stat_metadata.items()}
        steps = []
        for l in host.lines:
            for e in l.events:
                if host.event_metadata[e.metadata_id].name == "train":
                    st = {smeta[s.metadata_id]: s.int64_value for s in e.stats}
                    self.assertEqual(st["_r"], 1)
                    steps.append(st["step_num"])
        self.assertEqual(sorted(steps), list(range(STEPS)))
        # one step ends where (or before) the next begins
        spans = sorted((e.offset_ps, e.offset_ps + e.duration_ps) for l in host.lines for e in l.events
                       if host.event_metadata[e.metadata_id].name == "train")
        for a, b in zip(spans, spans[1:]):
            self.assertLessEqual(a[1], b[0])
        # kernel_details is a ref to an interned string
        g = sp.planes[1]
        gmeta = {k: m.name for k, m in g.stat_metadata.items()}
        e = g.lines[0].events[0]
        kd = [s for s in e.stats if gmeta[s.metadata_id] == "kernel_details"][0]
        self.assertEqual(kd.WhichOneof("value"), "ref_value")
        self.assertTrue(gmeta[kd.ref_value].startswith("regs:"))

    def test_tfevents_record(self):
        path = glob.glob(os.path.join(self.logdir, "events.out.tfevents.*.node1.profile-empty"))[0]
        with open(path, "rb") as f:
            data = f.read()
        n = int.from_bytes(data[:8], "little")
        self.assertEqual(len(data), 8 + 4 + n + 4)
        self.assertEqual(int.from_bytes(data[8:12], "little"), masked(crc32c(data[:8])))
        body = data[12:12 + n]
        self.assertEqual(int.from_bytes(data[12 + n:], "little"), masked(crc32c(body)))
        ev = event_pb2.Event.FromString(body)
        self.assertEqual(ev.file_version, "brain.Event:2")
        self.assertGreater(ev.wall_time, 1e9)
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)  # the reader itself is right

    # ---- Chrome trace ------------------------------------------------------------
    def test_trace_json_matches_xspace(self):
        with gzip.open(self.pb.replace(".xplane.pb", ".trace.json.gz"), "rt", encoding="utf-8") as f:
            doc = json.load(f, parse_float=decimal.Decimal)
        evs = doc["traceEvents"]
        procs = {e["pid"]: e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
        self.assertEqual(sorted(procs.values()), sorted(p.name for p in self.space.planes))
        by_name = {v: k for k, v in procs.items()}

        def ns(us):
            v = decimal.Decimal(us) * 1000
            self.assertEqual(v, int(v))
            return int(v)

        got = collections.Counter((procs[e["pid"]], e["tid"], e["name"], ns(e["ts"]), ns(e["dur"]))
                                  for e in evs if e["ph"] == "X")
        want = collections.Counter()
        for p in self.space.planes:
            for l in p.lines:
                for e in l.events:
                    want[(p.name, l.id, p.event_metadata[e.metadata_id].name,
                          l.timestamp_ns + e.offset_ps // 1000, e.duration_ps // 1000)] += 1
        self.assertEqual(sum(got.values()), KERNELS * 2 + STEPS)
        self.assertEqual(got, want)
        # categories as Kineto names them
        cats = collections.Counter(e["cat"] for e in evs if e["ph"] == "X")
        self.assertEqual(cats["kernel"], KERNELS)
        self.assertEqual(cats["cuda_runtime"], KERNELS)
        # host pid is the process's, GPUs have their own
        self.assertNotEqual(by_name["/device:GPU:0"], by_name["/device:GPU:1"])
        # flows: each s on a host launch pairs with one f on the GPU kernel, same correlation id
        x_at = {}
        for e in evs:
            if e["ph"] == "X" and "correlation" in e.get("args", {}):
                x_at[(e["pid"], e["tid"], e["ts"], e["args"]["correlation"])] = e
        starts = [e for e in evs if e["ph"] == "s"]
        ends = [e for e in evs if e["ph"] == "f"]
        self.assertEqual(len(starts), KERNELS)
        self.assertEqual(sorted(e["id"] for e in starts), sorted(e["id"] for e in ends))
        for e in starts + ends:
            self.assertEqual(e["cat"], "ac2g")
            self.assertIn((e["pid"], e["tid"], e["ts"], e["id"]), x_at)
        for e in ends:
            self.assertEqual(e["bp"], "e")
            self.assertTrue(procs[e["pid"]].startswith("/device:GPU:"))
        for e in starts:
            self.assertEqual(procs[e["pid"]], "/host:CPU")

    # ---- tbprof dump / ls ------------------------------------------------------------
    def test_dump_top_needs_a_count(self):
        # `--top` last, or empty: said as such (was "unknown option '--top'",
        # or a silent --top 0)
        for args in (["--top"], ["--top", ""]):
            p = run("dump", self.pb, *args, check=False)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn("--top wants a count", p.stderr, args)

    def test_dump_agrees(self):
        d = json.loads(run("dump", self.pb, "--json", "--top", "100").stdout)
        self.assertEqual(d["events"], KERNELS * 2 + STEPS)
        self.assertEqual([p["name"] for p in d["planes"]], [p.name for p in self.space.planes])
        host = d["planes"][0]
        self.assertEqual(host["top_by_count"][0], {"name": "cudaLaunchKernel", "count": KERNELS,
                                                   "total_ns": KERNELS * 2000})
        self.assertIn("correlation_id", host["stat_names"])
        g = d["planes"][1]
        self.assertEqual(sum(l["events"] for l in g["lines"]), KERNELS // GPUS)
        self.assertEqual(sum(t["count"] for t in g["top_by_count"]), KERNELS // GPUS)
        text = run("dump", self.logdir).stdout
        self.assertIn("run run_a (newest of 1", text)
        self.assertIn("/device:GPU:1", text)
        ls = json.loads(run("ls", self.logdir, "--json").stdout)
        self.assertEqual(ls["runs"][0]["run"], "run_a")
        files = {f["name"]: f for f in ls["runs"][0]["files"]}
        self.assertEqual(files["node1.xplane.pb"]["events"], KERNELS * 2 + STEPS)
        self.assertEqual(files["node1.xplane.pb"]["bytes"], len(self.raw))

    def test_bad_input_is_one_line_exit_2(self):
        bad = os.path.join(self.tmp, "bad")
        os.makedirs(bad, exist_ok=True)
        cases = {}
        cases["missing"] = os.path.join(bad, "nope.xplane.pb")
        p = os.path.join(bad, "empty.xplane.pb")
        open(p, "wb").close()
        cases["empty"] = p
        p = os.path.join(bad, "trunc.xplane.pb")
        with open(p, "wb") as f:
            f.write(self.raw[: len(self.raw) // 2])
        cases["truncated"] = p
        p = os.path.join(bad, "text.xplane.pb")
        with open(p, "w") as f:
            f.write("this is a text file, not a profile\n")
        cases["text"] = p
        p = os.path.join(bad, "corrupt.xplane.pb")
        with open(p, "wb") as f:
            f.write(b"\x0a\xff\xff\xff\xff\x0f" + self.raw[6:200])
        cases["corrupt"] = p
        cases["gz"] = self.pb.replace(".xplane.pb", ".trace.json.gz")
        cases["dir without profile"] = os.path.join(bad, "emptydir")
        os.makedirs(cases["dir without profile"], exist_ok=True)
        for what, path in cases.items():
            with self.subTest(what):
                r = run("dump", path, check=False)
                self.assertEqual(r.returncode, 2, r.stderr)
                lines = r.stderr.splitlines()
                self.assertEqual(len(lines), 1, r.stderr)
                self.assertTrue(lines[0].startswith(f"tbprof: {path}: "), lines[0])
                self.assertEqual(r.stdout, "")
        r = run("ls", cases["dir without profile"], check=False)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.splitlines()), 1)
        r = run("ls", cases["missing"], check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn("No such file", r.stderr)
        # a run holding one good and one corrupt profile: listed, the bad one named, exit 1
        logdir = os.path.join(self.tmp, "mixed")
        good = run("synth", logdir, "--kernels", "5", "--run", "r", "--host", "good").stdout.strip()
        shutil.copy(cases["truncated"], os.path.join(os.path.dirname(good), "broken.xplane.pb"))
        r = run("ls", logdir, check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("good.xplane.pb", r.stdout)
        self.assertEqual(len(r.stderr.splitlines()), 1)
        self.assertIn("broken.xplane.pb: truncated", r.stderr)
        r = run("dump", logdir, check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("good.xplane.pb", r.stdout)


class OddNames(unittest.TestCase):
    """A thread name the kernel cut mid-character (comm is 15 bytes) is not
    UTF-8; C++ protobuf (xprof, TensorBoard; python's cpp protobuf here)
    refuses a whole XSpace with one such proto3 string in it."""

    def test_cut_multibyte_thread_name_keeps_the_file_readable(self):
        if xplane_pb2 is None:
            self.skipTest("python protobuf bindings not built: " + IMPORT_ERROR)
        import tbtest
        tmp = tempfile.mkdtemp(prefix="tbprof_oddnames_")
        self.addCleanup(shutil.rmtree, tmp, True)
        # "a" and 7 three-byte characters: comm keeps 15 bytes, the 5th character cut
        exe = os.path.join(tmp, "a\u30c7\u30fc\u30bf\u30ed\u30fc\u30c0\u30fc")
        shutil.copy(tbtest.prog("steps"), exe)
        logdir = os.path.join(tmp, "logs")
        p = subprocess.run([exe, "-n", "6", "-m", "1"], env=tbtest.env(logdir, steps="2,3"),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        files = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
        self.assertEqual(len(files), 1, files)
        with open(files[0], "rb") as f:
            xs = xplane_pb2.XSpace.FromString(f.read())  # DecodeError on invalid UTF-8
        names = [l.name for pl in xs.planes for l in pl.lines]
        self.assertIn("a\u30c7\u30fc\u30bf\u30ed\ufffd\ufffd", names)


if __name__ == "__main__":
    unittest.main()
