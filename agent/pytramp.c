/* pytramp.c - CPython's perf trampoline on for captures only (pytramp.h).
 *
 * Nothing here includes Python.h: the few functions used are looked up with
 * dlsym at the first request and called through pointers, with PyObject
 * opaque. The work that needs the interpreter runs in sync_cb(), queued by
 * Py_AddPendingCall and run by the main thread with the GIL; it makes the
 * trampoline match `want`, so requests that cross (a capture's stop before
 * its start was run) end right.
 *
 * Threads: tb_pytramp_request() on the agent thread, under `lk`; sync_cb()
 * and the two hooks on a Python thread holding the GIL. `lk` also orders
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
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "capture.h"
#include "log.h"
#include "util.h"

typedef struct pyobj pyobj; /* PyObject */

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
static char fail_why[160];    /* OUT_FAILED's reason, written before outcome */

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
     * not Py_GetVersion: 3.11's formats its static buffer at each call, a
     * race with the job's own calls from this thread */
    const unsigned long *hex = lookup("Py_Version");
    int major = hex ? (int)(*hex >> 24) : 0, minor = hex ? (int)((*hex >> 16) & 0xff) : 0;
    if (major != 3 || minor < 12)
        return 0;
    py.minor = minor;
    LOOK(version, "Py_GetVersion"); /* (3.12+: formatted once, at start-up) */
    /* a free-threaded build compiles trampolines into shared arenas from
     * every thread at once, unlocked in its perf_trampoline.c: not switched
     * on under a running job's threads */
    if (strstr(py.version(), "free-threading"))
        return 0;
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

static void switch_off(void)
{
    if (evaluator && py.eval_set) {
        void *interp = py.interp_get();
        if (py.eval_get(interp) == evaluator)
            py.eval_set(interp, NULL); /* the default evaluator; CPython's trampoline state stays */
        return;
    }
    pyobj *sys = module("sys");
    pyobj *r = sys ? py.call_method(sys, "deactivate_stack_trampoline", NULL) : NULL;
    if (!r)
        py.err_clear();
    xdecref(r);
    xdecref(sys);
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

static void turn_on(pyobj *sys)
{
    if (evaluator && py.eval_set) { /* made before: switch back to it */
        void *interp = py.interp_get();
        if (py.eval_get(interp) != py.eval_default) { /* not ours to replace */
            snprintf(fail_why, sizeof(fail_why), "another frame evaluator is installed (PEP 523: "
                                                 "torch.compile's, a debugger's)");
            atomic_store(&outcome, OUT_FAILED);
            return;
        }
        py.eval_set(interp, evaluator);
        ours = 1;
        atomic_store(&outcome, OUT_OURS);
        return;
    }
    if (activations >= ACTIVATIONS_MAX) {
        snprintf(fail_why, sizeof(fail_why), "turned on %d times in this process already (each costs "
                 "CPython a code-extra slot and a trampoline per function)", activations);
        atomic_store(&outcome, OUT_FAILED);
        return;
    }
    char path[64];
    map_path(path, sizeof(path));
    int had_map = access(path, F_OK) == 0 && (ever_ours || !drop_stale_map(path));
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
        return;
    }
    xdecref(r);
    activations++;
    if (!ever_ours)
        map_was_there = had_map;
    ever_ours = 1; /* the map is CPython's now, ours to remove */
    if (!map_off_stdio(path)) {
        /* off again: a later activation has CPython open the map afresh */
        r = py.call_method(sys, "deactivate_stack_trampoline", NULL);
        if (!r)
            py.err_clear();
        xdecref(r);
        atomic_store(&outcome, OUT_FAILED);
        return;
    }
    if (py.eval_set)
        evaluator = py.eval_get(py.interp_get());
    ours = 1;
    atomic_store(&outcome, OUT_OURS);
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
    pyobj *sys = module("sys");
    if (!sys) {
        snprintf(fail_why, sizeof(fail_why), "no sys module");
        if (on)
            atomic_store(&outcome, OUT_FAILED);
        return 0;
    }
    int active = is_active(sys);
    if (on && active == 0)
        turn_on(sys);
    else if (on && active == 1)
        atomic_store(&outcome, ours ? OUT_OURS : OUT_THEIRS);
    else if (on) {
        snprintf(fail_why, sizeof(fail_why), "sys.is_stack_trampoline_active() failed");
        atomic_store(&outcome, OUT_FAILED);
    } else if (ours) {
        if (active == 1)
            switch_off();
        ours = 0;
    }
    xdecref(sys);
    return 0;
}

/* CPython 3.12 flags a pending call to the main thread only when it is
 * added from the main thread itself (3.13 flags it from any): a main thread
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
    if (py.minor != 12 || !py.gil_ensure || atomic_exchange(&poking, 1))
        return;
    if (tb_agent_spawn(poke_main, NULL) != 0)
        atomic_store(&poking, 0);
}

void tb_pytramp_request(int on)
{
    int refused = 0, finalizing = 0;
    pthread_mutex_lock(&lk);
    if (!resolved)
        resolved = resolve() ? 1 : -1;
    if (resolved < 0) {
        pthread_mutex_unlock(&lk);
        return;
    }
    atomic_store(&want, on != 0);
    if (on)
        map_unread = 1;
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
}

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

int tb_pytramp_describe(char *out, size_t n)
{
    pthread_mutex_lock(&lk);
    int have = resolved > 0;
    pthread_mutex_unlock(&lk);
    if (!have)
        return 0;
    switch (atomic_load(&outcome)) {
    case OUT_OURS:
        snprintf(out, n, "on during the capture (turned on at its start: Python frames entered before "
                         "then show as the interpreter)");
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
    map_unread = 0;
    evaluator = NULL;
    activations = 0;
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
    evaluator = NULL;
    fail_why[0] = '\0';
}
