"""A real PyTorch on the CPU, where the system's python3 has one (Debian's
python3-torch: torch 1.13 on Python 3.11); skipped elsewhere, CI included
(that package brings some 240 others). What a user of a CPU training job
checks: the optimizer's steps captured with no code change (torch 1.x has no
global optimizer hook), with an LR scheduler and DataLoader workers started
in the window (forked, and from a forkserver); and two ranks of a gloo DDP job, each with its steps, in one
run folder named after the job."""

import os
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402
import cpusamples  # noqa: E402

TRAIN = textwrap.dedent("""\
    import sys, torch, torch.nn as nn
    from torch.utils.data import DataLoader, TensorDataset
    if __name__ == "__main__":  # (a forkserver imports the main module)
        torch.manual_seed(0)
        workers = int(sys.argv[1])
        ctx = sys.argv[2] if len(sys.argv) > 2 else None  # multiprocessing's start method
        ds = TensorDataset(torch.randn(512, 3, 16, 16), torch.randint(0, 10, (512,)))
        # new workers each epoch: started in the window
        dl = DataLoader(ds, batch_size=32, num_workers=workers, multiprocessing_context=ctx)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(8, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, 4)
        steps = 0
        while steps < 12:
            for x, y in dl:
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                sched.step()
                steps += 1
                if steps == 12:
                    break
        print("trained", steps)
    """)

DDP = textwrap.dedent("""\
    import torch, torch.nn as nn, torch.distributed as dist
    dist.init_process_group("gloo")
    model = nn.parallel.DistributedDataParallel(nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 64)
    for i in range(10):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    print("rank", dist.get_rank(), "done", flush=True)
    dist.destroy_process_group()
    """)


def has_torch():
    try:
        return subprocess.run([tbtest.PYTHON, "-c", "import torch"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class RealTorch(tbtest.TestCase):
    def setUp(self):
        super().setUp()
        if tbtest.SANITIZE == "thread":  # (its data loader's fork hangs a child under TSan too)
            self.skipTest("ThreadSanitizer reports races in torch's own uninstrumented threads")
        if not has_torch():
            self.skipTest("%s has no torch (Debian: python3-torch)" % tbtest.PYTHON)
        self.need_cli()

    def script(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_optimizer_steps_with_a_scheduler_and_forked_workers(self):
        self.check_workers("fork")

    def test_forkserver_workers(self):
        # multiprocessing's default start method on Linux from Python 3.14:
        # the workers are forked by a forkserver, not by the trainer
        self.check_workers("forkserver")

    def check_workers(self, ctx):
        cpu = cpusamples.perf_refused_reason() is None
        s = self.script("train.py", TRAIN)
        p = tbtest.run([tbtest.CLI, "run", "--steps", "3,10", "--logdir", self.logdir, "--no-gpu"] +
                       ([] if cpu else ["--no-cpu"]) + ["--", tbtest.PYTHON, s, "2", ctx],
                       env=tbtest.env(python=True, cpu=None, gpu=None), timeout=300)
        self.assertExitedOk(p)
        self.assertIn("trained 12", p.stdout)
        self.assertEqual(tbtest.tbprof_warnings(p.stderr), [], p.stderr)
        files = tbtest.xplanes(self.logdir)
        profs = {os.path.basename(f): tbtest.load(f) for f in files}
        mains = [n for n, prof in profs.items() if prof.steps()]
        self.assertEqual(len(mains), 1, p.stderr)
        prof = profs[mains[0]]
        self.assertEqual([n for n, _, _ in prof.steps()], list(range(3, 11)))
        self.assertEqual(prof.host.stats["tbprof_step_source"], "the PyTorch optimizer hook")
        # its two DataLoader workers (forked at the epoch's start, before
        # the window) captured with it, each into a file of its own beside
        # it, with the worker's Python frames (the batch's collate)
        ppid = prof.host.stats["pid"]
        host = mains[0].split(".pid")[0]
        workers = {n: w for n, w in profs.items() if n != mains[0]}
        self.assertEqual(len(workers), 2, sorted(profs))
        for n, w in workers.items():
            self.assertEqual(n, "%s.pid%d.xplane.pb" % (host, w.host.stats["pid"]))
            self.assertEqual(w.host.stats["tbprof_trigger"], "the parent process' capture (pid %d)" % ppid)
        if cpu:
            c = cpusamples.counts([l for w in workers.values() for l in cpusamples.sampled_lines(w)])
            data = sorted(f[4:].split(":")[0] for f in c if f.startswith("py::") and "/torch/utils/data/" in f)
            self.assertTrue(data, sorted(c))
            print("%s workers: %d samples; torch.utils.data functions: %s" %
                  (ctx, sum(w.host.stats["tbprof_cpu_samples"] for w in workers.values()), ", ".join(data)))

    def test_two_ranks_of_a_gloo_job(self):
        # torchrun's environment, set by hand (Debian's torch 1.13 torchrun
        # fails on Python 3.11 before it starts a worker)
        s = self.script("ddp.py", DDP)
        procs = []
        for rank in (0, 1):
            e = tbtest.env(self.logdir, python=True, steps="3,5")
            e.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(20000 + os.getpid() % 20000), TORCHELASTIC_RUN_ID="realtorch")
            procs.append(subprocess.Popen([tbtest.PYTHON, s], env=e, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            self.assertEqual(p.returncode, 0, err)
            self.assertIn("done", out)
        run = os.path.join(self.logdir, "plugins", "profile", "realtorch_steps_3-5")
        self.assertTrue(os.path.isdir(run), os.listdir(os.path.join(self.logdir, "plugins", "profile")))
        names = sorted(f for f in os.listdir(run) if f.endswith(".xplane.pb"))
        self.assertEqual([n.split(".", 1)[1] for n in names], ["rank0.xplane.pb", "rank1.xplane.pb"])
        for n in names:
            prof = tbtest.load(os.path.join(run, n))
            self.assertEqual([k for k, _, _ in prof.steps()], [3, 4, 5], n)


if __name__ == "__main__":
    tbtest.main()
