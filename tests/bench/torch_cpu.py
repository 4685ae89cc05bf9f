"""A small PyTorch training loop on the CPU for SECONDS (default 2.5): a
real job's stacks (libtorch_cpu's 120 MB of code, oneDNN's JIT kernels,
autograd's threads) for bench_agent_cpu.sh; prints its steps/s. Needs torch (Debian:
python3-torch)."""
import sys
import time

import torch
import torch.nn as nn

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.5
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    n += 1
print("steps/s %.2f" % (n / seconds))
