/* pyframes.c - names for the Python frames a capture's trampoline missed
 * (pyframes.h).
 *
 * Nothing here includes Python.h. The frame layouts below are CPython's
 * (Include/cpython/frameobject.h for 3.10, Include/internal/pycore_frame.h
 * for 3.11 to 3.13, non-debug builds); each snapshot checks them against the
 * live interpreter: the thread state must hold the frame CPython reports as
 * current, and every frame's code must be a code object. Every read of the
 * frame list goes through tb_self_read, so a wrong guess or a frame freed
 * under the agent's walk reads as a failure, never as a fault.
 */
#include "pyframes.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "pytramp.h"
#include "util.h"

struct _Unwind_Context;
#define MAX_FRAMES 256            /* a deeper list at the snapshot: none taken */
#define NAMES_BYTES (32 << 10)    /* their names */
#define WALK_MAX 1024             /* frames the agent's walk reads per poll at most */
#define FRAME_READ 72             /* bytes read of a frame: every field used lies below */
#define OWNED_BY_CSTACK 3         /* 3.12+: an activation's entry shim (FRAME_OWNED_BY_CSTACK) */

typedef struct pyf {
    uint64_t addr, code, prev;
    uint8_t entry; /* 3.11's is_entry as read */
    uint8_t first; /* the first frame its activation ran */
    int group;     /* its activation, counted from the root */
    uint32_t name; /* offset in names */
} pyf;

struct tb_pysnap {
    int tid;
    int64_t t;
    int minor;
    int test; /* built by tb_pysnap_for_test: the refresh reads nothing */
    /* where the thread state keeps the current frame: tstate+cur_off (inner
     * < 0), or a pointer there to a struct holding it at inner (3.11's and
     * 3.12's _PyCFrame) */
    uint64_t tstate, cur_off;
    int inner;
    int code_off, prev_off, entry_off; /* entry_off: 3.11's is_entry, else -1 */
    uint64_t eval_lo, eval_hi;         /* _PyEval_EvalFrameDefault */
    /* the interpreter's frame evaluator (PEP 523) lies at ev_at: while it
     * is still the trampoline's (ev) and the trampoline has run no call
     * without one (unnamed: tb_pytramp_unnamed_calls), no activation
     * begins unnamed. Once either changes (a deep recursion cut ours off,
     * another tool replaced it, our stubs ran out) it is dead: no more
     * labels. */
    uint64_t ev_at, ev, unnamed;
    int dead;
    /* the refresh's answer (known), read from the list at read_at: the
     * innermost frame found live that is not the first of its activation
     * (top), and its activation (gstar); -1: none. prev: the answer before
     * (at the snapshot: every frame live). A sample taken between the two
     * whose innermost activation had lost frames between them is left
     * alone: how many it had then is not known. */
    int known, gstar, top;
    int64_t read_at, read_end;
    int pfull, pgstar, ptop;
    int64_t pread_at;
    /* where the thread's C stack stood at the snapshot, which a sample's
     * must match: each activation's caller's return address (caller_ret),
     * the call site an activation below the innermost is blocked at
     * (eval_ret: fixed while it lives), and the root's (root_ret). A
     * sample whose unwind stopped short of the root, or an activation
     * begun unnamed under another evaluator swapped in and out between two
     * reads (PEP 523: torch.compile's), does not match. 0: not checked. */
    uint64_t root_ret;
    int inherited; /* the anchors are the last snapshot's (inherit) */
    uint64_t lo, hi; /* the snapshot frames' addresses lie in [lo, hi] */
    int n, ngroups;
    size_t names_len;
    int gstart[MAX_FRAMES + 1]; /* activation g: frames gstart[g] .. gstart[g+1]-1 */
    uint64_t caller_ret[MAX_FRAMES], eval_ret[MAX_FRAMES];
    pyf f[MAX_FRAMES];          /* bottom (the root) first */
    char names[NAMES_BYTES];
};

/* CPython's functions, looked up on the agent thread (tb_pyframes_resolve)
 * so that the main thread's snapshot takes no loader lock (under lk) */
static struct {
    int minor; /* 0: not looked up, -1: nothing to take */
    void *(*ts_get)(void);
    void *(*get_frame)(void *);
    void *(*get_attr)(void *, const char *);
    const char *(*utf8)(void *);
    void (*err_clear)(void);
    void (*decref)(void *);
    void *(*interp_get)(void);
    void *(*eval_get)(void *);
    uint64_t code_type, eval_lo, eval_hi;
    /* the Itanium C++ ABI's unwinder (libgcc_s, dlopen()ed: libtbprof.so
     * needs only libc at run time) */
    int (*backtrace)(int (*fn)(struct _Unwind_Context *, void *), void *arg);
    uintptr_t (*get_ip)(struct _Unwind_Context *);
    uintptr_t (*get_cfa)(struct _Unwind_Context *);
} api;

static pthread_mutex_t lk = PTHREAD_MUTEX_INITIALIZER;
static tb_pysnap *latest; /* under lk */
static uint32_t generation;

static uint64_t get64(const unsigned char *b, int off)
{
    uint64_t v;
    memcpy(&v, b + off, 8);
    return v;
}

static int rd64(uint64_t addr, uint64_t *v) { return tb_self_read(v, addr, 8, 0); }

/* Two words in one system call where it can (each costs the agent 3-4 us
 * here, and a poll makes three). */
static int rd64_2(uint64_t a1, uint64_t *v1, uint64_t a2, uint64_t *v2)
{
    struct iovec local[2] = {{v1, 8}, {v2, 8}};
    struct iovec remote[2] = {{(void *)(uintptr_t)a1, 8}, {(void *)(uintptr_t)a2, 8}};
    if (process_vm_readv(getpid(), local, 2, remote, 2, 0) == 16)
        return 0;
    return rd64(a1, v1) == 0 && rd64(a2, v2) == 0 ? 0 : -1;
}

void tb_pyframes_resolve(void *(*lookup)(const char *name), int minor)
{
    pthread_mutex_lock(&lk);
    if (api.minor) {
        pthread_mutex_unlock(&lk);
        return;
    }
    api.minor = -1;
    /* (a Py_TRACE_REFS build before 3.13 has two more pointers in every
     * object; 3.13's keep them elsewhere) */
    if (minor < 10 || minor > 13 || (minor < 13 && lookup("_Py_ForgetReference"))) {
        pthread_mutex_unlock(&lk);
        return;
    }
    *(void **)&api.ts_get = lookup("PyThreadState_Get");
    *(void **)&api.get_frame = lookup("PyThreadState_GetFrame");
    *(void **)&api.get_attr = lookup("PyObject_GetAttrString");
    *(void **)&api.utf8 = lookup("PyUnicode_AsUTF8");
    *(void **)&api.err_clear = lookup("PyErr_Clear");
    *(void **)&api.decref = lookup("Py_DecRef");
    *(void **)&api.interp_get = lookup("PyInterpreterState_Get");
    *(void **)&api.eval_get = lookup("_PyInterpreterState_GetEvalFrameFunc");
    void *code_type = lookup("PyCode_Type"), *eval = lookup("_PyEval_EvalFrameDefault");
    void *gcc = dlopen("libgcc_s.so.1", RTLD_LAZY | RTLD_LOCAL); /* (kept open) */
    if (gcc) {
        *(void **)&api.backtrace = dlsym(gcc, "_Unwind_Backtrace");
        *(void **)&api.get_ip = dlsym(gcc, "_Unwind_GetIP");
        *(void **)&api.get_cfa = dlsym(gcc, "_Unwind_GetCFA");
    }
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (api.ts_get && api.get_frame && api.get_attr && api.utf8 && api.err_clear && api.decref && api.interp_get &&
        api.eval_get && api.backtrace && api.get_ip && api.get_cfa && code_type && eval && dladdr1(eval, &info, (void **)&sym, RTLD_DL_SYMENT) && sym &&
        sym->st_size && info.dli_saddr == eval) {
        api.code_type = (uint64_t)(uintptr_t)code_type;
        api.eval_lo = (uint64_t)(uintptr_t)eval;
        api.eval_hi = api.eval_lo + sym->st_size;
        api.minor = minor;
    }
    pthread_mutex_unlock(&lk);
}

/* Where tstate keeps `cur`, its current frame: the first word of the
 * thread state that is it (3.10's frame, 3.13's current_frame) or points
 * to a struct holding it (3.11: _PyCFrame.current_frame at 8, 3.12: at 0). */
static int find_current(tb_pysnap *s, uint64_t tstate, uint64_t cur)
{
    int direct = s->minor == 10 || s->minor >= 13;
    int inner = s->minor == 11 ? 8 : 0;
    for (uint64_t off = 0; off < 512; off += 8) {
        uint64_t w, v;
        if (rd64(tstate + off, &w) != 0)
            return 0;
        if (direct ? w == cur : (w && !(w & 7) && rd64(w + (uint64_t)inner, &v) == 0 && v == cur)) {
            s->tstate = tstate;
            s->cur_off = off;
            s->inner = direct ? -1 : inner;
            return 1;
        }
    }
    return 0;
}

/* The current frame, and the evaluator's word (ev) with it. 3.11's and
 * 3.12's lies in a _PyCFrame on the C stack that the thread may leave
 * between the two reads: the pointer to it is read again. */
static int read_current(const tb_pysnap *s, uint64_t *cur, uint64_t *ev)
{
    uint64_t w, again;
    if (rd64_2(s->tstate + s->cur_off, &w, s->ev_at, ev) != 0)
        return -1;
    if (s->inner < 0) {
        *cur = w;
        return 0;
    }
    if (!w || rd64_2(w + (uint64_t)s->inner, cur, s->tstate + s->cur_off, &again) != 0)
        return -1;
    return again == w ? 0 : -1;
}

/* Where the interpreter keeps its frame evaluator, which must be the
 * trampoline's (expected): the first word of its state that holds it. */
static int find_evaluator(tb_pysnap *s, void *interp, void *expected)
{
    void *ev = interp ? api.eval_get(interp) : NULL;
    if (!ev || ev != expected)
        return 0;
    for (uint64_t off = 0; off < (64 << 10); off += 512) {
        uint64_t chunk[64];
        if (tb_self_read(chunk, (uint64_t)(uintptr_t)interp + off, sizeof(chunk), 0) != 0)
            return 0;
        for (size_t i = 0; i < sizeof(chunk) / 8; i++)
            if (chunk[i] == (uint64_t)(uintptr_t)ev) {
                s->ev_at = (uint64_t)(uintptr_t)interp + off + i * 8;
                s->ev = chunk[i];
                return 1;
            }
    }
    return 0;
}

/* Activations from the frames' first marks (frame 0 starts one): group,
 * gstart, ngroups. */
static void set_groups(tb_pysnap *s)
{
    int g = -1;
    for (int i = 0; i < s->n; i++) {
        if (i == 0 || s->f[i].first) {
            s->gstart[++g] = i;
            s->f[i].first = 1;
        }
        s->f[i].group = g;
    }
    s->ngroups = g + 1;
    s->gstart[s->ngroups] = s->n;
}

/* lo and hi: the lowest and highest frame address */
static void set_bounds(tb_pysnap *s)
{
    s->lo = UINT64_MAX;
    s->hi = 0;
    for (int i = 0; i < s->n; i++) {
        s->lo = s->f[i].addr < s->lo ? s->f[i].addr : s->lo;
        s->hi = s->f[i].addr > s->hi ? s->f[i].addr : s->hi;
    }
}

/* The frames from cur to the root into s->f (bottom first), with their
 * activations; 0 when the list is not what the layout says. */
static int walk_list(tb_pysnap *s, uint64_t cur, uint64_t *shim)
{
    int k = 0, steps = 0;
    uint64_t a = cur;
    for (; a && steps < 2 * MAX_FRAMES; steps++) {
        unsigned char b[FRAME_READ];
        if (tb_self_read(b, a, sizeof(b), 0) != 0)
            return 0;
        uint64_t code = get64(b, s->code_off), prev = get64(b, s->prev_off), type;
        if (s->minor >= 12 && b[70] == OWNED_BY_CSTACK) {
            if (k) /* the frame above was the first its activation ran */
                s->f[k - 1].first = 1;
            if (!*shim)
                *shim = a;
            a = prev;
            continue;
        }
        if (k == MAX_FRAMES || rd64(code + 8, &type) != 0 || type != api.code_type)
            return 0;
        uint8_t entry = s->entry_off >= 0 ? b[s->entry_off] : 0;
        s->f[k++] = (pyf){a, code, prev, entry, (uint8_t)(s->minor == 10 || entry), 0, 0};
        a = prev;
    }
    if (a || !k)
        return 0;
    for (int i = 0; i < k / 2; i++) { /* (top first as walked) */
        pyf t = s->f[i];
        s->f[i] = s->f[k - 1 - i];
        s->f[k - 1 - i] = t;
    }
    s->n = k;
    set_groups(s);
    set_bounds(s);
    return 1;
}

/* The thread's own C stack must hold one evaluator activation per group,
 * each blocked in a call from [eval_lo, eval_hi): one blocked in a call
 * from code outside it (GCC's `.cold` part of the function, which the
 * symbol's size leaves out: in Debian's 3.11 the pending call itself runs
 * from there) would not be counted in the samples, and those above it
 * would take the wrong frames. The innermost activation, the one running
 * this pending call, is told by where it keeps a local (inner: its
 * _PyCFrame, or its entry shim): the first frame whose CFA is above it. */
#define URC_NO_REASON 0 /* (_Unwind_Reason_Code) */
#define URC_END_OF_STACK 5

enum { BT_DEPTH = 2048 };
typedef struct bt {
    int n;
    uint64_t ip[BT_DEPTH], cfa[BT_DEPTH];
} bt;

static int bt_frame(struct _Unwind_Context *ctx, void *arg)
{
    bt *b = arg;
    if (b->n == BT_DEPTH)
        return URC_END_OF_STACK;
    b->ip[b->n] = api.get_ip(ctx);
    b->cfa[b->n] = api.get_cfa(ctx);
    b->n++;
    return URC_NO_REASON;
}

static int activations_match(tb_pysnap *s, uint64_t inner, int *seen, uint64_t *last)
{
    *seen = 0;
    *last = 0;
    bt *b = malloc(sizeof(*b));
    if (!b)
        return 0;
    b->n = 0;
    api.backtrace(bt_frame, b);
    while (b->n && !b->ip[b->n - 1])
        b->n--; /* (libgcc's walk ends with a frame above _start, at 0) */
    /* (the CFA libgcc gives the callback for a frame is the one of the
     * frame it called: where this frame's stack pointer stood at the call) */
    int i0 = -1, k = 0;
    for (int i = 1; i < b->n && i0 < 0; i++)
        if (b->cfa[i] > inner)
            i0 = i - 1;
    int ok = i0 >= 0 && b->cfa[i0] <= inner && i0 + 1 < b->n && b->n < BT_DEPTH;
    /* from the root: activation g's frame is at[g] (the innermost's, i0) */
    int at[MAX_FRAMES];
    for (int i = b->n - 1; ok && i > i0; i--) { /* (return addresses: the call is the byte before) */
        uint64_t a = b->ip[i] - 1;
        if (a >= s->eval_lo && a < s->eval_hi) {
            if (k == s->ngroups - 1)
                ok = 0;
            else
                at[k++] = i;
        }
    }
    if (ok && k < s->ngroups - 1) { /* (the walk may have stopped short of the root: inherit) */
        *seen = k + 1;
        *last = b->ip[b->n - 1];
    }
    ok = ok && k == s->ngroups - 1 && (k == 0 || at[0] + 1 < b->n); /* (the root's caller: a frame seen) */
    if (ok) {
        at[k] = i0;
        for (int g = 0; g < s->ngroups; g++) {
            s->caller_ret[g] = b->ip[at[g] + 1];
            s->eval_ret[g] = g < s->ngroups - 1 ? b->ip[at[g]] : 0;
        }
        s->root_ret = b->ip[b->n - 1];
    }
    free(b);
    return ok;
}

static int same_frame(const pyf *a, const pyf *b)
{
    return a->addr == b->addr && a->code == b->code && a->prev == b->prev && a->entry == b->entry;
}

/* The C-stack walk stopped short of the root, having seen the `seen`
 * innermost activations: where it stopped at a trampoline (libgcc's
 * unwinder has no tables for one), the outermost of them is a function an
 * earlier capture's trampoline called, and which still runs. Those below
 * it began before that (while a capture is on, every new one goes through
 * a trampoline), and run on. Where the frame list holds there just the
 * groups of the last snapshot taken (`old`: each but the last the same
 * frames, as it is blocked in a call; the last, the same first frame, its
 * inline frames free to differ), old's C-stack checks of them stand, and
 * its anchors go with them; the snapshot keeps those groups only (names
 * from the list now), and a sample's labels stop at the named one above.
 * Every group below the stop must be one of old's: an activation there
 * that is not (begun unnamed after old was taken, while another evaluator
 * was in, or under a snapshot that failed) would take a kept group's
 * place in a sample whose count of activations misses one blocked in the
 * evaluator's `.cold` part (Debian's 3.11 calls out from there), and only
 * the caller of the last kept group is checked. Where the walk stopped
 * elsewhere (a libffi closure, JIT code), the activation above the kept
 * groups is unnamed, and a sample's count of them goes past the
 * snapshot's: not labelled. Under lk. */
static int inherit(tb_pysnap *s, const tb_pysnap *old, int seen, uint64_t last)
{
    if (!old || !old->root_ret || old->tid != s->tid || old->minor != s->minor || old->eval_lo != s->eval_lo ||
        !seen || last == old->root_ret)
        return 0;
    int below = s->ngroups - seen, p = 0;
    while (p < below && p < old->ngroups && same_frame(&s->f[s->gstart[p]], &old->f[old->gstart[p]])) {
        int a = s->gstart[p], b = old->gstart[p], size = s->gstart[p + 1] - a, i = 1;
        p++;
        if (size != old->gstart[p] - b)
            break; /* (kept as the last) */
        while (i < size && same_frame(&s->f[a + i], &old->f[b + i]))
            i++;
        if (i < size)
            break;
    }
    if (!p || p < below)
        return 0;
    s->ngroups = p;
    s->n = s->gstart[p];
    s->root_ret = old->root_ret;
    set_bounds(s);
    for (int g = 0; g < p; g++) {
        s->caller_ret[g] = old->caller_ret[g];
        s->eval_ret[g] = g < p - 1 ? old->eval_ret[g] : 0;
    }
    s->inherited = 1;
    return 1;
}

/* A local of the innermost activation: 3.11's _PyCFrame (tstate->cframe),
 * 3.12's and 3.13's entry shim (the first met walking the list), 3.10's
 * CFrame (the first word of the thread state that points into this
 * thread's stack above here: prev, next, interp and frame point to the
 * heap). 0: not found. */
static uint64_t innermost_local(const tb_pysnap *s, uint64_t shim)
{
    uint64_t w;
    if (s->minor >= 12)
        return shim;
    if (s->minor == 11)
        return rd64(s->tstate + s->cur_off, &w) == 0 ? w : 0;
    uint64_t here = (uint64_t)(uintptr_t)__builtin_frame_address(0);
    for (uint64_t off = 0; off < 256; off += 8)
        if (rd64(s->tstate + off, &w) == 0 && w > here && w - here < ((uint64_t)8 << 20))
            return w;
    return 0;
}

void tb_pyframes_take(void *expected_evaluator, uint64_t unnamed_calls)
{
    pthread_mutex_lock(&lk);
    int minor = api.minor;
    pthread_mutex_unlock(&lk);
    if (minor <= 0 || !expected_evaluator)
        return;
    int64_t began = tb_mono_ns();
    tb_pysnap *s = calloc(1, sizeof(*s));
    if (!s)
        return;
    s->minor = minor;
    s->tid = (int)syscall(SYS_gettid);
    s->eval_lo = api.eval_lo;
    s->eval_hi = api.eval_hi;
    s->unnamed = unnamed_calls;
    s->gstar = s->top = -1;
    s->pfull = 1;
    /* PyFrameObject (3.10), else _PyInterpreterFrame */
    s->code_off = minor == 10 ? 32 : minor == 11 ? 32 : 0;
    s->prev_off = minor == 10 ? 24 : minor == 11 ? 48 : 8;
    s->entry_off = minor == 11 ? 68 : -1;
    void *ts = api.ts_get();
    void *fo = ts ? api.get_frame(ts) : NULL; /* a new reference */
    uint64_t cur = (uint64_t)(uintptr_t)fo;
    int ok = fo != NULL;
    if (!fo) /* (3.11+ makes the frame object: a MemoryError is not the job's) */
        api.err_clear();
    if (ok && minor >= 11) /* PyFrameObject.f_frame */
        ok = rd64(cur + 24, &cur) == 0;
    if (fo)
        api.decref(fo);
    uint64_t shim = 0, inner, last;
    int seen;
    ok = ok && find_current(s, (uint64_t)(uintptr_t)ts, cur) && walk_list(s, cur, &shim) &&
         find_evaluator(s, api.interp_get(), expected_evaluator) && (inner = innermost_local(s, shim)) != 0;
    if (ok && !activations_match(s, inner, &seen, &last)) {
        pthread_mutex_lock(&lk);
        ok = inherit(s, latest, seen, last);
        pthread_mutex_unlock(&lk);
    }
    for (int i = 0; ok && i < s->n; i++) {
        void *q = api.get_attr((void *)(uintptr_t)s->f[i].code, minor >= 11 ? "co_qualname" : "co_name");
        void *file = api.get_attr((void *)(uintptr_t)s->f[i].code, "co_filename");
        const char *qs = q ? api.utf8(q) : NULL, *fs = file ? api.utf8(file) : NULL;
        if (!qs || !fs)
            api.err_clear();
        size_t room = sizeof(s->names) - s->names_len;
        int w = snprintf(s->names + s->names_len, room, "py::%s:%s", qs ? qs : "?", fs ? fs : "?");
        if (q)
            api.decref(q);
        if (file)
            api.decref(file);
        if (w < 0 || (size_t)w >= room) {
            ok = 0;
            break;
        }
        s->f[i].name = (uint32_t)s->names_len;
        s->names_len += (size_t)w + 1;
    }
    if (!ok) {
        tb_debug("python: no snapshot of the frames entered before the capture (%.0f us)",
                 (double)(tb_mono_ns() - began) / 1e3);
        free(s);
        return;
    }
    s->t = s->pread_at = tb_mono_ns();
    pthread_mutex_lock(&lk);
    free(latest);
    latest = s;
    generation++;
    pthread_mutex_unlock(&lk);
    tb_debug("python: %d frames in %d activations entered before the capture%s (%.0f us on this thread)", s->n,
             s->ngroups, s->inherited ? " (below a function an earlier capture entered: its checks kept)" : "",
             (double)(tb_mono_ns() - began) / 1e3);
}

uint32_t tb_pyframes_generation(void)
{
    pthread_mutex_lock(&lk);
    uint32_t g = generation;
    pthread_mutex_unlock(&lk);
    return g;
}

tb_pysnap *tb_pyframes_copy(uint32_t after)
{
    tb_pysnap *s = NULL;
    pthread_mutex_lock(&lk);
    if (latest && generation != after && (s = malloc(sizeof(*s))))
        memcpy(s, latest, sizeof(*s));
    pthread_mutex_unlock(&lk);
    return s;
}

void tb_pysnap_free(tb_pysnap *s) { free(s); }

int tb_pysnap_frames(const tb_pysnap *s) { return s ? s->n : 0; }

int tb_pysnap_tid(const tb_pysnap *s) { return s ? s->tid : 0; }

/* The walk's reads, through two windows of the thread's memory: frames lie
 * near each other in the data stack (3.11+) or the heap (3.10), and 3.12's
 * shims on the C stack, so one read of 4 KiB around a frame serves the
 * next ones too (a torch step's 30-60 frames took as many system calls). */
typedef struct window {
    uint64_t lo;
    int ok;
    unsigned char b[4096];
} window;

static int read_frame(window w[2], int *next, uint64_t a, unsigned char out[FRAME_READ])
{
    for (int i = 0; i < 2; i++)
        if (w[i].ok && a >= w[i].lo && a - w[i].lo <= sizeof(w[i].b) - FRAME_READ) {
            memcpy(out, w[i].b + (a - w[i].lo), FRAME_READ);
            return 0;
        }
    window *v = &w[*next];
    *next ^= 1;
    uint64_t lo = a > sizeof(v->b) / 2 ? a - sizeof(v->b) / 2 : 0;
    v->ok = tb_self_read(v->b, lo, sizeof(v->b), 0) == 0;
    if (v->ok) {
        v->lo = lo;
        memcpy(out, v->b + (a - lo), FRAME_READ);
        return 0;
    }
    return tb_self_read(out, a, FRAME_READ, 0); /* (the window crossed the end of a mapping) */
}

/* One walk of the live list from the current frame: 1 with the answer in
 * gstar/top, 0 when it could not be read through to a frame of the
 * snapshot (the list changes under the walk: a short call returns and its
 * shim on the C stack is overwritten, and what was read there may lead
 * anywhere, a loop included), -1 when the evaluator is no longer the
 * trampoline's (dead). */
static int walk_live(tb_pysnap *s, int *gstar, int *top)
{
    uint64_t a, ev;
    if (read_current(s, &a, &ev) != 0)
        return 0;
    if (ev != s->ev || tb_pytramp_unnamed_calls() != s->unnamed) {
        s->dead = 1;
        return -1;
    }
    if (s->minor == 10) { /* one frame to an activation: nothing to find */
        *gstar = *top = -1;
        return 1;
    }
    window w[2];
    int next = 0;
    w[0].ok = w[1].ok = 0;
    uint64_t seen[8] = {0};
    int steps = 0;
    for (; a && steps < WALK_MAX; steps++) {
        for (int i = 0; i < 8; i++)
            if (seen[i] == a)
                return 0; /* a loop: read from a shim overwritten under the walk */
        seen[steps & 7] = a;
        unsigned char b[FRAME_READ];
        if (read_frame(w, &next, a, b) != 0)
            return 0;
        uint64_t code = get64(b, s->code_off), prev = get64(b, s->prev_off);
        if (a < s->lo || a > s->hi) {
            a = prev;
            continue;
        }
        /* a first frame of an activation is no answer, but the root's: a
         * call made again through the trampoline from the same caller can
         * land where it was with the same code and link; a later frame of
         * one cannot (3.11: it would be an entry now; 3.12+: it would link
         * to a new shim), nor can the root be entered again */
        for (int i = 0; i < s->n; i++) {
            const pyf *f = &s->f[i];
            if (f->addr != a || (f->first && i) || code != f->code || prev != f->prev ||
                (s->entry_off >= 0 && b[s->entry_off] != f->entry))
                continue;
            *gstar = i ? f->group : -1;
            *top = i ? i : -1;
            return 1;
        }
        a = prev;
    }
    /* the end of the list: it changed under the walk; or WALK_MAX
     * frames: a deep recursion above the snapshot's frames, not tried again */
    return a ? -2 : 0;
}

void tb_pysnap_refresh(tb_pysnap *s)
{
    if (!s || s->test)
        return;
    s->known = 0;
    for (int tries = 0; tries < 3 && !s->dead; tries++) {
        int64_t now = tb_mono_ns();
        int gstar, top, r = walk_live(s, &gstar, &top);
        if (r > 0) {
            if (s->read_at) { /* (the last answer, whether or not the read before this failed) */
                s->pfull = 0;
                s->pgstar = s->gstar;
                s->ptop = s->top;
                s->pread_at = s->read_end; /* (a sample during that walk may have had more) */
            }
            s->known = 1;
            s->gstar = gstar;
            s->top = top;
            s->read_at = now;
            s->read_end = tb_mono_ns();
        }
        if (r)
            break;
    }
}

/* Frames of activation g live by an answer (gstar, top), or -1 where the
 * answer cannot be (the activation found innermost is later than g). */
static int live_frames(const tb_pysnap *s, int g, int full, int gstar, int top)
{
    int size = s->gstart[g + 1] - s->gstart[g];
    if (full || g < gstar)
        return size;
    if (gstar < 0 || g > gstar)
        return 1;
    return top - s->gstart[g] + 1;
}

int tb_pysnap_label(tb_pysnap *s, int tid, int64_t t, uint64_t *ips, int n, int cap, tb_pysnap_named_fn named,
                    void *arg)
{
    /* (a sample taken after the read: the frames it found may have
     * returned before it) */
    if (!s || !s->known || s->dead || tid != s->tid || t <= s->pread_at || t > s->read_at || n <= 0)
        return n;
    /* the unnamed activations, from the root: pos[g] holds activation g */
    int pos[MAX_FRAMES], k = 0;
    for (int j = n - 1; j >= 0; j--) {
        uint64_t a = j ? ips[j] - 1 : ips[j]; /* (a return address points after its call) */
        if (a < s->eval_lo || a >= s->eval_hi)
            continue;
        if (j + 1 < n && named(ips[j + 1], arg))
            break; /* called by a trampoline: this one and those above are named */
        if (k == s->ngroups)
            return n; /* more than were running at the snapshot: not its list */
        pos[k++] = j;
    }
    if (!k)
        return n;
    if (s->root_ret && ips[n - 1] != s->root_ret)
        return n; /* (the unwind did not reach the root, or another thread's stack) */
    for (int g = 0; s->root_ret && g < k; g++)
        if ((pos[g] + 1 < n && ips[pos[g] + 1] != s->caller_ret[g]) || (g < k - 1 && ips[pos[g]] != s->eval_ret[g]))
            return n; /* not the activation the snapshot saw there */
    /* each but the innermost still runs the frames it ran at the snapshot;
     * the innermost, those the refresh found live */
    int cnt[MAX_FRAMES], add = 0;
    for (int g = 0; g < k; g++) {
        if (g < k - 1) {
            cnt[g] = s->gstart[g + 1] - s->gstart[g];
        } else {
            if (g < s->gstar)
                return n; /* the read found a later activation live that this sample had left */
            cnt[g] = live_frames(s, g, 0, s->gstar, s->top);
            if (cnt[g] != live_frames(s, g, s->pfull, s->pgstar, s->ptop))
                return n; /* it lost frames between the two reads */
        }
        add += cnt[g];
    }
    if (n + add > cap)
        return n;
    /* from the root end down, in place: labels sit on the caller side of
     * their activation, innermost next to it */
    int o = n + add, g = 0;
    for (int j = n - 1; j >= 0; j--) {
        if (g < k && j == pos[g]) {
            for (int i = 0; i < cnt[g]; i++)
                ips[--o] = TB_PYFRAME_IP_BASE + (uint64_t)(s->gstart[g] + i);
            g++;
        }
        ips[--o] = ips[j];
    }
    return n + add;
}

const char *tb_pysnap_name(const tb_pysnap *s, uint64_t addr)
{
    if (!s || !tb_pyframe_ip(addr) || addr - TB_PYFRAME_IP_BASE >= (uint64_t)s->n)
        return NULL;
    return s->names + s->f[addr - TB_PYFRAME_IP_BASE].name;
}

/* the parent's snapshot in a fork child: not freed (another thread of the
 * parent may have been copying it), still reachable for LSan */
static void *volatile parents_snapshot;

void tb_pyframes_atfork_child(void)
{
    pthread_mutex_init(&lk, NULL);
    parents_snapshot = latest;
    latest = NULL;
}

tb_pysnap *tb_pysnap_for_test(int tid, int64_t t, uint64_t eval_lo, uint64_t eval_hi, const char *const *names,
                              const int *group, int n)
{
    if (n <= 0 || n > MAX_FRAMES)
        return NULL;
    tb_pysnap *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->tid = tid;
    s->t = t;
    s->test = 1;
    s->eval_lo = eval_lo;
    s->eval_hi = eval_hi;
    s->n = n;
    for (int i = 0; i < n; i++) {
        s->f[i].first = i == 0 || group[i] != group[i - 1];
        s->f[i].name = (uint32_t)s->names_len;
        s->names_len += (size_t)snprintf(s->names + s->names_len, sizeof(s->names) - s->names_len, "%s", names[i]) + 1;
    }
    set_groups(s);
    tb_pysnap_set_live_for_test(s, n - 1, INT64_MAX);
    return s;
}

void tb_pysnap_set_prev_for_test(tb_pysnap *s, int top, int64_t read_at)
{
    s->pfull = 0;
    s->ptop = top >= 0 ? top : -1;
    s->pgstar = top >= 0 ? s->f[top].group : -1;
    s->pread_at = read_at;
}

void tb_pysnap_set_live_for_test(tb_pysnap *s, int top, int64_t read_at)
{
    tb_pysnap_set_prev_for_test(s, top, s->t);
    s->read_at = read_at;
    s->known = top >= -1;
    s->top = top >= 0 ? top : -1;
    s->gstar = top >= 0 ? s->f[top].group : -1;
}

void tb_pysnap_set_anchors_for_test(tb_pysnap *s, uint64_t root, const uint64_t *caller, const uint64_t *eval)
{
    s->root_ret = root;
    for (int g = 0; g < s->ngroups; g++) {
        s->caller_ret[g] = caller[g];
        s->eval_ret[g] = g < s->ngroups - 1 ? eval[g] : 0;
    }
}

int tb_pysnap_inherit_for_test(tb_pysnap *s, const tb_pysnap *old, int seen, uint64_t last)
{
    return inherit(s, old, seen, last);
}

void tb_pysnap_watch_for_test(tb_pysnap *s, const uint64_t *current, const uint64_t *evaluator,
                              const void *const *frames)
{
    s->test = 0;
    s->minor = 13;
    s->code_off = 0;
    s->prev_off = 8;
    s->entry_off = -1;
    s->tstate = (uint64_t)(uintptr_t)current;
    s->cur_off = 0;
    s->inner = -1;
    s->ev_at = (uint64_t)(uintptr_t)evaluator;
    s->ev = *evaluator;
    s->unnamed = tb_pytramp_unnamed_calls();
    for (int i = 0; i < s->n; i++) {
        pyf *f = &s->f[i];
        f->addr = (uint64_t)(uintptr_t)frames[i];
        f->code = get64(frames[i], 0);
        f->prev = get64(frames[i], 8);
    }
    set_bounds(s);
    /* as tb_pyframes_take leaves it: every frame live at the snapshot, no read yet */
    s->known = s->read_at = s->read_end = 0;
    s->pfull = 1;
    s->gstar = s->top = -1;
    s->pread_at = s->t;
    s->dead = 0;
}
