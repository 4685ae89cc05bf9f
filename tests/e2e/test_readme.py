"""test_readme.py - the README says what the code does: its env table is the
one `tbprof help env --markdown` generates from the config table, and the
quick-start commands it names exist and are executable, and the first of them
(tools/demo.sh) does what the README says it does."""
import os
import re
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402

README = os.path.join(tbtest.SRC, "README.md")


def section(text, heading):
    m = re.search(r"^## %s\n(.*?)(?=^## )" % re.escape(heading), text, re.S | re.M)
    return m.group(1) if m else ""


class Readme(tbtest.TestCase):
    def setUp(self):
        super().setUp()
        with open(README, encoding="utf-8") as f:
            self.text = f.read()

    def test_env_table_matches_code(self):
        self.need_cli()
        r = tbtest.run([tbtest.CLI, "help", "env", "--markdown"])
        self.assertEqual(r.returncode, 0, r.stderr)
        code = [l for l in r.stdout.splitlines() if l.startswith("|")]
        doc = [l for l in section(self.text, "Configuration").splitlines() if l.startswith("|")]
        self.assertGreater(len(code), 10)
        self.assertEqual(doc, code, "README's env table differs from `tbprof help env --markdown`: "
                         "paste the command's output into the Configuration section")

    def test_env_help_says_what_a_bad_value_does(self):
        """`tbprof help env` (the terminal's form of the table) says, for each
        variable, what a bad value does, as the README's last column does: it
        said "that feature is off" of all of them, where most fall back to
        their default (TBPROF_BUFFER_MB=abc: "using 64")."""
        self.need_cli()
        md = tbtest.run([tbtest.CLI, "help", "env", "--markdown"])
        plain = tbtest.run([tbtest.CLI, "help", "env"])
        self.assertEqual((md.returncode, plain.returncode), (0, 0), md.stderr + plain.stderr)
        rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", l)[1:-1]]
                for l in md.stdout.splitlines()[2:] if l.startswith("| `")]
        self.assertGreater(len(rows), 10)
        blocks = {b.split()[0]: b for b in plain.stdout.split("\n\n")[1:] if b.strip()}
        for name, _default, _form, _meaning, bad in rows:
            name = name.strip("`")
            self.assertIn(name, blocks)
            self.assertIn("bad value: " + bad + "\n", blocks[name] + "\n", name)
        self.assertNotIn("that feature is off, the job runs on", plain.stdout)

    def test_quick_start_commands_exist(self):
        qs = section(self.text, "Quick start")
        cmds = re.findall(r"^    (\S+\.sh)\b", qs, re.M)
        self.assertEqual(len(cmds), 2, qs)
        for c in cmds:
            path = os.path.join(tbtest.SRC, c)
            self.assertTrue(os.access(path, os.X_OK), "%s is not executable" % c)

    def test_demo_shows_what_the_readme_says(self):
        """tools/demo.sh, past its setup and build (this build, already
        made): two runs under the logdir, each with steps 3, 4 and 5, and
        what `tbprof ls`, `dump` and `summary` print of them."""
        self.need_cli()
        if tbtest.SANITIZE:
            self.skipTest("the demo runs the default build (its programs under a sanitizer: other suites)")
        env = dict(os.environ, TBPROF_DEMO_BUILD=tbtest.BUILD, TBPROF_DEMO_BUILT="1")
        for k in [k for k in env if k.startswith("TBPROF_") and not k.startswith("TBPROF_DEMO_")]:
            del env[k]  # (a test runner's TBPROF_* would change the demo's captures)
        p = subprocess.Popen(["bash", os.path.join(tbtest.SRC, "tools", "demo.sh"), self.logdir], cwd=self.tmp,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # (the script's children too)
            out, err = p.communicate()
            self.fail("tools/demo.sh still running after 240 s:\n" + out[-3000:] + err[-3000:])
        self.assertEqual(p.returncode, 0, out[-3000:] + err[-3000:])
        runs = sorted(os.listdir(os.path.join(self.logdir, "plugins", "profile")))
        self.assertEqual(runs, ["demo_c", "demo_python"] if shutil.which("python3") else ["demo_c"])
        files = tbtest.xplanes(self.logdir)
        self.assertEqual([os.path.basename(os.path.dirname(f)) for f in files], runs)
        for f in files:
            prof = tbtest.load(f)
            self.assertEqual([n for n, _e, _l in prof.steps()], [3, 4, 5], f)
            # (CPython's perf map of the Python run goes with its process)
            pid = re.search(r"\.pid(\d+)\.xplane\.pb$", f)
            if pid:
                self.assertFalse(os.path.exists("/tmp/perf-%s.map" % pid.group(1)))
        self.assertEqual(tbtest.leftovers(self.logdir), [])
        # what the tools printed: the sections the script heads
        heads = r"^== (?:tbprof \w+|C workload|Python workload)"  # (summary prints its own "== host" lines)
        parts = dict(re.findall(r"^== (\w+ \w+)[^\n]*\n(.*?)(?=%s|\Z)" % heads, out, re.S | re.M))
        for run in runs:
            self.assertRegex(parts.get("tbprof ls", ""), r"(?m)^%s\b" % run)
        self.assertEqual(len(re.findall(r"\.xplane\.pb +\d+ bytes +\d+ events", parts.get("tbprof ls", ""))),
                         len(runs))
        dump = parts.get("tbprof dump", "")
        self.assertRegex(dump, r"plane \d+ /host:CPU: \d+ lines")
        self.assertRegex(dump, r"(?m)^ +3 +[\d.]+ ms +train$")
        self.assertIn("Steps: 3 captured", parts.get("tbprof summary", ""))
        self.assertIn("tensorboard --logdir " + self.logdir, out)

if __name__ == "__main__":
    tbtest.main()
