/* util.h - small internal helpers shared by the agent's modules (not part of
 * the public API; symbols are hidden like the rest of libtbprof). */
#ifndef TBPROF_UTIL_H
#define TBPROF_UTIL_H

#include <stddef.h>

/* Make *arr (elements of `elem` bytes, *cap of them allocated) hold at least
 * `need` elements: capacity doubles from 16 until it fits. Returns 0, or
 * -ENOMEM when realloc fails or the new size would overflow size_t; on
 * failure *arr and *cap are unchanged (still valid, still owned by the
 * caller). */
int tb_grow(void **arr, size_t *cap, size_t need, size_t elem);

/* TB_GROW(arr, cap, need): tb_grow for a typed pointer lvalue `arr` and its
 * size_t capacity lvalue `cap`. */
#define TB_GROW(arr, cap, need) tb_grow((void **)&(arr), &(cap), (need), sizeof(*(arr)))

/* Put `add` in the list variable `var` (PATH-like: entries split at any
 * byte of `seps`, joined with ':'), first or last, unless it is one of its
 * entries already. 0, or -errno. */
int tb_env_path_add(const char *var, const char *add, int front, const char *seps);

/* Initialise *cv for timed waits on CLOCK_MONOTONIC (deadlines from
 * clock_gettime(CLOCK_MONOTONIC)): a wall-clock step neither stretches nor
 * cuts them. */
#include <pthread.h>
void tb_cond_init_monotonic(pthread_cond_t *cv);

/* fd itself, or where it is 0, 1 or 2 (a job started with stdin, stdout or
 * stderr closed) a close-on-exec copy at 3 or above, the original closed:
 * the job's own writes to "stderr" must not land in our socket, pipe or
 * profile. -1 (errno set, fd closed) when no copy can be made; fd < 0 is
 * returned as it is. */
int tb_fd_above_stdio(int fd);

/* What one of the agent's own fds is (device and inode), to tell it from
 * the job's: a job may close every fd it did not open (a daemon's
 * closefrom(3) at start-up) and get the numbers back for its own files and
 * sockets, which the agent must then neither read, send nor close. Taken
 * when the fd is made ({0, 0} for none); compared before each use. */
#include <sys/types.h>
typedef struct tb_fd_id {
    dev_t dev;
    ino_t ino;
} tb_fd_id;
void tb_fd_id_take(int fd, tb_fd_id *id);
/* 1 when fd is still the file id was taken of. */
int tb_fd_id_is(int fd, const tb_fd_id *id);

/* opendir(path) with its fd at 3 or above (tb_fd_above_stdio): a
 * directory the agent reads during a capture (/proc/self/task) must not sit
 * on a stdio number the job has closed, where the job's dup2() onto it
 * would swap it for the job's file and our closedir() would close that.
 * NULL with errno set. */
#include <dirent.h>
DIR *tb_opendir_above_stdio(const char *path);

/* For the libraries we start that open fds they keep (libunwind's pipe,
 * CUPTI's): the free ones of fds 0, 1, 2 taken by /dev/null meanwhile, so
 * that theirs land above; a mask of those held, for tb_stdio_release, which
 * closes only those still ours (not a file the job dup2()ed onto one
 * meanwhile). */
unsigned tb_stdio_hold(void);
void tb_stdio_release(unsigned held);

/* What /proc says of process pid: its command name (comm may be NULL) and
 * its start, in seconds since the epoch (to the second: the boot time /proc
 * gives is whole seconds). 0, or -1 when it cannot tell. */
#include <time.h>
int tb_proc_start(int pid, char *comm, size_t ncomm, time_t *start);
/* Process pid's state letter ('R', 'S', 'Z', ...) and parent, from the
 * same file: 0, or -1 where /proc does not say (gone, hidden). */
int tb_proc_stat(int pid, char *state, int *ppid);

/* Copy len bytes of this process's memory at addr into dst: 0, or -1 when
 * they are not all mapped now. Read with process_vm_readv, so that an
 * object the job unloaded after we looked (dlclose on another thread)
 * fails here instead of faulting the job. Where that call is refused
 * (seccomp, a sandbox without it): with `in_object` (the caller found the
 * range in a loaded object's readable segment) a plain copy, else -1. */
#include <stdint.h>
int tb_self_read(void *dst, uint64_t addr, size_t len, int in_object);

/* Reflected CRC-32 for any polynomial (0xEDB88320: gzip's; 0x82F63B78:
 * CRC-32C, TFRecord's): tb_crc_table fills table once, tb_crc_update
 * continues crc (0 to start) over p[0, n). */
void tb_crc_table(uint32_t table[256], uint32_t poly);
uint32_t tb_crc_update(const uint32_t table[256], uint32_t crc, const void *p, size_t n);

#endif
