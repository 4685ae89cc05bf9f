"""Faults during a capture: SIGINT, exit() from another thread and _exit()
mid-capture, SIGKILL at each point of the write, and a logdir that is
missing, unwritable or on a full file system. The job's exit status never
changes; a profile is complete or absent, never partial; a reader ignores
what a killed writer left; the next run is fine; one warning, no litter."""

import gzip
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402
from relutil import RELJOB, figure  # noqa: E402

T = 120 * relutil.sanitizer_slowdown()
TMP_NAME = re.compile(r"^\.tbprof-\d+-\d+\.tmp$")


NO_TMPFILE = tbtest.prog("libno_tmpfile.so")


def nums(path):
    return [n for n, _, _ in tbtest.load(path).steps()]


def has_tmpfile(d):
    try:
        os.close(os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600))
        return True
    except OSError:
        return False


class Faults(tbtest.TestCase):
    def check_complete(self, logdir, nsteps=None):
        """Every finished-looking file decodes in full; returns them."""
        files = tbtest.xplanes(logdir)
        for f in files:
            n = nums(f)
            if nsteps is not None:
                self.assertEqual(len(n), nsteps, f)
            gz = f.replace(".xplane.pb", ".trace.json.gz")
            if os.path.exists(gz):
                with gzip.open(gz) as g:
                    json.load(g)
        return files

    # ---- signals and exits mid-capture --------------------------------------

    def test_sigint_mid_capture_default_and_own_handler(self):
        # default SIGINT: the job dies of it; nothing (partial) is left
        p = tbtest.spawn([RELJOB, "-r", "-n", "3000", "-m", "2"], env=relutil.env(self.logdir, steps="3,2000"))
        tbtest.read_until(p, "ready")
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=T)
        self.assertEqual(p.returncode, -signal.SIGINT)
        self.assertEqual(self.check_complete(self.logdir), [])
        self.assertNoPartialFiles(self.logdir)
        # the job's own handler ends the loop and exits 5: the window so far is written
        logdir2 = os.path.join(self.tmp, "logs2")
        p = tbtest.spawn([RELJOB, "-r", "-I", "-x", "5", "-n", "3000", "-m", "2"],
                         env=relutil.env(logdir2, steps="3,2000"))
        tbtest.read_until(p, "ready")
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=T)
        self.assertEqual(p.returncode, 5, err)
        files = self.check_complete(logdir2)
        self.assertEqual(len(files), 1, err)
        n = nums(files[0])
        self.assertEqual(n, list(range(3, 3 + len(n))))
        self.assertNoPartialFiles(logdir2)
        figure("sigint", "default SIGINT mid-capture: dies of SIGINT, 0 files; job's own SIGINT handler: exit 5 "
               "kept, steps 3-%d written" % n[-1])

    def test_exit_from_another_thread_and__exit(self):
        # exit(9) from a second thread while the main thread keeps stepping
        p = tbtest.run([RELJOB, "-n", "400", "-m", "2", "-A", "20", "-X", "-Y", "-x", "9"],
                       env=relutil.env(self.logdir, steps="3,300"), timeout=T)
        self.assertExitedOk(p, 9)
        files = self.check_complete(self.logdir)
        self.assertLessEqual(len(files), 1)
        if files:
            n = nums(files[0])
            self.assertEqual(n, list(range(3, 3 + len(n))))
        self.assertNoPartialFiles(self.logdir)
        # _exit(11): no destructor, nothing flushed, nothing partial
        logdir2 = os.path.join(self.tmp, "logs2")
        p = tbtest.run([RELJOB, "-n", "400", "-m", "2", "-A", "20", "-X", "-K", "-x", "11"],
                       env=relutil.env(logdir2, steps="3,300"), timeout=T)
        self.assertExitedOk(p, 11)
        self.assertEqual(tbtest.xplanes(logdir2), [])
        self.assertNoPartialFiles(logdir2)
        figure("exit", "exit(9) from a 2nd thread mid-capture: status 9, %d complete file(s); _exit(11): status 11, "
               "0 files, 0 temporaries" % len(files))

    def test_dlclose_during_a_capture(self):
        # a job that dlopen()s the agent (ctypes, a plugin loader) and lets go
        # of it mid-capture: the library stays (-z nodelete), the capture
        # ends and is written, the job runs on (it died of SIGSEGV when the
        # agent thread's code was unmapped, after a 2 s wait in the destructor)
        e = relutil.env(self.logdir)
        e.pop("LD_PRELOAD")
        p = tbtest.run([RELJOB, "-L", tbtest.LIB, "-D", "-n", "300", "-m", "2", "-A", "5"], env=e, timeout=T)
        self.assertExitedOk(p, 0)
        self.assertIn("start 0 dlclose 0\n", p.stdout)
        self.assertIn("done 300 status 0", p.stdout)
        files = self.check_complete(self.logdir)
        self.assertEqual(len(files), 1, p.stderr)
        self.assertEqual(tbtest.load(files[0]).host.stats["tbprof_trigger"], "api tbprof_start(duration)")
        self.assertNotIn("not finished", p.stderr)

    def test_job_started_with_stderr_closed(self):
        # a job started with fd 2 closed (a daemon, `2>&-`): the agent's
        # socket, pipes, perf events and profile files never take fd 2, or
        # the job's own writes to stderr would go into them (the control
        # socket did: the first fd free at start-up; libunwind's pipe, made
        # at the first capture, did too)
        e = relutil.env(self.logdir, socket="on", cpu="on", delay="0.2", duration="0.4")
        # a profile file opened on fd 2 and moved above at once sat there
        # for microseconds, and a write to stderr then went into it: the
        # shim stretches that move to 100 ms, so the poll below sees it
        shim = tbtest.prog("libslow_profile_write.so")
        if os.path.exists(shim):
            e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
            e["TBTEST_SLOW_WRITE_MS"] = "0"
            e["TBTEST_SLOW_DUP_MS"] = "100"
        p = subprocess.Popen([RELJOB, "-r", "-n", "100", "-m", "10"], env=e, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(2))
        # kept: seen on fd 2 in 3 looks in a row (15 ms or more); what is
        # made below it and moved above at once (a pipe, a perf event of a
        # thread found later) passes through for microseconds, which a look
        # under TSan's timing can catch: a write to stderr then fails
        # (EINVAL, or EBADF on a pipe's read end), as with fd 2 closed
        seen, run, last = set(), 0, None
        tbtest.read_until(p, "ready")
        while p.poll() is None:
            try:
                now = os.readlink("/proc/%d/fd/2" % p.pid)
            except OSError:
                now = None
            run = run + 1 if now is not None and now == last else 1
            last = now
            if now is not None and (run >= 3 or not now.startswith(("pipe:", "anon_inode:"))):
                seen.add(now)
            time.sleep(0.005)
        p.communicate(timeout=T)
        self.assertEqual(p.returncode, 0)
        # /dev/null: held while a capture's sources start, so that what they
        # open and keep (libunwind's pipe, CUPTI's) lands above 2; a write
        # to stderr then is as lost as with fd 2 closed. A /proc file or
        # folder read at once (the sampler's thread scan) may pass through
        # fd 2 for microseconds: not kept, and no write lands in it
        # files read and closed at once (ELF files for symbols, under the
        # sanitizers' timing) likewise: kept are sockets, pipes, perf
        # events and the profile files
        kept = {x for x in seen if x.startswith(("socket:", "pipe:", "anon_inode:", self.logdir))}
        self.assertEqual(kept, set(), "fd 2 of the job was ours: %s" % sorted(seen))
        self.assertEqual(len(self.check_complete(self.logdir)), 1)

    def test_sigterm_while_writing_is_bounded(self):
        # SIGTERM while the agent thread writes the profile of a window that
        # has ended (each write() under the run folder takes 15 s, through a
        # shim): the agent thread is busy in the write, not reading its pipe,
        # yet the job dies of SIGTERM within the 2 s bound (the README), not
        # when the write is done, and leaves nothing partial
        shim = tbtest.prog("libslow_profile_write.so")
        if not os.path.exists(shim):
            self.skipTest("shim not built")
        e = relutil.env(self.logdir, steps="2,4", run="r", host="h", trace_json="off")
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
        e["TBTEST_SLOW_WRITE_MS"] = "15000"
        p = tbtest.spawn([RELJOB, "-r", "-n", "100000", "-m", "5"], env=e)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        tbtest.read_until(p, "ready")
        run = os.path.join(self.logdir, "plugins", "profile", "r")
        deadline = time.time() + 30
        while not os.path.isdir(run) and time.time() < deadline:
            time.sleep(0.02)
        self.assertTrue(os.path.isdir(run), "the write began")
        time.sleep(0.3)  # inside the first (15 s) write()
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=T)
        took = time.time() - t0
        self.assertEqual(p.returncode, -signal.SIGTERM, err)
        self.assertNotIn("done", out)
        self.assertLess(took, 2.0 + relutil.sanitizer_slowdown(), "bounded at 2 s\n" + err)
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        self.assertNoPartialFiles(self.logdir)
        figure("sigterm_writing", "SIGTERM during a 15 s profile write: died of SIGTERM %.1f s later, "
               "nothing partial" % took)

    # ---- SIGKILL while writing --------------------------------------------------

    def kill_at(self, nth, logdir, named=False):
        run = os.path.join(logdir, "plugins", "profile", "r")
        os.makedirs(run)
        env = relutil.env(logdir, steps="0,30000", run="r", host="h")
        if named:
            env["LD_PRELOAD"] = relutil.with_shim(env["LD_PRELOAD"], NO_TMPFILE)
        job = subprocess.Popen([RELJOB, "-r", "-g", "-n", "30010", "-m", "0"], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: job.poll() is None and job.kill())
        tbtest.read_until(job, "ready")
        w = subprocess.Popen([RELJOB, "-W", run, "-k", str(job.pid), "-c", str(nth)], stdout=subprocess.PIPE,
                             text=True, env=relutil.env(preload=False))
        self.assertEqual(w.stdout.readline().strip(), "watching")
        job.stdin.write("go\n")
        job.stdin.flush()
        job.communicate(timeout=T)
        wout, _ = w.communicate(timeout=30)
        killed = job.returncode == -signal.SIGKILL
        return killed, wout.strip(), run

    def test_sigkill_mid_write(self):
        # files are written as unnamed O_TMPFILE inodes where the file system
        # has them: a kill at any point leaves no temporary behind
        tmpfile = has_tmpfile(self.tmp)
        left = self.sigkill_each_point("sigkill", named=False)
        if tmpfile:
            self.assertEqual(left, 0, "O_TMPFILE: nothing left by a killed writer")

    def test_sigkill_mid_write_named_temporaries(self):
        # NFS and most parallel file systems have no O_TMPFILE (the shim
        # refuses it here): dot-named temporaries, which readers skip
        if not os.path.exists(NO_TMPFILE):
            self.skipTest("shim not built")
        left = self.sigkill_each_point("sigkill_named", named=True)
        self.assertGreater(left, 0, "the named path was taken: a killed writer left its temporary")

    def sigkill_each_point(self, fig, named):
        caught = []
        total_left = 0
        for nth in (1, 2, 3, 4):
            logdir = os.path.join(self.tmp, "%s%d" % (fig, nth))
            killed, what, run = self.kill_at(nth, logdir, named)
            files = self.check_complete(logdir, nsteps=30001)
            left = tbtest.leftovers(logdir)
            total_left += len(left)
            for f in left:
                self.assertRegex(os.path.basename(f), TMP_NAME, "only temp names a reader ignores")
            # readers skip the temporaries
            ls = tbtest.run([tbtest.CLI, "ls", logdir])
            self.assertEqual(ls.returncode, 0 if files else ls.returncode, ls.stderr)
            self.assertNotIn(".tbprof-", ls.stdout + ls.stderr)
            if not files:
                s = tbtest.run([tbtest.CLI, "summary", logdir])
                self.assertEqual(s.returncode, 2, s.stdout)
                self.assertNotIn(".tbprof-", s.stdout + s.stderr)
            caught.append("kill at create #%d (%s): %s, %d complete xplane, %d temp left" % (
                nth, what, "killed" if killed else "finished first", len(files), len(left)))
            # the next run is fine (same run and host names: a new name, nothing replaced)
            p = tbtest.run([RELJOB, "-n", "8", "-m", "1"], env=relutil.env(logdir, steps="2,4", run="r", host="h"),
                           timeout=T)
            self.assertExitedOk(p)
            after = self.check_complete(logdir)
            self.assertEqual(len(after), len(files) + 1, p.stderr)
            new = [f for f in after if f not in files][0]
            self.assertEqual(nums(new), [2, 3, 4])
        figure(fig, "; ".join(caught))
        return total_left

    # ---- the logdir -------------------------------------------------------------

    def gz_steps(self, xplane):
        """The step numbers trace.json.gz beside the xplane holds, and whether
        its gzip stream is stored (uncompressed) blocks only."""
        gz = xplane.replace(".xplane.pb", ".trace.json.gz")
        with open(gz, "rb") as f:
            raw = f.read()
        self.assertEqual(raw[:3], b"\x1f\x8b\x08", gz)
        doc = json.loads(gzip.decompress(raw))
        steps = sorted({e["args"]["step_num"] for e in doc["traceEvents"]
                        if isinstance(e.get("args"), dict) and "step_num" in e["args"]})
        return steps, (raw[10] & 6) == 0  # the first block's BTYPE: 00 = stored

    def steps_2_4_with_shim(self, name):
        """reljob's steps 2-4 captured with shim `name` preloaded before the
        agent: the finished run, its environment, the files it wrote."""
        shim = tbtest.prog(name)
        if not os.path.exists(shim):
            self.skipTest("shim not built")
        e = relutil.env(self.logdir, steps="2,4", run="r", host="h")
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
        p = tbtest.run([RELJOB, "-n", "8", "-m", "1"], env=e, timeout=T)
        self.assertExitedOk(p)
        return p, e, self.check_complete(self.logdir)

    def test_no_libz_keeps_the_profile(self):
        # libz is dlopen()ed when trace.json.gz is written; a machine without
        # it (the shim refuses the dlopen) gets the xplane.pb and a
        # trace.json.gz of stored (uncompressed) blocks, with one warning
        p, e, files = self.steps_2_4_with_shim("libno_libz.so")
        self.assertEqual([os.path.basename(f) for f in files], ["h.xplane.pb"])
        self.assertEqual(nums(files[0]), [2, 3, 4])
        run = os.path.dirname(files[0])
        self.assertEqual(sorted(os.listdir(run)), ["h.trace.json.gz", "h.xplane.pb"], "no temporary")
        self.assertEqual(self.gz_steps(files[0]), ([2, 3, 4], True))
        w = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn("without compression", w[0])
        self.assertIn("libz.so.1 not loadable", w[0])
        figure("no_libz", "libz not loadable: xplane.pb and a stored trace.json.gz written (steps 2-4), 1 warning")

    def test_a_program_with_its_own_zlib(self):
        # the job exports deflateReset (node bundles and exports its zlib):
        # libz.so.1's deflateInit2_ would call it with our stream (node died
        # of SIGSEGV at every capture's write); the agent writes stored gzip
        p, e, files = self.steps_2_4_with_shim("libown_zlib.so")
        self.assertNotIn("own_zlib:", p.stderr)
        self.assertEqual(len(files), 1, p.stderr)
        self.assertEqual(self.gz_steps(files[0]), ([2, 3, 4], True))
        w = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn("libown_zlib.so defines zlib's deflateReset", w[0])
        # without the shim the same job's file is compressed
        e["LD_PRELOAD"] = tbtest.preload_value()
        e["TBPROF_LOGDIR"] = self.logdir + "-plain"
        p = tbtest.run([RELJOB, "-n", "8", "-m", "1"], env=e, timeout=T)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])
        self.assertEqual(self.gz_steps(self.check_complete(self.logdir + "-plain")[0]), ([2, 3, 4], False))

    def test_a_write_that_stops_moving_is_named(self):
        # every write() under plugins/profile takes 300 ms (a slow file
        # system, through a shim; a profile here is 2 of them): past
        # TBPROF_STALL_WARN_MS=100 each profile write is named once while
        # stuck and once when done, the job's status is kept, and the next
        # profile lists the first write; with 550 ms (each write() is within
        # it, a whole profile write is not: every piece counts as progress)
        # or the default limit (5 s) nothing is said
        shim = tbtest.prog("libslow_profile_write.so")
        if not os.path.exists(shim):
            self.skipTest("shim not built")
        said = {}
        for limit in ("100", "550", None):
            logdir = os.path.join(self.tmp, "logs%s" % limit)
            e = relutil.env(logdir, steps="2-3;6-7", run="r", host="h", stall_warn_ms=limit)
            e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
            e["TBTEST_SLOW_WRITE_MS"] = "300"
            # 50 ms steps: both writes (0.6 s each) end long before the job
            # does (a write at exit is not watched)
            p = tbtest.run([RELJOB, "-n", "36", "-m", "50"], env=e, timeout=T)
            self.assertExitedOk(p)
            first, second = [os.path.join(logdir, "plugins", "profile", "r_steps_%s" % w, "h.xplane.pb")
                             for w in ("2-3", "6-7")]
            self.assertEqual((nums(first), nums(second)), ([2, 3], [6, 7]))
            said[limit] = w = tbtest.tbprof_warnings(p.stderr)
            if limit != "100":
                self.assertEqual(w, [], p.stderr)
                continue
            what = "the profile write under %s" % logdir
            hung = [l for l in w if re.search(re.escape(what) + r" has not returned after \d+\.\d s; a slow or hung "
                                              r"file system\?", l)]
            back = [l for l in w if re.search(re.escape(what) + r" returned after \d+\.\d s$", l)]
            self.assertEqual((len(hung), len(back), len(w)), (2, 2, 4), p.stderr)
            prof = tbtest.load(second)
            self.assertTrue([x for x in prof.warnings if x.startswith(
                "calls that took 100 ms or more to return (TBPROF_STALL_WARN_MS): " + what + ": ")], prof.warnings)
        figure("slow_write", "300 ms per write() under the run folder, TBPROF_STALL_WARN_MS=100: %d warnings for 2 "
               "profiles (stuck, done), next profile lists it; 550 ms: %d; default limit: %d"
               % (len(said["100"]), len(said["550"]), len(said[None])))

    def test_logdir_missing_is_created(self):
        logdir = os.path.join(self.tmp, "a", "b", "c", "logs")
        p = tbtest.run([RELJOB, "-n", "8", "-m", "1"], env=relutil.env(logdir, steps="2,4"), timeout=T)
        self.assertExitedOk(p)
        self.assertEqual(nums(self.check_complete(logdir)[0]), [2, 3, 4])
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])

    def test_logdir_unwritable_for_the_job(self):
        if not relutil.can_be_nobody():
            self.skipTest("needs root (to run the job as nobody)")
        job, lib = relutil.shared_copy(self.tmp, [RELJOB, tbtest.LIB])
        locked = os.path.join(self.tmp, "rootonly")
        os.mkdir(locked, 0o755)
        for logdir in (locked, os.path.join(locked, "logs")):
            e = relutil.env(logdir, steps="2,4")
            e["LD_PRELOAD"] = relutil.preload_with(lib)
            p = subprocess.run([job, "-n", "8", "-m", "1", "-x", "3"], env=e, capture_output=True, text=True,
                               timeout=T, preexec_fn=relutil.as_nobody, cwd=self.tmp)
            self.assertEqual(p.returncode, 3, p.stderr)
            self.assertIn("done 8", p.stdout)
            w = self.assertOneWarning(p.stderr, logdir)
            self.assertIn("Permission denied", w)
            self.assertEqual(len(tbtest.tbprof_warnings(p.stderr)), 1, p.stderr)
        self.assertEqual(os.listdir(locked), [])
        figure("logdir-unwritable", "job as nobody, logdir root-owned 0755 (itself, and a missing child): exit 3 "
               "kept, 1 warning (Permission denied), 0 files")

    def full_fs(self, logdir, preexec=None, label=""):
        # no free-space floor: the file system's own ENOSPC is what is tested
        e = relutil.env(logdir, steps="2,4", run="r", host="h", min_free_mb="0")
        p = subprocess.run([RELJOB, "-n", "8", "-m", "1", "-x", "4"], env=e, capture_output=True, text=True,
                           timeout=T, preexec_fn=preexec)
        self.assertEqual(p.returncode, 4, "%s: %s" % (label, p.stderr))
        self.assertIn("done 8", p.stdout)
        w = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(w), 1, "%s: one warning: %s" % (label, p.stderr))
        self.assertNoPartialFiles(logdir)
        return w[0], self.check_complete(logdir)

    def test_free_space_floor(self):
        # TBPROF_MIN_FREE_MB: a profile that would leave the file system
        # less free than that is not written; one warning names the floor
        v = os.statvfs(self.tmp)
        avail_mb = v.f_bavail * v.f_frsize >> 20
        floor = avail_mb + 1024
        if floor > 16777216:
            self.skipTest("%d MiB free: more than the floor can be set to" % avail_mb)
        logdir = os.path.join(self.tmp, "floor")
        e = relutil.env(logdir, steps="2,4", run="r", host="h", min_free_mb=str(floor))
        p = subprocess.run([RELJOB, "-n", "8", "-m", "1", "-x", "4"], env=e, capture_output=True, text=True,
                           timeout=T)
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertIn("done 8", p.stdout)
        w = tbtest.tbprof_warnings(p.stderr)
        self.assertEqual(len(w), 1, p.stderr)
        self.assertIn("profile not written", w[0])
        self.assertIn("less than %d MiB free" % floor, w[0])
        self.assertIn("TBPROF_MIN_FREE_MB", w[0])
        self.assertEqual(tbtest.xplanes(logdir), [])
        self.assertNoPartialFiles(logdir)
        # the same job under the default floor (512 MiB) writes its profile
        # where more than that is free
        if avail_mb > 1024:
            e = relutil.env(logdir, steps="2,4", run="r2", host="h")
            p = tbtest.run([RELJOB, "-n", "8", "-m", "1"], env=e, timeout=T)
            self.assertExitedOk(p)
            self.assertEqual(nums(self.check_complete(logdir)[0]), [2, 3, 4])
        figure("free-space-floor", "%d MiB free, TBPROF_MIN_FREE_MB=%d: exit 4 kept, 1 warning, 0 files" %
               (avail_mb, floor))

    def test_full_filesystem(self):
        results = []
        mnt = os.path.join(self.tmp, "mnt")
        os.mkdir(mnt)
        mounted = os.getuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], capture_output=True).returncode == 0
        if mounted:
            self.addCleanup(lambda: subprocess.run(["umount", "-l", mnt]))
            # 16 pages; each file takes at least one: leave 0, 1 and 2 free
            for free, expect in ((0, "profile not written"), (1, "profile not written"),
                                 (2, "trace.json.gz not written")):
                for f in os.listdir(mnt):
                    subprocess.run(["rm", "-rf", os.path.join(mnt, f)])
                with open(os.path.join(mnt, "filler"), "wb") as f:
                    f.write(b"\0" * ((16 - free) * 4096))
                logdir = os.path.join(mnt, "logs")
                w, files = self.full_fs(logdir, label="tmpfs %d pages free" % free)
                self.assertIn(expect, w)
                self.assertIn("No space left", w)
                self.assertEqual(len(files), 1 if free == 2 else 0, w)
                if files:
                    self.assertEqual(nums(files[0]), [2, 3, 4])
                results.append("tmpfs %d page(s) free: %d profile(s), 1 warning (%s: %s)" % (
                    free, len(files), expect, w.rsplit(": ", 1)[1]))
            subprocess.run(["umount", mnt])  # before tearDown removes the folder
        # RLIMIT_FSIZE below the profile's size: refused before writing (no SIGXFSZ)

        def small_fsize():
            resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

        logdir = os.path.join(self.tmp, "fsize")
        w, files = self.full_fs(logdir, preexec=small_fsize, label="RLIMIT_FSIZE")
        self.assertIn("File too large", w)
        self.assertEqual(files, [])
        results.append("RLIMIT_FSIZE=512: 0 profiles, 1 warning (%s)" % w.rsplit(": ", 1)[1])
        figure("full-fs", "%s; exit status 4 kept, no temporaries%s" % (
            "; ".join(results), "" if mounted else " (tmpfs mount refused: RLIMIT_FSIZE only)"))


if __name__ == "__main__":
    tbtest.main()
