"""cpusamples.py - read the CPU sampler's spans back out of a decoded profile
(tbtest.Profile), as the summary tool does: per-function self and total sample
counts, following the encoding documented in agent/sampler.h."""

import os
import subprocess

import tbtest

CPU_STATS = ("tbprof_cpu_samples", "tbprof_cpu_samples_lost")


def walk(line):
    """Yield (event, ancestors) for the line's sample spans in nesting order."""
    evs = [e for e in line.events if "samples" in e.stats]
    evs.sort(key=lambda e: (e.start_ns, -e.dur_ns))
    stack = []
    for e in evs:
        while stack and e.start_ns >= stack[-1].end_ns:
            stack.pop()
        yield e, list(stack)
        stack.append(e)


def counts(lines):
    """{name: [self, total]} over the given lines; total counts a function
    once per stretch even when it recurses."""
    out = {}
    for line in lines:
        for e, anc in walk(line):
            c = out.setdefault(e.name, [0, 0])
            c[0] += e.stats.get("self_samples", 0)
            if not any(a.name == e.name for a in anc):
                c[1] += e.stats["samples"]
    return out


def nesting_errors(line):
    """Spans that start inside a parent but end after it."""
    bad = []
    for e, anc in walk(line):
        if anc and e.end_ns > anc[-1].end_ns:
            bad.append((e, anc[-1]))
    return bad


def build(src, out, cflags):
    """Compile a test program with explicit flags (frame pointers on/off)."""
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-g"] + cflags + ["-I", os.path.dirname(src), src, "-o", out, "-pthread", "-ldl"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError("%s failed:\n%s" % (" ".join(cmd), r.stderr))
    return out


def perf_refused_reason():
    """Why perf_event_open is refused for user-only CPU-clock sampling of this
    process, or None when it works (a tiny probe through ctypes)."""
    import ctypes
    import errno
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    # struct perf_event_attr: type=1 (software), size=112, config=0 (cpu-clock),
    # sample_period=1e6, flags: disabled(bit0) | exclude_kernel(bit5) | exclude_hv(bit6)
    attr = bytearray(112)
    struct.pack_into("IIQQ", attr, 0, 1, 112, 0, 1000000)
    struct.pack_into("Q", attr, 40, (1 << 0) | (1 << 5) | (1 << 6))
    buf = ctypes.create_string_buffer(bytes(attr), 112)
    fd = libc.syscall(298, buf, 0, -1, -1, 8)  # SYS_perf_event_open, pid 0 = self, cpu any, CLOEXEC
    if fd < 0:
        e = ctypes.get_errno()
        return "perf_event_open refused here (%s)" % errno.errorcode.get(e, e)
    os.close(fd)
    return None


def skip_if_perf_refused(tc):
    """Skip test case tc (saying why) where perf_event_open is refused."""
    why = perf_refused_reason()
    if why:
        print("skip: " + why)
        tc.skipTest(why)


def sampled_lines(prof):
    return [l for l in prof.host.lines if any("samples" in e.stats for e in l.events)]


__all__ = ["walk", "counts", "nesting_errors", "build", "perf_refused_reason", "skip_if_perf_refused",
           "sampled_lines", "tbtest"]
