/* log.h - one-line messages on stderr, prefixed "tbprof: ".
 *
 * Never call from a signal handler. Levels follow TBPROF_LOG
 * (error, warn, info, debug); the default is warn.
 */
#ifndef TBPROF_AGENT_LOG_H
#define TBPROF_AGENT_LOG_H

#include <stdatomic.h>

typedef enum tb_log_level { TB_LOG_OFF = 0, TB_LOG_ERROR, TB_LOG_WARN, TB_LOG_INFO, TB_LOG_DEBUG } tb_log_level;

void tb_log_set_level(tb_log_level lvl);
void tb_log(tb_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define tb_error(...) tb_log(TB_LOG_ERROR, __VA_ARGS__)
#define tb_warn(...) tb_log(TB_LOG_WARN, __VA_ARGS__)
#define tb_info(...) tb_log(TB_LOG_INFO, __VA_ARGS__)
#define tb_debug(...) tb_log(TB_LOG_DEBUG, __VA_ARGS__)

/* Warn once per call site for the life of the process. */
#define tb_warn_once(...)                                                  \
    do {                                                                   \
        static atomic_int tb_warned_;                                      \
        if (!atomic_exchange(&tb_warned_, 1))                              \
            tb_log(TB_LOG_WARN, __VA_ARGS__);                              \
    } while (0)

#endif
