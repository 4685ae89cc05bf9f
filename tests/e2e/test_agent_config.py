"""Every TBPROF_* error path on a real process: a bad value gives exactly one
warning naming the variable (and the accepted form), the feature is off, and
the job runs to its normal exit status. Also `tbprof help env`."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relutil  # noqa: E402
import tbtest  # noqa: E402

STEPS = tbtest.prog("steps")


def nums(path):
    return [n for n, _, _ in tbtest.load(path).steps()]

BAD = {
    "TBPROF_LOGDIR": "",
    "TBPROF_STEPS": "ten,twenty",
    "TBPROF_DURATION": "soon",
    "TBPROF_DELAY": "-1",
    "TBPROF_SIGNAL": "KILL",
    "TBPROF_GPU": "maybe",
    "TBPROF_CPU": "sometimes",
    "TBPROF_CPU_HZ": "0",
    "TBPROF_CPU_MODE": "lbr",
    "TBPROF_BUFFER_MB": "lots",
    "TBPROF_MAX_MB": "-1",
    "TBPROF_LOG": "loud",
    "TBPROF_RUN": "a/b",
    "TBPROF_HOST": "../x",
    "TBPROF_TRACE_JSON": "perhaps",
    "TBPROF_SOCKET": "2",
    "TBPROF_PYTORCH_HOOK": "torch",
    "TBPROF_CUPTI_PATH": "x" * 600,
}


class Config(tbtest.TestCase):
    def test_every_bad_value_one_warning_job_unharmed(self):
        for var, val in BAD.items():
            with self.subTest(var=var):
                e = tbtest.env(self.logdir)
                e[var] = val
                p = tbtest.run([STEPS, "-n", "5", "-m", "1", "-x", "0"], env=e)
                self.assertExitedOk(p)
                self.assertIn("done 5", p.stdout)
                line = self.assertOneWarning(p.stderr, var)
                self.assertIn("expected", line)
                self.assertEqual(len(tbtest.tbprof_warnings(p.stderr)), 1, p.stderr)

    def test_help_env_covers_every_variable(self):
        self.need_cli()
        text = tbtest.run([tbtest.CLI, "help", "env"]).stdout
        md = tbtest.run([tbtest.CLI, "help", "env", "--markdown"]).stdout
        for var in BAD:
            self.assertIn(var, text)
            self.assertIn("| `%s` |" % var, md)

    def test_bad_steps_means_no_capture(self):
        e = tbtest.env(self.logdir, steps="20,10")
        p = tbtest.run([STEPS, "-n", "30", "-m", "1"], env=e)
        self.assertExitedOk(p)
        self.assertOneWarning(p.stderr, "TBPROF_STEPS")
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_duration_under_1ms_is_refused(self):
        # 1e-10 s would become 0 ns, which means "until stopped": a capture
        # of the whole job. Refused: the config's one warning naming the
        # variable and no capture; over the socket, an error answer
        p = tbtest.run([STEPS, "-n", "20", "-m", "5"], env=tbtest.env(self.logdir, duration="1e-10"))
        self.assertExitedOk(p)
        self.assertIn("at least 1 ms", self.assertOneWarning(p.stderr, "TBPROF_DURATION"))
        self.assertEqual(tbtest.xplanes(self.logdir), [])
        p = tbtest.spawn([STEPS, "-r", "-n", "100000", "-m", "2"], env=tbtest.env(self.logdir))
        self.addCleanup(lambda: p.poll() is None and p.kill())
        tbtest.read_until(p, "ready")
        relutil.wait_socket(p.pid)
        answers = [relutil.ctl(p.pid, "start duration=%s" % d) for d in ("1e-10", "0.0009", "0.001")]
        p.kill()
        p.communicate(timeout=30)
        for a in answers[:2]:
            self.assertEqual(a, "error: duration=S needs S in [0.001, 3600] seconds (at least 1 ms)", answers)
        self.assertEqual(answers[2], "capture started: duration 0.001 s", answers)

    def test_relative_logdir_is_where_the_job_started(self):
        # TBPROF_LOGDIR=logs (the default is relative too) is taken against
        # the working directory at start-up: a job that chdir()s afterwards
        # still writes there, not under its new directory
        start, elsewhere = os.path.join(self.tmp, "start"), os.path.join(self.tmp, "elsewhere")
        os.makedirs(start)
        os.makedirs(elsewhere)
        e = tbtest.env("logs", steps="2,4")
        p = subprocess.run([STEPS, "-D", elsewhere, "-n", "10", "-m", "1"], env=e, cwd=start, capture_output=True,
                           text=True, timeout=60)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.xplanes(os.path.join(elsewhere, "logs")), [])
        files = tbtest.xplanes(os.path.join(start, "logs"))
        self.assertEqual(len(files), 1, p.stderr)
        self.assertEqual(nums(files[0]), [2, 3, 4])

    def test_run_and_host_names_too_long_for_a_file_name(self):
        # TBPROF_RUN / TBPROF_HOST become a folder and a file name (with
        # suffixes), so at most 200 bytes: a longer one is refused when the
        # config is read, with its one warning, and the derived name is used
        # (before, every profile write failed with a bare "Invalid argument")
        for var in ("TBPROF_RUN", "TBPROF_HOST"):
            with self.subTest(var=var):
                logdir = os.path.join(self.tmp, var)
                e = tbtest.env(logdir, steps="2,4")
                e[var] = "n" * 201
                p = tbtest.run([STEPS, "-n", "8", "-m", "1"], env=e)
                self.assertExitedOk(p)
                self.assertIn("at most 200 bytes", self.assertOneWarning(p.stderr, var))
                self.assertEqual(len(tbtest.tbprof_warnings(p.stderr)), 1, p.stderr)
                files = tbtest.xplanes(logdir)
                self.assertEqual(len(files), 1, p.stderr)
                self.assertNotIn("n" * 201, files[0])
                self.assertEqual(nums(files[0]), [2, 3, 4])
        e = tbtest.env(self.logdir, steps="2,4", run="r" * 200, host="h" * 200)
        p = tbtest.run([STEPS, "-n", "8", "-m", "1"], env=e)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])
        self.assertEqual([os.path.relpath(f, self.logdir) for f in tbtest.xplanes(self.logdir)],
                         [os.path.join("plugins", "profile", "r" * 200, "h" * 200 + ".xplane.pb")])

    def test_delay_0_alone_captures_from_start_up(self):
        # TBPROF_DELAY=0 (seconds >= 0, default duration 10 s) alone: a
        # time window from start-up, cut short by the job's exit (0.3 s);
        # it used to do nothing at all, silently
        p = tbtest.run([STEPS, "-n", "30", "-m", "10"], env=tbtest.env(self.logdir, delay="0"))
        self.assertExitedOk(p)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [])
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, p.stderr)
        self.assertEqual(tbtest.load(files[0]).host.stats.get("tbprof_trigger"),
                         "TBPROF_DURATION 10s after TBPROF_DELAY 0s")

    def test_bad_gpu_value_turns_gpu_off_and_says_so(self):
        e = tbtest.env(self.logdir, steps="1,2", gpu="maybe")
        p = tbtest.run([STEPS, "-n", "5", "-m", "1"], env=e)
        self.assertExitedOk(p)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1)
        self.assertIn("TBPROF_GPU=off", tbtest.load(files[0]).host.stats["tbprof_gpu_off_reason"])

    def test_job_with_a_decimal_comma_locale(self):
        # a job that calls setlocale(LC_ALL, "de_DE.UTF-8"): what the agent
        # writes as text keeps its '.' (it wrote "0,3s" in the trigger, and
        # would in kernel_details' occ_pct, which xprof reads as a number)
        loc = os.path.join(self.tmp, "locales")
        os.makedirs(loc)
        mk = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", os.path.join(loc, "de_DE.UTF-8")],
                            capture_output=True, text=True) if shutil.which("localedef") else None
        if not mk or not os.path.isdir(os.path.join(loc, "de_DE.UTF-8")):
            self.skipTest("cannot build a de_DE locale here (localedef, /usr/share/i18n)")
        e = tbtest.env(self.logdir, python=True, delay="0.2", duration="0.3")
        e["LOCPATH"] = loc
        code = ("import ctypes, time\n"
                "libc = ctypes.CDLL(None)\n"
                "libc.setlocale.restype = ctypes.c_char_p\n"
                "print(libc.setlocale(6, b'de_DE.UTF-8'), flush=True)\n"  # LC_ALL
                "buf = ctypes.create_string_buffer(32)\n"
                "libc.snprintf(buf, 32, b'%g', ctypes.c_double(0.5))\n"
                "print(buf.value.decode(), flush=True)\n"
                "time.sleep(1.2)\n")
        p = tbtest.run([tbtest.PYTHON, "-c", code], env=e)
        self.assertExitedOk(p)
        self.assertEqual(p.stdout.split(), ["b'de_DE.UTF-8'", "0,5"], "the job's own numbers have a comma")
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1)
        self.assertEqual(tbtest.load(files[0]).host.stats["tbprof_trigger"],
                         "TBPROF_DURATION 0.3s after TBPROF_DELAY 0.2s")

    def test_trace_json_off_and_host_run_names(self):
        e = tbtest.env(self.logdir, steps="1,2", trace_json="off", host="myhost", run="myrun")
        p = tbtest.run([STEPS, "-n", "5", "-m", "1"], env=e)
        self.assertExitedOk(p)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual([os.path.relpath(f, self.logdir) for f in files],
                         [os.path.join("plugins", "profile", "myrun", "myhost.xplane.pb")])
        self.assertFalse(os.path.exists(files[0].replace(".xplane.pb", ".trace.json.gz")))

    def test_rank_and_job_id_name_the_files(self):
        e = tbtest.env(self.logdir, steps="1,2")
        e["RANK"] = "3"
        e["SLURM_JOB_ID"] = "4242"
        p = tbtest.run([STEPS, "-n", "5", "-m", "1"], env=e)
        self.assertExitedOk(p)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1)
        self.assertEqual(os.path.basename(os.path.dirname(files[0])), "4242_steps_1-2")
        self.assertTrue(os.path.basename(files[0]).endswith(".rank3.xplane.pb"), files[0])
        # and the rank is inside: tbprof_rank, Kineto's distributedInfo (no
        # WORLD_SIZE given: none said), the summary's header
        self.assertEqual(tbtest.load(files[0]).host.stats.get("tbprof_rank"), 3)
        with gzip.open(files[0].replace(".xplane.pb", ".trace.json.gz"), "rt") as f:
            doc = json.load(f)
        self.assertEqual(doc["distributedInfo"], {"rank": 3})
        self.assertNotIn("deviceProperties", doc)
        p = tbtest.run([tbtest.CLI, "summary", "--json", self.logdir])
        self.assertEqual((json.loads(p.stdout)["hosts"][0]["rank"], json.loads(p.stdout)["hosts"][0]["world_size"]),
                         (3, None))

    def test_ranks_of_one_launcher_share_a_run_folder(self):
        # no job id (torchrun's default "none"): ranks started by one launcher
        # (here this test) reach the window 1.2 s apart, in different
        # seconds, and still write into one folder named by the launcher
        # (before: one folder per second); ranks started from a shell are
        # named by the time as before
        procs = []
        for rank in (0, 1):
            e = tbtest.env(self.logdir, steps="1,2")
            e.update(RANK=str(rank), WORLD_SIZE="2", TORCHELASTIC_RUN_ID="none")
            procs.append(subprocess.Popen([STEPS, "-n", "5", "-m", "1"], env=e, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
            time.sleep(1.2)
        for p in procs:
            _, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 2, files)
        folders = {os.path.basename(os.path.dirname(f)) for f in files}
        self.assertEqual(len(folders), 1, folders)
        self.assertRegex(folders.pop(), r"^\d{4}(_\d\d){5}_pid%d_steps_1-2$" % os.getpid())
        shell = os.path.join(self.tmp, "shell")
        e = tbtest.env(shell, steps="1,2")
        e["RANK"] = "0"
        p = tbtest.run(["sh", "-c", '"$0" -n 5 -m 1; true', STEPS], env=e)
        self.assertExitedOk(p)
        files = tbtest.xplanes(shell)
        self.assertEqual(len(files), 1)
        self.assertRegex(os.path.basename(os.path.dirname(files[0])), r"^\d{4}(_\d\d){5}$")

    def test_rank_that_is_not_a_number_names_the_file_only(self):
        e = tbtest.env(self.logdir, steps="1,2")
        e.update(RANK="worker-a", WORLD_SIZE="4")
        p = tbtest.run([STEPS, "-n", "5", "-m", "1"], env=e)
        self.assertExitedOk(p)
        files = tbtest.xplanes(self.logdir)
        self.assertTrue(os.path.basename(files[0]).endswith(".rankworker-a.xplane.pb"), files[0])
        self.assertNotIn("tbprof_rank", tbtest.load(files[0]).host.stats)
        with gzip.open(files[0].replace(".xplane.pb", ".trace.json.gz"), "rt") as f:
            self.assertNotIn("distributedInfo", json.load(f))


if __name__ == "__main__":
    tbtest.main()
