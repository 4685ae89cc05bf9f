/* noop_preload.c - a preload library that does nothing: bench_idle.sh runs
 * it as a reference, the start-up cost any LD_PRELOAD library pays (the
 * loader opening, mapping and relocating one more object). */
int tbprof_bench_noop(void);
int tbprof_bench_noop(void) { return 0; }
