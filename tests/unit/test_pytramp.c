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
 * kept; a map that got the job's closed stdout is moved off it. On 3.10 and
 * 3.11 (x86-64), tbprof's own evaluator runs CPython's through real stubs:
 * their bytes, their map lines, exceptions and throwflag kept, the cut on a
 * deep recursion, fork children, a wrapper that put ours back, a removed
 * map and a reused fd. */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

#include "clock.h"
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
static fobj *made[256];
static int nmade, live;

static fobj *new_obj(const char *kind, const char *name)
{
    fobj *o = calloc(1, sizeof(*o));
    o->kind = kind;
    o->name = name;
    if (nmade < 256)
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
/* ---- 3.10 and 3.11: a code object (ob_type at 8, as CPython's), frames
 * holding one at 32, and CPython's evaluator, which records how it was
 * called (the return address: inside tbprof's stub, or not) */
typedef struct fcode {
    long refcnt;
    void *type;
    fobj qualname, name, file;
    void *extra; /* at index extra_idx */
    ssize_t extra_idx;
} fcode;
static char fake_code_type, not_code_type;
static fcode code_fwd = {1, &fake_code_type, {"str", "Model.forward", 0, 0, 0}, {"str", "forward", 0, 0, 0},
                         {"str", "/m.py", 0, 0, 0}, NULL, 0},
             code_gen = {1, &fake_code_type, {"str", "gen", 0, 0, 0}, {"str", "gen", 0, 0, 0},
                         {"str", "/g.py", 0, 0, 0}, NULL, 0},
             code_rec = {1, &fake_code_type, {"str", "rec", 0, 0, 0}, {"str", "rec", 0, 0, 0},
                         {"str", "/r.py", 0, 0, 0}, NULL, 0},
             not_code = {1, &not_code_type, {"str", "x", 0, 0, 0}, {"str", "x", 0, 0, 0}, {"str", "x", 0, 0, 0}, NULL, 0};
typedef struct fframe {
    char head[32];
    fcode *code;
    int depth; /* (code_rec: calls to make below it) */
} fframe;
static int own_symbols, extra_calls, trace_refs;
static void *eval_ret;    /* the return address CPython's evaluator saw */
static fframe *eval_frame;
static int eval_throw;
static fobj eval_result = {"str", "result", 0, 0, 0};
typedef fobj *(*evalfn)(void *ts, void *frame, int throwflag);
static fobj *f_eval_default(void *ts, void *frame, int throwflag)
{
    fframe *f = frame;
    eval_ret = __builtin_return_address(0);
    eval_frame = f;
    eval_throw = throwflag;
    if (f->depth > 0) { /* a Python call inside: through the evaluator set now */
        fframe inner = *f;
        inner.depth--;
        fobj *r = ((evalfn)cur_eval)(ts, &inner, 0);
        eval_ret = __builtin_return_address(0);
        return r;
    }
    return &eval_result;
}
/* indexes 3, 4, ... as CPython hands them out */
static ssize_t f_extra_index(void (*free_fn)(void *)) { return (void)free_fn, 2 + ++extra_calls; }
static int f_get_extra(fobj *code, ssize_t i, void **out)
{
    fcode *c = (fcode *)code;
    *out = i == c->extra_idx ? c->extra : NULL;
    return i >= 3 && i <= 2 + extra_calls ? 0 : -1;
}
static int f_set_extra(fobj *code, ssize_t i, void *v)
{
    if (i < 3 || i > 2 + extra_calls)
        return -1;
    fcode *c = (fcode *)code;
    c->extra_idx = i;
    c->extra = v;
    return 0;
}
static void f_err_restore(fobj *t, fobj *v, fobj *tb)
{
    live -= !!t + !!v + !!tb;
    err_set = v != NULL;
}
static fobj *f_get_attr(fobj *o, const char *name)
{
    if (o == &mod_os && !strcmp(name, "register_at_fork"))
        return live++, &reg_at_fork;
    fcode *c = (fcode *)o;
    if (c == &code_fwd || c == &code_gen || c == &code_rec) {
        if (!strcmp(name, "co_qualname"))
            return live++, &c->qualname;
        if (!strcmp(name, "co_name"))
            return live++, &c->name;
        if (!strcmp(name, "co_filename"))
            return live++, &c->file;
    }
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
static const unsigned char *efd_code; /* where set: _PyEval_EvalFrameDefault's first bytes */

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
    static const struct {
        const char *name;
        void *fn;
    } own[] = {
        {"_PyEval_RequestCodeExtraIndex", (void *)f_extra_index}, {"_PyCode_GetExtra", (void *)f_get_extra},
        {"_PyCode_SetExtra", (void *)f_set_extra},                {"PyCode_Type", (void *)&fake_code_type},
        {"PyErr_Restore", (void *)f_err_restore},                 {"Py_IsNone", (void *)f_is_true},
        {"_Py_ForgetReference", (void *)f_is_true}, /* (trace_refs only) */
        {"_PyEval_EvalFrameDefault", (void *)f_eval_default},
    };
    if (no_python || (!version_hex && !strcmp(name, "Py_Version")))
        return NULL;
    if (efd_code && !strcmp(name, "_PyEval_EvalFrameDefault"))
        return (void *)efd_code;
    if (!trace_refs && !strcmp(name, "_Py_ForgetReference"))
        return NULL;
    for (size_t i = 0; own_symbols && i < sizeof(own) / sizeof(own[0]); i++)
        if (!strcmp(own[i].name, name))
            return own[i].fn;
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
    own_symbols = extra_calls = trace_refs = 0;
    efd_code = NULL;
    code_fwd.extra = code_gen.extra = code_rec.extra = not_code.extra = NULL;
    code_fwd.extra_idx = code_gen.extra_idx = code_rec.extra_idx = not_code.extra_idx = 0;
    unlink(map_file);
}

#if defined(__x86_64__) /* tbprof's own trampoline: x86-64 only */
/* CPython 3.<minor> (10 or 11), with what tbprof's own trampoline needs */
static void reset_old(int minor)
{
    reset();
    own_symbols = 1;
    version_hex = minor >= 11 ? 0x030b07f0 : 0;
    cur_eval = (void *)f_eval_default;
}

static int map_lines(void)
{
    char buf[4096];
    FILE *f = fopen(map_file, "r");
    int n = 0;
    while (f && fgets(buf, sizeof(buf), f))
        n++;
    if (f)
        fclose(f);
    return n;
}

static int map_has(const void *stub, const char *name)
{
    char want[256], buf[4096];
    snprintf(want, sizeof(want), "%lx 10 %s\n", (unsigned long)(uintptr_t)stub, name);
    FILE *f = fopen(map_file, "r");
    int yes = 0;
    while (f && fgets(buf, sizeof(buf), f))
        yes |= !strcmp(buf, want);
    if (f)
        fclose(f);
    return yes;
}

static const unsigned char stub_bytes[11] = {0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3};

static void *deep_calls(void *arg)
{
    fframe *f = arg;
    return ((evalfn)cur_eval)(NULL, f, 0);
}
#endif

static const char *describe(void)
{
    static char buf[256];
    if (!tb_pytramp_describe(buf, sizeof(buf)))
        snprintf(buf, sizeof(buf), "(nothing)");
    return buf;
}

/* Does the evaluator keep a frame pointer (so fp mode asks for the
 * trampoline)? Prologues as gcc writes them with and without
 * -fno-omit-frame-pointer, for this machine's architecture. */
static void check_frame_pointers(void)
{
    static const unsigned char x86_fp[64] = {0x55, 0x48, 0x89, 0xe5, 0x41, 0x57};       /* push %rbp; mov %rsp,%rbp */
    static const unsigned char x86_fp_cet[64] = {0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5};
    static const unsigned char x86_fp_8b[64] = {0x55, 0x48, 0x8b, 0xec};                /* mov %rsp,%rbp, other form */
    static const unsigned char x86_nofp[64] = {0x41, 0x57, 0x41, 0x56, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53, 0x48, 0x81, 0xec};
    static const unsigned char x86_push_only[64] = {0x55, 0x53, 0x48, 0x83, 0xec, 0x18}; /* push %rbp as a register */
    /* aarch64, little-endian words: stp x29,x30,[sp,#-48]!; mov x29,sp /
     * paciasp; sub sp,sp,#0x150; stp x29,x30,[sp,#0x100]; add x29,sp,#0x100 /
     * stp x19,x20,[sp,#-32]!; sub sp,sp,#16 (a leaf, no frame record) */
    static const uint32_t a64_fp[16] = {0xa9bd7bfd, 0x910003fd, 0xa90153f3};
    static const uint32_t a64_fp_big[16] = {0xd503233f, 0xd10543ff, 0xa9107bfd, 0x910403fd};
    static const uint32_t a64_nofp[16] = {0xa9be53f3, 0xd10043ff, 0xb9400000, 0xd65f03c0};
#if defined(__x86_64__)
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_fp, 64), 1);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_fp_cet, 64), 1);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_fp_8b, 64), 1);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_nofp, 64), 0);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_push_only, 64), 0);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_fp, 3), 0);
    for (int i = 0; i < 3; i++) /* another architecture's prologues */
        CHECK_EQ_I(tb_pytramp_prologue_keeps_fp((const unsigned char *)(i == 0 ? a64_fp : i == 1 ? a64_fp_big : a64_nofp), 64), 0);
    const unsigned char *with = x86_fp, *without = x86_nofp;
#elif defined(__aarch64__)
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp((const unsigned char *)a64_fp, 64), 1);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp((const unsigned char *)a64_fp_big, 64), 1);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp((const unsigned char *)a64_nofp, 64), 0);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp((const unsigned char *)a64_fp, 4), 0);
    for (int i = 0; i < 4; i++) /* another architecture's prologues */
        CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(i == 0 ? x86_fp : i == 1 ? x86_fp_cet : i == 2 ? x86_fp_8b : x86_nofp, 64), 0);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_push_only, 64), 0);
    const unsigned char *with = (const unsigned char *)a64_fp, *without = (const unsigned char *)a64_nofp;
#else
    (void)x86_fp_cet, (void)x86_fp_8b, (void)x86_push_only, (void)a64_fp_big, (void)a64_nofp;
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp(x86_fp, 64), 0);
    CHECK_EQ_I(tb_pytramp_prologue_keeps_fp((const unsigned char *)a64_fp, 64), 0);
    const unsigned char *with = NULL, *without = x86_nofp;
#endif
    /* the process's CPython, found with dlsym: none; one built without; with */
    reset();
    no_python = 1;
    CHECK_EQ_I(tb_pytramp_frame_pointers(), -1);
    reset();
    efd_code = without;
    CHECK_EQ_I(tb_pytramp_frame_pointers(), 0);
    if (with) {
        reset();
        efd_code = with;
        CHECK_EQ_I(tb_pytramp_frame_pointers(), 1);
    }
    reset();
}

/* A capture on and stopped while another frame evaluator is installed
 * over ours (a torch.compile'd call): still on; when it asks again. */
static int64_t stopped_under_another(void)
{
    reset();
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(active, 1);
    CHECK_EQ_I(tb_pytramp_retry_at(), 0);
    cur_eval = &other_eval;
    tb_pytramp_request(0);
    run_pending();
    CHECK(cur_eval == (void *)&other_eval);
    int64_t at = tb_pytramp_retry_at();
    CHECK(at > 0);
    return at;
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

    /* a capture stopped while another frame evaluator is installed over
     * ours (a torch.compile'd call: it puts ours back after): not off then;
     * asked again once due, at a longer wait each time, and off once ours
     * is back */
    int64_t at = stopped_under_another(), wait = at - tb_mono_ns();
    CHECKF(wait > 50000000 && wait <= 100000000, "asked again in %lld ns", (long long)wait); /* 0.1 s */
    int before = nadded;
    tb_pytramp_retry(at - 1); /* not due */
    CHECK_EQ_I(nadded, before);
    tb_pytramp_retry(at);
    CHECK_EQ_I(nadded, before + 1);
    run_pending(); /* still under the other one */
    CHECK(cur_eval == (void *)&other_eval);
    int64_t at2 = tb_pytramp_retry_at();
    CHECKF(at2 > at, "at %lld, then %lld", (long long)at, (long long)at2);
    cur_eval = &fake_eval; /* ours put back */
    tb_pytramp_retry(at2);
    run_pending();
    CHECK_EQ_I(active, 0);
    CHECK_EQ_I(tb_pytramp_retry_at(), 0);
    /* the other one puts back the default evaluator instead: off */
    at = stopped_under_another();
    cur_eval = &fake_default;
    int sets = eval_sets;
    tb_pytramp_retry(at);
    run_pending();
    CHECK_EQ_I(tb_pytramp_retry_at(), 0);
    CHECK_EQ_I(eval_sets, sets); /* (nothing to switch) */
    tb_pytramp_retry(at + 1000000000LL);
    CHECK_EQ_I(npending, 0);
    /* a retry the interpreter refuses (its pending-call queue full): asked
     * again later, not given up */
    at = stopped_under_another();
    queue_full = 1;
    tb_pytramp_retry(at);
    queue_full = 0;
    int64_t later = tb_pytramp_retry_at();
    CHECKF(later > at, "at %lld, then %lld", (long long)at, (long long)later);
    cur_eval = &fake_eval;
    tb_pytramp_retry(later);
    run_pending();
    CHECK_EQ_I(active, 0);

    /* the next capture starts while ours is still under the other one: on
     * (its calls go through ours), and off after its stop once ours is back */
    stopped_under_another();
    tb_pytramp_request(1);
    run_pending();
    CHECKF(strstr(describe(), "on during the capture") != NULL, "%s", describe());
    cur_eval = &fake_eval;
    tb_pytramp_request(0);
    run_pending();
    CHECK_EQ_I(active, 0);
    CHECK_EQ_I(tb_pytramp_retry_at(), 0);

    /* the next capture starts before the retry is due: the retry waits for
     * that capture's own stop, and never turns it off under it */
    at = stopped_under_another();
    cur_eval = &fake_eval;
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(tb_pytramp_retry_at(), 0);
    before = nadded;
    tb_pytramp_retry(at + 1000000000LL);
    CHECK_EQ_I(nadded, before);
    CHECK_EQ_I(active, 1);
    tb_pytramp_request(0);
    run_pending();
    CHECK_EQ_I(active, 0);

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

#if defined(__x86_64__)
    /* CPython 3.11: tbprof's own trampoline. A capture sets its evaluator;
     * each code object gets a stub (3.12's trampoline's bytes) the first
     * time it runs, named in the map; CPython's evaluator is called from
     * the stub, with the frame and flag it was given */
    reset_old(11);
    int out = dup(1);
    close(1); /* (the job's stdout closed as the capture starts: our map stays off it) */
    tb_pytramp_request(1);
    run_pending();
    int fd1_free = fcntl(1, F_GETFD) < 0;
    dup2(out, 1);
    close(out);
    CHECK(fd1_free);
    CHECK(cur_eval != (void *)f_eval_default);
    CHECK(strstr(describe(), "on during the capture") != NULL);
    CHECK_EQ_I(extra_calls, 1);
    evalfn own = (evalfn)cur_eval;
    fframe fr = {{0}, &code_fwd, 0};
    CHECK(own(NULL, &fr, 0) == &eval_result);
    CHECK(eval_frame == &fr && eval_throw == 0);
    const unsigned char *stub = (const unsigned char *)eval_ret - 6;
    CHECK(code_fwd.extra == stub);
    CHECK_EQ_I(memcmp(stub, stub_bytes, sizeof(stub_bytes)), 0);
    CHECKF(map_has(stub, "py::Model.forward:/m.py"), "no map line for %p", (void *)stub);
    CHECK(own(NULL, &fr, 0) == &eval_result); /* again: the same stub, no new line */
    CHECK(eval_ret == stub + 6);
    CHECK_EQ_I(map_lines(), 1);
    /* a generator resumed with an exception to throw (throwflag, the
     * exception pending): both reach CPython's evaluator as they were */
    fframe fg = {{0}, &code_gen, 0};
    err_set = 1;
    own(NULL, &fg, 1);
    CHECK_EQ_I(err_set, 1);
    CHECK(eval_throw == 1 && code_gen.extra != NULL && code_gen.extra != code_fwd.extra);
    err_set = 0;
    /* not a code object where one should be: no stub, called directly */
    fframe fx = {{0}, &not_code, 0};
    own(NULL, &fx, 0);
    CHECK(not_code.extra == NULL && memcmp((char *)eval_ret - 6, stub_bytes, sizeof(stub_bytes)) != 0);
    CHECK_EQ_I(map_lines(), 2);
    /* off at the stop; on again at the next capture, the stubs kept */
    tb_pytramp_request(0);
    run_pending();
    CHECK(cur_eval == (void *)f_eval_default);
    tb_pytramp_request(1);
    run_pending();
    CHECK(cur_eval == (void *)own);
    own(NULL, &fr, 0);
    CHECK(eval_ret == stub + 6);
    CHECK_EQ_I(extra_calls, 1);
    /* a recursion deeper than a sixteenth of its thread's stack (64 KiB of
     * 1 MiB here: each call is some 100-200 bytes of C stack, so 1,500
     * calls go past it and stay far within the whole): the evaluator goes
     * off partway, and the calls finish */
    pthread_attr_t pa;
    pthread_attr_init(&pa);
    pthread_attr_setstacksize(&pa, 1 << 20);
    pthread_t th;
    fframe fd = {{0}, &code_rec, 1500};
    void *res = NULL;
    CHECK_EQ_I(pthread_create(&th, &pa, deep_calls, &fd), 0);
    pthread_join(th, &res);
    pthread_attr_destroy(&pa);
    CHECK(res == &eval_result);
    CHECK(cur_eval == (void *)f_eval_default);
    CHECK(strstr(describe(), "off: turned off during the capture: a deep Python recursion") != NULL);
    tb_pytramp_request(0);
    run_pending();
    /* the map removed between captures (a /tmp cleaner): the next capture
     * writes a new one, and new stubs named there */
    unlink(map_file);
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(extra_calls, 2);
    own(NULL, &fr, 0);
    CHECK(eval_ret != stub + 6);
    CHECK(map_has((char *)eval_ret - 6, "py::Model.forward:/m.py"));
    tb_pytramp_request(0);
    run_pending();
    /* a fork child (os.fork: the at-fork hooks too): its next capture
     * writes its own map and takes a new code-extra index (the parent's
     * stubs are named in the parent's) */
    tb_pytramp_atfork_child();
    call_hook(child_hook);
    unlink(map_file);
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(extra_calls, 3);
    CHECK_EQ_I(access(map_file, F_OK), 0);
    tb_pytramp_request(0);
    run_pending();
    /* a child forked in C during a capture (no Python hooks): it inherits
     * the evaluator; the first call there gives the default back, and the
     * child's own capture sets it up afresh */
    tb_pytramp_request(1);
    run_pending();
    tb_pytramp_atfork_child();
    own(NULL, &fr, 0);
    CHECK(cur_eval == (void *)f_eval_default);
    CHECK(memcmp((char *)eval_ret - 6, stub_bytes, sizeof(stub_bytes)) != 0);
    unlink(map_file);
    tb_pytramp_request(1);
    run_pending();
    CHECK_EQ_I(extra_calls, 4);
    CHECK(cur_eval == (void *)own);
    own(NULL, &fr, 0);
    CHECK(map_has((char *)eval_ret - 6, "py::Model.forward:/m.py"));
    /* a wrapper that saved ours while the stop ran (torch.compile's, as
     * it switches evaluators around compiled code) and puts it back
     * after: ours gives the default back at its next call, and the next
     * capture is ours again (before: on for good, said to be the program's) */
    cur_eval = &other_eval;
    tb_pytramp_request(0);
    run_pending();
    cur_eval = (void *)own;
    CHECK(own(NULL, &fr, 0) == &eval_result);
    CHECK(cur_eval == (void *)f_eval_default);
    tb_pytramp_request(1);
    run_pending();
    CHECK(cur_eval == (void *)own);
    CHECK(strstr(describe(), "on during the capture") != NULL);
    tb_pytramp_request(0);
    run_pending();
    /* the job closed our map's fd and opened a file of its own on the
     * number: no line of ours goes there, and the next capture opens a map
     * afresh (the job's file left open) */
    char other_file[64];
    snprintf(other_file, sizeof(other_file), "/tmp/tbprof-test-other-%d", (int)getpid());
    tb_pytramp_request(1);
    run_pending();
    int mapfd = -1;
    for (int fd = 3; fd < 1024 && mapfd < 0; fd++) {
        char lnk[64], target[128];
        snprintf(lnk, sizeof(lnk), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(lnk, target, sizeof(target) - 1);
        if (n > 0 && (target[n] = '\0', !strcmp(target, map_file)))
            mapfd = fd;
    }
    CHECK(mapfd > 2);
    close(mapfd);
    int jobfd = open(other_file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK_EQ_I(jobfd, mapfd);
    fframe fn = {{0}, &code_gen, 0};
    code_gen.extra = NULL;
    own(NULL, &fn, 0); /* a new function: its line is not written to the job's file */
    struct stat jst;
    CHECK(fstat(jobfd, &jst) == 0 && jst.st_size == 0);
    tb_pytramp_request(0);
    run_pending();
    int calls_before = extra_calls;
    tb_pytramp_request(1);
    run_pending();
    CHECK(cur_eval == (void *)own);
    CHECK(fcntl(jobfd, F_GETFD) >= 0); /* the job's, still open */
    /* (the map itself is still there: opened again, the stubs kept) */
    CHECK_EQ_I(extra_calls, calls_before);
    own(NULL, &fr, 0);
    CHECK(code_fwd.extra != NULL && eval_ret == (char *)code_fwd.extra + 6);
    tb_pytramp_request(0);
    run_pending();
    /* the same fd reused, then a fork: the child does not close the job's file */
    for (int fd = 3; fd < 1024; fd++) {
        char lnk[64], target[128];
        snprintf(lnk, sizeof(lnk), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(lnk, target, sizeof(target) - 1);
        if (n > 0 && (target[n] = '\0', !strcmp(target, map_file))) {
            close(fd);
            int again = open(other_file, O_RDONLY);
            CHECK_EQ_I(again, fd);
            tb_pytramp_atfork_child();
            CHECKF(fcntl(again, F_GETFD) >= 0, "the fork child closed the job's fd %d", again);
            close(again);
            break;
        }
    }
    call_hook(child_hook);
    /* a map removed at every capture: new indexes, up to 16, then off with the reason */
    for (int i = 0; i < 20; i++) {
        unlink(map_file);
        tb_pytramp_request(1);
        run_pending();
        tb_pytramp_request(0);
        run_pending();
    }
    CHECK(strstr(describe(), "off: its perf map was removed 15 times in this process") != NULL);
    close(jobfd);
    unlink(other_file);
    tb_pytramp_request(0);
    run_pending();
    /* Python's exit: the map of ours goes */
    tb_pytramp_map_done();
    call_hook(exit_hook);
    CHECKF(access(map_file, F_OK) != 0, "%s left behind", map_file);
    /* another frame evaluator in place (a debugger's): left alone */
    reset_old(11);
    cur_eval = &other_eval;
    tb_pytramp_request(1);
    run_pending();
    CHECK(cur_eval == (void *)&other_eval);
    CHECK(strstr(describe(), "off: another frame evaluator is installed") != NULL);
    /* CPython 3.10 (no Py_Version; Py_IsNone): names from co_name */
    reset_old(10);
    tb_pytramp_request(1);
    run_pending();
    CHECK(cur_eval != (void *)f_eval_default);
    ((evalfn)cur_eval)(NULL, &fr, 0);
    CHECK(map_has((char *)eval_ret - 6, "py::forward:/m.py"));
    CHECK_EQ_I(version_calls, 0);
    tb_pytramp_request(0);
    run_pending();
    CHECK(cur_eval == (void *)f_eval_default);
    /* a Py_TRACE_REFS build (objects two pointers longer): nothing */
    reset_old(11);
    trace_refs = 1;
    tb_pytramp_request(1);
    CHECK_EQ_I(nadded, 0);
    CHECK_STR(describe(), "(nothing)");
#endif

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

    check_frame_pointers();

    /* every reference taken was given back */
    CHECKF(live == 0, "%d references not released", live);
    for (int i = 0; i < nmade; i++)
        free(made[i]);
    reset();
    return tap_done();
}
