"""python_calls.py - a call-bound pure-Python loop (bench_python_idle.sh):
about 0.3 s of small function calls, dicts and sorting on CPython 3.12."""


def f(x):
    return x + 1


def calls(n):
    s = 0
    for _ in range(n):
        s = f(s)
    return s


def objects(n):
    d = {}
    for i in range(n):
        d[str(i)] = [i] * 3
    return sorted(d)[:3]


calls(3_000_000)
objects(200_000)
