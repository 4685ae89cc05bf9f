"""tbprof's sitecustomize (on PYTHONPATH through `tbprof run`).

1. Runs the sitecustomize it shadows (the next one on sys.path), if any.
2. With TBPROF_PYTORCH_HOOK=1/on: installs tbprof's optimizer-step hook as
   soon as torch is imported (a sys.meta_path finder that only looks at the
   name "torch"), so steps are counted with no change to the script. With
   TBPROF_JAX_HOOK=1/on, the same for jax.profiler.StepTraceAnnotation once
   jax.profiler is imported; with TBPROF_TF_HOOK=1/on, for the step-marking
   tf.profiler.experimental.Trace annotations (Keras' fit loop makes one a
   step). With TBPROF_TORCH_OPS=1/on as well, the PyTorch hook turns torch's
   NVTX op ranges on for the steps being captured (=shapes: with each op's
   input shapes).
3. With TBPROF_CHILDREN on (the default): a child this Python fork()s (a
   data-loader worker) captures whenever this process does
   (tbprof_follow_parent(), from os.register_at_fork).
(Python frames in the CPU samples need no help from here: the agent turns
CPython's perf trampoline on for each capture and off after it.)
Never raises: a problem here prints one line and the program runs on.
"""

import os
import sys


def _say(line):
    """A line on stderr; never raises (a job may run with stderr closed: None)."""
    try:
        sys.stderr.write(line)
    except Exception:
        pass


def _helper_copy(folder):
    folder = folder or "."
    return (os.path.isfile(os.path.join(folder, "sitecustomize.py"))
            and os.path.isfile(os.path.join(folder, "tbprof", "__init__.py")))


def _chain():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        # the import system's own modules, loaded already: importing
        # importlib.machinery (with warnings) costs ~0.6 ms at every start,
        # importlib.util ~4 ms (contextlib...)
        boot, ext = sys.modules.get("_frozen_importlib"), sys.modules.get("_frozen_importlib_external")
        finder = getattr(ext, "PathFinder", None)
        if finder is None:
            import importlib.machinery
            finder = importlib.machinery.PathFinder
        # not this folder, nor another copy of this helper (the build's and
        # the source's, or two installs: each would chain to the other)
        path = [p for p in sys.path if os.path.abspath(p or ".") != here and not _helper_copy(p)]
        spec = finder.find_spec("sitecustomize", path)
        if spec is None or spec.loader is None:
            return
        make = getattr(boot, "module_from_spec", None)
        if make is None:
            import importlib.util
            make = importlib.util.module_from_spec
        mod = make(spec)
        spec.loader.exec_module(mod)
    except Exception as e:
        _say("tbprof: the shadowed sitecustomize failed: %r\n" % (e,))


def _on(name, default="off"):
    return os.environ.get(name, default).strip().lower() in ("1", "on", "true", "yes")


def _agent_loaded():
    return "libtbprof" in os.environ.get("LD_PRELOAD", "")


class _HookFinder:
    """Calls tbprof.<install>() right after module `name` is first
    imported (then leaves sys.meta_path). A probe that only finds it
    (importlib.util.find_spec(name), as libraries check whether a framework
    is installed) imports nothing: the finder stays for the import."""

    def __init__(self, name, install):
        self.name, self.install = name, install
        self.busy = set()  # threads in our own look-up below

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        import _thread
        me = _thread.get_ident()
        if me in self.busy:
            return None
        import importlib.util
        self.busy.add(me)
        try:
            spec = importlib.util.find_spec(self.name)
        finally:
            self.busy.discard(me)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module
        install = self.install
        finder = self

        def exec_and_hook(module):
            exec_module(module)
            try:
                sys.meta_path.remove(finder)
            except ValueError:
                pass
            try:
                import tbprof
                getattr(tbprof, install)()
            except Exception as e:
                _say("tbprof: %s not run: %r\n" % (install, e))

        try:
            loader.exec_module = exec_and_hook
        except Exception:
            return spec
        return spec


def _hook(module, install):
    """tbprof.<install>() now if `module` is imported, else once it is."""
    if module in sys.modules:
        import tbprof
        getattr(tbprof, install)()
    else:
        sys.meta_path.insert(0, _HookFinder(module, install))


_follow = None  # tbprof_follow_parent through ctypes, looked up at the first fork


def _follow_before_fork():
    """os.register_at_fork's before (in the parent): look the function up
    once (ctypes.CDLL costs about a millisecond), so that each child only
    calls it. Never raises."""
    global _follow
    if _follow is None:
        try:
            import ctypes
            _follow = ctypes.CDLL(None).tbprof_follow_parent
        except Exception:
            _follow = False


def _follow_parent():
    """os.register_at_fork's after_in_child: this child (a data-loader
    worker) captures whenever its parent does (TBPROF_CHILDREN). Never
    raises."""
    if _follow:
        try:
            _follow()
        except Exception:
            pass


def _setup():
    if _on("TBPROF_PYTORCH_HOOK") and _agent_loaded():
        _hook("torch", "install_torch_hook")
    elif (_on("TBPROF_TORCH_OPS") or os.environ.get("TBPROF_TORCH_OPS", "").strip().lower() == "shapes") \
            and _agent_loaded():
        _say("tbprof: TBPROF_TORCH_OPS is on but the PyTorch hook is off "
                         "(TBPROF_PYTORCH_HOOK=on, or `tbprof run`): no torch op ranges\n")
    if _on("TBPROF_CHILDREN", "on") and _agent_loaded() and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_follow_before_fork, after_in_child=_follow_parent)
        if sys.argv[1:2] == ["--multiprocessing-fork"]:
            # a multiprocessing "spawn" worker: exec()ed, not forked, so
            # nothing above runs in it; it asks its parent's agent instead
            _follow_before_fork()
            _follow_parent()
    if _on("TBPROF_JAX_HOOK") and _agent_loaded():
        _hook("jax.profiler", "install_jax_hook")
    if _on("TBPROF_TF_HOOK") and _agent_loaded():
        _hook("tensorflow.python.profiler.trace", "install_tf_hook")


_chain()
try:
    _setup()
except Exception as e:  # never break the program
    _say("tbprof: sitecustomize: %r\n" % (e,))
