"""jax_loop.py - a small JAX training loop for the GPU checks.

  python3 jax_loop.py --stop-file FILE [--seconds S] [--size N]

No tbprof code. Compiles a jitted training step, prints "ready <pid>
<backend>" and then runs steps until FILE exists (or S seconds pass, default
60), blocking on the result every 10 steps as a training loop that logs its
loss does; prints "done <steps>". run.sh captures it with `tbprof trigger
PID --duration S` in between: a job with many threads that launches through
the driver API (cuLaunchKernel) and, where XLA turns them on, CUDA graphs.
"""
import argparse
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
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", type=int, default=4096)
    a = ap.parse_args()
    # about 0.4 TFLOP a step, a millisecond or two on an H100/H200: the 2 s
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
    while not os.path.exists(a.stop_file) and time.time() < end:
        w, loss = train_step(w, x, y)
        steps += 1
        if steps % 10 == 0:
            loss.block_until_ready()
    loss.block_until_ready()
    print("done %d loss %.4f" % (steps, float(loss)), flush=True)


if __name__ == "__main__":
    main()
