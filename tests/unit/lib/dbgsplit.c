/* dbgsplit.c - a library whose only name for one function is in its own
 * .symtab (static: not in .dynsym), for test_symbols to strip and split
 * into a separate debug file the way distributions ship them. */
__attribute__((noinline)) static int hidden_work_for_debugfile(int x)
{
    volatile int s = x;
    for (int i = 0; i < 3; i++)
        s += i * x;
    return s;
}

__attribute__((visibility("default"))) int (*dbgsplit_hidden(void))(int) { return hidden_work_for_debugfile; }
