"""pre_frames_py.py - Python frames entered before a capture (run with
libtbprof.so preloaded, TBPROF_DELAY=0.5, TBPROF_DURATION=1.5, no
PYTHONPERFSUPPORT).

At start-up, before the capture, main() calls outer() through map() (C
code: on 3.11+ a second interpreter activation, <module> and main() being
one); outer() calls spin(), which for 0.9 s sorts a list (C code run from
spin's own frame) and calls burn() (a Python call made during the capture:
the trampoline names it). spin() returns mid-capture, and outer() sorts
from its own frame for 0.3 s, then returns; main() calls after(), which
does spin's work for 1.0 s from its own frame.
Prints "pid P".
"""

import os
import time

DATA = list(range(20000))[::-1]


def burn(n):
    x = 0
    for i in range(n):
        x += i * i
    return x


def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        sorted(DATA)
        burn(300)


def outer(seconds):
    spin(seconds * 0.75)
    end = time.time() + seconds * 0.25
    while time.time() < end:
        sorted(DATA)


def after(seconds):
    end = time.time() + seconds
    while time.time() < end:
        sorted(DATA)
        burn(300)


def main():
    print("pid %d" % os.getpid(), flush=True)
    list(map(outer, [1.2]))
    after(1.0)


if __name__ == "__main__":
    main()
