/* jitspin.c SECONDS [map] - spins for SECONDS in machine code it wrote to
 * anonymous executable memory, as a JIT's kernel runs (oneDNN's in a CPU
 * PyTorch job): in no loaded object, with no unwind tables. With "map" it
 * first names the code in /tmp/perf-<pid>.map ("jit_spin_kernel"), as JITs
 * that support perf do, and removes the map at exit. Prints "pid PID". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    int map = argc > 2 && strcmp(argv[2], "map") == 0;
    /* loop: sub $1,%rdi; jnz loop; ret */
    static const unsigned char code[] = {0x48, 0x83, 0xef, 0x01, 0x75, 0xfa, 0xc3};
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *mem = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memcpy(mem, code, sizeof(code));
    if (mprotect(mem, (size_t)page, PROT_READ | PROT_EXEC) != 0) {
        perror("mprotect"); /* (a policy against generated code: SELinux deny_execmem) */
        return 77;
    }
    char path[64];
    snprintf(path, sizeof(path), "/tmp/perf-%d.map", (int)getpid());
    if (map) {
        FILE *f = fopen(path, "w");
        if (!f) {
            perror(path);
            return 1;
        }
        fprintf(f, "%lx %zx jit_spin_kernel\n", (unsigned long)(uintptr_t)mem, sizeof(code));
        fclose(f);
    }
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    void (*spin)(unsigned long) = (void (*)(unsigned long))(void *)mem;
    double end = now() + secs;
    while (now() < end)
        spin(2000000);
    if (map)
        unlink(path);
    return 0;
}
