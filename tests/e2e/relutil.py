"""relutil.py - shared bits of the reliability tests (tests/e2e/test_rel_*.py).

  RELJOB                 BUILD/progs/reljob (tests/e2e/progs/reljob.c)
  figure(name, text)     print one "REL figure: name: text" line (the README's
                         Reliability table quotes these); also kept in FIGURES
  ctl_raw(pid, data, ...) one control-socket exchange with raw bytes
  wait_socket(pid)       until pid's control socket answers "status"
  as_nobody()            preexec_fn: become nobody/nogroup (root only)
  can_be_nobody()        True when running as root and user nobody exists
  shared_copy(tmp, paths) copies of files into a 0755 folder nobody can read
"""

import os
import pwd
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbtest  # noqa: E402

RELJOB = tbtest.prog("reljob")
FIGURES = []


def figure(name, text):
    line = "REL figure: %s: %s" % (name, text)
    FIGURES.append(line)
    print(line, flush=True)


def addr(pid, uid=None):
    """pid's control socket: @tbprof.<uid>.<pid namespace inode>.<pid>."""
    return "\0tbprof.%d.%d.%d" % (os.getuid() if uid is None else uid, pidns(pid), pid)


def pidns(pid="self"):
    return os.stat("/proc/%s/ns/pid" % pid).st_ino


def ctl_raw(pid, data, timeout=5, shut=False, uid=None):
    """Send data (bytes), optionally shut the write side, read until close."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # a blocking connect, like tb_ctl_request(): a non-blocking one gets
        # EAGAIN while the listen backlog is full (a burst of clients)
        s.connect(addr(pid, uid))
        s.settimeout(timeout)
        try:
            if data:
                s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed first: its answer is still queued
        out = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out.decode("utf-8", "replace").strip()
    finally:
        s.close()


def ctl(pid, line, timeout=5):
    return ctl_raw(pid, (line + "\n").encode(), timeout=timeout)


def wait_socket(pid, timeout=10):
    deadline = time.time() + timeout
    while True:
        try:
            return ctl(pid, "status")
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.02)


def can_be_nobody():
    if os.getuid() != 0:
        return False
    try:
        pwd.getpwnam("nobody")
        return True
    except KeyError:
        return False


def nobody_ids():
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def as_nobody():
    uid, gid = nobody_ids()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def shared_copy(tmp, paths):
    """Copy files into tmp/shared (0755) so another user can run them."""
    d = os.path.join(tmp, "shared")
    os.makedirs(d, exist_ok=True)
    os.chmod(tmp, 0o755)
    os.chmod(d, 0o755)
    out = []
    for p in paths:
        q = os.path.join(d, os.path.basename(p))
        shutil.copy2(p, q)
        os.chmod(q, 0o755)
        out.append(q)
    return out


def preload_with(lib):
    """LD_PRELOAD value with the sanitizer runtime first and lib."""
    rt = tbtest.sanitizer_runtime()
    return (rt + ":" + lib) if rt else lib


with_shim = tbtest.with_shim


def sanitizer_slowdown():
    return {"address": 2, "thread": 4}.get(tbtest.SANITIZE, 1)


def env(*a, **k):
    """tbtest.env(), and under TSan no 1 s sleep at exit: its runtime sleeps
    atexit_sleep_ms (default 1000) whenever another thread (the agent's) is
    alive, which made each short job here take over a second."""
    e = tbtest.env(*a, **k)
    if "TSAN_OPTIONS" in e:
        e["TSAN_OPTIONS"] += ":atexit_sleep_ms=0"
    return e
