/* test_log.c - warnings are one line with no terminal control bytes, and the
 * level filter holds. stderr is redirected to a pipe and read back. */
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "tap.h"

static char out[4096];

static size_t capture(void (*fn)(void))
{
    int p[2];
    if (pipe(p) < 0)
        return 0;
    int saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    ssize_t n = read(p[0], out, sizeof(out) - 1);
    close(p[0]);
    out[n > 0 ? n : 0] = '\0';
    return n > 0 ? (size_t)n : 0;
}

static void hostile(void) { tb_warn("TBPROF_HOST='%s' is not valid", "a\033[2Jb\rc\nd\x7f"); }
static void filtered(void) { tb_debug("hidden"); tb_info("hidden too"); }
static void once(void)
{
    for (int i = 0; i < 3; i++)
        tb_warn_once("said once");
}

int main(void)
{
    tb_log_set_level(TB_LOG_WARN);
    size_t n = capture(hostile);
    CHECK(n > 0);
    CHECK(strncmp(out, "tbprof[", 7) == 0);
    CHECK(strstr(out, "a?[2Jb?c?d?") != NULL);
    CHECKF(strchr(out, '\033') == NULL && strchr(out, '\r') == NULL, "control bytes passed: %s", out);
    CHECK_EQ_I(strchr(out, '\n') - out, (long)n - 1); /* one line, newline-terminated */
    CHECK_EQ_I(capture(filtered), 0);
    capture(once);
    CHECK_EQ_I(strstr(out, "said once") != NULL, 1);
    CHECK(strstr(strstr(out, "said once") + 1, "said once") == NULL);
    return tap_done();
}
