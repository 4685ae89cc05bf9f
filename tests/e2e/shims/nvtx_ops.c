/* nvtx_ops.c - builds libnvtx_ops.so, NVTX for a Python test: the stand-in
 * torch of tests/e2e/test_agent_python.py loads it with ctypes and pushes
 * its "op" ranges through it, as torch's emit_nvtx does from C++. Built
 * against the NVTX v3 headers (header-only: the first call dlopen()s
 * NVTX_INJECTION64_PATH); without them tbtest_nvtx_have() says 0, and the
 * tests that need it skip. Not an LD_PRELOAD shim, though it is built with them. */
#if defined(__has_include)
#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define HAVE_NVTX3 1
#endif
#endif

#define API __attribute__((visibility("default")))

#ifdef HAVE_NVTX3
API int tbtest_nvtx_have(void) { return 1; }
API int tbtest_nvtx_push(const char *name) { return nvtxRangePushA(name); }
API int tbtest_nvtx_pop(void) { return nvtxRangePop(); }
#else
API int tbtest_nvtx_have(void) { return 0; }
API int tbtest_nvtx_push(const char *name)
{
    (void)name;
    return -2;
}
API int tbtest_nvtx_pop(void) { return -2; }
#endif
