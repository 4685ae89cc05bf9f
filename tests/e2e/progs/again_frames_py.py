"""again_frames_py.py - a capture that begins while a function entered
during the capture before it still runs (run with libtbprof.so preloaded,
its Python helper on, no PYTHONPERFSUPPORT).

main() spins 0.3 s, then starts a capture (tbprof.capture, the Python API)
and calls phase() during it: the trampoline names phase(). phase() spins
0.3 s, ends that capture (waiting for its profile), spins 0.2 s with no
capture on, and then captures again, spinning 1.0 s (pre_frames_py.py's
spin()). In the second capture, <module> and
main() are frames entered before the first capture, below phase(), which
the first capture's trampoline called and which still runs.
Prints "pid P" and "profiles FIRST SECOND".
"""

import os

import tbprof
from pre_frames_py import spin  # (sorts a list from its own frame, and calls burn())


def phase(first):
    spin(0.3)
    first.__exit__(None, None, None)
    spin(0.2)
    with tbprof.capture(wait=True) as second:
        spin(1.0)
    print("profiles %s %s" % (first.profile, second.profile), flush=True)


def main():
    print("pid %d" % os.getpid(), flush=True)
    spin(0.3)
    first = tbprof.capture(wait=True)
    first.__enter__()
    phase(first)


if __name__ == "__main__":
    main()
