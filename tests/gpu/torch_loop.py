"""torch_loop.py - a small PyTorch training loop for the GPU checks.

  python3 torch_loop.py --steps N [--torch-profile A,B --out DIR] [--times FILE] [--nvtx] [--faults FILE]
                        [--ready] [--stop-file PATH] [--workers N [--mp METHOD]] [--cpu]

No tbprof code: under `tbprof run --steps A,B` (or LD_PRELOAD with
TBPROF_STEPS and TBPROF_PYTORCH_HOOK=on) the optimizer step hook counts steps.
--torch-profile A,B records steps A..B with torch.profiler instead (the
reference) and exports its Chrome trace into DIR. --times writes each step's
wall time (seconds, one per line) for the overhead table. --nvtx wraps each
step's forward and backward in torch.cuda.nvtx ranges "forward"/"backward"
(NVTX is a no-op without a tool: the kernels are the same either way).
--faults writes, after each step, the minor page faults the job's threads
(all but tbprof's agent thread, which faults CUPTI buffers in on purpose)
have taken so far. --ready prints "ready <pid>" after the first step;
--stop-file ends the loop (before --steps) once PATH exists, then prints
"done <steps>". --workers N feeds each step from a DataLoader with N
worker processes (SlowData: 0.2 ms of a worker's CPU per sample) (multiprocessing start method METHOD: fork, forkserver,
spawn; pinned memory, copied to the GPU each step), over 8 batches, so new
workers start every 8 steps, inside a capture too; prints "workers <pid>..."
at each epoch's start. --cpu runs it all on the CPU (a dry run of the
script where there is no GPU).
"""
import argparse
import os
import time

import torch


def job_minor_faults():
    """Minor faults of this process's threads, tbprof's agent thread excluded."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/stat" % tid) as f:
                st = f.read()
        except OSError:
            continue  # the thread exited
        comm, rest = st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()
        if not comm.startswith("tbprof"):
            total += int(rest[7])  # minflt: field 10, the 8th after the comm
    return total


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


class SlowData(torch.utils.data.Dataset):
    """Samples that cost a worker 0.2 ms of CPU each (a decode, say), so a
    batch takes a worker 50 ms and an epoch outlasts the 50 ms a worker
    started inside a capture waits before it joins. The time in
    SlowData.__getitem__ is what the workers' profiles should show."""

    def __init__(self, n):
        self.x, self.y = torch.randn(n, 1024), torch.randint(0, 10, (n,))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        until = time.perf_counter() + 0.0002
        while time.perf_counter() < until:
            pass
        return self.x[i], self.y[i]


def batches(a, dev, x, y):
    """The steps' (x, y): the same tensors each step, or a DataLoader's,
    epoch after epoch (its workers started anew at each epoch's start)."""
    if not a.workers:
        while True:
            yield x, y
    ds = SlowData(8 * 256)
    pin = dev.type == "cuda"
    while True:
        dl = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=a.workers, multiprocessing_context=a.mp,
                                         pin_memory=pin)
        it = iter(dl)
        print("workers", *[w.pid for w in getattr(it, "_workers", [])], flush=True)
        for bx, by in it:
            yield bx.to(dev, non_blocking=pin), by.to(dev, non_blocking=pin)


def train_step(model, opt, x, y, nvtx):
    """One step, a function of its own as in most training scripts: tbprof
    turns CPython's perf trampoline on at a capture's start, so frames
    entered after it (this one, each step) are named in the CPU samples and
    in `tbprof convert --gpu` (row 4c), the loop in main() is not."""
    opt.zero_grad(set_to_none=True)
    if nvtx:
        torch.cuda.nvtx.range_push("forward")
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if nvtx:
        torch.cuda.nvtx.range_pop()
        torch.cuda.nvtx.range_push("backward")
    loss.backward()
    if nvtx:
        torch.cuda.nvtx.range_pop()
    opt.step()
    sync(x.device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--torch-profile", default="")
    ap.add_argument("--out", default=".")
    ap.add_argument("--times", default="")
    ap.add_argument("--nvtx", action="store_true")
    ap.add_argument("--faults", default="")
    ap.add_argument("--ready", action="store_true")
    ap.add_argument("--stop-file", default="")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--mp", default=None)
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cpu" if a.cpu else "cuda")
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
        torch.nn.Linear(2048, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(256, 1024, device=dev)
    y = torch.randint(0, 10, (256,), device=dev)
    prof = None
    if a.torch_profile:
        first, last = (int(v) for v in a.torch_profile.split(","))
        sched = torch.profiler.schedule(wait=first, warmup=0, active=last - first + 1, repeat=1)
        prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
            schedule=sched, on_trace_ready=lambda p: p.export_chrome_trace(a.out + "/torch_trace.json"))
        prof.start()
    times, faults = [], []
    data = batches(a, dev, x, y)
    for i in range(a.steps):
        t0 = time.perf_counter()
        bx, by = next(data)
        train_step(model, opt, bx, by, a.nvtx)
        times.append(time.perf_counter() - t0)
        if a.faults:
            faults.append(job_minor_faults())
        if prof:
            prof.step()
        if a.ready and i == 0:
            print("ready", os.getpid(), flush=True)
        if a.stop_file and os.path.exists(a.stop_file):
            break
    if prof:
        prof.stop()
    if a.times:
        with open(a.times, "w") as f:
            f.write("\n".join("%.9f" % t for t in times) + "\n")
    if a.faults:
        with open(a.faults, "w") as f:
            f.write("\n".join(str(v) for v in faults) + "\n")
    print("done", a.steps)


if __name__ == "__main__":
    main()
