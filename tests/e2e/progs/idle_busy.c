/* idle_busy.c IDLE BUSY SECONDS - a runtime's thread mix: IDLE threads that
 * wait (a JVM's GC and compiler threads, a PyTorch job's pools) created
 * first, then BUSY threads that burn CPU, for SECONDS. Prints "busy TID" per
 * busy thread once it runs, and "pid PID". The capture is the caller's
 * (TBPROF_DELAY / TBPROF_DURATION). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static atomic_int stop;

static void *idle(void *a)
{
    (void)a;
    while (!atomic_load(&stop))
        usleep(20000);
    return NULL;
}

static void *busy(void *a)
{
    (void)a;
    printf("busy %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    volatile double x = 1;
    while (!atomic_load(&stop))
        for (int i = 0; i < 10000; i++)
            x = x * 1.0000001 + 1e-9;
    return NULL;
}

int main(int argc, char **argv)
{
    int nidle = argc > 1 ? atoi(argv[1]) : 100, nbusy = argc > 2 ? atoi(argv[2]) : 4;
    double secs = argc > 3 ? atof(argv[3]) : 2.0;
    pthread_t *t = calloc((size_t)(nidle + nbusy), sizeof(*t));
    int n = 0;
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 64 << 10);
    for (int i = 0; i < nidle; i++)
        if (pthread_create(&t[n], &at, idle, NULL) == 0)
            n++;
    for (int i = 0; i < nbusy; i++)
        if (pthread_create(&t[n], &at, busy, NULL) == 0)
            n++;
    usleep((useconds_t)(secs * 1e6));
    atomic_store(&stop, 1);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    free(t);
    return 0;
}
