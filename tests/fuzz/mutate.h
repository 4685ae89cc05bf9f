/* mutate.h - what the fuzzers share (header-only; one fuzzer per program):
 * a seeded xorshift generator, the byte mutator, and running a tbprof
 * subcommand quietly on a file, and EXPECT. Deterministic for a seed: set
 * rng_state (non-zero) before the first rnd(). Define FUZZ_NAME (the
 * program's name, for messages) before including it. */
#ifndef TBPROF_FUZZ_MUTATE_H
#define TBPROF_FUZZ_MUTATE_H

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

extern char **environ;

/* Failed checks so far. EXPECT(cond, fmt, ...) counts and reports one,
 * naming the case: a variable `cs` must be in scope. */
static int fail;
#define EXPECT(c, ...)                                                         \
    do {                                                                       \
        if (!(c)) {                                                            \
            fprintf(stderr, "%s: case %d: %s: ", FUZZ_NAME, cs, #c);           \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            fail++;                                                            \
        }                                                                      \
    } while (0)

static uint64_t rng_state;

static inline uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* Apply 1..6 random mutations to d[0..len) in place (d holds cap bytes):
 * bit flips, byte sets, long varints (huge lengths / ids), deleted ranges,
 * inserted random bytes, truncation, chunks copied elsewhere. Returns the
 * new length (<= cap). */
static inline size_t mutate(uint8_t *d, size_t len, size_t cap)
{
    int n = 1 + (int)(rnd() % 6);
    for (int k = 0; k < n && len; k++) {
        size_t at = rnd() % len;
        switch (rnd() % 8) {
        case 0: d[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
        case 1: d[at] = (uint8_t)rnd(); break;
        case 2: { /* a long varint: huge lengths / ids */
            static const uint8_t big[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
            size_t m = len - at < sizeof(big) ? len - at : sizeof(big);
            memcpy(d + at, big, m);
            break;
        }
        case 3: /* delete a range */ {
            size_t m = 1 + rnd() % 16;
            if (m > len - at)
                m = len - at;
            memmove(d + at, d + at + m, len - at - m);
            len -= m;
            break;
        }
        case 4: /* insert random bytes */ {
            size_t m = 1 + rnd() % 8;
            if (len + m > cap)
                break;
            memmove(d + at + m, d + at, len - at);
            for (size_t i = 0; i < m; i++)
                d[at + i] = (uint8_t)rnd();
            len += m;
            break;
        }
        case 5: len = at; break; /* truncate */
        case 6: /* copy a chunk elsewhere */ {
            size_t from = rnd() % len, m = 1 + rnd() % 32;
            if (m > len - from)
                m = len - from;
            if (m > len - at)
                m = len - at;
            memmove(d + at, d + from, m);
            break;
        }
        default: d[at] = (uint8_t)(d[at] + 1); break;
        }
    }
    return len;
}

/* Run `tbprof CMD FILE [OPT]` with stdout and stderr to /dev/null and wait;
 * *status gets its wait status. 0, or -errno when it could not start. */
static inline int run_tool(const char *tbprof, const char *cmd, const char *file, const char *opt,
                           int *status)
{
    char *argv[] = {(char *)tbprof, (char *)cmd, (char *)file, (char *)opt, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int r = posix_spawn(&pid, tbprof, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0)
        return -r;
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

#endif
