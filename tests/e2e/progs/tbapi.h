/* tbapi.h - the tbprof C API looked up at run time, so the test programs
 * run with or without the preload (without it every call is a no-op). */
#ifndef TBPROF_TEST_TBAPI_H
#define TBPROF_TEST_TBAPI_H

#include <dlfcn.h>
#include <stdint.h>

static int64_t (*tbapi_step_)(void);
static int64_t (*tbapi_step_num_)(int64_t);
static int (*tbapi_start_)(int64_t);
static int (*tbapi_stop_)(void);
static const char *(*tbapi_last_)(void);
static int (*tbapi_capturing_)(void);

static void tbapi_init(void)
{
    *(void **)&tbapi_step_ = dlsym(RTLD_DEFAULT, "tbprof_step");
    *(void **)&tbapi_step_num_ = dlsym(RTLD_DEFAULT, "tbprof_step_num");
    *(void **)&tbapi_start_ = dlsym(RTLD_DEFAULT, "tbprof_start");
    *(void **)&tbapi_stop_ = dlsym(RTLD_DEFAULT, "tbprof_stop");
    *(void **)&tbapi_last_ = dlsym(RTLD_DEFAULT, "tbprof_last_profile");
    *(void **)&tbapi_capturing_ = dlsym(RTLD_DEFAULT, "tbprof_capturing");
}

static inline int64_t tb_step(void) { return tbapi_step_ ? tbapi_step_() : -1; }
static inline int64_t tb_step_num(int64_t n) { return tbapi_step_num_ ? tbapi_step_num_(n) : -1; }
static inline int tb_start(int64_t ms) { return tbapi_start_ ? tbapi_start_(ms) : -1; }
static inline int tb_stop(void) { return tbapi_stop_ ? tbapi_stop_() : -1; }
static inline const char *tb_last(void) { return tbapi_last_ ? tbapi_last_() : ""; }
static inline int tb_capturing(void) { return tbapi_capturing_ ? tbapi_capturing_() : 0; }

/* The fake libcupti's launch hook: 1 stamped now, 2 already, 0 tracing not
 * on yet (or the fake is not loaded). The agent dlopens it RTLD_LOCAL, so
 * look it up by soname without loading it, and let go of it at once. */
static inline int fake_launch(void)
{
    void *h = dlopen("libcupti.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return 0;
    int (*f)(void) = (int (*)(void))dlsym(h, "tbfake_cupti_launch");
    int r = f ? f() : 0;
    dlclose(h);
    return r;
}

#endif
