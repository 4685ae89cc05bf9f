"""tbprof - Python helper for the tbprof profiler agent (ctypes, no build step).

Works in a process started under LD_PRELOAD=libtbprof.so (the functions are
found in the process itself) or loads libtbprof.so on first use ($TBPROF_LIB,
else ../../../lib next to this package, else the loader's search path).
Every call is cheap and safe: when the library cannot be found the helper
warns once and its functions do nothing.

    import tbprof
    for batch in data:
        tbprof.step()            # a step boundary: step N begins now
        train(batch)

    tbprof.start(2000); work(); tbprof.stop()   # capture 2 s (or until stop)
    tbprof.capture_steps(100, 104)               # capture steps 100..104 when they come
    tbprof.install_torch_hook()  # count torch optimizer steps as steps
                                 # (torch_ops=True: name GPU work by torch op;
                                 #  torch_ops="shapes": with its input shapes)
    tbprof.install_jax_hook()    # count jax.profiler.StepTraceAnnotation steps
    tbprof.install_tf_hook()     # count tf.profiler.experimental.Trace steps (Keras fit)

    with tbprof.capture(wait=True) as c:         # a notebook cell: capture, then read it
        train_some_steps()
    s = tbprof.summary(c.profile)                # `tbprof summary --json` as a dict
    d = tbprof.diff(before, c.profile)           # `tbprof diff --json`: two runs side by side

`tbprof run` (or TBPROF_PYTORCH_HOOK=1 / TBPROF_JAX_HOOK=1 / TBPROF_TF_HOOK=1
with tools/python on PYTHONPATH) installs the hooks with no code change (see
sitecustomize.py).
"""

import ctypes
import functools
import json
import os
import shutil
import subprocess
import time
import sys
import threading
import weakref

__all__ = ["step", "step_num", "start", "capture_steps", "stop", "capture", "capturing", "last_profile",
           "summary", "diff", "install_torch_hook", "install_jax_hook", "install_tf_hook", "available"]

_lib = None
_tried = False


def _say(line):
    """A line on stderr; never raises (a job may run with stderr closed: None)."""
    try:
        sys.stderr.write(line)
    except Exception:
        pass


def _candidates():
    env = os.environ.get("TBPROF_LIB")
    if env:
        yield env
    here = os.path.dirname(os.path.abspath(__file__))
    # <prefix>/share/tbprof/python/tbprof -> <prefix>/lib
    yield os.path.normpath(os.path.join(here, "..", "..", "..", "..", "lib", "libtbprof.so"))
    yield "libtbprof.so"


def _load():
    """The agent library, looked for once. _tried is set only once _lib is
    (two threads' first calls may both look; the same library either way):
    set first, a second thread's first call found _lib still None and its
    step went uncounted."""
    global _lib, _tried
    if _tried:
        return _lib
    _lib = _find()
    _tried = True
    return _lib


def _find():
    lib = None
    try:
        me = ctypes.CDLL(None)  # the process: finds the preloaded agent
        if hasattr(me, "tbprof_step"):
            lib = me
    except OSError:
        lib = None
    if lib is None:
        for path in _candidates():
            if path != "libtbprof.so" and not os.path.exists(path):
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            if hasattr(lib, "tbprof_step"):
                break
            lib = None  # a library, but not tbprof's
    if lib is None:
        _say("tbprof: libtbprof.so not found (set TBPROF_LIB); tbprof calls do nothing\n")
        return None
    try:
        _declare(lib)
    except AttributeError as e:  # a libtbprof.so too old for this helper
        _say("tbprof: %s; tbprof calls do nothing\n" % e)
        return None
    return lib


def _declare(lib):
    """ctypes prototypes of the functions used (AttributeError: one is missing)."""
    lib.tbprof_step.restype = ctypes.c_int64
    lib.tbprof_step.argtypes = []
    lib.tbprof_step_num.restype = ctypes.c_int64
    lib.tbprof_step_num.argtypes = [ctypes.c_int64]
    lib.tbprof_step_from.restype = ctypes.c_int64
    lib.tbprof_step_from.argtypes = [ctypes.c_char_p]
    if hasattr(lib, "tbprof_step_num_from"):  # not in a libtbprof.so older than the helper
        lib.tbprof_step_num_from.restype = ctypes.c_int64
        lib.tbprof_step_num_from.argtypes = [ctypes.c_char_p, ctypes.c_int64]
        lib.tbprof_step_end.restype = None
        lib.tbprof_step_end.argtypes = [ctypes.c_int64]
    if hasattr(lib, "tbprof_capture_steps"):  # not in a libtbprof.so older than the helper
        lib.tbprof_capture_steps.restype = ctypes.c_int
        lib.tbprof_capture_steps.argtypes = [ctypes.c_int64, ctypes.c_int64]
    lib.tbprof_start.restype = ctypes.c_int
    lib.tbprof_start.argtypes = [ctypes.c_int64]
    lib.tbprof_stop.restype = ctypes.c_int
    lib.tbprof_stop.argtypes = []
    lib.tbprof_capturing.restype = ctypes.c_int
    lib.tbprof_capturing.argtypes = []
    if hasattr(lib, "tbprof_expect_nvtx"):  # not in a libtbprof.so older than the helper
        lib.tbprof_expect_nvtx.restype = None
        lib.tbprof_expect_nvtx.argtypes = [ctypes.c_int]
    lib.tbprof_last_profile.restype = ctypes.c_char_p
    lib.tbprof_last_profile.argtypes = []


def available():
    """True when the agent library is loaded in this process."""
    return _load() is not None


def step(num=None):
    """Mark a step boundary: the next step (or step `num`) begins now.
    Returns the number of the step that begins, -1 without the agent, or
    -16 (EBUSY) when another source (the PyTorch hook, CUDA or NVTX ranges)
    marked a step first: steps are counted from one source per process."""
    lib = _load()
    if lib is None:
        return -1
    n = lib.tbprof_step() if num is None else lib.tbprof_step_num(int(num))
    _ops_follow(lib)
    return n


def step_num(num):
    return step(num)


def start(duration_ms=0):
    """Capture now for duration_ms (0: until stop()). 0, or a negative errno."""
    lib = _load()
    if lib is None:
        return -38
    rc = lib.tbprof_start(int(duration_ms))
    _ops_follow(lib)
    return rc


def capture_steps(first, last):
    """Capture steps first..last (inclusive, by number, as TBPROF_STEPS
    does): armed at step first-1, so every rank of a job that calls this with
    the same numbers captures the same steps. Returns at once: 0, or a
    negative errno (-22 EINVAL: a bad range or step `first` has begun; -16
    EBUSY: another capture is on or waiting). stop() cancels it while it
    waits."""
    lib = _load()
    if lib is None or not hasattr(lib, "tbprof_capture_steps"):
        return -38
    return lib.tbprof_capture_steps(int(first), int(last))


def stop():
    lib = _load()
    if lib is None:
        return -38
    rc = lib.tbprof_stop()
    _ops_follow(lib)
    return rc


class capture:
    """Capture a block: start() on entry, stop() on exit.

        with tbprof.capture() as c:
            train_some_steps()
        print(c.rc, c.profile)   # 0 and the xplane.pb's path (wait=True)

    rc is start()'s return: 0, or a negative errno (-16 EBUSY: another
    capture is on, which this one leaves alone; -38: no agent loaded); the
    block runs either way. The profile is written by tbprof's own thread
    after the block: with wait=True the exit waits for it (at most timeout
    seconds) and c.profile is its path, else c.profile is "" and
    last_profile() says it once written. Not re-entrant."""

    def __init__(self, duration_ms=0, wait=False, timeout=60.0):
        self.duration_ms, self.wait, self.timeout = duration_ms, wait, timeout
        self.rc, self.profile, self._before = None, "", ""

    def __enter__(self):
        self._before = last_profile()
        self.rc = start(self.duration_ms)
        return self

    def __exit__(self, *exc):
        if self.rc != 0:
            return False
        stop()
        if self.wait:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                p = last_profile()
                if p and p != self._before:
                    self.profile = p
                    break
                time.sleep(0.01)
        return False


def capturing():
    """True while a capture is on (not once it has been asked to stop)."""
    lib = _load()
    return bool(lib and lib.tbprof_capturing())


def last_profile():
    lib = _load()
    if lib is None:
        return ""
    return (lib.tbprof_last_profile() or b"").decode("utf-8", "replace")


def _mapped_lib():
    """The path of the libtbprof.so mapped into this process, or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(None, 5)[-1]
                if path.startswith("/") and os.path.basename(path).startswith("libtbprof"):
                    return path
    except OSError:
        pass
    return None


def _cli():
    """The tbprof command: $TBPROF_CLI, else <prefix>/bin/tbprof beside the
    library in use (or the one this package would load), else on PATH."""
    env = os.environ.get("TBPROF_CLI")
    if env:
        return env
    for lib in [_mapped_lib()] + list(_candidates()):
        if lib and os.path.isabs(lib):
            cand = os.path.normpath(os.path.join(os.path.dirname(lib), "..", "bin", "tbprof"))
            if os.access(cand, os.X_OK):
                return cand
    return shutil.which("tbprof")


def _cli_json(args):
    """Run `tbprof ARGS` (which must print JSON) and return what it printed,
    parsed. The agent is not preloaded into it, and no TBPROF_* setting
    reaches it. Raises RuntimeError with the command's message on failure."""
    cli = _cli()
    if not cli:
        raise RuntimeError("tbprof: the tbprof command was not found (set TBPROF_CLI to its path)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPROF_")}
    pre = [x for x in env.get("LD_PRELOAD", "").replace(":", " ").split() if "libtbprof" not in os.path.basename(x)]
    if pre:
        env["LD_PRELOAD"] = " ".join(pre)
    else:
        env.pop("LD_PRELOAD", None)
    p = subprocess.run([cli] + args, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        # (the command's own lines begin "tbprof CMD: " already)
        msg = p.stderr.strip() or "exit status %d" % p.returncode
        prefix = "tbprof %s: " % args[0]
        raise RuntimeError(msg if msg.startswith(prefix) else prefix + msg)
    return json.loads(p.stdout)


def summary(path=None, top=10):
    """`tbprof summary --json` of path (a logdir, a run folder or one
    .xplane.pb; default: the last profile this process wrote) as a dict:
    per host ("hosts"), steps with their GPU busy / idle split, kernels,
    communication, copies, CPU functions, drops. It runs the tbprof command
    (seconds for a large profile). Raises RuntimeError when it fails."""
    if path is None:
        path = last_profile()
        if not path:
            raise RuntimeError("tbprof summary: no profile written by this process yet")
    return _cli_json(["summary", "--json", "--top", str(int(top)), os.fspath(path)])


def diff(a, b):
    """`tbprof diff --json A B` as a dict: two profiles side by side ("a",
    "b"), and every kernel's time per step in each ("kernels", by change).
    Raises RuntimeError when it fails."""
    return _cli_json(["diff", "--json", os.fspath(a), os.fspath(b)])


_hook_handle = None
_ops_ctx = None      # torch's emit_nvtx while a capture is on (TBPROF_TORCH_OPS)
_ops_done = False    # turned off for good: torch refused, or the script's own profiler needed the slot
_ops_entering = False
_ops_thread = None   # the thread that turned them on: only it can turn them off
_opt_thread = None   # the thread of the last optimizer step (the training thread)
_torch_ops_on = 0  # install_torch_hook(torch_ops=...) / TBPROF_TORCH_OPS: 0 off, 1 on, 2 with shapes


def _on(name):
    return os.environ.get(name, "off").strip().lower() in ("1", "on", "true", "yes")


def _ops_mode(torch_ops):
    """0 (off), 1 (op ranges) or 2 (with each op's input shapes) for
    install_torch_hook's torch_ops: None reads TBPROF_TORCH_OPS (on, off,
    shapes), "shapes" asks for shapes, anything else is taken as a bool."""
    if torch_ops is None:
        torch_ops = os.environ.get("TBPROF_TORCH_OPS", "off").strip().lower()
        if torch_ops != "shapes":
            return int(_on("TBPROF_TORCH_OPS"))
    if isinstance(torch_ops, str) and torch_ops.strip().lower() == "shapes":
        return 2
    return int(bool(torch_ops))


def _ops_off_for_good(why):
    global _ops_done
    _ops_done = True
    _say("tbprof: TBPROF_TORCH_OPS: torch op ranges off for this process: %s\n" % why)


def _guard_torch_profilers(mod):
    """torch runs one profiler per thread: torch.profiler (or the autograd
    profiler, or emit_nvtx) that the script starts on the thread where our
    op ranges are on would raise in the script. So every start through
    mod's _enable_profiler goes through this guard, which turns ours off for
    good first: the script's profiler wins. One started on another thread
    does not contend with ours (which only our thread can turn off)."""
    orig = getattr(mod, "_enable_profiler", None)
    if orig is None or getattr(orig, "_tbprof_guard", False):
        return

    def _enable_profiler(*args, **kwargs):
        global _ops_ctx
        if _ops_ctx is not None and not _ops_entering and threading.get_ident() == _ops_thread:
            ctx, _ops_ctx = _ops_ctx, None
            try:
                ctx.__exit__(None, None, None)
            except Exception:
                pass
            _ops_off_for_good("the script started a torch profiler in a captured step (it keeps it)")
        return orig(*args, **kwargs)

    _enable_profiler._tbprof_guard = True
    mod._enable_profiler = _enable_profiler


def _graph_capturing(torch):
    """The stream is capturing a CUDA graph (a whole step in torch.cuda.graph):
    emit_nvtx's synchronize, on or off, would break the job's capture (next
    step then). CUDA must be started: the check would start it."""
    f = getattr(torch.cuda, "is_current_stream_capturing", None)
    return bool(f and f())


def _torch_ops(lib):
    """TBPROF_TORCH_OPS: torch's NVTX op ranges on while a capture is (so
    tbprof records each op as a range, and names the CUDA calls and GPU
    work inside it by the op), off otherwise. Called at each optimizer step
    and the script's step(), start() and stop() (_ops_follow), on the
    training thread: torch keeps that state per thread, and the autograd
    engine carries it to backward's threads. So only the thread that
    turned them on turns them off (a step() from another thread leaves
    them to it)."""
    global _ops_ctx, _ops_entering, _ops_thread
    if _ops_done or (_ops_ctx is not None and threading.get_ident() != _ops_thread):
        return
    want = bool(lib.tbprof_capturing())
    if want == (_ops_ctx is not None):
        return
    try:
        if want:
            import torch
            if not torch.cuda.is_initialized():
                return  # no CUDA yet: emit_nvtx's sync would start it in a job that never asked (next step)
            if _graph_capturing(torch):
                return
            import torch.autograd.profiler as ap
            _guard_torch_profilers(ap)             # torch.profiler, emit_nvtx: torch >= 1.13
            _guard_torch_profilers(torch.autograd)  # older ones call it there
            ctx = ap.emit_nvtx(record_shapes=_torch_ops_on == 2)
            _ops_entering = True
            try:
                ctx.__enter__()
            finally:
                _ops_entering = False
            _ops_ctx, _ops_thread = ctx, threading.get_ident()
        else:
            import torch
            if _graph_capturing(torch):
                return
            ctx, _ops_ctx = _ops_ctx, None
            ctx.__exit__(None, None, None)
    except Exception as e:  # another profiler on this thread, a torch without CUDA, ...
        _ops_off_for_good("could not turn torch's NVTX ranges %s (%s: %s); is torch.profiler or emit_nvtx on in "
                          "these steps?" % ("on" if want else "off", type(e).__name__, e))


def _ops_follow(lib, script=True):
    """torch's op ranges on or off as the capture is, where they were asked
    for (install_torch_hook): at each optimizer step, and at the script's
    own step(), start() and stop(), on its thread (loops without an
    optimizer: inference). Once optimizer steps are seen, on their thread
    only: a start() from a helper thread must not take the ranges there."""
    if _torch_ops_on and not (script and _opt_thread not in (None, threading.get_ident())):
        _torch_ops(lib)


_opt_round = {}  # id -> weakref of each optimizer stepped since the last boundary (left out once gone)


def _round_ref(optimizer, key):
    def gone(ref):
        try:
            if _opt_round.get(key) is ref:
                _opt_round.pop(key, None)
        except Exception:  # at exit, with this module's globals cleared
            pass
    return weakref.ref(optimizer, gone)


def _new_round(optimizer):
    """True where an optimizer step begins a step: the first of each round.
    A job that steps several optimizers per iteration (a GAN's two, one per
    parameter group, or ZeroRedundancyOptimizer's and the one it wraps)
    marks one step per iteration, where an optimizer already stepped steps
    again; an optimizer made anew each iteration begins one (the last is
    gone)."""
    global _opt_round
    key = id(optimizer)
    try:
        if _opt_round and key not in _opt_round:
            _opt_round[key] = _round_ref(optimizer, key)
            return False
        _opt_round = {key: _round_ref(optimizer, key)}
    except TypeError:  # no weak reference to it: each of its steps begins one
        pass
    return True


def _on_optimizer_step(optimizer, args, kwargs):
    global _opt_thread
    lib = _load()
    if lib is not None:
        if _new_round(optimizer):
            lib.tbprof_step_from(b"pytorch")
        _opt_thread = threading.get_ident()
        _ops_follow(lib, script=False)


def install_torch_hook(torch_ops=None):
    """Count every torch optimizer step as a tbprof step (a global
    optimizer-step post hook). With torch_ops (default: TBPROF_TORCH_OPS),
    also turn torch's NVTX op ranges on for the steps being captured;
    torch_ops="shapes": with each op's input shapes (torch's record_shapes).
    Idempotent; returns True when installed."""
    global _hook_handle, _torch_ops_on
    _torch_ops_on = _ops_mode(torch_ops)
    lib = _load() if _torch_ops_on else None
    if lib is not None and hasattr(lib, "tbprof_expect_nvtx"):
        # torch's first NVTX call comes inside a capture: have the agent
        # take NVTX's memory at each capture's start regardless
        lib.tbprof_expect_nvtx(1)
    if _hook_handle is not None:
        return True
    try:
        from torch.optim.optimizer import register_optimizer_step_post_hook
    except Exception as e:  # old torch, or no torch
        if _old_torch_hook():
            _hook_handle = True
            return True
        _say("tbprof: no torch optimizer step hook (%s); optimizer steps are not counted as steps "
             "(torch >= 1.8 has one): call tbprof.step() once per step\n" % e)
        _torch_ops_on = 0  # and no op ranges: said once here, not again at each step()
        return False
    _hook_handle = register_optimizer_step_post_hook(_on_optimizer_step)
    return True


def _old_torch_hook():
    """torch 1.8-1.13 has no global optimizer-step hook, but each optimizer
    made wraps its class's step for torch's profiler (_hook_for_profile).
    Ours goes around that wrapper at the same moment, so a class's step
    counts once per call, as under torch 2's global hook (an optimizer whose
    step calls its base class's counts as torch 2 counts it). True when
    installed."""
    try:
        from torch.optim.optimizer import Optimizer
        made = Optimizer._hook_for_profile
    except Exception:
        return False
    if getattr(made, "_tbprof", False):
        return True

    def _hook_for_profile(self, *args, **kwargs):
        r = made(self, *args, **kwargs)
        _wrap_step(type(self))
        return r

    _hook_for_profile._tbprof = True
    Optimizer._hook_for_profile = _hook_for_profile
    # classes whose optimizers were made before now (torch marked their
    # step); an LR scheduler made before now kept the step it found in its
    # optimizer, and those steps stay uncounted (`tbprof run` and the
    # preload install this before the script makes either)
    try:
        todo = Optimizer.__subclasses__()
        while todo:
            cls = todo.pop()
            todo.extend(cls.__subclasses__())
            if getattr(getattr(cls, "step", None), "hooked", False):
                _wrap_step(cls)
    except Exception:
        pass
    return True


def _wrap_step(cls):
    """cls.step, counted as a tbprof step after each call (torch < 2)."""
    try:
        inner = cls.step
        if getattr(inner, "_tbprof_step", False):
            return

        @functools.wraps(inner)
        def step(*args, **kwargs):
            out = inner(*args, **kwargs)
            try:
                if args:
                    _on_optimizer_step(args[0], args[1:], kwargs)
            except Exception:
                pass
            return out

        step._tbprof_step = True  # (and torch's `hooked`, copied by wraps: not wrapped again)
        cls.step = step
    except Exception:
        pass


def _annotation_step(source, kwargs):
    """A step boundary from `source` for a trace annotation being made:
    numbered by its step_num when it has one. The step's number, or a
    negative number when it was not counted."""
    lib = _load()
    if lib is None:
        return -1
    num = kwargs.get("step_num")
    try:
        # a device array not computed yet (jax's state.step: dispatch runs
        # ahead) is not read: int() would wait for the device at each step.
        # Unnumbered, the step follows the last one's number.
        if num is not None and not isinstance(num, int) and not getattr(num, "is_ready", lambda: True)():
            num = None
        num = int(num) if num is not None else None
    except Exception:  # not a number, or one whose computation failed: not into the loop
        num = None
    if num is None or not hasattr(lib, "tbprof_step_num_from"):
        return lib.tbprof_step_from(source)
    return lib.tbprof_step_num_from(source, num)


def _hook_annotation(module, name, source, is_step):
    """Make each `module`.`name`(label, **kwargs) for which is_step(kwargs)
    holds a step boundary of `source` (the annotation is made as its step
    begins: `with ...:`), and its exit that step's end (a window's last step
    ends the capture there). Idempotent; True when installed."""
    what = "%s.%s" % (module, name)
    try:
        # by its sys.modules entry: the hook runs as the module finishes
        # loading, maybe inside the framework's own import, before its
        # parent package has it as an attribute
        import importlib
        mod = sys.modules.get(module) or importlib.import_module(module)
        cls = getattr(mod, name)
    except Exception as e:  # no such framework, or one without the annotation
        _say("tbprof: no %s (%s); its steps are not counted\n" % (what, e))
        return False
    if getattr(cls, "_tbprof_hooked", False):
        return True
    init, exit_ = cls.__init__, cls.__exit__

    def __init__(self, *args, **kwargs):
        n = _annotation_step(source, kwargs) if is_step(kwargs) else -1
        init(self, *args, **kwargs)
        if n >= 0:
            try:
                self._tbprof_step = n
            except Exception:  # an instance without a __dict__: no end mark
                pass

    def __exit__(self, *exc):
        r = exit_(self, *exc)
        n = getattr(self, "_tbprof_step", -1)
        if n >= 0 and _lib is not None and hasattr(_lib, "tbprof_step_end"):
            _lib.tbprof_step_end(n)
        return r

    try:
        cls.__init__ = __init__
        cls.__exit__ = __exit__
        cls._tbprof_hooked = True
    except Exception as e:  # a class that cannot be patched
        _say("tbprof: %s not hooked (%r); its steps are not counted\n" % (what, e))
        return False
    return True


def install_jax_hook():
    """Count every jax.profiler.StepTraceAnnotation (the annotation JAX
    training loops use to mark steps for xprof) as a tbprof step, numbered
    by its step_num. Idempotent; returns True when installed."""
    return _hook_annotation("jax.profiler", "StepTraceAnnotation", b"jax", lambda kw: True)


def install_tf_hook():
    """Count every tf.profiler.experimental.Trace that marks a step (a
    step_num, or _r=1 as Keras' fit loop passes) as a tbprof step, numbered
    by its step_num. Idempotent; returns True when installed."""
    return _hook_annotation("tensorflow.python.profiler.trace", "Trace", b"tensorflow",
                            lambda kw: "step_num" in kw or bool(kw.get("_r")))
