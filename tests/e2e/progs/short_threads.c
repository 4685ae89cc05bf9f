/* short_threads.c - short-lived threads started during a capture, for the
 * CPU sampler's "new thread" path (tests/e2e/test_cpu_window.py).
 *
 *   short_threads [-n N] [-m MS]
 *
 * Starts an API capture, then N threads one after another (each joined
 * before the next starts), named "short<i>", each spinning MS ms of CPU
 * (default 20 threads of 4 ms); stops the capture. Prints "short I TID" per
 * thread. Without the preload the API calls are no-ops.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "progutil.h"
#include "tbapi.h"

static double ms = 4;

static void *run(void *arg)
{
    int i = (int)(intptr_t)arg;
    char name[16];
    snprintf(name, sizeof(name), "short%d", i % 1000);
    pthread_setname_np(pthread_self(), name);
    printf("short %d %ld\n", i, (long)syscall(SYS_gettid));
    spin_ms(ms);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = 20, c;
    while ((c = getopt(argc, argv, "n:m:")) != -1) {
        switch (c) {
        case 'n': n = atoi(optarg); break;
        case 'm': ms = atof(optarg); break;
        default: fprintf(stderr, "usage: short_threads [-n N] [-m MS]\n"); return 2;
        }
    }
    tbapi_init();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (tb_start(0) < 0)
        fprintf(stderr, "short_threads: tbprof_start failed (no preload?)\n");
    spin_ms(20); /* the capture is running: sources started */
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, run, (void *)(intptr_t)i) != 0)
            return 1;
        pthread_join(t, NULL);
    }
    tb_stop();
    return 0;
}
