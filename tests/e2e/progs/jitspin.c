/* jitspin.c SECONDS [map] - spins for SECONDS in machine code it wrote to
 * anonymous executable memory, as a JIT's kernel runs (oneDNN's in a CPU
 * PyTorch job): in no loaded object, with no unwind tables, saving the
 * callee-saved registers, keeping locals and using %rbp as a plain
 * register, called through a pointer from run_kernel(). An unwinder finds
 * run_kernel and main above it only by scanning the stack. With "map" it
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

static void (*volatile spin)(unsigned long, volatile unsigned long *);
static volatile unsigned long runs;

/* The kernel saves a pointer to `local` below its caller's frame pointer:
 * a word pointing up the stack that is not a frame pointer. */
__attribute__((noinline)) static void run_kernel(unsigned long n)
{
    volatile unsigned long local[2] = {0, 0};
    spin(n, local);
    runs += local[1] + 1;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    int map = argc > 2 && strcmp(argv[2], "map") == 0;
    static const unsigned char code[] = {
        0x56,                                                       /* push %rsi (a pointer up the stack) */
        0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57, /* push %rbx ... %r15 */
        0x48, 0x81, 0xec, 0x80, 0x00, 0x00, 0x00,                   /* sub $0x80,%rsp */
        0x48, 0xbd, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, /* movabs $0x5a5a...,%rbp */
        0x48, 0x89, 0x2c, 0x24,                                     /* mov %rbp,(%rsp) */
        0x48, 0x83, 0xef, 0x01, 0x75, 0xfa,                         /* loop: sub $1,%rdi; jnz loop */
        0x48, 0x81, 0xc4, 0x80, 0x00, 0x00, 0x00,                   /* add $0x80,%rsp */
        0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b, /* pop %r15 ... %rbx */
        0x5e, 0xc3};                                                /* pop %rsi; ret */
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
    spin = (void (*)(unsigned long, volatile unsigned long *))(void *)mem;
    double end = now() + secs;
    while (now() < end)
        run_kernel(2000000);
    if (map)
        unlink(path);
    return 0;
}
