/* nvtx_steps.c - a loop that marks its steps with NVTX ranges, for
 * tests/e2e/test_agent_nvtx.py. Built against the NVTX v3 headers
 * (header-only: the first NVTX call dlopen()s NVTX_INJECTION64_PATH itself).
 *
 *   nvtx_steps [-n steps] [-m ms] [-g gap_ms] [-k kind] [-p prefix] [-u] [-o off] [-b N] [-r N]
 *
 *   -k   push (nvtxRangePushA, default) | pushw (nvtxRangePushW) |
 *        pushex (nvtxRangePushEx) | start (nvtxRangeStartA/End) |
 *        domain (nvtxDomainRangePushEx, registered string) | mark (nvtxMarkA)
 *   -p   range name prefix (default "step"): step i is named "<prefix> <i>"
 *   -u   unnumbered: every step range is named just "<prefix>"
 *   -o   number the names from this offset ("<prefix> <i + offset>")
 *   -r   N more ranges "tiny" (push/pop, nothing inside) in each step
 *   -c   with -b: time the loops inside a capture (tbprof_start(0) first, when
 *        the preload is there; prints "capturing=1")
 *   -i   A,B  names of the inner ranges (default "fwd,bwd")
 *   -f   at step F, inside its "fwd" range, fork a child that pops that
 *        range, makes 50 "child" ranges and a "child mark", and exits 0 (the
 *        parent goes on, then waits for it: "child PID status S")
 *   -x   as XLA does (JAX, TensorFlow): nvtxDomainCreateA("TSL") first,
 *        printing "tsl_domain=1" when a handle came back (XLA then annotates
 *        with NVTX instead of its own profiler's stack), and with one each
 *        step opens "Thunk:#hlo_op=fusion.1,unique_hlo_op_id=7#" in it
 *        (XLA's annotation encoding) around the "fwd" work
 *   -d   each step also opens "dom a" in domain "tbtest.a", then "dom b" in
 *        "tbtest.b" (~ms/4 apart), and pops tbtest.a before tbtest.b: per
 *        domain stacks end "dom a" first (prints "same_domain=1" when a
 *        second nvtxDomainCreateA("tbtest.a") gave the same handle)
 *   -a N with -d: create those two domains at step N, not before the loop
 *   -l   each step, before its step range, pushes "leak" and never pops it
 *        (a missing pop): the thread's nesting grows by one per step
 *   -D N each step, after "bwd", pushes N nested ranges "deep" (then ~ms/4
 *        of work) and pops them all
 *   -P   cudaProfilerStart() once before the loop (nsys' capture-range
 *        habit; the preload's export, when there is one), prints
 *        "profiler_start=RC"
 *   -b   benchmark: N push/pop pairs of a non-matching name ("fwd") and N of
 *        a matching one, and N reads of CLOCK_MONOTONIC (the machine's
 *        yardstick); prints "bench miss_ns=X match_ns=Y clock_ns=Z"
 * Each step: inner ranges "fwd"/"bwd" that never match, ~ms of work inside
 * the step range, ~gap ms outside. Prints "nvtx_path=<env>" and
 * "level=<first push's return>", then per step "range i START_NS END_NS"
 * (epoch ns just before the start call, just after the end call).
 * Without the headers it prints "no-nvtx-headers" and exits 77.
 */
#if defined(__has_include)
#if __has_include(<nvtx3/nvToolsExt.h>)
#define HAVE_NVTX3 1
#endif
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "progutil.h"

#ifndef HAVE_NVTX3
int main(void)
{
    printf("no-nvtx-headers\n");
    return 77;
}
#else
#include <nvtx3/nvToolsExt.h>
#include <dlfcn.h>
#include <locale.h>
#include <sys/wait.h>
#include <wchar.h>


static void work(double ms) { spin_ms(ms); }

static nvtxEventAttributes_t attr_ascii(const char *s)
{
    nvtxEventAttributes_t a;
    memset(&a, 0, sizeof(a));
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.messageType = NVTX_MESSAGE_TYPE_ASCII;
    a.message.ascii = s;
    return a;
}

int main(int argc, char **argv)
{
    int n = 10, unnumbered = 0, offset = 0;
    long bench = 0, tiny = 0;
    int in_capture = 0, fork_at = -1, two_domains = 0, xla = 0, leak = 0, deep = 0, profiler_start = 0;
    int domains_at = 0;
    pid_t child = 0;
    double ms = 3, gap = 2;
    const char *kind = "push", *prefix = "step";
    char inner_a[64] = "fwd", inner_b[64] = "bwd";
    int c;
    while ((c = getopt(argc, argv, "n:m:g:k:p:uo:b:r:cf:i:dxlD:Pa:")) != -1) {
        switch (c) {
        case 'n': n = atoi(optarg); break;
        case 'm': ms = atof(optarg); break;
        case 'g': gap = atof(optarg); break;
        case 'k': kind = optarg; break;
        case 'p': prefix = optarg; break;
        case 'u': unnumbered = 1; break;
        case 'o': offset = atoi(optarg); break;
        case 'b': bench = atol(optarg); break;
        case 'r': tiny = atol(optarg); break;
        case 'c': in_capture = 1; break;
        case 'f': fork_at = atoi(optarg); break;
        case 'd': two_domains = 1; break;
        case 'x': xla = 1; break;
        case 'l': leak = 1; break;
        case 'D': deep = atoi(optarg); break;
        case 'P': profiler_start = 1; break;
        case 'a': domains_at = atoi(optarg); break;
        case 'i':
            if (sscanf(optarg, "%63[^,],%63s", inner_a, inner_b) != 2) {
                fprintf(stderr, "nvtx_steps: -i wants A,B\n");
                return 2;
            }
            break;
        default:
            fprintf(stderr, "usage: nvtx_steps [-n N] [-m ms] [-g ms] [-k kind] [-p prefix] [-u] [-o off] [-b N] [-r N]\n");
            return 2;
        }
    }
    setlocale(LC_CTYPE, "C.UTF-8"); /* -k pushw: UTF-8 prefixes to wide names */
    const char *env = getenv("NVTX_INJECTION64_PATH");
    printf("nvtx_path=%s\n", env ? env : "");
    if (bench > 0) {
        char match[64];
        snprintf(match, sizeof(match), "%s 1", prefix);
        for (long i = 0; i < 1000; i++) { /* first call loads the injection */
            nvtxRangePushA("fwd");
            nvtxRangePop();
        }
        int (*start)(int64_t) = (int (*)(int64_t))dlsym(RTLD_DEFAULT, "tbprof_start");
        if (in_capture && start && start(0) == 0)
            printf("capturing=1\n");
        int64_t t0 = now_ns(CLOCK_MONOTONIC);
        for (long i = 0; i < bench; i++) {
            nvtxRangePushA("fwd");
            nvtxRangePop();
        }
        int64_t t1 = now_ns(CLOCK_MONOTONIC);
        for (long i = 0; i < bench; i++) {
            nvtxRangePushA(match);
            nvtxRangePop();
        }
        int64_t t2 = now_ns(CLOCK_MONOTONIC);
        volatile int64_t sink = 0;
        for (long i = 0; i < bench; i++)
            sink += now_ns(CLOCK_MONOTONIC);
        int64_t t3 = now_ns(CLOCK_MONOTONIC);
        (void)sink;
        printf("bench miss_ns=%.1f match_ns=%.1f clock_ns=%.1f\n", (double)(t1 - t0) / bench,
               (double)(t2 - t1) / bench, (double)(t3 - t2) / bench);
        return 0;
    }
    nvtxDomainHandle_t tsl = NULL;
    if (xla) {
        tsl = nvtxDomainCreateA("TSL");
        printf("tsl_domain=%d\n", tsl != NULL);
    }
    nvtxDomainHandle_t dom = NULL;
    if (!strcmp(kind, "domain"))
        dom = nvtxDomainCreateA("tbtest");
    nvtxDomainHandle_t da = NULL, db = NULL;
    if (two_domains && !domains_at) {
        da = nvtxDomainCreateA("tbtest.a");
        db = nvtxDomainCreateA("tbtest.b");
        printf("same_domain=%d\n", da && da == nvtxDomainCreateA("tbtest.a"));
    }
    if (profiler_start) {
        int (*ps)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "cudaProfilerStart");
        printf("profiler_start=%d\n", ps ? ps() : -1);
    }
    int first_level = -100;
    for (int i = 0; i < n; i++) {
        char name[128];
        if (unnumbered)
            snprintf(name, sizeof(name), "%s", prefix);
        else
            snprintf(name, sizeof(name), "%s %d", prefix, i + offset);
        if (two_domains && domains_at && i == domains_at) {
            da = nvtxDomainCreateA("tbtest.a");
            db = nvtxDomainCreateA("tbtest.b");
        }
        if (leak)
            nvtxRangePushA("leak");
        int64_t a = now_ns(CLOCK_REALTIME);
        nvtxRangeId_t id = 0;
        int lvl = 0;
        if (!strcmp(kind, "push")) {
            lvl = nvtxRangePushA(name);
        } else if (!strcmp(kind, "pushw")) {
            wchar_t w[128];
            swprintf(w, 128, L"%s", name);
            lvl = nvtxRangePushW(w);
        } else if (!strcmp(kind, "pushex")) {
            nvtxEventAttributes_t at = attr_ascii(name);
            lvl = nvtxRangePushEx(&at);
        } else if (!strcmp(kind, "start")) {
            id = nvtxRangeStartA(name);
        } else if (!strcmp(kind, "domain")) {
            nvtxEventAttributes_t at = attr_ascii(NULL);
            at.messageType = NVTX_MESSAGE_TYPE_REGISTERED;
            at.message.registered = nvtxDomainRegisterStringA(dom, name);
            lvl = nvtxDomainRangePushEx(dom, &at);
        } else if (!strcmp(kind, "mark")) {
            nvtxMarkA(name);
        } else {
            fprintf(stderr, "nvtx_steps: unknown kind %s\n", kind);
            return 2;
        }
        int64_t a2 = now_ns(CLOCK_REALTIME); /* the step began in [a, a2] */
        if (i == 0)
            first_level = lvl;
        /* inner ranges that never match */
        nvtxRangePushA(inner_a);
        if (i == fork_at) {
            fflush(stdout);
            child = fork();
            if (child == 0) {
                nvtxRangePop(); /* the parent's "fwd": open in this copy too */
                for (int k = 0; k < 50; k++) {
                    nvtxRangePushA("child");
                    nvtxRangePop();
                }
                nvtxMarkA("child mark");
                exit(0);
            }
        }
        if (tsl) {
            nvtxEventAttributes_t ht = attr_ascii("Thunk:#hlo_op=fusion.1,unique_hlo_op_id=7#"); /* as XLA names it */
            nvtxDomainRangePushEx(tsl, &ht);
        }
        work(ms / 2);
        if (tsl)
            nvtxDomainRangePop(tsl);
        nvtxRangePop();
        for (long r = 0; r < tiny; r++) {
            nvtxRangePushA("tiny");
            nvtxRangePop();
        }
        nvtxRangePushA(inner_b);
        nvtxMarkA("loss");
        work(ms / 2);
        nvtxRangePop();
        for (int d = 0; d < deep; d++)
            nvtxRangePushA("deep");
        if (deep)
            work(ms / 4);
        for (int d = 0; d < deep; d++)
            nvtxRangePop();
        if (two_domains && (!domains_at || i >= domains_at)) {
            nvtxEventAttributes_t at = attr_ascii("dom a"), bt = attr_ascii("dom b");
            nvtxDomainRangePushEx(da, &at);
            work(ms / 4);
            nvtxDomainRangePushEx(db, &bt);
            work(ms / 4);
            nvtxDomainRangePop(da);
            work(ms / 4);
            nvtxDomainRangePop(db);
        }
        if (!strcmp(kind, "start"))
            nvtxRangeEnd(id);
        else if (!strcmp(kind, "domain"))
            nvtxDomainRangePop(dom);
        else if (strcmp(kind, "mark"))
            nvtxRangePop();
        int64_t b = now_ns(CLOCK_REALTIME);
        printf("range %d %lld %lld %lld\n", i, (long long)a, (long long)b, (long long)a2);
        work(gap);
    }
    if (child > 0) {
        int st = 0;
        waitpid(child, &st, 0);
        printf("child %d status %d\n", (int)child, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    printf("level=%d\n", first_level);
    fflush(stdout);
    return 0;
}
#endif
