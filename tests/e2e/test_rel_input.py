"""Bad input: every TBPROF_* variable (read from `tbprof help env
--markdown`, the parser's own table) with empty, blank, huge, negative,
non-numeric, format-string, control-byte and overlong values; extreme but
valid values; malformed control-socket traffic (partial lines, garbage,
overlong lines, slow and silent clients, many at once). The job always
exits with its own status; at most one warning per variable, naming it."""

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402
from relutil import RELJOB, figure  # noqa: E402

T = 60 * relutil.sanitizer_slowdown()
# one env string may be at most MAX_ARG_STRLEN (32 pages = 128 KiB with its
# "NAME=" and NUL): a 1 MB value cannot reach a process through execve()
OVERLONG = 128 * 1024 - 64

VALUES = [
    ("empty", b""),
    ("blank", b"   "),
    ("negative", b"-1"),
    ("non-numeric", b"abc"),
    ("huge-number", b"9" * 40),
    ("format", b"%n%s%s%x%p"),
    ("control-bytes", b"\x01\xff\x1b[2J\t,;"),
    ("overlong", b"7" * OVERLONG),
]


def variables():
    md = subprocess.run([tbtest.CLI, "help", "env", "--markdown"], capture_output=True, text=True).stdout
    names = re.findall(r"^\| `(TBPROF_[A-Z0-9_]+)` \|", md, re.M)
    return names


class Input(tbtest.TestCase):
    def run_job(self, extra, args=("-n", "6", "-m", "0", "-x", "3")):
        e = {k.encode(): v.encode() for k, v in relutil.env(self.logdir, steps="1,2").items()}
        e.update(extra)
        return subprocess.run([RELJOB] + list(args), env=e, capture_output=True, timeout=T, cwd=self.tmp)

    def test_every_variable_every_bad_value(self):
        names = variables()
        self.assertGreaterEqual(len(names), 18, "the table as `tbprof help env --markdown` prints it")
        runs = warned = 0
        worst = 0
        for name in names:
            for label, val in VALUES:
                with self.subTest(var=name, value=label):
                    p = self.run_job({name.encode(): val})
                    runs += 1
                    err = p.stderr.decode("utf-8", "replace")
                    self.assertEqual(p.returncode, 3, "%s=%s: %s" % (name, label, err[-2000:]))
                    self.assertIn(b"done 6 status 3", p.stdout)
                    lines = tbtest.tbprof_warnings(err)
                    naming = [l for l in lines if name in l]
                    self.assertLessEqual(len(naming), 1, "%s=%s:\n%s" % (name, label, err[-2000:]))
                    # the one bad variable is the only thing warned about
                    self.assertEqual(len(lines), len(naming), "%s=%s:\n%s" % (name, label, err[-2000:]))
                    for l in naming:
                        self.assertLess(len(l), 600, "a warning quotes a bounded part of the value")
                    warned += len(naming)
                    worst = max(worst, len(naming))
                    self.assertNoPartialFiles(self.logdir)
                    self.assertFalse(os.path.exists(os.path.join(self.tmp, "PWNED")))
        figure("env", "%d variables x %d bad values = %d runs: exit status kept in all, %d warnings (at most %d "
               "per run, each naming its variable), no crash" % (len(names), len(VALUES), runs, warned, worst))

    def test_extreme_valid_values(self):
        cases = [
            {"TBPROF_BUFFER_MB": "65536", "TBPROF_CPU": "on"},
            {"TBPROF_MAX_MB": "65536"},
            {"TBPROF_CPU_HZ": "10000", "TBPROF_CPU": "on"},
            {"TBPROF_STEPS": "0-9223372036854775806"},
            {"TBPROF_STEPS": "9223372036854775807"},
            {"TBPROF_STEPS": ";".join("%d" % (2 * i) for i in range(16))},
            {"TBPROF_DURATION": "1ms", "TBPROF_DELAY": "0"},
            {"TBPROF_HOST": "h" * 200, "TBPROF_RUN": "r" * 200},
        ]
        for c in cases:
            with self.subTest(**c):
                p = self.run_job({k.encode(): v.encode() for k, v in c.items()})
                err = p.stderr.decode("utf-8", "replace")
                self.assertEqual(p.returncode, 3, err)
                self.assertNoPartialFiles(self.logdir)
                for f in tbtest.xplanes(self.logdir):
                    tbtest.load(f)
        figure("env-extreme", "%d extreme-but-valid settings (64 GB buffer, 10 kHz, INT64_MAX steps, 16 windows, "
               "1 ms window, 200-char names): exit status kept, every file decodes" % len(cases))

    def test_numbers_at_the_edge_of_int64(self):
        # tbprof_step_num(INT64_MAX) (the next would be INT64_MAX + 1) and
        # tbprof_start(INT64_MAX / 1000) ms (more than INT64_MAX ns) are
        # refused, not wrapped (signed overflow: undefined, caught by the
        # ASan+UBSan build); step numbering goes on from 0
        p = tbtest.run([tbtest.prog("steps"), "-O", "-n", "5", "-m", "1"], env=relutil.env(self.logdir))
        self.assertExitedOk(p)
        self.assertIn("edge step_num(INT64_MAX)=-22 next=0 start(INT64_MAX/1000)=-22", p.stdout, p.stderr)
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        # a socket steps=A-B every=P whose A-B length overflows: a plain error
        p = self.start_job()
        for req in ("start steps=-9223372036854775808-5 every=9", "start steps=0-9223372036854775807 every=9"):
            self.assertEqual(relutil.ctl(p.pid, req), "error: steps=A-B needs 0 <= A <= B, at most 1000000 steps",
                             req)
        self.assertTrue(relutil.ctl(p.pid, "status").startswith("state=idle"))

    # ---- the control socket -------------------------------------------------------

    def start_job(self):
        p = tbtest.spawn([RELJOB, "-r", "-n", "100000", "-m", "2"], env=relutil.env(self.logdir))
        self.addCleanup(lambda: p.poll() is None and p.kill())
        tbtest.read_until(p, "ready")
        relutil.wait_socket(p.pid)
        return p

    def test_socket_partial_lines_and_garbage(self):
        p = self.start_job()
        rng = random.Random(7)
        # a request without its newline, then close: never acted on
        for part in (b"start duration=0.2", b"start steps=1", b"stop", b"status"):
            a = relutil.ctl_raw(p.pid, part, shut=True)
            self.assertTrue(a.startswith("error"), "%r -> %r" % (part, a))
        n = 0
        for size in (1, 7, 255, 256, 4096, 65536):
            blob = bytes(rng.randrange(256) for _ in range(size))
            try:
                a = relutil.ctl_raw(p.pid, blob, shut=True)
            except (BrokenPipeError, ConnectionResetError):
                a = "error (closed)"
            self.assertTrue(a.startswith("error") or a == "", "%d random bytes -> %r" % (size, a))
            n += 1
        # NUL inside a line, exactly-at-limit line
        self.assertTrue(relutil.ctl_raw(p.pid, b"status\0start duration=1\n").startswith("state=idle"))
        self.assertTrue(relutil.ctl_raw(p.pid, b"s" * 255 + b"\n").startswith("error"))
        # a slow drip (a byte every 50 ms) is cut off at the server's deadline
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(relutil.addr(p.pid))
        s.settimeout(5)
        got = b""
        t0 = time.time()
        try:
            for ch in b"start duration=1\n":
                s.send(bytes([ch]))
                time.sleep(0.05)
        except OSError:
            pass
        try:
            got = s.recv(200)
        except OSError:
            pass
        s.close()
        self.assertTrue(got.startswith(b"error"), got)
        st = relutil.ctl(p.pid, "status")
        self.assertTrue(st.startswith("state=idle") and "captures=0" in st, st)
        p.kill()
        p.communicate()
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        figure("socket-garbage", "4 partial lines then close, %d random blobs (1 B-64 KiB), NUL, 255-byte line, "
               "slow drip (%.1f s): all answered 'error', nothing started" % (n, time.time() - t0))

    def test_socket_many_concurrent_connections(self):
        p = self.start_job()
        holders = []
        for _ in range(50):  # silent clients: connect, say nothing
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(relutil.addr(p.pid))
                holders.append(s)
            except OSError:
                s.close()
        self.addCleanup(lambda: [h.close() for h in holders])
        # with them all pending, one request: the silent ones share one 200 ms
        # deadline (they held the agent thread 200 ms each before: 1.6 s for 8)
        t0 = time.time()
        self.assertTrue(relutil.ctl(p.pid, "status", timeout=30).startswith("state=idle"))
        first = time.time() - t0
        self.assertLess(first, 1.0)
        lat, errs = [], []
        lock = threading.Lock()

        def client(k):
            for _ in range(k):
                t0 = time.time()
                try:
                    a = relutil.ctl(p.pid, "status", timeout=30)
                    ok = a.startswith("state=idle")
                except OSError as e:
                    ok, a = False, str(e)
                with lock:
                    lat.append(time.time() - t0)
                    if not ok:
                        errs.append(a)

        th = [threading.Thread(target=client, args=(10,)) for _ in range(20)]
        t0 = time.time()
        for t in th:
            t.start()
        for t in th:
            t.join(120)
        total = time.time() - t0
        self.assertEqual(errs, [])
        self.assertEqual(len(lat), 200)
        lat.sort()
        # silent clients share one 200 ms deadline per round: a request is
        # answered well within a second even with 50 of them connected
        self.assertLess(lat[len(lat) // 2], 1.0, lat)
        for h in holders:
            h.close()
        st = relutil.ctl(p.pid, "status")
        self.assertIn("captures=0", st)
        p.kill()
        p.communicate()
        figure("socket-concurrent", "%d silent connections pending: a status request answered in %.0f ms; then "
               "200 status requests from 20 clients: all answered in %.1f s, median %.0f ms, max %.0f ms, nothing "
               "started" % (len(holders), 1000 * first, total, 1000 * lat[len(lat) // 2], 1000 * lat[-1]))


if __name__ == "__main__":
    tbtest.main()
