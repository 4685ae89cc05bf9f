/* tap.h - a tiny test harness: CHECK() records failures and goes on; the
 * program prints "N passed, N failed" and exits non-zero on any failure. */
#ifndef TBPROF_TESTS_TAP_H
#define TBPROF_TESTS_TAP_H

#include <stdio.h>

extern int tap_pass, tap_fail;
void tap_failed(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int tap_done(void);

/* Bound the address space to what is mapped now plus extra_kb (RLIMIT_AS),
 * the old limit into *was (put it back with setrlimit(RLIMIT_AS, was)):
 * 0; -1 where /proc or getrlimit cannot say (a test skips), -2 where
 * setrlimit refused. */
#include <sys/resource.h>
int tap_limit_memory(long extra_kb, struct rlimit *was);

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (cond)                                                          \
            tap_pass++;                                                    \
        else                                                               \
            tap_failed(__FILE__, __LINE__, #cond, NULL);                   \
    } while (0)

#define CHECKF(cond, ...)                                                  \
    do {                                                                   \
        if (cond)                                                          \
            tap_pass++;                                                    \
        else                                                               \
            tap_failed(__FILE__, __LINE__, #cond, __VA_ARGS__);            \
    } while (0)

#define CHECK_EQ_I(a, b)                                                   \
    CHECKF((long long)(a) == (long long)(b), "%s = %lld, expected %lld", #a, \
           (long long)(a), (long long)(b))
/* TAP_SANITIZED: 1 in an ASan or TSan build (gcc says so by
 * __SANITIZE_*__, clang by __has_feature), where a test that bounds the
 * address space with RLIMIT_AS cannot work. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TAP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TAP_SANITIZED 1
#endif
#endif
#ifndef TAP_SANITIZED
#define TAP_SANITIZED 0
#endif

#define CHECK_STR(a, b)                                                    \
    CHECKF(strcmp((a), (b)) == 0, "%s = \"%s\", expected \"%s\"", #a, (a), (b))

#endif
