"""Python: the ctypes helper (tools/python/tbprof) with the preload and on its
own, and the PyTorch optimizer-step hook installed with no code change by
`tbprof run` (a stand-in `torch` package provides the hook registry)."""

import os
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402

WORK = "def work():\n    s = 0\n    for i in range(20000):\n        s += i * i\n    return s\n"

FAKE_TORCH = {
    "torch/__init__.py": "from . import optim\n",
    "torch/optim/__init__.py": "from .optimizer import Optimizer, SGD\n",
    "torch/optim/optimizer.py": textwrap.dedent("""\
        _post_hooks = []

        def register_optimizer_step_post_hook(hook):
            _post_hooks.append(hook)
            return hook

        class Optimizer:
            def step(self, *args, **kwargs):
                self._step(*args, **kwargs)
                for h in list(_post_hooks):
                    h(self, args, kwargs)

            def _step(self):
                pass

        class SGD(Optimizer):
            pass
        """),
}


# torch 1.8-1.13: no global hook; each optimizer made wraps its class's
# step for torch's profiler once (_hook_for_profile, marked `hooked`; again
# from zero_grad where it was not done). Steps print, so that a test can
# count the calls.
FAKE_TORCH_1 = dict(FAKE_TORCH, **{"torch/optim/optimizer.py": textwrap.dedent("""\
    import functools

    class Optimizer:
        def __init__(self):
            self._hook_for_profile()

        def _hook_for_profile(self):
            self._zero_grad_profile_name = "zero_grad"
            def profile_hook_step(func):
                @functools.wraps(func)
                def wrapper(*args, **kwargs):
                    return func(*args, **kwargs)
                return wrapper
            if not getattr(self.__class__.step, "hooked", None):
                self.__class__.step = profile_hook_step(self.__class__.step)
                self.__class__.step.hooked = True

        def step(self, closure=None):
            print("stepped", type(self).__name__, flush=True)

        def zero_grad(self):
            if not hasattr(self, "_zero_grad_profile_name"):
                self._hook_for_profile()

    class SGD(Optimizer):
        pass
    """)})


# torch's profilers as they behave: one per thread (_enable_profiler
# refuses a second), emit_nvtx one of them; while it is on, every op pushes
# an NVTX range named as torch's getNvtxStr names it (here through
# libnvtx_ops.so, as torch does from C++); torch.op() stands in for an op.
# The stand-ins print each turn, so a test can tell which steps had what on.
FAKE_TORCH_OPS = dict(FAKE_TORCH, **{
    "torch/__init__.py": textwrap.dedent("""\
        from . import optim, autograd, cuda

        def op(name, seq=-1, op_id=1):
            prof = autograd.profiler
            if prof._on:
                s = name + (", seq = %d" % seq if seq >= 0 else "") + ", op_id = %d" % op_id
                if prof._shapes:
                    s += ", sizes = [[2, 3], [3, %d]]" % op_id
                prof._nvtx.tbtest_nvtx_push(s.encode())
            prof._work()
            if prof._on:
                prof._nvtx.tbtest_nvtx_pop()
        """),
    "torch/autograd/__init__.py": "from . import profiler\n",
    "torch/cuda.py": "started = False\ncapturing = False  # a CUDA graph capture on this stream\n\n\n"
                     "def is_initialized():\n    return started\n\n\n"
                     "def is_current_stream_capturing():\n    return capturing\n",
    "torch/autograd/profiler.py": textwrap.dedent("""\
        import ctypes, os, threading
        _nvtx = ctypes.CDLL(os.environ["TBTEST_NVTX_OPS"])
        _on = False    # NVTX op ranges
        _shapes = False  # ... with input shapes
        _held = {}     # each thread's one profiler

        def _work():
            s = 0
            for i in range(3000):
                s += i
            return s

        def _sync():  # torch.cuda.synchronize(): in a graph capture, it breaks the capture
            import torch
            if torch.cuda.capturing:
                print("synchronized in a graph capture", flush=True)
                raise RuntimeError("operation not permitted when stream is capturing")

        def _enable_profiler(who):
            if threading.get_ident() in _held:
                raise RuntimeError("Profiler is already enabled on this thread")
            _held[threading.get_ident()] = who

        def _disable_profiler():
            if _held.pop(threading.get_ident(), None) is None:
                raise RuntimeError("Can't disable the profiler when it's not running")

        class emit_nvtx:
            def __init__(self, enabled=True, record_shapes=False):
                self.record_shapes = record_shapes

            def __enter__(self):
                global _on, _shapes
                _sync()
                print("emit_nvtx on" + (" with shapes" if self.record_shapes else ""), flush=True)
                _enable_profiler("nvtx")
                _on, _shapes = True, self.record_shapes
                self.thread = threading.get_ident()
                return self

            def __exit__(self, *exc):
                global _on
                if threading.get_ident() != self.thread:  # torch's state is the thread's
                    raise RuntimeError("the profiler is not enabled on this thread")
                _sync()
                _on = False
                _disable_profiler()
                print("emit_nvtx off", flush=True)
                return False

        class profile:  # what torch.profiler.profile starts (on the thread it is entered on)
            def __enter__(self):
                _enable_profiler("kineto")
                print("profile on", flush=True)
                return self

            def __exit__(self, *exc):
                _disable_profiler()
                print("profile off", flush=True)
                return False
        """),
})


def annotation(cls):
    """A stand-in for a framework's trace annotation: a context manager made
    with (name, **kwargs), which it keeps."""
    return textwrap.dedent("""\
        class %s:
            def __init__(self, name, **kwargs):
                self.name, self.kwargs = name, kwargs

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False
        """ % cls)


# jax.profiler as JAX defines it: TraceMe is C++ in JAX (a no-op unless its
# own profiler runs); StepTraceAnnotation passes its kwargs (step_num) on
FAKE_JAX = {
    "jax/__init__.py": "from . import profiler\n",
    "jax/profiler.py": annotation("TraceMe") + textwrap.dedent("""\

        class TraceAnnotation(TraceMe):
            pass

        class StepTraceAnnotation(TraceAnnotation):
            def __init__(self, name, **kwargs):
                super().__init__(name, _r=1, **kwargs)
        """),
}

# tf.profiler.experimental.Trace as TensorFlow defines it: a Python class in
# tensorflow/python/profiler/trace.py (a step when it has step_num or _r=1)
FAKE_TF = {
    "tensorflow/__init__.py": "from .python.profiler import trace as _trace\n"
                              "class _Exp:\n    Trace = _trace.Trace\n"
                              "class profiler:\n    experimental = _Exp\n",
    "tensorflow/python/__init__.py": "",
    "tensorflow/python/profiler/__init__.py": "",
    "tensorflow/python/profiler/trace.py": annotation("Trace"),
}


def nums(path):
    return [n for n, _, _ in tbtest.load(path).steps()]


class PyBase(tbtest.TestCase):
    """Scripts under the preload or `tbprof run`, with stand-in frameworks."""

    def setUp(self):
        super().setUp()
        tbtest.skip_if_python_unsupported(self)

    def script(self, name, body):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(body)
        return path

    def pyenv(self, preload=True, **tb):
        e = tbtest.env(self.logdir, preload=preload, python=True, **tb)
        e["PYTHONPATH"] = tbtest.PYHELPER
        return e

    def run_one(self, script, **tb):
        """The script under the preload (TBPROF_* from tb): the process and
        the path of the one profile it must have written."""
        p = tbtest.run([tbtest.PYTHON, script], env=self.pyenv(**tb))
        self.assertExitedOk(p)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, p.stderr)
        return p, files[0]

    def fake_packages(self, files=FAKE_TORCH):
        fake = os.path.join(self.tmp, "fake")
        for rel, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(fake, rel)), exist_ok=True)
            with open(os.path.join(fake, rel), "w") as f:
                f.write(text)
        return fake

    def run_hooked(self, body, steps, files=FAKE_TORCH, args=(), argv=(), **env):
        """`tbprof run --steps` (and args) of a script (and its argv), with
        stand-ins for the frameworks in `files`; the process and the one
        profile."""
        s = self.script("train.py", WORK + textwrap.dedent(body))
        e = tbtest.env(python=True)
        e["PYTHONPATH"] = self.fake_packages(files)
        e.update(env)
        p = tbtest.run([tbtest.CLI, "run", "--steps", steps, "--logdir", self.logdir, "--no-gpu", "--no-cpu"] +
                       list(args) + ["--", tbtest.PYTHON, s] + list(argv), env=e)
        self.assertExitedOk(p)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, p.stderr)
        return p, tbtest.load(files[0])


class Python(PyBase):
    def test_torch_ops_without_torch_one_line(self):
        # no torch in this Python (one that has a torch is kept from it):
        # install_torch_hook says so once; the script's steps and the
        # capture go on, with no op-range lines
        s = self.script("train.py", WORK + textwrap.dedent("""\
            import sys, tbprof
            sys.modules["torch"] = None  # import torch: ModuleNotFoundError
            assert not tbprof.install_torch_hook(torch_ops=True)
            for i in range(10):
                tbprof.step()
                work()
            print("ok")
            """))
        p = tbtest.run([tbtest.PYTHON, s], env=self.pyenv(steps="3,5"))
        self.assertExitedOk(p)
        self.assertIn("ok", p.stdout)
        lines = [l for l in p.stderr.splitlines() if l.startswith("tbprof: ")]
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn("no torch optimizer step hook", lines[0])
        self.assertEqual(len(tbtest.xplanes(self.logdir)), 1, p.stderr)

    def test_helper_steps_under_preload(self):
        s = self.script("train.py", WORK + textwrap.dedent("""\
            import tbprof
            assert tbprof.available()
            for i in range(20):
                tbprof.step()
                work()
            print("ok")
            """))
        p, f = self.run_one(s, steps="5,9")
        self.assertEqual(nums(f), [5, 6, 7, 8, 9])

    def test_helper_start_stop_and_explicit_numbers(self):
        s = self.script("api.py", WORK + textwrap.dedent("""\
            import tbprof, time
            for i in range(100, 120):
                if i == 105:
                    assert tbprof.start() == 0
                    assert tbprof.capturing()
                if i == 110:
                    assert tbprof.stop() == 0
                tbprof.step(i)
                tbprof.step(i)   # the same number again: merged
                work()
            print("ok")
            """))
        p, f = self.run_one(s)
        self.assertEqual(nums(f), [105, 106, 107, 108, 109])

    def test_helper_capture_block(self):
        # with tbprof.capture(): the block's steps; wait=True gives the path
        # of the profile written; a second one inside is busy and leaves the
        # first alone; without the agent the block runs all the same
        s = self.script("block.py", WORK + textwrap.dedent("""\
            import tbprof
            for i in range(20):
                tbprof.step(i)
                if i == 4:
                    with tbprof.capture(wait=True) as c:
                        for j in range(5, 9):
                            tbprof.step(j)
                            work()
                            if j == 6:
                                with tbprof.capture() as inner:
                                    work()
                                assert inner.rc == -16 and inner.profile == "", inner.rc
                                assert tbprof.capturing(), "the inner block left the capture on"
                    assert c.rc == 0 and not tbprof.capturing()
                    print("profile", c.profile)
                work()
            print("ok")
            """))
        p, f = self.run_one(s)
        self.assertIn("profile %s\n" % f, p.stdout)
        # the steps that began inside the block (it began inside step 4)
        self.assertEqual(nums(f), [5, 6, 7, 8])
        s = self.script("noagent.py", "import tbprof\nwith tbprof.capture(wait=True) as c:\n    x = 1\n"
                                      "print(c.rc, repr(c.profile), x)\n")
        e = self.pyenv(preload=False)
        e["TBPROF_LIB"] = "/nonexistent/libtbprof.so"
        p = tbtest.run([tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        self.assertIn("-38 '' 1", p.stdout)

    def test_helper_summary_and_diff(self):
        # a notebook's flow: capture a block, then read it back from Python
        # (tbprof summary / diff run by the helper, without the agent in them)
        s = self.script("read.py", WORK + textwrap.dedent("""\
            import tbprof
            for i in range(3):
                tbprof.step()
                work()
            with tbprof.capture(wait=True) as c:
                for i in range(3, 7):
                    tbprof.step()
                    work()
            s = tbprof.summary()  # the last profile written
            h = s["hosts"][0]
            print("summary", h["file"] == c.profile, h["steps"]["count"], [x["num"] for x in h["steps"]["list"]])
            d = tbprof.diff(c.profile, c.profile)
            print("diff", d["a"]["steps"], d["b"]["steps"], d["per"], d["a"]["step_mean_ns"] == d["b"]["step_mean_ns"])
            try:
                tbprof.summary("/nonexistent/logs")
            except RuntimeError as e:
                print("error", e)
            print("ok")
            """))
        p, f = self.run_one(s)
        self.assertIn("summary True 4 [3, 4, 5, 6]\n", p.stdout)
        self.assertIn("diff 4 4 step True\n", p.stdout)
        self.assertRegex(p.stdout, r"\nerror tbprof summary: .*/nonexistent/logs.*\n")
        self.assertNotIn("tbprof summary: tbprof summary:", p.stdout)
        # one profile: the CLI run by the helper did not capture anything itself
        self.assertEqual(tbtest.xplanes(self.logdir), [f])

    def test_helper_capture_steps_by_number(self):
        # capture_steps(first, last): armed at first-1, exactly those steps;
        # a range begun or reversed is refused, a second one is busy, and
        # stop() cancels one still waiting
        s = self.script("window.py", WORK + textwrap.dedent("""\
            import tbprof
            for i in range(40):
                tbprof.step()
                if i == 2:
                    assert tbprof.capture_steps(2, 5) == -22, "step 2 has begun"
                    assert tbprof.capture_steps(9, 8) == -22
                    assert tbprof.capture_steps(30, 31) == 0
                    assert tbprof.capture_steps(10, 12) == -16, "one at a time"
                    assert tbprof.stop() == 0, "cancels the waiting one"
                    assert tbprof.capture_steps(10, 12) == 0
                work()
            print("ok")
            """))
        p, f = self.run_one(s, run="win")
        self.assertEqual(nums(f), [10, 11, 12])
        self.assertIn("api tbprof_capture_steps", tbtest.load(f).host.stats["tbprof_trigger"])

    def test_helper_loads_the_library_itself(self):
        if tbtest.SANITIZE:
            self.skipTest("a sanitizer-built libtbprof.so cannot be dlopen()ed by an uninstrumented python")
        s = self.script("own.py", WORK + textwrap.dedent("""\
            import tbprof
            for i in range(12):
                tbprof.step()
                work()
            print("avail", tbprof.available())
            """))
        e = self.pyenv(preload=False, steps="3,4")
        e["TBPROF_LIB"] = tbtest.LIB
        p = tbtest.run([tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        self.assertIn("avail True", p.stdout)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, p.stderr)
        self.assertEqual(nums(files[0]), [3, 4])

    def test_helper_loaded_library_serves_the_socket(self):
        # dlopen()ed by the helper, libtbprof.so is not in front of
        # pthread_create, so TBPROF_SOCKET=auto cannot wait for the job's
        # first thread: it serves the socket from start-up instead
        if tbtest.SANITIZE:
            self.skipTest("a sanitizer-built libtbprof.so cannot be dlopen()ed by an uninstrumented python")
        self.need_cli()
        s = self.script("own.py", "import sys, tbprof\nprint('ready', tbprof.available(), flush=True)\n"
                                  "sys.stdin.readline()\n")
        e = self.pyenv(preload=False, socket=None)
        e["TBPROF_LIB"] = tbtest.LIB
        p = subprocess.Popen([tbtest.PYTHON, s], env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, bufsize=1)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        self.assertEqual(tbtest.read_until(p, "ready"), "ready True")
        r = tbtest.run([tbtest.CLI, "trigger", str(p.pid), "--status"], timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("state=idle"), r.stdout)
        p.stdin.write("\n")
        p.stdin.flush()
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0)

    def test_helper_without_library_is_a_noop(self):
        s = self.script("none.py", "import tbprof\nprint(tbprof.step(), tbprof.start(), tbprof.available())\n")
        e = self.pyenv(preload=False)
        e["TBPROF_LIB"] = "/nonexistent/libtbprof.so"
        e["LD_LIBRARY_PATH"] = ""
        p = tbtest.run([tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        self.assertIn("-1 -38 False", p.stdout)

    def test_helper_with_a_library_that_is_not_tbprof_is_a_noop(self):
        # TBPROF_LIB names a library without tbprof's functions (a typo, or
        # an old libtbprof.so): one line, and the calls (and the optimizer
        # hook, which calls the same) do nothing rather than raise
        s = self.script("wrong.py", textwrap.dedent("""\
            import os, _ctypes
            os.environ["TBPROF_LIB"] = _ctypes.__file__  # loads, but is not tbprof
            import tbprof
            print(tbprof.step(), tbprof.start(), tbprof.available())
            """))
        e = self.pyenv(preload=False)
        e["LD_LIBRARY_PATH"] = ""
        p = tbtest.run([tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        self.assertIn("-1 -38 False", p.stdout)
        self.assertEqual(len([l for l in p.stderr.splitlines() if l.startswith("tbprof: ")]), 1, p.stderr)

    def test_no_stderr_no_exception(self):
        # a job started with its stderr closed (sys.stderr is None): the
        # helper's one-line notes must not turn into exceptions -- here
        # tbprof.step() without the library, and `import torch` of a torch
        # without the optimizer hook (torch < 2.0) under the preload
        old_torch = dict(FAKE_TORCH, **{"torch/optim/optimizer.py": textwrap.dedent("""\
            class Optimizer:
                def step(self):
                    pass

            class SGD(Optimizer):
                pass
            """)})
        s = self.script("nostderr.py", textwrap.dedent("""\
            import sys
            assert sys.stderr is None
            if sys.argv[1] == "torch":
                import torch
                torch.optim.SGD().step()
            import tbprof
            print("ok", tbprof.step(), tbprof.available())
            """))
        for what in ("api", "torch"):
            with self.subTest(what=what):
                # no socket: the agent's would take the free fd 2 (then stderr)
                e = self.pyenv(preload=what == "torch", socket="off")
                if what == "api":
                    e["TBPROF_LIB"] = "/nonexistent/libtbprof.so"
                    e["LD_LIBRARY_PATH"] = ""
                else:
                    e["PYTHONPATH"] = self.fake_packages(old_torch)  # the agent puts the helper before it
                p = tbtest.run(["/bin/sh", "-c", 'exec "$@" 2>&-', "sh", tbtest.PYTHON, s, what], env=e)
                self.assertEqual(p.returncode, 0, p.stdout)
                self.assertIn("ok -1 False" if what == "api" else "ok 0 True", p.stdout)

    def test_optimizer_hook_no_code_change_via_tbprof_run(self):
        self.need_cli()
        fake = self.fake_packages()
        # a user sitecustomize further down the path must still run
        user = os.path.join(self.tmp, "user")
        os.makedirs(user)
        with open(os.path.join(user, "sitecustomize.py"), "w") as f:
            f.write("print('user sitecustomize ran')\n")
        s = self.script("train.py", WORK + textwrap.dedent("""\
            import torch
            opt = torch.optim.SGD()
            for i in range(15):
                work()
                opt.step()
            print("trained")
            """))
        e = tbtest.env(python=True)
        e["PYTHONPATH"] = fake + ":" + user
        # tbprof run puts the helper first on PYTHONPATH and sets the hook on
        p = tbtest.run([tbtest.CLI, "run", "--steps", "3,6", "--logdir", self.logdir, "--no-gpu", "--no-cpu",
                        "--", tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        self.assertIn("trained", p.stdout)
        self.assertIn("user sitecustomize ran", p.stdout)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, p.stderr)
        self.assertEqual(nums(files[0]), [3, 4, 5, 6])

    def test_optimizer_hook_no_code_change_via_ld_preload(self):
        # the README's first line, LD_PRELOAD alone: the agent puts the
        # helper on PYTHONPATH itself, so the optimizer's steps are steps;
        # TBPROF_PYTHON_HELPER=off leaves the job's environment alone
        fake = self.fake_packages()
        s = self.script("train.py", WORK + textwrap.dedent("""\
            import os, torch
            opt = torch.optim.SGD()
            for i in range(15):
                work()
                opt.step()
            print("path", os.environ.get("PYTHONPATH"))
            """))
        for helper in ("on", "off"):
            with self.subTest(helper=helper):
                logdir = os.path.join(self.tmp, "preload-" + helper)
                e = tbtest.env(logdir, python=True, steps="3,6", python_helper=helper)
                e["PYTHONPATH"] = fake
                p = tbtest.run([tbtest.PYTHON, s], env=e)
                self.assertExitedOk(p)
                path = [l.split(" ", 1)[1] for l in p.stdout.splitlines() if l.startswith("path ")][0]
                if helper == "off":
                    self.assertEqual(path, fake)
                    self.assertEqual(tbtest.xplanes(logdir), [])
                    continue
                helper_dir = os.path.realpath(os.path.join(tbtest.BUILD, "share", "tbprof", "python"))
                self.assertEqual(path, helper_dir + ":" + fake)
                files = tbtest.xplanes(logdir)
                self.assertEqual(len(files), 1, p.stderr)
                self.assertEqual(nums(files[0]), [3, 4, 5, 6])

    def test_optimizer_hook_after_find_spec_probe(self):
        # libraries probe for torch before importing it (transformers,
        # accelerate: importlib.util.find_spec("torch") is not None); the
        # probe imports nothing, and the import after it must still get
        # the hook
        self.need_cli()
        p, prof = self.run_hooked("""\
            import importlib.util
            assert importlib.util.find_spec("torch") is not None
            assert importlib.util.find_spec("torch") is not None
            import torch
            opt = torch.optim.SGD()
            for i in range(15):
                work()
                opt.step()
            print("trained")
            """, "3,6")
        self.assertIn("trained", p.stdout)
        self.assertEqual([n for n, _, _ in prof.steps()], [3, 4, 5, 6])

    def test_optimizer_hook_one_step_per_iteration_with_several_optimizers(self):
        # a GAN steps two optimizers per iteration, and an optimizer that
        # wraps another (ZeroRedundancyOptimizer) steps both: each
        # iteration is one step, beginning at its first optimizer step
        # (0.2 ms for the profile's clock against time.time_ns())
        self.need_cli()
        p, prof = self.run_hooked("""\
            import time, torch

            class Wrapper(torch.optim.Optimizer):
                def __init__(self, inner):
                    self.inner = inner

                def _step(self):
                    self.inner.step()

            gen, disc = torch.optim.SGD(), Wrapper(torch.optim.SGD())
            began = []
            for i in range(10):
                work()
                began.append(time.time_ns())
                gen.step()
                work()
                disc.step()
                work()
            print("began", began)
            """, "3,6")
        self.check_steps_began(p, prof)

    def test_optimizer_hook_on_torch_1(self):
        # torch < 2.0 has no global optimizer-step hook: each class's step
        # is wrapped where torch wraps it for its profiler, also for
        # optimizers made before the hook (tbprof.install_torch_hook()
        # called by the script), and a subclass's step that calls its
        # base's counts once (as under torch 2's hook: where the base class
        # has optimizers of its own too, its step is wrapped too, and
        # torch 2 calls the hooks twice)
        self.need_cli()
        for when in ("import", "late"):
            with self.subTest(when=when):
                self.logdir = os.path.join(self.tmp, "logs-" + when)
                p, prof = self.run_hooked("""\
                    import sys, time, torch

                    class Base(torch.optim.Optimizer):
                        def step(self, closure=None):
                            return super().step(closure)

                    class Mine(Base):
                        def step(self, closure=None):
                            return super().step(closure)

                    opts = [torch.optim.SGD(), Mine()]
                    if sys.argv[1] == "late":
                        import tbprof
                        assert tbprof.install_torch_hook()
                    began = []
                    for i in range(10):
                        work()
                        began.append(time.time_ns())
                        for o in opts:
                            o.zero_grad()
                            o.step()
                        work()
                    print("began", began)
                    """, "3,6", files=FAKE_TORCH_1, argv=[when],
                    **({"TBPROF_PYTORCH_HOOK": "off"} if when == "late" else {}))
                self.assertEqual(p.stdout.count("stepped"), 20, p.stdout)
                self.assertNotIn("no torch optimizer step hook", p.stderr)
                self.check_steps_began(p, prof)

    def check_steps_began(self, p, prof):
        """Steps 3..6 each begin at the iteration the script printed as begun."""
        began = eval(p.stdout.split("began ", 1)[1].splitlines()[0])
        steps = prof.steps()
        self.assertEqual([n for n, _, _ in steps], [3, 4, 5, 6])
        for n, ev, _ in steps:
            self.assertGreater(ev.start_ns, began[n] - 200000, (n, ev.start_ns - began[n]))
            self.assertLess(ev.start_ns, began[n + 1], (n, ev.start_ns - began[n]))

    def test_optimizer_hook_one_step_per_iteration_with_a_new_optimizer_each(self):
        # an optimizer made anew for each iteration (the last one is gone):
        # still one step per iteration
        self.need_cli()
        p, prof = self.run_hooked("""\
            import time, torch
            began = []
            for i in range(10):
                work()
                opt = torch.optim.SGD()
                began.append(time.time_ns())
                opt.step()
                work()
            print("began", began)
            """, "3,6")
        self.check_steps_began(p, prof)

    def test_script_steps_and_hook_count_each_step_once(self):
        # The script marks its own steps and `tbprof run` installs the
        # optimizer hook as well: two boundaries per iteration. The first
        # source to mark one (tbprof.step(), at the top of the loop) counts;
        # without that rule steps 3..6 would be iterations 1.5..3.
        self.need_cli()
        p, prof = self.run_hooked("""\
            import time, torch, tbprof
            opt = torch.optim.SGD()
            marks = {}
            for i in range(12):
                marks[tbprof.step()] = time.time_ns()
                work()
                opt.step()
            print("marks", sorted(marks))
            """, "3,6")
        self.assertIn("marks [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]", p.stdout)
        self.assertEqual([n for n, _, _ in prof.steps()], [3, 4, 5, 6])
        st = prof.host.stats
        self.assertEqual(st.get("tbprof_step_source"), "tbprof_step()")
        self.assertGreaterEqual(st.get("tbprof_steps_ignored", 0), 4)  # the hook, at least through step 6
        self.assertTrue(any("were ignored" in w for w in prof.warnings), prof.warnings)
        self.assertEqual(p.stderr.count("step boundaries from the PyTorch optimizer hook are ignored"), 1, p.stderr)

    def test_hook_first_then_script_steps_are_refused(self):
        # The hook marks the first boundary; a later tbprof.step() gets
        # -EBUSY and the steps stay the optimizer's.
        self.need_cli()
        p, prof = self.run_hooked("""\
            import torch, tbprof
            opt = torch.optim.SGD()
            rcs = []
            for i in range(10):
                work()
                opt.step()
                rcs.append(tbprof.step())
            print("rcs", sorted(set(rcs)))
            """, "2,4")
        self.assertIn("rcs [-16]", p.stdout)
        self.assertEqual([n for n, _, _ in prof.steps()], [2, 3, 4])
        self.assertEqual(prof.host.stats.get("tbprof_step_source"), "the PyTorch optimizer hook")

    def test_no_hook_option(self):
        # --no-hook: neither the optimizer's nor JAX's annotations count
        self.need_cli()
        fake = self.fake_packages(dict(FAKE_TORCH, **FAKE_JAX, **FAKE_TF))
        s = self.script("t.py", "import torch, jax, tensorflow as tf\no = torch.optim.SGD()\nfor i in range(10):\n"
                                "    with jax.profiler.StepTraceAnnotation('train', step_num=i):\n"
                                "        with tf.profiler.experimental.Trace('train', step_num=i, _r=1):\n"
                                "            o.step()\n")
        e = tbtest.env(python=True)
        e["PYTHONPATH"] = fake
        p = tbtest.run([tbtest.CLI, "run", "--no-hook", "--steps", "2,3", "--logdir", self.logdir, "--no-gpu",
                        "--no-cpu", "--", tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        self.assertEqual(tbtest.xplanes(self.logdir), [])

    def test_jax_step_annotations_no_code_change_via_tbprof_run(self):
        # a JAX loop marks its steps for xprof with StepTraceAnnotation and
        # a global step number: `tbprof run --steps` captures those steps
        self.need_cli()
        p, prof = self.run_hooked("""\
            import jax
            for i in range(12):
                with jax.profiler.StepTraceAnnotation("train", step_num=100 + i) as a:
                    work()
            print("kwargs", a.kwargs)
            """, "103,105", FAKE_JAX)
        self.assertIn("kwargs {'_r': 1, 'step_num': 111}", p.stdout)  # the annotation works as before
        self.assertEqual([n for n, _, _ in prof.steps()], [103, 104, 105])
        self.assertEqual(prof.host.stats.get("tbprof_step_source"), "jax.profiler.StepTraceAnnotation")
        # each step holds one iteration's work (some 0.5 ms here)
        for n, ev, _ in prof.steps():
            self.assertGreater(ev.dur_ns, 100000, n)

    def test_keras_fit_steps_no_code_change_via_tbprof_run(self):
        # Keras' fit loop wraps each step in Trace("train", epoch_num=...,
        # step_num=..., _r=1); other Traces (no step_num, no _r) are not steps
        self.need_cli()
        p, prof = self.run_hooked("""\
            import time
            import tensorflow as tf
            began = []
            for step in range(10):
                began.append(time.time_ns())
                with tf.profiler.experimental.Trace("train", epoch_num=0, step_num=step, batch_size=None, _r=1):
                    work()
                    with tf.profiler.experimental.Trace("call", function_name="f"):
                        work()
            print("began", began)
            """, "4,6", FAKE_TF)
        self.assertEqual([n for n, _, _ in prof.steps()], [4, 5, 6])
        self.assertEqual(prof.host.stats.get("tbprof_step_source"), "tf.profiler.experimental.Trace")
        self.assertNotIn("tbprof_steps_ignored", prof.host.stats)
        # each step begins with its own step's Trace (after began[n]), not
        # at the previous iteration's inner Trace (before it); 0.2 ms for
        # the profile's clock against time.time_ns()
        began = eval(p.stdout.split("began ", 1)[1].splitlines()[0])
        for n, ev, _ in prof.steps():
            self.assertGreater(ev.start_ns, began[n] - 200000, (n, ev.start_ns - began[n]))

    def test_jax_step_num_device_array_is_not_waited_for(self):
        # step_num=state.step: a jax.Array the device has not computed yet
        # (dispatch runs ahead). JAX's annotation does not read it unless
        # its own profiler runs; reading it here (int()) would wait for the
        # device at every step. Counted on from the last number instead;
        # one whose computation failed raises on reading: not into the loop
        self.need_cli()
        p, prof = self.run_hooked("""\
            import jax

            class Pending:  # a jax.Array not computed yet
                def __init__(self, n, ready=False, fails=False):
                    self.n, self.ready, self.fails = n, ready, fails

                def is_ready(self):
                    return self.ready

                def __int__(self):
                    if self.fails:
                        raise RuntimeError("INTERNAL: the computation failed")
                    if not self.ready:
                        print("waited for the device", flush=True)
                    return self.n

                __index__ = __int__

            for i in range(12):
                num = 100 if i == 0 else Pending(100 + i, ready=i in (7, 9), fails=i == 9)
                with jax.profiler.StepTraceAnnotation("train", step_num=num):
                    work()
            print("trained")
            """, "103,105", FAKE_JAX)
        self.assertIn("trained", p.stdout)
        self.assertNotIn("waited for the device", p.stdout)
        self.assertEqual([n for n, _, _ in prof.steps()], [103, 104, 105])

    def test_annotation_exit_ends_the_windows_last_step(self):
        # work outside the annotation (eval, logging) is not a step's: the
        # window's last step ends, and the capture with it, where its
        # annotation exits; earlier steps run to the next one's start
        self.need_cli()
        p, prof = self.run_hooked("""\
            import jax, time
            exited, began = [], []
            for i in range(10):
                began.append(time.time_ns())
                with jax.profiler.StepTraceAnnotation("train", step_num=i):
                    work()
                exited.append(time.time_ns())
                work(); work(); work()
            print("exited", exited)
            print("began", began)
            """, "3,5", FAKE_JAX)
        out = dict(l.split(" ", 1) for l in p.stdout.splitlines() if l.startswith(("exited", "began")))
        exited, began = eval(out["exited"]), eval(out["began"])
        steps = {n: ev for n, ev, _ in prof.steps()}
        self.assertEqual(sorted(steps), [3, 4, 5])
        # step 4 runs to step 5's start, past its own annotation; step 5
        # (the last) ends at its annotation's exit, before the work after
        # it (0.2 ms for the profile's clock against time.time_ns())
        end = {n: ev.start_ns + ev.dur_ns for n, ev in steps.items()}
        self.assertGreater(end[4], exited[4] + 200000, (end[4] - exited[4], began[5] - exited[4]))
        self.assertLess(end[5], exited[5] + 200000, (end[5] - exited[5], began[6] - exited[5]))

    def test_annotation_exit_ends_a_window_asked_for_by_number(self):
        # the same for a window from tbprof.capture_steps() (or the socket's
        # steps=A-B): its last step ends at its annotation's exit
        self.need_cli()
        p, prof = self.run_hooked("""\
            import jax, time, tbprof
            exited = []
            for i in range(10):
                with jax.profiler.StepTraceAnnotation("train", step_num=i):
                    if i == 0:
                        assert tbprof.capture_steps(3, 5) == 0
                    work()
                exited.append(time.time_ns())
                work(); work(); work()
            print("exited", exited)
            """, "1000,1001", FAKE_JAX)
        exited = eval([l for l in p.stdout.splitlines() if l.startswith("exited")][0].split(" ", 1)[1])
        steps = {n: ev for n, ev, _ in prof.steps()}
        self.assertEqual(sorted(steps), [3, 4, 5])
        self.assertLess(steps[5].start_ns + steps[5].dur_ns, exited[5] + 200000)

    def test_annotation_exit_leaves_other_captures_running(self):
        # step 4 is the last of a TBPROF_STEPS window, but the capture under
        # way is tbprof.start()'s (the window was missed meanwhile): step 4's
        # exit must not end it
        self.need_cli()
        p, prof = self.run_hooked("""\
            import jax, tbprof
            for i in range(10):
                if i == 1:
                    assert tbprof.start() == 0
                if i == 7:
                    assert tbprof.stop() == 0
                with jax.profiler.StepTraceAnnotation("train", step_num=i):
                    work()
                work()
            """, "4,4", FAKE_JAX)
        self.assertIn("api tbprof_start", prof.host.stats["tbprof_trigger"])
        self.assertEqual([n for n, _, _ in prof.steps()], [1, 2, 3, 4, 5, 6])

    def test_jax_step_annotations_without_numbers_are_counted(self):
        # StepTraceAnnotation("train") with no step_num (imported before
        # jax.profiler is: the hook still takes): steps count from 0
        self.need_cli()
        p, prof = self.run_hooked("""\
            from jax.profiler import StepTraceAnnotation
            for i in range(8):
                with StepTraceAnnotation("train"):
                    work()
            import tbprof
            print("unknown source", tbprof._load().tbprof_step_num_from(b"keras", 3))
            """, "2,4", FAKE_JAX)
        self.assertEqual([n for n, _, _ in prof.steps()], [2, 3, 4])
        self.assertIn("unknown source -22", p.stdout)  # -EINVAL


NVTX_OPS = tbtest.prog("libnvtx_ops.so")


_have_nvtx_ops = None


def have_nvtx_ops():
    """libnvtx_ops.so was built with NVTX. Asked in a child run as the tests
    run Python (a sanitizer build's library needs its runtime first)."""
    global _have_nvtx_ops
    if _have_nvtx_ops is None:
        p = tbtest.run([tbtest.PYTHON, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(sys.argv[1]).tbtest_nvtx_have())",
                        NVTX_OPS], env=tbtest.env(python=True))
        _have_nvtx_ops = p.returncode == 1
    return _have_nvtx_ops


# TBTEST_CUDA_FROM=N: CUDA starts at iteration N (the job's first GPU
# work); TBTEST_PROF=A,B: the script's own profiler on from iteration A to B;
# TBTEST_GRAPHS=A,B: iterations A and B captured into a CUDA graph
TORCH_OPS_LOOP = """\
    import os, torch
    opt = torch.optim.SGD()
    cuda_from = int(os.environ.get("TBTEST_CUDA_FROM", "0"))
    prof_on, prof_off = map(int, os.environ.get("TBTEST_PROF", "-1,-1").split(","))
    graphs = [int(x) for x in os.environ.get("TBTEST_GRAPHS", "").split(",") if x]
    for i in range(10):
        print("iter", i, flush=True)
        torch.cuda.started = i >= cuda_from
        torch.cuda.capturing = i in graphs
        if i == prof_on:
            prof = torch.autograd.profiler.profile()
            prof.__enter__()
        if i == prof_off:
            prof.__exit__(None, None, None)
        torch.op("aten::mm", 2 * i, 100 + 3 * i)
        torch.op("aten::relu", 2 * i + 1, 101 + 3 * i)
        torch.op("MmBackward0", 2 * i, 102 + 3 * i)
        torch.op("aten::empty", -1, 103 + 3 * i)
        for k in range(int(os.environ.get("TBTEST_MORE_OPS", "0"))):
            torch.op("aten::add_", 1000 + k, 10000 + k)
        opt.step()
    print("trained")
    """


class TorchOps(PyBase):
    """TBPROF_TORCH_OPS (`tbprof run --torch-ops`): the PyTorch hook turns
    torch's NVTX op ranges on at the optimizer step that begins a capture
    and off at the one that ends it; each op is a range named by the op."""

    def setUp(self):
        super().setUp()
        if not have_nvtx_ops():
            self.skipTest("libnvtx_ops.so was built without the NVTX v3 headers (no CUDA toolkit)")

    def run_ops(self, args=("--torch-ops",), **env):
        p, prof = self.run_hooked(TORCH_OPS_LOOP, "3,6", FAKE_TORCH_OPS, args, TBTEST_NVTX_OPS=NVTX_OPS, **env)
        self.assertIn("trained", p.stdout)
        self.assertEqual([n for n, _, _ in prof.steps()], [3, 4, 5, 6])
        return p, prof

    def lines(self, p):
        return [l for l in p.stdout.splitlines() if l.startswith(("iter", "emit_nvtx"))]

    def one_line(self, stderr, what):
        """The one line of the Python helper's ("tbprof: ...") naming what."""
        got = [l for l in stderr.splitlines() if l.startswith("tbprof: ") and what in l]
        self.assertEqual(len(got), 1, stderr)
        return got[0]

    def test_ops_named_in_the_captured_steps_only(self):
        self.need_cli()
        p, prof = self.run_ops()
        # step 3 begins at the 4th optimizer step (iteration 3's), step 7 at
        # the 8th: on between iterations 3 and 4, off between 7 and 8
        want = ["iter %d" % i for i in range(10)]
        want.insert(4, "emit_nvtx on")
        want.insert(9, "emit_nvtx off")
        self.assertEqual(self.lines(p), want, p.stderr)
        self.assertNotIn("TBPROF_TORCH_OPS", p.stderr)
        ev = {n: sorted(((e.stats.get("torch_seq"), e.stats.get("torch_op_id")) for e in prof.host.events(n)),
                        key=lambda x: x[1])
              for n in ("aten::mm", "aten::relu", "MmBackward0", "aten::empty")}
        it = range(4, 8)  # the iterations in steps 3..6
        self.assertEqual(ev["aten::mm"], [(2 * i, 100 + 3 * i) for i in it])
        self.assertEqual(ev["aten::relu"], [(2 * i + 1, 101 + 3 * i) for i in it])
        self.assertEqual(ev["MmBackward0"], [(2 * i, 102 + 3 * i) for i in it])
        self.assertEqual(ev["aten::empty"], [(None, 103 + 3 * i) for i in it])  # no autograd: no seq
        self.assertFalse([e.name for e in prof.host.events() if "op_id" in e.name])
        # every op inside the steps' span, on the training thread's line
        steps = prof.steps()
        begin, end = steps[0][1].start_ns, max(e.end_ns for _, e, _ in steps)
        for n in ev:
            for e in prof.host.events(n):
                self.assertTrue(begin <= e.start_ns and e.end_ns <= end, (n, e, begin, end))

    def test_ops_get_a_quarter_of_the_buffer(self):
        # 4 captured steps of 300 more ops: 1,216 ranges, some 40 KB of
        # names. NVTX's usual 1/16 of TBPROF_BUFFER_MB=1 holds 1,024 ranges
        # and 32 KB of names; with --torch-ops it gets 1/4, and all fit
        self.need_cli()
        p, prof = self.run_ops(TBPROF_BUFFER_MB="1", TBTEST_MORE_OPS="300")
        self.assertEqual(prof.host.stats.get("tbprof_nvtx_dropped"), 0, prof.warnings)
        self.assertEqual(len(prof.host.events("aten::add_")), 1200)
        self.assertEqual(len(prof.host.events("aten::mm")), 4)

    def test_shapes(self):
        # --torch-shapes: torch's record_shapes; each op still named by the
        # op, its input shapes the stat torch_args
        self.need_cli()
        p, prof = self.run_ops(args=("--torch-shapes",))
        self.assertEqual(p.stdout.count("emit_nvtx on with shapes"), 1, p.stdout)
        self.assertNotIn("TBPROF_TORCH_OPS", p.stderr)
        mm = sorted(((e.stats.get("torch_op_id"), e.stats.get("torch_args")) for e in prof.host.events("aten::mm")))
        self.assertEqual(mm, [(100 + 3 * i, "sizes = [[2, 3], [3, %d]]" % (100 + 3 * i)) for i in range(4, 8)])
        self.assertFalse([e.name for e in prof.host.events() if "sizes" in e.name])

    def test_off_without_the_option(self):
        self.need_cli()
        p, prof = self.run_ops(args=())
        self.assertNotIn("emit_nvtx", p.stdout)
        self.assertEqual(prof.host.events("aten::mm"), [])

    def test_script_profiler_already_on_one_line_and_the_job_runs_on(self):
        # the script's torch.profiler holds the thread's profiler slot when
        # the capture begins: emit_nvtx refuses; one line, never tried again
        # (each try costs a CUDA sync), the profile as without the option
        self.need_cli()
        p, prof = self.run_ops(TBTEST_PROF="2,8")
        self.assertEqual(p.stdout.count("emit_nvtx on"), 1, p.stdout)
        self.assertEqual([l for l in p.stdout.splitlines() if l.startswith("profile")], ["profile on", "profile off"])
        line = self.one_line(p.stderr, "TBPROF_TORCH_OPS")
        self.assertIn("RuntimeError: Profiler is already enabled on this thread", line)
        self.assertEqual(prof.host.events("aten::mm"), [])

    def test_script_profiler_started_in_a_captured_step_wins(self):
        # the script starts its profiler while our op ranges are on (iteration
        # 5, in step 4): ours go off first, for good, so the script's start
        # works; the ops before it are in the profile
        self.need_cli()
        p, prof = self.run_ops(TBTEST_PROF="5,6")
        self.assertEqual([l for l in p.stdout.splitlines() if l.startswith(("iter 5", "emit", "profile"))],
                         ["emit_nvtx on", "iter 5", "emit_nvtx off", "profile on", "profile off"], p.stdout)
        self.assertIn("the script started a torch profiler", self.one_line(p.stderr, "TBPROF_TORCH_OPS"))
        self.assertEqual(sorted(e.stats["torch_seq"] for e in prof.host.events("aten::mm")), [8])

    def test_script_profiler_on_another_thread_leaves_ours(self):
        # one profiler per thread: the script's torch.profiler on a helper
        # thread, mid-capture, does not contend with our ranges on the
        # training thread; both run, ours go off at the capture's end
        self.need_cli()
        # the helper thread enters the profiler, waits, and exits it (the
        # same thread: torch's slot is per thread)
        body = TORCH_OPS_LOOP.replace("        if i == prof_off:\n            prof.__exit__(None, None, None)\n",
                                      "        if i == prof_off:\n            done.set()\n            t.join()\n")
        body = body.replace(
            "        if i == prof_on:\n            prof = torch.autograd.profiler.profile()\n"
            "            prof.__enter__()\n",
            "        if i == prof_on:\n            import threading\n"
            "            prof, entered, done = torch.autograd.profiler.profile(), threading.Event(), "
            "threading.Event()\n"
            "            def helper():\n                prof.__enter__()\n                entered.set()\n"
            "                done.wait()\n                prof.__exit__(None, None, None)\n"
            "            t = threading.Thread(target=helper)\n            t.start()\n            entered.wait()\n")
        self.assertNotEqual(body, TORCH_OPS_LOOP)
        p, prof = self.run_hooked(body, "3,6", FAKE_TORCH_OPS, ("--torch-ops",), TBTEST_NVTX_OPS=NVTX_OPS,
                                  TBTEST_PROF="5,6")
        self.assertEqual([l for l in p.stdout.splitlines() if l.startswith(("emit", "profile"))],
                         ["emit_nvtx on", "profile on", "profile off", "emit_nvtx off"], p.stdout)
        self.assertNotIn("TBPROF_TORCH_OPS", p.stderr)
        self.assertEqual(len(prof.host.events("aten::mm")), 4)

    def test_not_before_cuda_starts(self):
        # emit_nvtx synchronizes the GPU: never called before the job
        # started CUDA itself (that would start it); on at the first step
        # after, inside the window
        self.need_cli()
        p, prof = self.run_ops(TBTEST_CUDA_FROM="6")
        want = ["iter %d" % i for i in range(10)]
        want.insert(7, "emit_nvtx on")
        want.insert(9, "emit_nvtx off")
        self.assertEqual(self.lines(p), want, p.stderr)
        self.assertEqual(sorted(e.stats["torch_seq"] for e in prof.host.events("aten::mm")), [14])

    def test_not_during_a_cuda_graph_capture(self):
        # an iteration captured whole into a CUDA graph (torch.cuda.graph:
        # forward, backward, optimizer.step()) runs the hook while the
        # stream captures: emit_nvtx's synchronize there would break the
        # job's capture. On (and off) at the first step after one instead
        self.need_cli()
        p, prof = self.run_ops(TBTEST_GRAPHS="3,7")
        self.assertNotIn("synchronized in a graph capture", p.stdout)
        want = ["iter %d" % i for i in range(10)]
        want.insert(5, "emit_nvtx on")
        want.insert(10, "emit_nvtx off")
        self.assertEqual(self.lines(p), want, p.stderr)
        self.assertNotIn("TBPROF_TORCH_OPS", p.stderr)

    def test_never_in_a_job_without_cuda(self):
        self.need_cli()
        p, prof = self.run_ops(TBTEST_CUDA_FROM="99")
        self.assertNotIn("emit_nvtx", p.stdout)
        self.assertNotIn("TBPROF_TORCH_OPS", p.stderr)

    def test_from_the_script(self):
        # the script installs the hook itself, asking for op ranges
        # (preload and TBPROF_STEPS only: no `tbprof run`), or for them with
        # input shapes
        self.need_cli()
        for arg, shapes in (("True", False), ("'shapes'", True)):
            with self.subTest(torch_ops=arg):
                logdir = os.path.join(self.tmp, "logs_" + arg.strip("'"))
                body = textwrap.dedent(TORCH_OPS_LOOP).replace(
                    "import os, torch\n",
                    "import os, torch, tbprof\nassert tbprof.install_torch_hook(torch_ops=%s)\n" % arg)
                s = self.script("train.py", WORK + body)
                e = self.pyenv(steps="3,6")
                e["TBPROF_LOGDIR"] = logdir
                e["PYTHONPATH"] = self.fake_packages(FAKE_TORCH_OPS) + ":" + tbtest.PYHELPER
                e["TBTEST_NVTX_OPS"] = NVTX_OPS
                p = tbtest.run([tbtest.PYTHON, s], env=e)
                self.assertExitedOk(p)
                self.assertEqual(p.stdout.count("emit_nvtx on" + (" with shapes" if shapes else "\n")), 1,
                                 p.stdout)
                files = tbtest.xplanes(logdir)
                self.assertEqual(len(files), 1, p.stderr)
                prof = tbtest.load(files[0])
                self.assertEqual([n for n, _, _ in prof.steps()], [3, 4, 5, 6])
                mm = prof.host.events("aten::mm")
                self.assertEqual(len(mm), 4)
                self.assertEqual(len([e for e in mm if "torch_args" in e.stats]), 4 if shapes else 0)

    def test_inference_loop_with_tbprof_step(self):
        # no optimizer: the script marks its steps with tbprof.step(), and
        # the op ranges follow the capture there (on at step 3's start, off
        # at step 7's); and tbprof.stop() turns them off where no step
        # follows (a capture from tbprof.start())
        self.need_cli()
        body = textwrap.dedent("""\
            import os, sys, threading, torch, tbprof
            assert tbprof.install_torch_hook(torch_ops=True)
            torch.cuda.started = True
            for i in range(10):
                print("iter", i, flush=True)
                if i == 7 and sys.argv[1:] == ["thread"]:  # step 7 begins on another thread
                    t = threading.Thread(target=tbprof.step)
                    t.start()
                    t.join()
                else:
                    tbprof.step()
                torch.op("aten::mm", -1, 100 + i)
            if sys.argv[1:] == ["start"]:
                assert tbprof.start() == 0
                for _ in range(200):
                    tbprof.step()
                    if tbprof.capturing():
                        break
                torch.op("aten::relu", -1, 500)
                tbprof.stop()
                print("stopped", flush=True)
            """)
        s = self.script("infer.py", WORK + body)
        e = self.pyenv(steps="3,6")
        e["PYTHONPATH"] = self.fake_packages(FAKE_TORCH_OPS) + ":" + tbtest.PYHELPER
        e["TBTEST_NVTX_OPS"] = NVTX_OPS
        p = tbtest.run([tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        want = ["iter %d" % i for i in range(10)]
        want.insert(4, "emit_nvtx on")  # tbprof.step() of iteration 3 began step 3
        want.insert(9, "emit_nvtx off")
        self.assertEqual(self.lines(p), want, p.stderr)
        files = tbtest.xplanes(self.logdir)
        self.assertEqual(len(files), 1, p.stderr)
        mm = tbtest.load(files[0]).host.events("aten::mm")
        self.assertEqual(sorted(e.stats["torch_op_id"] for e in mm), [103, 104, 105, 106])
        # then a capture the script starts and stops itself: on by its first
        # step() inside it (or start() itself), off at stop()
        p = tbtest.run([tbtest.PYTHON, s, "start"], env=e)
        self.assertExitedOk(p)
        tail = [l for l in p.stdout.splitlines() if l.startswith(("emit_nvtx", "stopped"))][2:]
        self.assertEqual(tail, ["emit_nvtx on", "emit_nvtx off", "stopped"], p.stdout)
        relu = [x for f in tbtest.xplanes(self.logdir) for x in tbtest.load(f).host.events("aten::relu")]
        self.assertEqual([x.stats["torch_op_id"] for x in relu], [500])
        # the step that ends the capture is marked on another thread: that
        # thread leaves the ranges alone (torch keeps them per thread); the
        # main thread turns them off at its next step
        p = tbtest.run([tbtest.PYTHON, s, "thread"], env=e)
        self.assertExitedOk(p)
        want = ["iter %d" % i for i in range(10)]
        want.insert(4, "emit_nvtx on")
        want.insert(10, "emit_nvtx off")
        self.assertEqual(self.lines(p), want, p.stderr)
        self.assertNotIn("TBPROF_TORCH_OPS", p.stderr)

    def test_training_thread_keeps_them(self):
        # a helper thread starts a capture mid-run: the ranges go on at the
        # training thread's next optimizer step, not on the helper (torch
        # keeps them per thread: the helper would have held them, and the
        # training thread's stop() could not have turned them off)
        self.need_cli()
        p, prof = self.run_hooked("""\
            import threading, time, torch, tbprof
            opt = torch.optim.SGD()
            torch.cuda.started = True
            for i in range(10):
                print("iter", i, flush=True)
                if i == 2:
                    t = threading.Thread(target=tbprof.start)
                    t.start()
                    t.join()
                    for _ in range(5000):  # on by now, but a loaded machine may take longer
                        if tbprof.capturing():
                            break
                        time.sleep(0.001)
                if i == 6:
                    tbprof.stop()
                torch.op("aten::mm", 2 * i, 100 + i)
                opt.step()
            print("trained")
            """, "50,60", FAKE_TORCH_OPS, ("--torch-ops",), TBTEST_NVTX_OPS=NVTX_OPS)
        want = ["iter %d" % i for i in range(10)]
        want.insert(3, "emit_nvtx on")
        want.insert(8, "emit_nvtx off")
        self.assertEqual(self.lines(p), want, p.stderr)
        self.assertEqual(sorted(e.stats["torch_op_id"] for e in prof.host.events("aten::mm")), [103, 104, 105])

    def test_needs_the_hook(self):
        self.need_cli()
        s = self.script("train.py", WORK + textwrap.dedent(TORCH_OPS_LOOP))
        e = tbtest.env(python=True)
        e["PYTHONPATH"] = self.fake_packages(FAKE_TORCH_OPS)
        e["TBTEST_NVTX_OPS"] = NVTX_OPS
        p = tbtest.run([tbtest.CLI, "run", "--no-hook", "--torch-ops", "--duration", "1", "--logdir", self.logdir,
                        "--no-gpu", "--no-cpu", "--", tbtest.PYTHON, s], env=e)
        self.assertExitedOk(p)
        self.assertNotIn("emit_nvtx", p.stdout)
        self.assertIn("the PyTorch hook is off", self.one_line(p.stderr, "TBPROF_TORCH_OPS"))


if __name__ == "__main__":
    tbtest.main()
