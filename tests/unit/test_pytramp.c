/* test_pytramp.c - CPython's perf trampoline on for captures only
 * (agent/pytramp.h), against a fake interpreter: the Python functions
 * pytramp.c looks up are answered from a table here, pending calls wait in a
 * queue until the test runs them as the main thread would, and the fake
 * sys/atexit/os modules record what was asked of them.
 *
 * Checked: nothing happens outside CPython >= 3.12 or before it is
 * initialized; a capture's start turns the trampoline on (through a pending
 * call, never directly) and its stop off; one that was on already is left on;
 * requests that cross before the main thread runs them leave it as the last
 * one asked; the perf map we caused goes at exit, but only once the
 * capture has read it (one stopped just before the exit, or cut by it); a refusal is reported with Python's message and its exception
 * cleared; after Python's atexit hook no pending call is queued; a fork
 * child's hook turns ours off; a full pending queue does not wedge later
 * requests; the perf map we caused is removed at exit, one that was there is
 * kept; a map that got the job's closed stdout is moved off it. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "pytramp.h"
#include "tap.h"

/* ---- the fake interpreter ------------------------------------------------------ */

typedef struct fobj {
    const char *kind; /* "module", "bool", "func", "cfunc", "tuple", "dict", "str", "exc", "none" */
    const char *name;
    int val;
    const void *def; /* cfunc: its PyMethodDef */
    struct fobj *item; /* dict: the one value set */
} fobj;

typedef struct fdef { /* PyMethodDef */
    const char *name;
    fobj *(*meth)(fobj *, fobj *);
    int flags;
    const char *doc;
} fdef;

static const char *version = "3.12.1 (main, fake)";
static int initialized = 1, refuse, queue_full;
/* the interpreter's frame evaluator (PEP 523): the default, CPython's
 * trampoline evaluator, or another tool's; no_eval_switch hides the switch
 * (the fallback: activate/deactivate, counted) */
static char fake_interp, fake_default, fake_eval, other_eval;
static void *cur_eval = &fake_default;
static int no_eval_switch, eval_sets;
#define active (cur_eval == (void *)&fake_eval)
static int (*pending[32])(void *);
static int npending, nadded;
static fobj mod_sys = {"module", "sys", 0, 0, 0}, mod_atexit = {"module", "atexit", 0, 0, 0},
            mod_os = {"module", "os", 0, 0, 0}, none = {"none", "None", 0, 0, 0},
            reg_at_fork = {"func", "register_at_fork", 0, 0, 0}, exc = {"exc", "ValueError", 0, 0, 0},
            exc_str = {"str", "perf trampoline not available", 0, 0, 0};
static int err_set, activations, deactivations;
static int imports; /* PyImport_ImportModule calls: only atexit's */
static const fdef *exit_hook, *child_hook;
static fobj *made[64];
static int nmade, live;

static fobj *new_obj(const char *kind, const char *name)
{
    fobj *o = calloc(1, sizeof(*o));
    o->kind = kind;
    o->name = name;
    if (nmade < 64)
        made[nmade++] = o;
    live++;
    return o;
}

static int f_is_initialized(void) { return initialized; }
static unsigned long version_hex; /* Py_Version; 0: none (before 3.11) */
static int version_calls;
static const char *f_version(void) { return version_calls++, version; }
static int f_add_pending_call(int (*fn)(void *), void *arg)
{
    (void)arg;
    if (queue_full || npending == 32)
        return -1;
    pending[npending++] = fn;
    nadded++;
    return 0;
}
static fobj *f_import(const char *name)
{
    imports++;
    if (!strcmp(name, "sys"))
        return live++, &mod_sys;
    if (!strcmp(name, "atexit"))
        return live++, &mod_atexit;
    if (!strcmp(name, "os"))
        return live++, &mod_os;
    err_set = 1;
    return NULL;
}
/* sys.modules: sys and os are there (borrowed references), atexit is not
 * (imported, as in a program that has not used it) */
static fobj sys_modules = {"dict", "modules", 0, 0, 0};
static fobj *f_sys_get(const char *name) { return strcmp(name, "modules") ? NULL : &sys_modules; }
static fobj *f_dict_get(fobj *d, const char *key)
{
    if (d != &sys_modules)
        return NULL;
    return !strcmp(key, "sys") ? &mod_sys : !strcmp(key, "os") ? &mod_os : NULL;
}
static char map_file[64];
/* CPython keeps its map open from the first activation on (map_fd); with
 * steal_fd1, the thread that held fd 1 while our hold ran lets go of it
 * just before CPython opens the map */
static int map_fd = -1, steal_fd1, init_fails, finis;
static int f_map_init(void)
{
    if (init_fails)
        return -1;
    if (map_fd < 0)
        map_fd = open(map_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    return map_fd < 0 ? -1 : 0;
}
static void f_map_fini(void)
{
    finis++;
    if (map_fd >= 0)
        close(map_fd);
    map_fd = -1;
}
static fobj *f_call_method(fobj *o, const char *name, const char *fmt, ...)
{
    if (o == &mod_sys && !strcmp(name, "is_stack_trampoline_active")) {
        static fobj yes = {"bool", "True", 1, 0, 0}, no = {"bool", "False", 0, 0, 0};
        live++; /* a new reference to True or False */
        return active ? &yes : &no;
    }
    if (o == &mod_sys && !strcmp(name, "activate_stack_trampoline")) {
        va_list ap;
        va_start(ap, fmt);
        const char *how = va_arg(ap, const char *);
        va_end(ap);
        if (refuse || strcmp(fmt, "s") || strcmp(how, "perf") || cur_eval == &other_eval) {
            err_set = 1;
            return NULL;
        }
        cur_eval = &fake_eval;
        activations++;
        if (steal_fd1)
            close(1);
        if (map_fd < 0) /* CPython opens its map */
            map_fd = open(map_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        return live++, &none;
    }
    if (o == &mod_sys && !strcmp(name, "deactivate_stack_trampoline")) {
        cur_eval = &fake_default;
        deactivations++;
        return live++, &none;
    }
    if (o == &mod_atexit && !strcmp(name, "register")) {
        va_list ap;
        va_start(ap, fmt);
        fobj *f = va_arg(ap, fobj *);
        va_end(ap);
        exit_hook = f->def;
        return live++, &none;
    }
    err_set = 1;
    return NULL;
}
static fobj *f_get_attr(fobj *o, const char *name)
{
    if (o == &mod_os && !strcmp(name, "register_at_fork"))
        return live++, &reg_at_fork;
    err_set = 1;
    return NULL;
}
static fobj *f_call(fobj *f, fobj *args, fobj *kw)
{
    if (f == &reg_at_fork && args && kw && kw->item && !strcmp(kw->name, "after_in_child")) {
        child_hook = kw->item->def;
        return live++, &none;
    }
    err_set = 1;
    return NULL;
}
static fobj *f_tuple_new(ssize_t n) { return n == 0 ? new_obj("tuple", "()") : NULL; }
static fobj *f_dict_new(void) { return new_obj("dict", ""); }
static int f_dict_set(fobj *d, const char *key, fobj *v)
{
    d->name = key;
    d->item = v;
    return 0;
}
static fobj *f_cfunction_new(const fdef *def, fobj *self, fobj *module)
{
    (void)self, (void)module;
    fobj *o = new_obj("cfunc", def->name);
    o->def = def;
    return o;
}
static int f_is_true(fobj *o) { return o->val != 0; }
static void f_incref(fobj *o) { (void)o, live++; }
static void f_decref(fobj *o) { (void)o, live--; }
static void f_err_fetch(fobj **t, fobj **v, fobj **tb)
{
    *t = *v = *tb = NULL;
    if (err_set) {
        *v = &exc;
        live++;
    }
    err_set = 0;
}
static void f_err_clear(void) { err_set = 0; }
static fobj *f_str(fobj *o) { return o == &exc ? (live++, &exc_str) : NULL; }
static const char *f_utf8(fobj *s) { return s->name; }

static void *f_interp_get(void) { return &fake_interp; }
static void *f_eval_get(void *interp) { return interp == &fake_interp ? cur_eval : NULL; }
static void f_eval_set(void *interp, void *fn)
{
    if (interp == &fake_interp) {
        cur_eval = fn ? fn : &fake_default;
        eval_sets++;
    }
}

static int no_python;

static void *fake_lookup(const char *name)
{
    static const struct {
        const char *name;
        void *fn;
    } t[] = {
        {"Py_GetVersion", (void *)f_version},          {"Py_IsInitialized", (void *)f_is_initialized},
        {"Py_AddPendingCall", (void *)f_add_pending_call}, {"PyImport_ImportModule", (void *)f_import},
        {"PyObject_CallMethod", (void *)f_call_method}, {"PyObject_GetAttrString", (void *)f_get_attr},
        {"PyObject_Call", (void *)f_call},              {"PyTuple_New", (void *)f_tuple_new},
        {"PyDict_New", (void *)f_dict_new},             {"PyDict_SetItemString", (void *)f_dict_set},
        {"PyCFunction_NewEx", (void *)f_cfunction_new}, {"PyObject_IsTrue", (void *)f_is_true},
        {"Py_IncRef", (void *)f_incref},                {"Py_DecRef", (void *)f_decref},
        {"PyErr_Fetch", (void *)f_err_fetch},           {"PyErr_Clear", (void *)f_err_clear},
        {"PyObject_Str", (void *)f_str},                {"PyUnicode_AsUTF8", (void *)f_utf8},
        {"PySys_GetObject", (void *)f_sys_get},         {"PyDict_GetItemString", (void *)f_dict_get},
        {"_Py_NoneStruct", (void *)&none},              {"PyInterpreterState_Get", (void *)f_interp_get},
        {"_PyInterpreterState_GetEvalFrameFunc", (void *)f_eval_get},
        {"_PyInterpreterState_SetEvalFrameFunc", (void *)f_eval_set},
        {"_PyEval_EvalFrameDefault", (void *)&fake_default},
        {"Py_Version", (void *)&version_hex},
        {"PyUnstable_PerfMapState_Init", (void *)f_map_init},
        {"PyUnstable_PerfMapState_Fini", (void *)f_map_fini},
    };
    if (no_python || (!version_hex && !strcmp(name, "Py_Version")))
        return NULL;
    if (no_eval_switch && (strstr(name, "EvalFrame") || !strcmp(name, "PyInterpreterState_Get")))
        return NULL;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (!strcmp(t[i].name, name))
            return t[i].fn;
    return NULL;
}

/* The main thread reaching its next bytecode: run what is queued. */
static void run_pending(void)
{
    while (npending) {
        int (*fn)(void *) = pending[0];
        memmove(pending, pending + 1, sizeof(pending[0]) * (size_t)--npending);
        CHECK_EQ_I(fn(NULL), 0);
        CHECK_EQ_I(err_set, 0); /* never leaves an exception for the job's code */
    }
}

static void call_hook(const fdef *d)
{
    CHECK(d != NULL);
    if (d) {
        fobj *r = d->meth(NULL, NULL);
        CHECK(r == &none); /* a new reference to None: returns normally */
        live--;
    }
}

static void reset(void)
{
    tb_pytramp_reset_for_test(fake_lookup);
    version = "3.12.1 (main, fake)";
    version_hex = 0x030c01f0;
    version_calls = 0;
    initialized = 1;
    refuse = queue_full = npending = nadded = err_set = activations = deactivations = imports = 0;
    no_eval_switch = eval_sets = 0;
    cur_eval = &fake_default;
    exit_hook = child_hook = NULL;
    no_python = 0;
    if (map_fd >= 0)
        close(map_fd);
    map_fd = -1;
    steal_fd1 = init_fails = finis = 0;
    unlink(map_file);
}

static const char *describe(void)
{
    static char buf[256];
    if (!tb_pytramp_describe(buf, sizeof(buf)))
        snprintf(buf, sizeof(buf), "(nothing)");
    return buf;
}

int main(void)
{
    snprintf(map_file, sizeof(map_file), "/tmp/perf-%d.map", (int)getpid());

    /* no Python in the process; a CPython without trampolines */
    reset();
    no_python = 1;
    tb_pytramp_request(1);
    CHECK_EQ_I(nadded, 0);
    CHECK_STR(describe(), "(nothing)");
    /* 3.11 and 3.10 (no Py_Version): nothing, and Py_GetVersion, which
     * rewrites its buffer at each call in 3.11, is not called from here */
    for (int old = 0; old < 2; old++) {
        reset();
        version = old ? "3.10.12 (main, fake)" : "3.11.4 (main, fake)";
        version_hex = old ? 0 : 0x030b04f0;
        tb_pytramp_request(1);
        tb_pytramp_request(0);
        CHECK_EQ_I(nadded, 0);
        CHECK_EQ_I(version_calls, 0);
        CHECK_STR(describe(), "(nothing)");
    }

    /* a capture: on at its start through a pending call, off after it */
    reset();
    tb_pytramp_request(1);
    CHECK_EQ_I(nadded, 1);
    CHECK_EQ_I(active, 0); /* nothing until the main thread runs it */
    CHECK(strstr(describe(), "off (asked for") != NULL);
    run_pending();
    CHECK_EQ_I(active, 1);
    CHECK(strstr(describe(), "on during the capture") != NULL);
    CHECK(exit_hook != NULL && child_hook != NULL);
    CHECK_EQ_I(imports, 1); /* atexit; sys and os come from sys.modules */
    CHECK_EQ_I(access(map_file, F_OK), 0);
    tb_pytramp_request(0);
    CHECK_EQ_I(nadded, 2);
    run_pending();
    CHECK_EQ_I(active, 0);
    CHECK_EQ_I(deactivations, 0); /* the evaluator switched back, CPython's state kept */
    CHECK_EQ_I(eval_sets, 1);
    CHECK(strstr(describe(), "on during the capture") != NULL); /* what the capture had */
    /* the next capture: on again; the hooks are not registered twice */
    const fdef *first_exit = exit_hook;
    exit_hook = NULL;
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(active, 1);
    CHECK_EQ_I(activations, 1); /* not activated again: no new code-extra slot */
    CHECK(exit_hook == NULL && first_exit != NULL);
    tb_pytramp_request(0);
    run_pending();
    CHECK_EQ_I(active, 0);
    tb_pytramp_map_done(); /* the capture's collect read the map */
    /* Python exits: the map our trampolines made goes; nothing is queued after */
    call_hook(first_exit);
    CHECKF(access(map_file, F_OK) != 0, "%s left behind", map_file);
    tb_pytramp_request(1);
    CHECK_EQ_I(nadded, 4);
    CHECK_STR(describe(), "off (the interpreter was not running)");

    /* a capture stopped just before Python exits, its collect still to
     * come (the agent collects the GPU source first): the exit keeps the
     * map the collect reads Python's names from; the collect removes it */
    reset();
    tb_pytramp_request(1);
    run_pending();
    tb_pytramp_request(0);
    run_pending();
    call_hook(exit_hook);
    CHECKF(access(map_file, F_OK) == 0, "%s removed before the capture read it", map_file);
    tb_pytramp_map_done();
    CHECKF(access(map_file, F_OK) != 0, "%s left behind", map_file);
    /* a capture running at exit (collected from the destructor): the same */
    reset();
    tb_pytramp_request(1);
    run_pending();
    call_hook(exit_hook);
    CHECK_EQ_I(access(map_file, F_OK), 0);
    tb_pytramp_request(0); /* (the interpreter is gone: nothing queued) */
    CHECK_EQ_I(npending, 0);
    tb_pytramp_map_done();
    CHECKF(access(map_file, F_OK) != 0, "%s left behind after a capture cut by the exit", map_file);

    /* requests that cross before the main thread gets to them: one pending
     * call, and the last request wins */
    reset();
    tb_pytramp_request(1);
    tb_pytramp_request(0);
    CHECK_EQ_I(nadded, 1);
    run_pending();
    CHECK_EQ_I(activations, 0);
    CHECK_EQ_I(active, 0);
    tb_pytramp_request(0);
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(active, 1);

    /* on before the capture (PYTHONPERFSUPPORT=1): left on, and its map kept */
    reset();
    cur_eval = &fake_eval;
    FILE *f = fopen(map_file, "w");
    if (f)
        fclose(f);
    tb_pytramp_request(1);
    run_pending();
    CHECK_STR(describe(), "on for the whole run (PYTHONPERFSUPPORT=1 or the program)");
    tb_pytramp_request(0);
    run_pending();
    CHECK_EQ_I(active, 1);
    CHECK_EQ_I(deactivations, 0);
    call_hook(exit_hook);
    CHECK_EQ_I(access(map_file, F_OK), 0);

    /* a map that was there before we turned it on is kept at exit */
    reset();
    f = fopen(map_file, "w");
    if (f)
        fclose(f);
    tb_pytramp_request(1);
    run_pending();
    tb_pytramp_request(0);
    run_pending();
    call_hook(exit_hook);
    CHECK_EQ_I(access(map_file, F_OK), 0);

    /* refused (a build without trampolines): Python's message, no exception left */
    reset();
    refuse = 1;
    tb_pytramp_request(1);
    run_pending();
    CHECK_STR(describe(), "off: sys.activate_stack_trampoline(\"perf\"): perf trampoline not available");
    CHECK_EQ_I(active, 0);

    /* before Py_Initialize (TBPROF_DELAY=0): no pending call; on only where
     * PYTHONPERFSUPPORT=1 / -X perf turned it on at the start, which the
     * map CPython writes tells */
    reset();
    initialized = 0;
    tb_pytramp_request(1);
    CHECK_EQ_I(nadded, 0);
    unlink(map_file);
    CHECK_STR(describe(), "off (the capture began before the interpreter ran)");
    FILE *mf = fopen(map_file, "w");
    CHECK(mf != NULL);
    if (mf)
        fclose(mf);
    CHECK_STR(describe(), "on (PYTHONPERFSUPPORT=1 or -X perf: the capture began before the interpreter ran)");
    /* an earlier process's map with this pid (written before we started) */
    struct timeval old_t[2] = {{time(NULL) - 3600, 0}, {time(NULL) - 3600, 0}};
    CHECK(utimes(map_file, old_t) == 0);
    CHECK_STR(describe(), "off (the capture began before the interpreter ran)");
    unlink(map_file);

    /* a fork()ed child turns the parent's capture's trampoline off */
    reset();
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(active, 1);
    tb_pytramp_atfork_child(); /* fork(): the C side first */
    call_hook(child_hook);     /* then Python's after_in_child */
    CHECK_EQ_I(active, 0);
    /* the child's own capture later activates afresh (CPython re-made its state) */
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(active, 1);
    CHECK_EQ_I(activations, 2);

    /* a request still queued at fork() runs in the child (CPython keeps
     * pending calls): it finds nothing wanted there */
    reset();
    tb_pytramp_request(1);
    tb_pytramp_atfork_child();
    run_pending();
    CHECK_EQ_I(active, 0);
    CHECK_EQ_I(activations, 0);

    /* later captures switch the evaluator, never activating again: 300
     * captures, one activation (each would take one of CPython's 255
     * code-extra slots) */
    reset();
    for (int i = 0; i < 300; i++) {
        tb_pytramp_request(1);
        run_pending();
        tb_pytramp_request(0);
        run_pending();
    }
    CHECK_EQ_I(activations, 1);
    CHECK_EQ_I(active, 0);
    /* another tool's evaluator (torch.compile's) is never replaced */
    cur_eval = &other_eval;
    tb_pytramp_request(1);
    run_pending();
    CHECK(cur_eval == (void *)&other_eval);
    CHECK_STR(describe(), "off: another frame evaluator is installed (PEP 523: torch.compile's, a debugger's)");
    tb_pytramp_request(0);
    run_pending();
    CHECK(cur_eval == (void *)&other_eval);

    /* without the evaluator switch: activate/deactivate, at most 16 times */
    reset();
    no_eval_switch = 1;
    for (int i = 0; i < 20; i++) {
        tb_pytramp_request(1);
        run_pending();
        tb_pytramp_request(0);
        run_pending();
    }
    CHECK_EQ_I(activations, 16);
    CHECK_EQ_I(deactivations, 16);
    CHECK(strstr(describe(), "off: turned on 16 times in this process already") != NULL);

    /* the job has closed its stdout as a capture starts, and another thread
     * (the agent's own hold while it starts the sources) holds fd 1 while
     * the trampoline comes on, so our hold cannot take it; that thread lets
     * go just before CPython opens its map, which gets fd 1. The map is
     * moved off it, and fd 1 is free again for the job's dup2 (before: the
     * job's stdout got CPython's map lines) */
    int saved = dup(1);
    for (int fails = 0; fails < 2; fails++) {
        reset();
        init_fails = fails;
        close(1);
        int other = open("/dev/null", O_RDONLY); /* the other thread's */
        steal_fd1 = 1;
        tb_pytramp_request(1);
        run_pending();
        int fd1_free = fcntl(1, F_GETFD) < 0;
        dup2(saved, 1);
        CHECK_EQ_I(other, 1);
        CHECK(fd1_free);
        CHECK_EQ_I(finis, 1);
        if (!fails) {
            CHECKF(map_fd > 2, "the map is on fd %d", map_fd);
            CHECK_EQ_I(active, 1);
            CHECK(strstr(describe(), "on during the capture") != NULL);
        } else { /* it cannot be opened again: off, with the reason */
            CHECK_EQ_I(map_fd, -1);
            CHECK_EQ_I(active, 0);
            CHECK(strstr(describe(), "off: CPython's perf map /tmp/perf-") != NULL);
            CHECK(strstr(describe(), "could not be opened again") != NULL);
        }
        tb_pytramp_request(0);
        run_pending();
        CHECK_EQ_I(active, 0);
    }
    close(saved);
    /* the usual case (fd 1 the job's): the map is left where CPython put it */
    reset();
    tb_pytramp_request(1);
    run_pending();
    CHECK(map_fd > 2);
    CHECK_EQ_I(finis, 0);
    tb_pytramp_request(0);
    run_pending();

    /* a full pending queue: that request is lost, the next one is queued */
    reset();
    queue_full = 1;
    tb_pytramp_request(1);
    CHECK_EQ_I(nadded, 0);
    queue_full = 0;
    tb_pytramp_request(1);
    CHECK_EQ_I(nadded, 1);
    run_pending();
    CHECK_EQ_I(active, 1);
    tb_pytramp_request(0);
    run_pending();

    /* every reference taken was given back */
    CHECKF(live == 0, "%d references not released", live);
    for (int i = 0; i < nmade; i++)
        free(made[i]);
    reset();
    return tap_done();
}
