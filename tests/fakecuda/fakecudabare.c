/* fakecudabare.c - a libcuda.so.1 with no driver functions: a process that
 * has loaded "the CUDA driver", which is what tbprof waits for before it
 * starts GPU tracing (CUPTI stays unloaded in launchers and CPU-only
 * programs). The fake-CUPTI tests preload it, or dlopen() it mid-capture
 * (steps -L) to see the GPU source start late; with none of the driver's
 * functions here, tbprof detaches CUPTI as it does without libcuda (at the
 * job's next CUDA call). fakecudadrv.c is the one with functions. */
#define EXPORT __attribute__((visibility("default")))

EXPORT int tbfake_bare_libcuda(void) { return 1; }
