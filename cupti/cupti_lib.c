/* cupti_lib.c - find and dlopen libcupti, resolve the functions we call. */
#include "cupti_lib.h"

#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static pthread_mutex_t lib_mu = PTHREAD_MUTEX_INITIALIZER;
static tb_cupti_lib lib;
static int lib_loaded;
static char lib_why[768];

const char *tb_cupti_config_path(void)
{
    const char *p = getenv("TBPROF_CUPTI_PATH");
    return p && *p ? p : NULL;
}

static const char *const sonames[] = {"libcupti.so.13", "libcupti.so.12", "libcupti.so.11",
                                      "libcupti.so"};

static void *try_open(const char *path, char *tried, size_t tried_n)
{
    dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h && tried && strlen(tried) + strlen(path) + 3 < tried_n) {
        if (*tried)
            strcat(tried, ", ");
        strcat(tried, path);
    }
    return h;
}

/* First libcupti.so* in dir, trying the newest soname first. */
static void *open_in_dir(const char *dir, char *tried, size_t tried_n, char *path, size_t path_n)
{
    for (size_t i = 0; i < sizeof(sonames) / sizeof(sonames[0]); i++) {
        snprintf(path, path_n, "%s/%s", dir, sonames[i]);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h)
            return h;
    }
    /* versioned names only (libcupti.so.2025.1.0, ...) */
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    struct dirent *e;
    void *h = NULL;
    while (!h && (e = readdir(d))) {
        if (strncmp(e->d_name, "libcupti.so", 11) == 0) {
            snprintf(path, path_n, "%s/%s", dir, e->d_name);
            h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        }
    }
    closedir(d);
    if (!h && tried && strlen(tried) + strlen(dir) + 3 < tried_n) {
        if (*tried)
            strcat(tried, ", ");
        strcat(tried, dir);
    }
    return h;
}

/* The pip wheel nvidia-cuda-cupti puts libcupti in
 * <site-packages>/nvidia/cuda_cupti/lib; find site-packages folders of
 * loaded CUDA / torch / nvidia libraries in /proc/self/maps. */
static void *open_from_pip(char *tried, size_t tried_n, char *path, size_t path_n)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return NULL;
    char line[1024], seen[4][512];
    int nseen = 0;
    void *h = NULL;
    while (!h && fgets(line, sizeof(line), f)) {
        char *p = strchr(line, '/');
        if (!p)
            continue;
        char *sp = strstr(p, "/site-packages/");
        if (!sp)
            sp = strstr(p, "/dist-packages/");
        if (!sp || !(strstr(p, "libcudart") || strstr(p, "libtorch") || strstr(p, "/nvidia/") ||
                     strstr(p, "jaxlib") || strstr(p, "libcupti")))
            continue;
        size_t rootlen = (size_t)(sp - p) + strlen("/site-packages");
        if (rootlen >= sizeof(seen[0]))
            continue;
        int dup = 0;
        for (int i = 0; i < nseen; i++)
            if (strlen(seen[i]) == rootlen && strncmp(seen[i], p, rootlen) == 0)
                dup = 1;
        if (dup)
            continue;
        if (nseen < 4) {
            memcpy(seen[nseen], p, rootlen);
            seen[nseen][rootlen] = '\0';
            nseen++;
        }
        char dir[600];
        snprintf(dir, sizeof(dir), "%.*s/nvidia/cuda_cupti/lib", (int)rootlen, p);
        h = open_in_dir(dir, tried, tried_n, path, path_n);
        if (!h) {
            snprintf(dir, sizeof(dir), "%.*s/nvidia/cu13/lib", (int)rootlen, p);
            h = open_in_dir(dir, NULL, 0, path, path_n);
        }
    }
    fclose(f);
    return h;
}

#define REQ(field, sym)                                                          \
    do {                                                                         \
        *(void **)&l->field = dlsym(l->handle, sym);                             \
        if (!l->field) {                                                         \
            snprintf(lib_why, sizeof(lib_why), "%s (%s) lacks %s", "libcupti", l->path, sym); \
            return -ENOSYS;                                                      \
        }                                                                        \
    } while (0)
#define OPT(field, sym) (*(void **)&l->field = dlsym(l->handle, sym))

static int resolve(tb_cupti_lib *l)
{
    REQ(Subscribe, "cuptiSubscribe");
    REQ(Unsubscribe, "cuptiUnsubscribe");
    REQ(ActivityEnable, "cuptiActivityEnable");
    REQ(ActivityDisable, "cuptiActivityDisable");
    REQ(ActivityRegisterCallbacks, "cuptiActivityRegisterCallbacks");
    REQ(ActivityFlushAll, "cuptiActivityFlushAll");
    REQ(ActivityGetNextRecord, "cuptiActivityGetNextRecord");
    REQ(ActivityGetNumDroppedRecords, "cuptiActivityGetNumDroppedRecords");
    REQ(GetTimestamp, "cuptiGetTimestamp");
    OPT(ActivityRegisterTimestampCallback, "cuptiActivityRegisterTimestampCallback");
    OPT(ActivityEnableAndDump, "cuptiActivityEnableAndDump");
    OPT(SetThreadIdType, "cuptiSetThreadIdType");
    OPT(GetThreadIdType, "cuptiGetThreadIdType");
    OPT(GetResultString, "cuptiGetResultString");
    OPT(GetCallbackName, "cuptiGetCallbackName");
    OPT(EnableCallback, "cuptiEnableCallback");
    OPT(GetVersion, "cuptiGetVersion");
    OPT(EnableDomain, "cuptiEnableDomain");
    OPT(Finalize, "cuptiFinalize");
    OPT(ActivityEnableAllSyncRecords, "cuptiActivityEnableAllSyncRecords");
    OPT(ActivitySetAttribute, "cuptiActivitySetAttribute");
    OPT(ActivityEnableRuntimeApi, "cuptiActivityEnableRuntimeApi");
    OPT(ActivityEnableDriverApi, "cuptiActivityEnableDriverApi");
    OPT(Subscribe_v2, "cuptiSubscribe_v2");
    return 0;
}

static void *search(char *path, size_t path_n)
{
    char tried[400] = "";
    void *h;
    /* 1. a copy already in the process (PyTorch's profiler, the app itself):
     * a second copy from elsewhere would be trouble. */
    for (size_t i = 0; i < sizeof(sonames) / sizeof(sonames[0]); i++) {
        h = dlopen(sonames[i], RTLD_NOW | RTLD_NOLOAD);
        if (h) {
            /* the file itself, so the profile and the log say which */
            struct link_map *lm = NULL;
            const char *file = dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name && lm->l_name[0]
                                   ? lm->l_name
                                   : sonames[i];
            snprintf(path, path_n, "already loaded: %s", file);
            /* a TBPROF_CUPTI_PATH set (say, to a fixed CUPTI the advice
             * names) cannot take effect: said, not silently dropped */
            const char *cfg = tb_cupti_config_path();
            char rc[PATH_MAX], rf[PATH_MAX];
            int same = cfg && realpath(cfg, rc) && realpath(file, rf) && strncmp(rf, rc, strlen(rc)) == 0 &&
                       (rf[strlen(rc)] == '\0' || rf[strlen(rc)] == '/'); /* that file, or in that folder */
            if (cfg && !same)
                tb_warn("GPU tracing: TBPROF_CUPTI_PATH=%s not used: the job already loaded libcupti (%s), and "
                        "a second copy in one process is unsafe; to change CUPTI, change the job's own "
                        "(its CUDA's nvidia-cuda-cupti package, or its LD_LIBRARY_PATH)",
                        cfg, file);
            return h;
        }
    }
    /* 2. the configured path: a file or a folder */
    const char *cfg = tb_cupti_config_path();
    if (cfg) {
        h = try_open(cfg, NULL, 0);
        if (!h)
            h = open_in_dir(cfg, NULL, 0, path, path_n);
        else
            snprintf(path, path_n, "%s", cfg);
        if (h)
            return h;
        snprintf(lib_why, sizeof(lib_why), "libcupti not found at TBPROF_CUPTI_PATH=%s", cfg);
        return NULL; /* an explicit path that fails is an error, not a hint */
    }
    /* 3. the pip package next to a loaded CUDA runtime / torch / jax: the
     * CUDA version the job runs (a toolkit of another major in
     * /usr/local/cuda would put a second, different CUPTI in the process
     * once torch.profiler loads its own) */
    if ((h = open_from_pip(tried, sizeof(tried), path, path_n)))
        return h;
    /* 4. the CUDA toolkit */
    static const char *const dirs[] = {"/usr/local/cuda/extras/CUPTI/lib64", "/usr/local/cuda/lib64",
                                       "/usr/local/cuda/lib"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        if ((h = open_in_dir(dirs[i], tried, sizeof(tried), path, path_n)))
            return h;
    snprintf(lib_why, sizeof(lib_why),
             "libcupti not found (not loaded, TBPROF_CUPTI_PATH unset, tried %s); set TBPROF_CUPTI_PATH",
             tried);
    return NULL;
}

const tb_cupti_lib *tb_cupti_lib_load(const char **why)
{
    pthread_mutex_lock(&lib_mu);
    if (lib_loaded) {
        pthread_mutex_unlock(&lib_mu);
        return &lib;
    }
    memset(&lib, 0, sizeof(lib));
    lib.handle = search(lib.path, sizeof(lib.path));
    if (lib.handle && resolve(&lib) != 0) {
        dlclose(lib.handle);
        lib.handle = NULL;
    }
    if (!lib.handle) {
        *why = lib_why;
        pthread_mutex_unlock(&lib_mu);
        return NULL;
    }
    lib_loaded = 1;
    tb_info("GPU tracing: using libcupti (%s)", lib.path);
    pthread_mutex_unlock(&lib_mu);
    return &lib;
}

const char *tb_cupti_result_str(const tb_cupti_lib *l, CUptiResult r)
{
    const char *s = NULL;
    if (l && l->GetResultString && l->GetResultString(r, &s) == CUPTI_SUCCESS && s)
        return s;
    switch (r) {
    case CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED:
        return "CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED";
    case CUPTI_ERROR_NOT_INITIALIZED:
        return "CUPTI_ERROR_NOT_INITIALIZED";
    case CUPTI_ERROR_INSUFFICIENT_PRIVILEGES:
        return "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES";
    case CUPTI_ERROR_NOT_COMPATIBLE:
        return "CUPTI_ERROR_NOT_COMPATIBLE";
    default:
        return "CUPTI error";
    }
}

void tb_cupti_lib_reset_for_tests(void)
{
    pthread_mutex_lock(&lib_mu);
    if (lib_loaded && lib.handle)
        dlclose(lib.handle);
    memset(&lib, 0, sizeof(lib));
    lib_loaded = 0;
    pthread_mutex_unlock(&lib_mu);
}
