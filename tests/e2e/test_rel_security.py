"""Security: nothing in set-uid processes; the control socket serves only
its own uid; files are created without following symlinks (at the final
name, the temporary name, the run folder), with the process umask, never
replacing a file we did not create; env values never reach a shell or a
format string; output bounded by TBPROF_MAX_MB with the drops counted."""

import os
import shutil
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402
from relutil import RELJOB, figure  # noqa: E402

T = 60 * relutil.sanitizer_slowdown()


def nums(path):
    return [n for n, _, _ in tbtest.load(path).steps()]


def report(out):
    for line in out.splitlines():
        if line.startswith("secure "):
            w = line.split()
            return {w[i]: int(w[i + 1]) for i in range(0, len(w) - 1, 2)}
    raise AssertionError("no report in %r" % out)


class Security(tbtest.TestCase):
    def setUp(self):
        super().setUp()
        self.victim = os.path.join(self.tmp, "victim")
        with open(self.victim, "w") as f:
            f.write("victim\n")

    def victim_intact(self):
        with open(self.victim) as f:
            self.assertEqual(f.read(), "victim\n")

    # ---- set-uid -----------------------------------------------------------------

    def test_setuid_process_does_nothing(self):
        if not relutil.can_be_nobody():
            self.skipTest("needs root (chown nobody + chmod u+s)")
        job, lib = relutil.shared_copy(self.tmp, [RELJOB, tbtest.LIB])
        suid = os.path.join(os.path.dirname(job), "reljob-suid")
        shutil.copy2(job, suid)
        uid, gid = relutil.nobody_ids()
        os.chown(suid, uid, gid)
        os.chmod(suid, 0o4755)
        logdir = os.path.join(self.tmp, "open")
        os.mkdir(logdir)
        os.chmod(logdir, 0o1777)  # writable by the set-uid job: absence is ours
        e = relutil.env(logdir, steps="1,3", signal="USR2", socket="on")
        e.pop("LD_PRELOAD")  # ld.so ignores it in set-uid programs: load the agent by dlopen()
        args = ["-L", lib, "-n", "8", "-m", "2", "-x", "6"]
        # root runs the set-uid-nobody copy: euid != ruid, so AT_SECURE
        p = subprocess.run([suid] + args, env=e, capture_output=True, text=True, timeout=T)
        if tbtest.SANITIZE and p.returncode != 6:
            self.skipTest("the %s runtime does not run set-uid here: %s" % (tbtest.SANITIZE, p.stderr[-300:]))
        self.assertEqual(p.returncode, 6, p.stderr)
        r = report(p.stdout)
        self.assertEqual(r["secure"], 1)
        self.assertEqual((r["agent_thread"], r["socket"]), (0, 0), p.stdout)
        self.assertLess(r["start"], 0, "tbprof_start refused")
        self.assertEqual(os.listdir(logdir), [])
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])
        # the control: the same copy without the bit, run by nobody, is profiled
        os.chmod(suid, 0o755)
        q = subprocess.run([suid] + args, env=e, capture_output=True, text=True, timeout=T,
                           preexec_fn=relutil.as_nobody)
        self.assertEqual(q.returncode, 6, q.stderr)
        rq = report(q.stdout)
        self.assertEqual((rq["secure"], rq["agent_thread"], rq["socket"], rq["start"]), (0, 1, 1, 0), q.stdout)
        files = tbtest.xplanes(logdir)
        self.assertGreaterEqual(len(files), 1)
        self.assertIn([1, 2, 3], [nums(f) for f in files])
        figure("setuid", "set-uid copy run by root (AT_SECURE) with TBPROF_STEPS/SIGNAL/SOCKET set: agent thread 0, "
               "socket 0, tbprof_start %d, files 0; control (no set-uid bit, run as nobody): thread 1, socket 1, "
               "%d file(s)" % (r["start"], len(files)))

    # ---- the control socket: only the same uid -----------------------------------------

    def test_socket_refuses_root_for_a_nobody_job(self):
        # test_agent_triggers checks nobody -> root's job; here root -> nobody's
        # job, 20 times: every request refused, nothing started
        if not relutil.can_be_nobody():
            self.skipTest("needs root")
        job, lib = relutil.shared_copy(self.tmp, [RELJOB, tbtest.LIB])
        logdir = os.path.join(self.tmp, "open")
        os.mkdir(logdir)
        os.chmod(logdir, 0o1777)
        e = relutil.env(logdir)
        e["LD_PRELOAD"] = relutil.preload_with(lib)
        p = subprocess.Popen([job, "-r", "-n", "300", "-m", "2"], env=e, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=relutil.as_nobody)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        tbtest.read_until(p, "ready")
        uid, _ = relutil.nobody_ids()
        answers = []
        deadline = time.time() + 10
        while len(answers) < 20:
            try:
                answers.append(relutil.ctl_raw(p.pid, b"start duration=0.2\n", uid=uid))
            except (ConnectionRefusedError, FileNotFoundError):
                if time.time() > deadline:
                    raise
                time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):
                answers.append("error: (closed)")
        out, err = p.communicate(timeout=T)
        self.assertEqual(p.returncode, 0, err)
        self.assertTrue(all("permission denied" in a for a in answers), answers)
        self.assertEqual(tbtest.xplanes(logdir), [])
        figure("socket-uid", "root -> a nobody job's socket, 20 x 'start': 20 refused ('permission denied'), "
               "0 captures; (nobody -> root's job: test_agent_triggers)")

    # ---- symlinks, umask, existing files -----------------------------------------------

    def run_steps(self, logdir, extra=None, code=0, **tb):
        e = relutil.env(logdir, steps="1,2", run="r", host="h", **tb)
        e.update(extra or {})
        p = tbtest.run([RELJOB, "-n", "5", "-m", "0", "-x", str(code)], env=e, timeout=T)
        self.assertExitedOk(p, code)
        return p

    def test_symlink_at_final_names_not_followed(self):
        run = os.path.join(self.logdir, "plugins", "profile", "r")
        os.makedirs(run)
        for name in ("h.xplane.pb", "h.trace.json.gz"):
            os.symlink(self.victim, os.path.join(run, name))
        self.run_steps(self.logdir)
        self.victim_intact()
        for name in ("h.xplane.pb", "h.trace.json.gz"):
            self.assertEqual(os.readlink(os.path.join(run, name)), self.victim)
        self.assertEqual(nums(os.path.join(run, "h.1.xplane.pb")), [1, 2])
        self.assertTrue(os.path.isfile(os.path.join(run, "h.1.trace.json.gz")))

    def test_symlink_at_temp_names_not_followed(self):
        # the named-temporary path (file systems without O_TMPFILE, here
        # through a shim that refuses it; with O_TMPFILE no name is used)
        shim = tbtest.prog("libno_tmpfile.so")
        if not os.path.exists(shim):
            self.skipTest("shim not built")
        run = os.path.join(self.logdir, "plugins", "profile", "r")
        os.makedirs(run)
        e = relutil.env(self.logdir, steps="1,2", run="r", host="h")
        e["LD_PRELOAD"] = relutil.with_shim(e["LD_PRELOAD"], shim)
        p = subprocess.Popen([RELJOB, "-r", "-g", "-n", "5", "-m", "0"], env=e, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        tbtest.read_until(p, "ready")
        planted = []
        for d in (run, self.logdir):  # profile files, and the tfevents file in the logdir
            for k in range(8):
                link = os.path.join(d, ".tbprof-%d-%d.tmp" % (p.pid, k))
                os.symlink(self.victim, link)
                planted.append(link)
        out, err = p.communicate("go\n", timeout=T)
        self.assertEqual(p.returncode, 0, err)
        self.victim_intact()
        for link in planted:
            self.assertEqual(os.readlink(link), self.victim)
        self.assertEqual(nums(os.path.join(run, "h.xplane.pb")), [1, 2])
        self.assertEqual(tbtest.tbprof_warnings(err), [])
        figure("symlinks", "symlinks planted at both final names, at 16 predicted temp names and at the run "
               "folder / plugins folder: 0 followed, victim intact, profile under a new name (or one warning)")

    def test_symlink_at_run_dir_not_followed(self):
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.mkdir(elsewhere)
        for part in (("plugins", "profile", "r"), ("plugins",)):
            logdir = os.path.join(self.tmp, "logs_" + part[-1])
            link = os.path.join(logdir, *part)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(elsewhere, link)
            p = self.run_steps(logdir, code=5)
            w = self.assertOneWarning(p.stderr, "not written")
            self.assertIn("Too many levels of symbolic links", w)
            self.assertEqual(os.listdir(elsewhere), [])
            self.assertNoPartialFiles(logdir)

    def test_umask_applies(self):
        for mask, fmode, dmode in ((0o027, 0o640, 0o750), (0o077, 0o600, 0o700)):
            logdir = os.path.join(self.tmp, "u%o" % mask)
            e = relutil.env(logdir, steps="1,2", run="r", host="h")
            p = subprocess.run([RELJOB, "-n", "5", "-m", "0"], env=e, capture_output=True, text=True, timeout=T,
                               preexec_fn=lambda m=mask: os.umask(m))
            self.assertEqual(p.returncode, 0, p.stderr)
            run = os.path.join(logdir, "plugins", "profile", "r")
            files = [os.path.join(run, f) for f in os.listdir(run)] + [
                os.path.join(logdir, f) for f in os.listdir(logdir) if f.startswith("events.")]
            self.assertEqual(len(files), 3, files)
            for f in files:
                self.assertEqual(stat.S_IMODE(os.stat(f).st_mode), fmode, f)
            for d in (run, os.path.dirname(run)):
                self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), dmode, d)

    def test_existing_files_never_replaced(self):
        run = os.path.join(self.logdir, "plugins", "profile", "r")
        os.makedirs(run)
        mine = os.path.join(run, "h.xplane.pb")
        with open(mine, "w") as f:
            f.write("mine\n")
        self.run_steps(self.logdir)
        self.run_steps(self.logdir)
        with open(mine) as f:
            self.assertEqual(f.read(), "mine\n")
        self.assertEqual(sorted(os.listdir(run)), ["h.1.trace.json.gz", "h.1.xplane.pb", "h.2.trace.json.gz",
                                                   "h.2.xplane.pb", "h.xplane.pb"])
        # a plain file where the run folder goes: left alone, one warning
        logdir = os.path.join(self.tmp, "l2")
        os.makedirs(os.path.join(logdir, "plugins", "profile"))
        blocker = os.path.join(logdir, "plugins", "profile", "r")
        with open(blocker, "w") as f:
            f.write("mine\n")
        p = self.run_steps(logdir, code=2)
        self.assertOneWarning(p.stderr, "not written")
        with open(blocker) as f:
            self.assertEqual(f.read(), "mine\n")

    # ---- env values stay literal -------------------------------------------------------------

    def test_env_values_are_literal(self):
        host = "%n%s%s%x%p"
        run = "$(touch PWNED);touch PWNED2;`touch PWNED3`"
        logdir = "logs $(touch PWNED4); rm -rf x"
        e = relutil.env(logdir, steps="1,2", run=run, host=host, log="info")
        p = subprocess.run([RELJOB, "-n", "5", "-m", "0"], env=e, capture_output=True, text=True, timeout=T,
                           cwd=self.tmp)
        self.assertEqual(p.returncode, 0, p.stderr)
        for f in ("PWNED", "PWNED2", "PWNED3", "PWNED4"):
            self.assertFalse(os.path.exists(os.path.join(self.tmp, f)), f)
        path = os.path.join(self.tmp, logdir, "plugins", "profile", run, host + ".xplane.pb")
        self.assertEqual(nums(path), [1, 2])
        # (a relative TBPROF_LOGDIR is made absolute at start-up)
        self.assertIn("profile written: " + os.path.realpath(path), p.stderr)
        # the readers take the names literally too
        ls = tbtest.run([tbtest.CLI, "ls", os.path.join(self.tmp, logdir)])
        self.assertEqual(ls.returncode, 0, ls.stderr)
        self.assertIn(host + ".xplane.pb", ls.stdout)
        s = tbtest.run([tbtest.CLI, "summary", os.path.join(self.tmp, logdir)])
        self.assertEqual(s.returncode, 0, s.stderr)
        for f in ("PWNED", "PWNED2", "PWNED3", "PWNED4"):
            self.assertFalse(os.path.exists(os.path.join(self.tmp, f)), f)
        figure("literal-env", "TBPROF_HOST='%s', TBPROF_RUN and TBPROF_LOGDIR with $(...), `...`, ';' and "
               "'rm -rf': files under the literal names, nothing executed, the info line prints them verbatim"
               % host)

    # ---- TBPROF_MAX_MB ------------------------------------------------------------------------

    def test_max_mb_caps_output_and_counts_drops(self):
        window = 60001
        e = relutil.env(self.logdir, steps="0,60000", max_mb="1", trace_json="on")
        p = tbtest.run([RELJOB, "-n", "60010", "-m", "0"], env=e, timeout=T)
        self.assertExitedOk(p)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        written = len(prof.steps())
        dropped = prof.host.stats["tbprof_dropped_events"]
        self.assertGreater(dropped, 0)
        self.assertEqual(written + dropped, window)
        size = os.path.getsize(files[0])
        self.assertLessEqual(size, 1 << 20)
        gz = files[0].replace(".xplane.pb", ".trace.json.gz")
        self.assertLessEqual(os.path.getsize(gz), 1 << 20)
        # the same window uncapped: every step
        logdir2 = os.path.join(self.tmp, "uncapped")
        p = tbtest.run([RELJOB, "-n", "60010", "-m", "0"], env=relutil.env(logdir2, steps="0,60000", max_mb="0"),
                       timeout=T)
        self.assertExitedOk(p)
        f2 = tbtest.xplanes(logdir2)[0]
        self.assertEqual(len(tbtest.load(f2).steps()), window)
        figure("max-mb", "60,001-step window, TBPROF_MAX_MB=1: %d written + %d dropped (tbprof_dropped_events) = "
               "%d, xplane.pb %d kB <= 1 MB; uncapped (0): %d written, %d kB" % (
                   written, dropped, written + dropped, size // 1024, window, os.path.getsize(f2) // 1024))


if __name__ == "__main__":
    tbtest.main()
