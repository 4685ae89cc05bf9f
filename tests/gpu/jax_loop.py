"""jax_loop.py - a small JAX training loop for the GPU checks.

  python3 jax_loop.py [--stop-file FILE] [--seconds S] [--steps N] [--annotate]
                      [--sync-every K] [--size N]

No tbprof code. Compiles a jitted training step, prints "ready <pid>
<backend>" and then runs steps until FILE exists, S seconds pass (default
60) or N steps ran, blocking on the result every K steps (default 10) as a
training loop that logs its loss does; prints "done <steps>".
--jax-profile A,B runs jax.profiler's own trace over steps A..B into --out
(3g: what tbprof does to it).
--annotate wraps each step in jax.profiler.StepTraceAnnotation("train",
step_num=<step>), as JAX loops mark their steps for xprof (under `tbprof
run` those are tbprof's steps). run.sh captures it with `tbprof trigger PID
--duration S` (3c) and with `tbprof run --steps A,B` (3d): a job with many
threads that launches through the driver API (cuLaunchKernel) and, where
XLA turns them on, CUDA graphs.
"""
import argparse
import contextlib
import os
import time

import jax
import jax.numpy as jnp


def loss_fn(w, x, y):
    h = jnp.tanh(x @ w["w1"])
    out = h @ w["w2"]
    return jnp.mean((out - y) ** 2)


@jax.jit
def train_step(w, x, y):
    loss, g = jax.value_and_grad(loss_fn)(w, x, y)
    return jax.tree_util.tree_map(lambda p, d: p - 0.01 * d, w, g), loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stop-file", default="")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--annotate", action="store_true")
    ap.add_argument("--sync-every", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--jax-profile", default="")
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    jp = [int(v) for v in a.jax_profile.split(",")] if a.jax_profile else [-1, -1]
    # about 0.4 TFLOP a step, a millisecond or two on an H100/H200: a 2 s
    # window holds a few thousand steps, which the default TBPROF_BUFFER_MB
    # holds whole (a loop of tiny steps would launch far more than that)
    n = a.size
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    w = {"w1": jax.random.normal(k1, (n, n)) * 0.01, "w2": jax.random.normal(k2, (n, n // 4)) * 0.01}
    x = jax.random.normal(k3, (n, n))
    y = jnp.zeros((n, n // 4))
    w, loss = train_step(w, x, y)  # compile
    loss.block_until_ready()
    print("ready %d %s" % (os.getpid(), jax.default_backend()), flush=True)
    steps, end = 0, time.time() + a.seconds
    while not (a.stop_file and os.path.exists(a.stop_file)) and time.time() < end and \
            (not a.steps or steps < a.steps):
        if steps == jp[0]:
            jax.profiler.start_trace(a.out)
        ann = jax.profiler.StepTraceAnnotation("train", step_num=steps) if a.annotate else contextlib.nullcontext()
        with ann:
            w, loss = train_step(w, x, y)
            steps += 1
            if steps % a.sync_every == 0:
                loss.block_until_ready()
        if steps - 1 == jp[1]:
            loss.block_until_ready()
            jax.profiler.stop_trace()
    loss.block_until_ready()
    print("done %d loss %.4f" % (steps, float(loss)), flush=True)


if __name__ == "__main__":
    main()
