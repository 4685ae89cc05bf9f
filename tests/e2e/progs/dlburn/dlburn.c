/* dlburn.c - a shared library that dlopen_burn.c loads during a capture;
 * built by the test without frame pointers, so only its DWARF unwind
 * tables lead from lib_inner back to the program's frames. */
static volatile double sink;

__attribute__((noinline)) void lib_inner(long n)
{
    double x = sink;
    for (long i = 0; i < n; i++)
        x = x * 1.0000001 + 1.0;
    sink = x;
}

__attribute__((noinline)) void lib_burn(long n)
{
    for (int k = 0; k < 10; k++)
        lib_inner(n / 10);
    sink += 1.0; /* keeps the last call from being a tail call */
}
