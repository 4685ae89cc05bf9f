/* thread_hook.h - the interposed pthread_create (thread_hook.c). */
#ifndef TBPROF_THREAD_HOOK_H
#define TBPROF_THREAD_HOOK_H

/* 1 when the process's pthread_create calls reach ours (LD_PRELOAD,
 * possibly behind a sanitizer's interceptor that forwards), 0 when
 * libtbprof.so came later (dlopen()ed by the Python helper). */
int tb_thread_hook_active(void);

#endif
