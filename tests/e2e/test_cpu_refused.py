"""Where perf_event_open is refused (a seccomp policy, perf_event_paranoid=3,
gVisor), a capture goes on without CPU samples: the job exits normally, one
tbprof warning names the cause, the profile is written and records the
reason. tests/e2e/progs/cpu_noperf.c makes perf_event_open fail with EACCES
for the program it runs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402


class CpuRefused(tbtest.TestCase):
    def test_refused_perf_event_open(self):
        p = tbtest.run([tbtest.prog("cpu_noperf"), tbtest.prog("cpu_split"), "-t", "2", "-m", "300"],
                       env=tbtest.env(self.logdir, cpu="on", cpu_hz=1000), timeout=120)
        if p.returncode == 3:
            self.skipTest("seccomp filters unavailable here: " + p.stderr.strip())
        self.assertExitedOk(p)
        self.assertIn("burns", p.stdout)  # the job did its work
        w = self.assertOneWarning(p.stderr, "perf_event_open")
        self.assertIn("EACCES", w)
        files = tbtest.wait_for_xplanes(self.logdir, 1)
        self.assertEqual(len(files), 1)
        prof = tbtest.load(files[0])
        st = prof.host.stats
        reason = st.get("tbprof_cpu_off_reason", "")
        self.assertIn("perf_event_open refused (EACCES", reason, st)
        self.assertNotIn("tbprof_cpu_samples", st)
        self.assertEqual([e for e in prof.host.events() if "samples" in e.stats], [])


if __name__ == "__main__":
    tbtest.main()
