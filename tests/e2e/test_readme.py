"""test_readme.py - the README says what the code does: its env table is the
one `tbprof help env --markdown` generates from the config table, and the
quick-start commands it names exist and are executable."""
import os
import re
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


if __name__ == "__main__":
    tbtest.main()
