/* cupti_lib.h - libcupti loaded at run time: a table of the CUPTI functions
 * tbprof calls, resolved with dlsym. libtbprof.so never links libcupti, so
 * the preload loads on machines without CUDA; the library is looked for only
 * at the first capture (see tb_cupti_lib_load for the search order). */
#ifndef TBPROF_CUPTI_LIB_H
#define TBPROF_CUPTI_LIB_H

#include <cupti.h>
#include <stddef.h>

typedef struct tb_cupti_lib {
    void *handle;
    char path[512]; /* where it came from ("already loaded: libcupti.so.13", a file path) */
    /* required */
    CUptiResult (*Subscribe)(CUpti_SubscriberHandle *, CUpti_CallbackFunc, void *);
    CUptiResult (*Unsubscribe)(CUpti_SubscriberHandle);
    CUptiResult (*ActivityEnable)(CUpti_ActivityKind);
    CUptiResult (*ActivityDisable)(CUpti_ActivityKind);
    CUptiResult (*ActivityRegisterCallbacks)(CUpti_BuffersCallbackRequestFunc,
                                             CUpti_BuffersCallbackCompleteFunc);
    CUptiResult (*ActivityFlushAll)(uint32_t);
    CUptiResult (*ActivityGetNextRecord)(uint8_t *, size_t, CUpti_Activity **);
    CUptiResult (*ActivityGetNumDroppedRecords)(CUcontext, uint32_t, size_t *);
    CUptiResult (*GetTimestamp)(uint64_t *);
    /* optional (NULL when this libcupti lacks them) */
    CUptiResult (*ActivityRegisterTimestampCallback)(CUpti_TimestampCallbackFunc);
    CUptiResult (*ActivityEnableAndDump)(CUpti_ActivityKind);
    CUptiResult (*SetThreadIdType)(CUpti_ActivityThreadIdType);
    CUptiResult (*GetThreadIdType)(CUpti_ActivityThreadIdType *);
    CUptiResult (*GetResultString)(CUptiResult, const char **);
    CUptiResult (*GetCallbackName)(CUpti_CallbackDomain, uint32_t, const char **);
    CUptiResult (*EnableCallback)(uint32_t, CUpti_SubscriberHandle, CUpti_CallbackDomain,
                                  CUpti_CallbackId);
    CUptiResult (*GetVersion)(uint32_t *);
    CUptiResult (*EnableDomain)(uint32_t, CUpti_SubscriberHandle, CUpti_CallbackDomain);
    CUptiResult (*Finalize)(void); /* detach CUPTI from the process (gpu.c's teardown) */
    CUptiResult (*ActivityEnableAllSyncRecords)(uint8_t); /* event/stream queries not yet done */
    CUptiResult (*ActivitySetAttribute)(CUpti_ActivityAttribute, size_t *, void *);
    /* per call: record (1) or not (0) this runtime / driver API's calls */
    CUptiResult (*ActivityEnableRuntimeApi)(CUpti_CallbackId, uint8_t);
    CUptiResult (*ActivityEnableDriverApi)(CUpti_CallbackId, uint8_t);
    /* CUDA 13.0+: params is gpu.c's own copy of CUpti_SubscriberParams */
    CUptiResult (*Subscribe_v2)(CUpti_SubscriberHandle *, CUpti_CallbackFunc, void *, void *params);
} tb_cupti_lib;

/* Load libcupti (once per process; later calls return the same table).
 * Order: a copy already in the process (RTLD_NOLOAD: libcupti.so.13, .12,
 * .11, libcupti.so), TBPROF_CUPTI_PATH, the CUDA toolkit
 * (/usr/local/cuda/extras/CUPTI/lib64, /usr/local/cuda/lib64,
 * /usr/local/cuda/lib), the pip package's folder (nvidia/cuda_cupti/lib next
 * to a loaded libcudart / libtorch / nvidia package). Returns NULL and sets
 * *why (a static or process-lifetime string) when none works. */
const tb_cupti_lib *tb_cupti_lib_load(const char **why);

/* The configured path (TBPROF_CUPTI_PATH), NULL when unset. One place to
 * switch to the agent's parsed config. */
const char *tb_cupti_config_path(void);

/* "CUPTI_ERROR_..." for a result (the library's string when it has one). */
const char *tb_cupti_result_str(const tb_cupti_lib *l, CUptiResult r);

/* Test hook: forget the loaded library (dlclose) so the next load searches
 * again. Not for production use. */
void tb_cupti_lib_reset_for_tests(void);

#endif
