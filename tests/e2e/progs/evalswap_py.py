"""evalswap_py.py LIB - a capture that stops while another frame evaluator
is installed over the perf trampoline, as one stops during a torch.compile'd
call (run with libtbprof.so preloaded, CPU sampling on, no
PYTHONPERFSUPPORT; LIB: build/progs/libevalswap.so).

Starts a capture (tbprof.start()) and spins 0.3 s, so that the trampoline
goes on; puts LIB's evaluator over it, stops the capture, spins 0.3 s (the
stop's request runs then, under LIB's evaluator), puts the trampoline back
as torch.compile does, then spins until the interpreter's evaluator is the
default one again, at most 3 s. Prints "pid P" and "evaluator during D
under U back B after A in S s" (0: the default, 1: LIB's, 2: another: the
trampoline), S the seconds the last spin took.
"""

import ctypes
import os
import sys
import time

import tbprof
from pre_frames_py import spin

lib = ctypes.PyDLL(sys.argv[1])


def main():
    print("pid %d" % os.getpid(), flush=True)
    if tbprof.start() != 0:
        sys.exit("tbprof.start() failed")
    spin(0.3)
    during = lib.evalswap_current()
    if lib.evalswap_enter() != 0:
        sys.exit("no PEP 523 functions in this Python")
    tbprof.stop()
    spin(0.3)
    under = lib.evalswap_current()
    lib.evalswap_exit()
    back = lib.evalswap_current()
    t0 = time.time()
    while lib.evalswap_current() != 0 and time.time() < t0 + 3.0:
        spin(0.02)
    print("evaluator during %d under %d back %d after %d in %.2f s"
          % (during, under, back, lib.evalswap_current(), time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
