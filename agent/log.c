/* log.c - see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static atomic_int level = TB_LOG_WARN;

void tb_log_set_level(tb_log_level lvl) { atomic_store(&level, lvl); }

void tb_log(tb_log_level lvl, const char *fmt, ...)
{
    if (lvl == TB_LOG_OFF || (int)lvl > atomic_load(&level))
        return;
    char buf[1024];
    int n = snprintf(buf, sizeof(buf), "tbprof[%d]: ", (int)getpid());
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = strlen(buf);
    /* Messages quote env values and file names: never pass a terminal
     * control sequence (ESC, CR, BEL, ...) through to the user's tty. */
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
            buf[i] = '?';
    if (len && buf[len - 1] != '\n')
        buf[len++] = '\n';
    /* one write() so lines from several processes do not interleave */
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}
