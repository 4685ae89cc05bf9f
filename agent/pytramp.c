/* pytramp.c - CPython's perf trampoline on for captures only (pytramp.h).
 *
 * Nothing here includes Python.h: the few functions used are looked up with
 * dlsym at the first request and called through pointers, with PyObject
 * opaque. The work that needs the interpreter runs in sync_cb(), queued by
 * Py_AddPendingCall and run by the main thread with the GIL; it makes the
 * trampoline match `want`, so requests that cross (a capture's stop before
 * its start was run) end right.
 *
 * Threads: tb_pytramp_request() on the agent thread, under `lk`; sync_cb(),
 * the two hooks and own_eval (3.10, 3.11) on a Python thread holding the
 * GIL. `lk` also orders
 * "the interpreter is gone" (Python's atexit hook) against the agent's next
 * Py_AddPendingCall: after Py_FinalizeEx has begun, that call would reach a
 * freed interpreter.
 */
#include "pytramp.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "capture.h"
#include "clock.h"
#include "log.h"
#include "pyframes.h"
#include "util.h"

typedef struct pyobj pyobj; /* PyObject */

/* CPython 3.10 and 3.11 have no perf trampoline: tbprof brings its own
 * (own_eval), x86-64 only, as the unwinder's step over it is */
#if defined(__x86_64__)
#define OWN_TRAMPOLINE 1
#else
#define OWN_TRAMPOLINE 0
#endif

typedef struct py_method_def { /* PyMethodDef (stable ABI layout) */
    const char *name;
    pyobj *(*meth)(pyobj *self, pyobj *unused);
    int flags;
    const char *doc;
} py_method_def;
#define PY_METH_NOARGS 0x0004

static struct {
    int (*is_initialized)(void);
    int (*add_pending_call)(int (*fn)(void *), void *arg);
    const char *(*version)(void);
    pyobj *(*import_module)(const char *name);
    pyobj *(*sys_get)(const char *name);
    pyobj *(*dict_get)(pyobj *d, const char *key);
    pyobj *(*call_method)(pyobj *o, const char *name, const char *fmt, ...);
    pyobj *(*get_attr)(pyobj *o, const char *name);
    pyobj *(*call)(pyobj *f, pyobj *args, pyobj *kwargs);
    pyobj *(*tuple_new)(ssize_t n);
    pyobj *(*dict_new)(void);
    int (*dict_set)(pyobj *d, const char *key, pyobj *v);
    pyobj *(*cfunction_new)(py_method_def *def, pyobj *self, pyobj *module);
    int (*is_true)(pyobj *o);
    void (*incref)(pyobj *o);
    void (*decref)(pyobj *o);
    void (*err_fetch)(pyobj **type, pyobj **value, pyobj **tb);
    void (*err_clear)(void);
    pyobj *(*str)(pyobj *o);
    const char *(*utf8)(pyobj *s);
    pyobj *none;
    /* PEP 523's frame-evaluator switch (optional): see turn_on */
    void *(*interp_get)(void);
    void *(*eval_get)(void *interp);
    void (*eval_set)(void *interp, void *fn);
    void *eval_default;
    /* 3.12's pending calls from other threads (see poke_main) */
    int minor;
    int (*gil_ensure)(void);
    void (*gil_release)(int state);
    int (*is_finalizing)(void);
    /* CPython's perf map file, closed and opened again (see map_off_stdio) */
    int (*map_init)(void);
    void (*map_fini)(void);
    /* 3.10 and 3.11: our own trampoline (see own_eval) */
    ssize_t (*extra_index)(void (*free_fn)(void *));
    int (*get_extra)(pyobj *code, ssize_t index, void **extra);
    int (*set_extra)(pyobj *code, ssize_t index, void *extra);
    void *code_type;
    void (*err_restore)(pyobj *type, pyobj *value, pyobj *tb);
} py;

static void *default_lookup(const char *name) { return dlsym(RTLD_DEFAULT, name); }
static void *(*lookup)(const char *) = default_lookup;

/* what sync_cb found when asked to turn it on (the capture's outcome) */
enum { OUT_NONE, OUT_PENDING, OUT_OURS, OUT_THEIRS, OUT_FAILED, OUT_GONE, OUT_EARLY };

static pthread_mutex_t lk = PTHREAD_MUTEX_INITIALIZER;
static int resolved;          /* 0: not tried, 1: CPython >= 3.12, -1: not (under lk) */
static atomic_int want;       /* the agent's request: 1 on, 0 off */
static atomic_int queued;     /* a sync_cb is queued and has not started */
static atomic_int gone;       /* Python's atexit has run: no more requests */
static atomic_int outcome;    /* OUT_* of the latest "on" request */
/* a capture asked for the trampoline and has not read the perf map yet
 * (tb_pytramp_map_done): the map stays at Python's exit until it has
 * (under lk) */
static int map_unread;
static int ours;              /* we turned it on, and it still is (GIL) */
static int ever_ours;         /* we turned it on at least once (GIL) */
static int map_was_there;     /* the perf map existed before we first did (GIL) */
static int hooks_done;        /* atexit / at-fork hooks registered (GIL) */
/* CPython's trampoline evaluator, once sys.activate_stack_trampoline made it
 * (GIL): later captures switch the interpreter's frame evaluator to it and
 * back (PEP 523), as each activate/deactivate pair would take CPython one
 * more code-extra slot (255 in all), a new code arena and a new trampoline
 * and map line for every function. Without that switch, activations are
 * counted and stop at ACTIVATIONS_MAX. */
static void *evaluator;
static int activations;
#define ACTIVATIONS_MAX 16
static int extras_taken;      /* 3.10, 3.11: code-extra indexes we took (GIL) */
static char fail_why[160];    /* OUT_FAILED's reason, written before outcome */
/* 3.12+: the stop found another frame evaluator installed over ours
 * (torch.compile's, for the length of a compiled call), which puts ours
 * back when it is done: the "off" is asked again at off_retry_at
 * (CLOCK_MONOTONIC ns; 0: nothing to retry), every 0.1 s for 30 s, then
 * at waits doubling up to 10 s (GIL for off_wait, off_since) */
static _Atomic int64_t off_retry_at;
static int64_t off_wait, off_since;
static int off_warned;
#define OFF_WAIT_FIRST_NS 100000000LL
#define OFF_WAIT_MAX_NS (10 * 1000000000LL)
#define OFF_WARN_AFTER_NS (30 * 1000000000LL)
static atomic_uint_fast64_t unnamed_calls; /* tb_pytramp_unnamed_calls */

#define LOOK(field, name)                                                                            \
    do {                                                                                             \
        *(void **)&py.field = lookup(name);                                                          \
        if (!py.field)                                                                               \
            return 0;                                                                                \
    } while (0)

/* 1 when the process has a CPython >= 3.12 with everything we call. */
static int resolve(void)
{
    /* the version from Py_Version (3.11+: PY_VERSION_HEX, read-only data),
     * not Py_GetVersion: 3.10's and 3.11's format their static buffer at
     * each call, a race with the job's own calls from this thread */
    const unsigned long *hex = lookup("Py_Version");
    int major = hex ? (int)(*hex >> 24) : 0, minor = hex ? (int)((*hex >> 16) & 0xff) : 0;
    if (!hex && lookup("Py_IsNone")) /* new in 3.10, and Py_Version in 3.11 */
        major = 3, minor = 10;
    if (major != 3 || minor < (OWN_TRAMPOLINE ? 10 : 12))
        return 0;
    py.minor = minor;
    if (minor >= 12) {
        LOOK(version, "Py_GetVersion"); /* (3.12+: formatted once, at start-up) */
        /* a free-threaded build compiles trampolines into shared arenas
         * from every thread at once, unlocked in its perf_trampoline.c:
         * not switched on under a running job's threads */
        if (strstr(py.version(), "free-threading"))
            return 0;
    }
    LOOK(is_initialized, "Py_IsInitialized");
    LOOK(add_pending_call, "Py_AddPendingCall");
    LOOK(import_module, "PyImport_ImportModule");
    LOOK(sys_get, "PySys_GetObject");
    LOOK(dict_get, "PyDict_GetItemString");
    LOOK(call_method, "PyObject_CallMethod");
    LOOK(get_attr, "PyObject_GetAttrString");
    LOOK(call, "PyObject_Call");
    LOOK(tuple_new, "PyTuple_New");
    LOOK(dict_new, "PyDict_New");
    LOOK(dict_set, "PyDict_SetItemString");
    LOOK(cfunction_new, "PyCFunction_NewEx");
    LOOK(is_true, "PyObject_IsTrue");
    LOOK(incref, "Py_IncRef");
    LOOK(decref, "Py_DecRef");
    LOOK(err_fetch, "PyErr_Fetch");
    LOOK(err_clear, "PyErr_Clear");
    LOOK(str, "PyObject_Str");
    LOOK(utf8, "PyUnicode_AsUTF8");
    LOOK(none, "_Py_NoneStruct");
    *(void **)&py.interp_get = lookup("PyInterpreterState_Get");
    *(void **)&py.eval_get = lookup("_PyInterpreterState_GetEvalFrameFunc");
    *(void **)&py.eval_set = lookup("_PyInterpreterState_SetEvalFrameFunc");
    py.eval_default = lookup("_PyEval_EvalFrameDefault");
    if (!py.interp_get || !py.eval_get || !py.eval_set || !py.eval_default)
        py.eval_set = NULL; /* all or nothing */
    *(void **)&py.gil_ensure = lookup("PyGILState_Ensure");
    *(void **)&py.gil_release = lookup("PyGILState_Release");
    *(void **)&py.is_finalizing = lookup(minor >= 13 ? "Py_IsFinalizing" : "_Py_IsFinalizing");
    if (!py.gil_ensure || !py.gil_release || !py.is_finalizing)
        py.gil_ensure = NULL; /* no poke */
    *(void **)&py.map_init = lookup("PyUnstable_PerfMapState_Init");
    *(void **)&py.map_fini = lookup("PyUnstable_PerfMapState_Fini");
    tb_pyframes_resolve(lookup, minor);
    if (minor >= 12)
        return 1;
    /* ours reads the code object at FRAME_CODE and its type at 8: not so
     * in a Py_TRACE_REFS build (two more pointers in every object) */
    if (!py.eval_set || lookup("_Py_ForgetReference"))
        return 0;
    LOOK(extra_index, "_PyEval_RequestCodeExtraIndex");
    LOOK(get_extra, "_PyCode_GetExtra");
    LOOK(set_extra, "_PyCode_SetExtra");
    LOOK(code_type, "PyCode_Type");
    LOOK(err_restore, "PyErr_Restore");
    return 1;
}

static void xdecref(pyobj *o)
{
    if (o)
        py.decref(o);
}

/* Module `name` (a new reference): from sys.modules when it is there (no
 * Python code runs: this is on the job's main thread, inside a capture),
 * else imported. NULL with the error cleared. */
static pyobj *module(const char *name)
{
    pyobj *mods = py.sys_get("modules"); /* borrowed */
    pyobj *m = mods ? py.dict_get(mods, name) : NULL;
    if (m) {
        py.incref(m);
        return m;
    }
    m = py.import_module(name);
    if (!m)
        py.err_clear();
    return m;
}

static void map_path(char *out, size_t n) { snprintf(out, n, "/tmp/perf-%d.map", (int)getpid()); }

/* The pending exception as text in fail_why (then cleared). */
static void take_error(const char *what)
{
    pyobj *t = NULL, *v = NULL, *tb = NULL;
    py.err_fetch(&t, &v, &tb);
    pyobj *s = v ? py.str(v) : NULL;
    const char *msg = s ? py.utf8(s) : NULL;
    snprintf(fail_why, sizeof(fail_why), "%s: %s", what, msg && *msg ? msg : "an exception");
    py.err_clear();
    xdecref(s);
    xdecref(t);
    xdecref(v);
    xdecref(tb);
}

/* 1 on, 0 off, -1 unknown (error cleared) */
static int is_active(pyobj *sys)
{
    pyobj *r = py.call_method(sys, "is_stack_trampoline_active", NULL);
    int on = r ? py.is_true(r) : -1;
    xdecref(r);
    if (on < 0)
        py.err_clear();
    return on;
}

static void own_off(void);

/* 1: off (or never ours to turn off); 0: another frame evaluator is
 * installed over ours and will put it back (PEP 523 chains: torch.compile's
 * keeps the one it replaced and calls it), so it is not off yet */
static int switch_off(void)
{
    if (py.minor < 12) {
        own_off(); /* (own_eval turns itself off at its next call once own_live is 0) */
        return 1;
    }
    if (evaluator && py.eval_set) {
        void *interp = py.interp_get(), *cur = py.eval_get(interp);
        if (cur == evaluator)
            py.eval_set(interp, NULL); /* the default evaluator; CPython's trampoline state stays */
        return cur == evaluator || cur == py.eval_default;
    }
    pyobj *sys = module("sys");
    pyobj *r = sys ? py.call_method(sys, "deactivate_stack_trampoline", NULL) : NULL;
    if (!r)
        py.err_clear(); /* (refused while another evaluator is installed) */
    xdecref(r);
    xdecref(sys);
    return r != NULL;
}

/* Off, or asked again later (switch_off). GIL. */
static void off_or_later(void)
{
    int64_t now = tb_mono_ns();
    if (switch_off()) {
        if (off_since)
            tb_info("python: the perf trampoline is off, %.1f s after the capture's stop (the frame evaluator "
                    "installed over it was gone)", (double)(now - off_since) / 1e9);
        ours = 0;
        off_wait = off_since = 0;
        off_warned = 0;
        atomic_store(&off_retry_at, 0);
        return;
    }
    if (!off_since) {
        off_since = now;
        tb_info("python: the perf trampoline stays on after the capture for now: another frame evaluator "
                "(PEP 523: torch.compile's) is installed over it; turned off once that one puts it back");
    } else if (now - off_since >= OFF_WARN_AFTER_NS && !off_warned) {
        off_warned = 1;
        tb_warn("python: the perf trampoline is still on %.0f s after the capture's stop: another frame "
                "evaluator (PEP 523) stays installed over it, and the job's Python calls pay for ours "
                "meanwhile; tbprof keeps trying every %.0f s", (double)(now - off_since) / 1e9,
                OFF_WAIT_MAX_NS / 1e9);
    }
    /* torch.compile's evaluator comes back for each compiled call: a retry
     * gets through where it lands between two (0.1 s apart for 30 s) */
    off_wait = now - off_since < OFF_WARN_AFTER_NS ? OFF_WAIT_FIRST_NS
               : off_wait * 2 > OFF_WAIT_MAX_NS ? OFF_WAIT_MAX_NS : off_wait * 2;
    atomic_store(&off_retry_at, now + off_wait);
    tb_agent_wake();
}

/* 1: path is a regular file of ours last written before this process
 * started (an earlier process's with this pid: CPython never removes its
 * maps); 0: one written since (or when this process started cannot be
 * read); 2: not a regular file of ours; -1: no such file. */
static int map_stale(const char *path)
{
    struct stat st;
    time_t start;
    if (lstat(path, &st) < 0)
        return -1;
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid())
        return 2;
    return tb_proc_start((int)getpid(), NULL, 0, &start) == 0 && st.st_mtime + 2 < start;
}

/* A perf map for this pid older than this process: an earlier process's
 * with the same pid (CPython never removes its maps, and pids wrap at
 * pid_max, 32768 on many machines). CPython would append to it, its lines
 * would name addresses of ours, and it would stay as not ours. Removed here
 * (2 s of slack: /proc gives the start to the second); 1 when it was. */
static int drop_stale_map(const char *path)
{
    if (map_stale(path) != 1 || unlink(path) < 0)
        return 0;
    tb_debug("python: removed %s, left by an earlier process with this pid", path);
    return 1;
}

/* Before a perf map is made for our trampolines (CPython's or ours): 1
 * when one was there already (an earlier one of ours, or the job's own, to
 * be kept at exit); a stale one of an earlier process is removed first. */
static int map_there_before(const char *path)
{
    return access(path, F_OK) == 0 && (ever_ours || !drop_stale_map(path));
}

/* The map is made: ours to remove at exit, unless it was there before we
 * first made it (had_map: map_there_before's answer). */
static void map_made(int had_map)
{
    if (!ever_ours)
        map_was_there = had_map;
    ever_ours = 1;
}

static void unlink_our_map(void)
{
    char path[64];
    map_path(path, sizeof(path));
    if (ever_ours && !map_was_there)
        unlink(path);
}

/* Python's atexit: the interpreter is about to finalize. */
static pyobj *on_python_exit(pyobj *self, pyobj *unused)
{
    (void)self, (void)unused;
    pthread_mutex_lock(&lk);
    atomic_store(&gone, 1);
    int unread = map_unread;
    pthread_mutex_unlock(&lk);
    /* the map names our trampolines for the agent; a capture still running,
     * or stopped and not collected yet, reads it after this (at exit, or
     * on the agent thread now): tb_pytramp_map_done removes it then */
    if (!unread)
        unlink_our_map();
    py.incref(py.none);
    return py.none;
}

/* os.register_at_fork(after_in_child=...): a child does not inherit the
 * parent's capture, so it does not keep the trampoline that capture had on
 * (CPython re-creates it in a child with its own map). The fork itself ran
 * tb_pytramp_atfork_child first: nothing is wanted, and the evaluator is
 * forgotten, so this switches off through CPython and the child's next
 * capture activates afresh. */
static pyobj *on_fork_child(pyobj *self, pyobj *unused)
{
    (void)self, (void)unused;
    if (ours) {
        switch_off();
        ours = 0;
        unlink_our_map(); /* this pid's: made by CPython since the fork */
    }
    ever_ours = 0;
    map_was_there = 0;
    py.incref(py.none);
    return py.none;
}

static py_method_def exit_def = {"_tbprof_python_exit", on_python_exit, PY_METH_NOARGS, NULL};
static py_method_def child_def = {"_tbprof_after_fork_child", on_fork_child, PY_METH_NOARGS, NULL};

/* The fd 0-2 that the file at path is open on, or -1. */
static int stdio_fd_of(const char *path)
{
    struct stat m, s;
    if (stat(path, &m) < 0)
        return -1;
    for (int fd = 0; fd < 3; fd++)
        if (fstat(fd, &s) == 0 && s.st_dev == m.st_dev && s.st_ino == m.st_ino)
            return fd;
    return -1;
}

/* After CPython opened its perf map under turn_on's hold: the hold cannot
 * take a number another thread holds for a moment (the agent's own hold
 * while it starts the sources, a file it opens and closes), and when that
 * thread lets go before CPython's open, the map gets the job's closed
 * stdout all the same. It is closed and opened again under a new hold:
 * CPython opens it O_APPEND, so what it wrote stays, and its trampolines
 * write to it under the GIL, which the caller holds. 1 when the map is off
 * fds 0-2; 0, with fail_why, when it could not be moved (it is closed
 * then: nothing more reaches that fd). */
static int map_off_stdio(const char *path)
{
    for (int tries = 0;; tries++) {
        int fd = stdio_fd_of(path);
        if (fd < 0)
            return 1;
        if (tries == 4 || !py.map_init || !py.map_fini) {
            if (py.map_fini)
                py.map_fini();
            snprintf(fail_why, sizeof(fail_why), "CPython's perf map took fd %d, which the job had closed, "
                     "and could not be moved off it", fd);
            return 0;
        }
        py.map_fini();
        if (tries) /* the other thread's moment is not over: give it one */
            nanosleep(&(struct timespec){0, 1000000}, NULL);
        unsigned held = tb_stdio_hold();
        int rc = py.map_init();
        tb_stdio_release(held);
        if (rc != 0) {
            snprintf(fail_why, sizeof(fail_why), "CPython's perf map %s could not be opened again", path);
            return 0;
        }
        tb_debug("python: moved CPython's perf map off fd %d", fd);
    }
}

/* ---- CPython 3.10 and 3.11: a perf trampoline of our own ----------------
 *
 * What 3.12's does, through PEP 523's frame-evaluator switch: while a
 * capture is on, the interpreter runs each Python call through own_eval,
 * which calls CPython's own evaluator from a small stub of machine code,
 * one per code object (kept in the code object's co_extra slot of ours),
 * and names the stub in /tmp/perf-<pid>.map as `py::<qualname>:<file>` the
 * first time. The stub's bytes are 3.12's trampoline's, so the unwinder
 * steps over ours as over CPython's, and the collect names them from the
 * same map. With an evaluator set, CPython makes every Python-to-Python
 * call through it (3.11 runs them inline otherwise): that is the cost while
 * capturing, as with 3.12's. Off again, the default evaluator is back and
 * nothing of ours runs; the stubs stay mapped (a frame may still be in one)
 * and are used again by the next capture. Everything here runs on a Python
 * thread holding the GIL. */
#if OWN_TRAMPOLINE
/* the code object in the frame the evaluator is given: PyFrameObject's
 * f_code in 3.10, _PyInterpreterFrame's in 3.11 (both at 32, from their
 * headers; Py_TRACE_REFS builds, where it is not, are refused in resolve) */
#define FRAME_CODE 32
/* sub $8,%rsp ; call *%rcx ; add $8,%rsp ; ret (then int3 padding): the
 * 4th argument is the evaluator to call */
static const unsigned char stub_code[16] = {0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83,
                                            0xc4, 0x08, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc};
#define STUB_SIZE sizeof(stub_code)
#define ARENA_SIZE ((size_t)1 << 20) /* 65,536 stubs */
#define ARENAS_MAX 8                 /* then functions new to the job run unnamed */
typedef pyobj *(*eval_fn)(void *tstate, void *frame, int throwflag);
typedef pyobj *(*stub_fn)(void *tstate, void *frame, int throwflag, eval_fn eval);
static unsigned char *arena;
static size_t arena_used;
static int narenas;
static ssize_t extra = -1; /* our co_extra index, or -1 */
static int own_map = -1;   /* /tmp/perf-<pid>.map, opened by us, or -1 */
static dev_t map_dev;      /* ...and the file it is */
static ino_t map_ino;
/* a capture wants ours on (from its start's sync_cb to its stop's): where
 * own_eval runs without it (put back by a wrapper that saved it, as
 * torch.compile's does, or inherited by a child forked in C), it gives the
 * interpreter back the default evaluator */
static int own_live;
#define EXTRAS_MAX 16
/* the lowest address a thread's C stack may use before own_eval gives the
 * interpreter back its default evaluator (0: not known yet; 1: none) */
static __thread uintptr_t stack_floor;

/* With an evaluator set, every Python call nests in C (3.11 runs Python
 * calls inline otherwise; 3.10 nests two C frames less per call): a
 * recursion the job runs fine (sys.setrecursionlimit(100000)) would
 * overflow the C stack and crash it. Once a thread has used a sixteenth of
 * its stack (some hundreds of calls; of a small stack a quarter, up to 64
 * KiB; where its bounds cannot be read, 256 KiB past its first call seen
 * here), ours goes off for the rest of the
 * capture, for every thread (the evaluator is the interpreter's), and the
 * calls from there on run as without tbprof: what ours added stays within
 * a small part of that sixteenth. 1 when this call is that deep. */
static __attribute__((noinline)) void find_stack_floor(uintptr_t here)
{
    pthread_attr_t a;
    void *lo = NULL;
    size_t size = 0;
    /* (unknown bounds: 256 KiB below the first call seen) */
    stack_floor = here > ((uintptr_t)1 << 18) ? here - ((uintptr_t)1 << 18) : 1;
    if (pthread_getattr_np(pthread_self(), &a) == 0) {
        if (pthread_attr_getstack(&a, &lo, &size) == 0 && size && here > (uintptr_t)lo) {
            /* a sixteenth; on a small stack (musl's 128 KiB) a quarter, up to 64 KiB */
            size_t budget = size / 16, small = size / 4 < ((size_t)64 << 10) ? size / 4 : (size_t)64 << 10;
            stack_floor = (uintptr_t)lo + size - (budget > small ? budget : small); /* (the top: lo + size) */
        }
        pthread_attr_destroy(&a);
    }
}

static inline int stack_deep(void)
{
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    if (!stack_floor)
        find_stack_floor(here);
    return here < stack_floor;
}

/* A new arena of stubs (written, then made executable), or 0 where the
 * system refuses executable memory (SELinux's execmem, a hardened
 * kernel) or the cap is reached. */
static int new_arena(void)
{
    if (narenas >= ARENAS_MAX)
        return 0;
    unsigned char *m = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return 0;
    for (size_t o = 0; o < ARENA_SIZE; o += STUB_SIZE)
        memcpy(m + o, stub_code, STUB_SIZE);
    if (mprotect(m, ARENA_SIZE, PROT_READ | PROT_EXEC) < 0) {
        munmap(m, ARENA_SIZE);
        return 0;
    }
    arena = m;
    arena_used = 0;
    narenas++;
    return 1;
}

/* own_map is still the map we opened (st: its fstat): the job may have
 * closed our fd and opened a file of its own on the number (a daemon's
 * closerange) */
static int own_map_is_ours(struct stat *st)
{
    return own_map >= 0 && fstat(own_map, st) == 0 && st->st_dev == map_dev && st->st_ino == map_ino;
}

/* code's name line in our map: `<stub> <size> py::<qualname>:<file>` */
static void name_stub(const void *stub, pyobj *code)
{
    pyobj *q = py.get_attr(code, py.minor >= 11 ? "co_qualname" : "co_name");
    pyobj *f = py.get_attr(code, "co_filename");
    const char *qs = q ? py.utf8(q) : NULL, *fs = f ? py.utf8(f) : NULL;
    char line[640];
    int k = snprintf(line, sizeof(line), "%lx %zx py::%s:%s\n", (unsigned long)(uintptr_t)stub, STUB_SIZE,
                     qs ? qs : "?", fs ? fs : "?");
    if (k >= (int)sizeof(line)) { /* a very long name: cut */
        k = (int)sizeof(line) - 1;
        line[k - 1] = '\n';
    }
    struct stat st;
    if (k > 0 && own_map_is_ours(&st) && write(own_map, line, (size_t)k) < 0) {
        /* (a full /tmp: that function shows unnamed) */
    }
    xdecref(q);
    xdecref(f);
}

static pyobj *own_eval(void *tstate, void *frame, int throwflag);

/* A stub for code, named in our map; NULL where none can be had. (Kept
 * out of own_eval, as the other slow paths are: what they put on the
 * stack would be on it at every call.) */
static __attribute__((noinline)) void *make_stub(pyobj *code)
{
    if (arena_used == ARENA_SIZE)
        new_arena();
    if (!arena || arena_used == ARENA_SIZE)
        return NULL;
    void *stub = NULL;
    /* (the job's exception, with throwflag, stays as it was: what runs
     * here may set and clear one) */
    pyobj *t = NULL, *v = NULL, *tb = NULL;
    py.err_fetch(&t, &v, &tb);
    if (py.set_extra(code, extra, arena + arena_used) == 0) {
        stub = arena + arena_used;
        arena_used += STUB_SIZE;
        name_stub(stub, code);
    }
    py.err_clear();
    py.err_restore(t, v, tb);
    return stub;
}

/* Ours off: the interpreter's default evaluator back where ours is in
 * place, and own_eval passing calls straight through. */
static void own_off(void)
{
    own_live = 0;
    if (py.eval_get(py.interp_get()) == (void *)own_eval)
        py.eval_set(py.interp_get(), py.eval_default);
}

/* own_eval should not run: no capture wants it (a wrapper put it back
 * after the stop, a C fork's child inherited it), or this call is too deep
 * (stack_deep). The interpreter gets its default evaluator back where ours
 * is in place; a capture's cut is said once, in its profile. */
static __attribute__((noinline)) void give_back(void)
{
    int live = own_live;
    own_off();
    if (!live) /* (said once; after the capture's stop, not at all) */
        return;
    snprintf(fail_why, sizeof(fail_why), "turned off during the capture: a deep Python recursion used its "
             "share of the C stack (each call nests in C while it is on)");
    atomic_store(&outcome, OUT_FAILED);
}

static pyobj *own_eval(void *tstate, void *frame, int throwflag)
{
    eval_fn eval = (eval_fn)py.eval_default;
    if (!own_live || stack_deep()) {
        give_back();
        return eval(tstate, frame, throwflag);
    }
    pyobj *code = *(pyobj **)((char *)frame + FRAME_CODE);
    void *stub = NULL;
    if (code && *(void **)((char *)code + 8) == py.code_type && extra >= 0 &&
        py.get_extra(code, extra, &stub) == 0 && !stub && own_map >= 0)
        stub = make_stub(code);
    if (stub)
        return ((stub_fn)stub)(tstate, frame, throwflag, eval);
    atomic_fetch_add_explicit(&unnamed_calls, 1, memory_order_relaxed);
    return eval(tstate, frame, throwflag);
}

/* Our map and stubs forgotten: in a fork child, the map open is the
 * parent's (its pid's name), and the parent named our stubs there; a map
 * removed since it was opened names nothing either. The next capture opens
 * a map and takes a new co_extra index, so functions get stubs named
 * there. */
static void own_map_forget(void)
{
    struct stat st;
    if (own_map_is_ours(&st)) /* (not a file of the job's on the number) */
        close(own_map);
    own_map = -1;
    extra = -1;
    own_live = 0;
}

/* Turns ours on (the default evaluator in place); fail_why where it
 * cannot. 1 when on. */
static int own_on(void)
{
    void *interp = py.interp_get();
    void *cur = py.eval_get(interp);
    if (cur != py.eval_default && cur != (void *)own_eval) {
        snprintf(fail_why, sizeof(fail_why), "another frame evaluator is installed (PEP 523: a debugger's, "
                                             "torch.compile's)");
        return 0;
    }
    struct stat st;
    char path[64];
    map_path(path, sizeof(path));
    if (own_map >= 0 && !own_map_is_ours(&st)) {
        /* the fd is not our map any more (the job closed it, and the number
         * may be a file of its own now: left alone); the map itself, still
         * at its path, is opened again below, its stubs named there */
        own_map = -1;
    }
    if (own_map >= 0 ? st.st_nlink == 0
                     : extra >= 0 && (stat(path, &st) != 0 || st.st_dev != map_dev || st.st_ino != map_ino)) {
        /* the map was removed (a /tmp cleaner): a new one, and new stubs
         * named there (each a new code-extra index of CPython's 255) */
        own_map_forget();
    }
    if (extra < 0 && extras_taken >= EXTRAS_MAX) {
        snprintf(fail_why, sizeof(fail_why), "its perf map was removed %d times in this process (each new one "
                 "costs CPython a code-extra slot)", extras_taken - 1);
        return 0;
    }
    if (extra < 0 && (extra = py.extra_index(NULL)) >= 0)
        extras_taken++;
    if (extra < 0) {
        snprintf(fail_why, sizeof(fail_why), "CPython has no code-extra slot left for us");
        return 0;
    }
    if (!arena && !new_arena()) {
        snprintf(fail_why, sizeof(fail_why), "executable memory for the trampolines was refused (%s)",
                 strerror(errno));
        return 0;
    }
    if (own_map < 0) {
        int had_map = map_there_before(path);
        /* (off fds 0-2: a job with its stdout closed now gets it back) */
        own_map = tb_fd_above_stdio(open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (own_map < 0 || fstat(own_map, &st) < 0) {
            snprintf(fail_why, sizeof(fail_why), "cannot write %s: %s", path, strerror(errno));
            if (own_map >= 0)
                close(own_map);
            own_map = -1;
            return 0;
        }
        map_dev = st.st_dev;
        map_ino = st.st_ino;
        map_made(had_map);
    }
    own_live = 1;
    if (cur != (void *)own_eval)
        py.eval_set(interp, (void *)own_eval);
    return 1;
}

static void *own_evaluator(void) { return (void *)own_eval; }

#else
static void *own_evaluator(void) { return NULL; }
static int own_on(void) { return 0; }
static void own_off(void) {}
static void own_map_forget(void) {}
#endif

static void register_hooks(void)
{
    if (hooks_done)
        return;
    hooks_done = 1;
    pyobj *f = py.cfunction_new(&exit_def, NULL, NULL);
    pyobj *m = f ? module("atexit") : NULL;
    pyobj *r = m ? py.call_method(m, "register", "O", f) : NULL;
    if (!r) {
        py.err_clear();
        tb_debug("python: atexit.register failed");
    }
    xdecref(r);
    xdecref(m);
    xdecref(f);

    f = py.cfunction_new(&child_def, NULL, NULL);
    m = f ? module("os") : NULL;
    pyobj *reg = m ? py.get_attr(m, "register_at_fork") : NULL;
    pyobj *args = reg ? py.tuple_new(0) : NULL;
    pyobj *kw = args ? py.dict_new() : NULL;
    r = kw && py.dict_set(kw, "after_in_child", f) == 0 ? py.call(reg, args, kw) : NULL;
    if (!r) {
        py.err_clear();
        tb_debug("python: os.register_at_fork failed");
    }
    xdecref(r);
    xdecref(kw);
    xdecref(args);
    xdecref(reg);
    xdecref(m);
    xdecref(f);
}

/* 1 when it is on, by us (OUT_OURS) */
static int turn_on(pyobj *sys)
{
    if (evaluator && py.eval_set) { /* made before: switch back to it */
        void *interp = py.interp_get();
        if (py.eval_get(interp) != py.eval_default && ours) {
            /* ours still, under another evaluator since the last stop
             * (off_or_later): on, its calls chained through ours */
            atomic_store(&outcome, OUT_OURS);
            return 0;
        }
        if (py.eval_get(interp) != py.eval_default) { /* not ours to replace */
            snprintf(fail_why, sizeof(fail_why), "another frame evaluator is installed (PEP 523: "
                                                 "torch.compile's, a debugger's)");
            atomic_store(&outcome, OUT_FAILED);
            return 0;
        }
        py.eval_set(interp, evaluator);
        ours = 1;
        atomic_store(&outcome, OUT_OURS);
        return 1;
    }
    if (activations >= ACTIVATIONS_MAX) {
        snprintf(fail_why, sizeof(fail_why), "turned on %d times in this process already (each costs "
                 "CPython a code-extra slot and a trampoline per function)", activations);
        atomic_store(&outcome, OUT_FAILED);
        return 0;
    }
    char path[64];
    map_path(path, sizeof(path));
    int had_map = map_there_before(path);
    /* CPython opens its perf map here and writes to it for as long as the
     * process lives: a job that has closed its stdin, stdout or stderr at
     * this moment (redirecting them) must not see the map take the number,
     * or the dup2() that puts its stdout back would send map lines there */
    unsigned held = tb_stdio_hold();
    pyobj *r = py.call_method(sys, "activate_stack_trampoline", "s", "perf");
    tb_stdio_release(held);
    if (!r) {
        take_error("sys.activate_stack_trampoline(\"perf\")");
        atomic_store(&outcome, OUT_FAILED);
        return 0;
    }
    xdecref(r);
    activations++;
    map_made(had_map); /* (CPython's, ours to remove) */
    if (!map_off_stdio(path)) {
        /* off again: a later activation has CPython open the map afresh */
        r = py.call_method(sys, "deactivate_stack_trampoline", NULL);
        if (!r)
            py.err_clear();
        xdecref(r);
        atomic_store(&outcome, OUT_FAILED);
        return 0;
    }
    if (py.eval_set)
        evaluator = py.eval_get(py.interp_get());
    ours = 1;
    atomic_store(&outcome, OUT_OURS);
    return 1;
}

/* Main thread, GIL held: make the trampoline match `want`. Never raises
 * (returning -1 would raise in the job's code). */
static int sync_cb(void *arg)
{
    (void)arg;
    atomic_store(&queued, 0); /* before reading want: a later request queues again */
    if (atomic_load(&gone))
        return 0;
    register_hooks();
    int on = atomic_load(&want);
    if (py.minor < 12) { /* ours: nobody else's to find on */
        if (!on) {
            own_off();
            ours = 0;
        } else if (own_on()) {
            ours = 1;
            atomic_store(&outcome, OUT_OURS);
            tb_pyframes_take(own_evaluator(), atomic_load(&unnamed_calls));
        } else {
            atomic_store(&outcome, OUT_FAILED);
        }
        return 0;
    }
    pyobj *sys = module("sys");
    if (!sys) {
        snprintf(fail_why, sizeof(fail_why), "no sys module");
        if (on)
            atomic_store(&outcome, OUT_FAILED);
        return 0;
    }
    if (on) /* (a stop's "off" still asked again: this capture's stop starts afresh) */
        off_wait = off_since = off_warned = 0;
    int active = is_active(sys);
    int took = 0; /* on by us now, since the frames that run unnamed were entered */
    if (on && active == 0)
        took = turn_on(sys);
    else if (on && active == 1)
        atomic_store(&outcome, (took = ours) ? OUT_OURS : OUT_THEIRS);
    else if (on) {
        snprintf(fail_why, sizeof(fail_why), "sys.is_stack_trampoline_active() failed");
        atomic_store(&outcome, OUT_FAILED);
    } else if (ours) {
        off_or_later();
    }
    xdecref(sys);
    if (took) /* those frames named from the list (pyframes.h) */
        tb_pyframes_take(evaluator, atomic_load(&unnamed_calls));
    return 0;
}

/* CPython 3.10 to 3.12 flag a pending call to the main thread only when it
 * is added from the main thread itself (3.13 flags it from any): a main thread
 * that runs Python without ever giving up the GIL (a pure-Python loop) does
 * not run ours until something makes it switch. A thread of ours that asks
 * for the GIL does: the main thread hands it over, and on taking it back
 * sees the call. Detached, one at a time, never the agent thread: CPython
 * ends a thread that asks for the GIL once finalizing has begun
 * (pthread_exit), which the checks below only make unlikely. No Python
 * code runs in it. */
static atomic_int poking;

static void *poke_main(void *arg)
{
    (void)arg;
    if (!atomic_load(&gone) && py.is_initialized() && !py.is_finalizing())
        py.gil_release(py.gil_ensure());
    atomic_store(&poking, 0);
    return NULL;
}

static void poke(void)
{
    if (py.minor > 12 || !py.gil_ensure || atomic_exchange(&poking, 1))
        return;
    if (tb_agent_spawn(poke_main, NULL) != 0)
        atomic_store(&poking, 0);
}

/* Python's functions looked up at the first ask; whether they are all
 * there (under lk) */
static int have_python(void)
{
    if (!resolved)
        resolved = resolve() ? 1 : -1;
    return resolved > 0;
}

/* tb_pytramp_request; 1 when the interpreter refused the pending call */
static int request(int on)
{
    int refused = 0, finalizing = 0;
    pthread_mutex_lock(&lk);
    if (!have_python()) {
        pthread_mutex_unlock(&lk);
        return 0;
    }
    atomic_store(&want, on != 0);
    if (on) {
        map_unread = 1;
        atomic_store(&off_retry_at, 0); /* (this capture's stop asks again) */
    }
    if (atomic_load(&gone) || !py.is_initialized()) {
        if (on) /* (TBPROF_DELAY=0: the capture begins before the interpreter) */
            atomic_store(&outcome, atomic_load(&gone) ? OUT_GONE : OUT_EARLY);
    } else {
        if (on)
            atomic_store(&outcome, OUT_PENDING);
        if (!atomic_exchange(&queued, 1) && py.add_pending_call(sync_cb, NULL) != 0) {
            atomic_store(&queued, 0);
            refused = 1;
            finalizing = py.is_finalizing && py.is_finalizing();
        }
    }
    int pending = atomic_load(&queued);
    pthread_mutex_unlock(&lk);
    if (pending)
        poke();
    /* (a queue of 32, ours one at most: full of other code's calls the
     * main thread has not run, or shutting down) */
    if (refused)
        tb_warn_once("python: the interpreter refused our pending call (%s); the perf trampoline %s until "
                     "the next capture's request gets through",
                     finalizing ? "it is shutting down" : "its pending-call queue is full",
                     on ? "stays off for this capture" : "stays on");
    return refused && !finalizing;
}

void tb_pytramp_request(int on) { (void)request(on); }

int64_t tb_pytramp_retry_at(void)
{
    return atomic_load(&want) ? 0 : atomic_load(&off_retry_at);
}

void tb_pytramp_retry(int64_t now)
{
    int64_t at = atomic_load(&off_retry_at);
    if (!at || now < at || atomic_load(&want) || !atomic_compare_exchange_strong(&off_retry_at, &at, 0))
        return;
    if (request(0)) /* (a full queue: later again) */
        atomic_store(&off_retry_at, now + OFF_WAIT_MAX_NS);
}

uint64_t tb_pytramp_unnamed_calls(void) { return atomic_load_explicit(&unnamed_calls, memory_order_relaxed); }

void tb_pytramp_dying(void)
{
    unlink_our_map(); /* whoever would still read it ends with the process */
}

void tb_pytramp_map_done(void)
{
    pthread_mutex_lock(&lk);
    int drop = map_unread && atomic_load(&gone);
    map_unread = 0;
    pthread_mutex_unlock(&lk);
    /* (ever_ours, map_was_there: last written with the GIL before Python's
     * exit hook set `gone` under lk) */
    if (drop)
        unlink_our_map();
}

int tb_pytramp_prologue_keeps_fp(const unsigned char *code, size_t n)
{
#if defined(__x86_64__)
    static const unsigned char endbr64[4] = {0xf3, 0x0f, 0x1e, 0xfa};
    size_t i = n >= 4 && memcmp(code, endbr64, 4) == 0 ? 4 : 0;
    /* mov %rsp,%rbp: 48 89 e5, or 48 8b ec */
    return n >= i + 4 && code[i] == 0x55 && code[i + 1] == 0x48 &&
           ((code[i + 2] == 0x89 && code[i + 3] == 0xe5) || (code[i + 2] == 0x8b && code[i + 3] == 0xec));
#elif defined(__aarch64__)
    for (size_t i = 0; i + 4 <= n && i < 64; i += 4) {
        uint32_t insn;
        memcpy(&insn, code + i, 4);
        if ((insn & 0xffc003ffu) == 0x910003fdu) /* add x29, sp, #imm12 (unshifted) */
            return 1;
    }
    return 0;
#else
    (void)code;
    (void)n;
    return 0;
#endif
}

int tb_pytramp_frame_pointers(void)
{
    pthread_mutex_lock(&lk);
    int have = have_python();
    pthread_mutex_unlock(&lk);
    if (!have)
        return -1;
    const void *efd = lookup("_PyEval_EvalFrameDefault");
    unsigned char code[64];
    /* (read as a copy: fails cleanly where the code is not readable) */
    return efd && tb_self_read(code, (uint64_t)(uintptr_t)efd, sizeof(code), 1) == 0 &&
           tb_pytramp_prologue_keeps_fp(code, sizeof(code));
}

int tb_pytramp_describe(char *out, size_t n)
{
    pthread_mutex_lock(&lk);
    int have = resolved > 0;
    pthread_mutex_unlock(&lk);
    if (!have)
        return 0;
    switch (atomic_load(&outcome)) {
    case OUT_OURS:
        snprintf(out, n, "%s", TB_PYTRAMP_ON_DURING);
        break;
    case OUT_THEIRS:
        snprintf(out, n, "on for the whole run (PYTHONPERFSUPPORT=1 or the program)");
        break;
    case OUT_FAILED:
        snprintf(out, n, "off: %s", fail_why);
        break;
    case OUT_GONE:
        snprintf(out, n, "off (the interpreter was not running)");
        break;
    case OUT_EARLY: {
        /* not ours to turn on; PYTHONPERFSUPPORT=1 or -X perf may have, at
         * the interpreter's start: then CPython writes its map */
        char map[64];
        map_path(map, sizeof(map));
        snprintf(out, n, map_stale(map) == 0
                             ? "on (PYTHONPERFSUPPORT=1 or -X perf: the capture began before the interpreter ran)"
                             : "off (the capture began before the interpreter ran)");
        break;
    }
    case OUT_PENDING:
        snprintf(out, n, "off (asked for; the main thread ran no Python code during the capture, or held the "
                         "interpreter's lock in C code all along)");
        break;
    default:
        return 0;
    }
    return 1;
}

void tb_pytramp_atfork_child(void)
{
    pthread_mutex_init(&lk, NULL);
    /* a request queued in the parent may still run in the child (CPython
     * keeps its pending calls across fork): it must find nothing wanted.
     * CPython re-made (or dropped) its trampoline state in the child: the
     * evaluator is forgotten (on_fork_child relies on both) */
    atomic_store(&want, 0);
    atomic_store(&queued, 0);
    atomic_store(&outcome, OUT_NONE);
    atomic_store(&off_retry_at, 0);
    off_wait = off_since = 0;
    off_warned = 0;
    map_unread = 0;
    evaluator = NULL;
    activations = 0;
    own_map_forget();
    extras_taken = 0; /* (a child's own count: a new index for each of its maps) */
    tb_pyframes_atfork_child();
}

void tb_pytramp_reset_for_test(void *(*fn)(const char *name))
{
    lookup = fn ? fn : default_lookup;
    memset(&py, 0, sizeof(py));
    resolved = 0;
    atomic_store(&want, 0);
    atomic_store(&queued, 0);
    atomic_store(&gone, 0);
    atomic_store(&outcome, OUT_NONE);
    ours = ever_ours = map_was_there = hooks_done = activations = map_unread = 0;
    atomic_store(&off_retry_at, 0);
    off_wait = off_since = 0;
    off_warned = 0;
    evaluator = NULL;
    fail_why[0] = '\0';
    own_map_forget();
    extras_taken = 0;
}
