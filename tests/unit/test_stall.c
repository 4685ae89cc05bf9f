/* test_stall.c - the watch on calls that may not come back (agent/stall.h):
 * a call in for longer than TBPROF_STALL_WARN_MS is warned about once while
 * it is in (with its advice) and once when it returns, and reported once by
 * tb_stall_take; a quick call says nothing; slots run out without harm;
 * TBPROF_STALL_WARN_MS=0 watches nothing. stderr goes to a file, read back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "stall.h"
#include "tap.h"

static const char *warn_ms;

static const char *lookup(const char *name, void *ud)
{
    (void)ud;
    return strcmp(name, "TBPROF_STALL_WARN_MS") == 0 ? warn_ms : NULL;
}

static void set_limit(const char *ms)
{
    static tb_config c;
    warn_ms = ms;
    CHECK_EQ_I(tb_config_load(&c, lookup, NULL), 0);
    tb_config_set_global(&c);
}

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

int main(void)
{
    tb_log_set_level(TB_LOG_WARN);
    char path[] = "/tmp/tbprof-test-stall.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return tap_done();
    unlink(path);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);

    set_limit("50");
    /* a call in for 250 ms: warned while in, then on return */
    int t = tb_stall_enter("slow_call (a test)", "the advice");
    CHECK(t >= 0);
    usleep(250000);
    tb_stall_leave(t);
    /* a quick one: nothing */
    t = tb_stall_enter("quick_call (a test)", NULL);
    CHECK(t >= 0);
    tb_stall_leave(t);
    char rep[512];
    CHECK_EQ_I(tb_stall_take(rep, sizeof(rep)), 1);
    double secs = 0;
    CHECKF(sscanf(rep, "slow_call (a test): %lf s", &secs) == 1 && secs >= 0.2 && secs < 5, "report: %s", rep);
    CHECK(strstr(rep, "quick_call") == NULL);
    CHECK_EQ_I(tb_stall_take(rep, sizeof(rep)), 0);
    CHECK_STR(rep, "");

    /* more calls at once than slots: the extra one is not watched, and
     * leaving it (token -1) is harmless */
    int tok[5];
    for (int i = 0; i < 5; i++)
        tok[i] = tb_stall_enter("many (a test)", NULL);
    for (int i = 0; i < 4; i++)
        CHECK(tok[i] >= 0);
    CHECK_EQ_I(tok[4], -1);
    for (int i = 4; i >= 0; i--)
        tb_stall_leave(tok[i]);
    tb_stall_leave(99);

    /* off: no watch */
    set_limit("0");
    CHECK_EQ_I(tb_stall_enter("off_call (a test)", NULL), -1);

    dup2(saved, STDERR_FILENO);
    close(saved);
    char out[8192];
    ssize_t n = pread(fd, out, sizeof(out) - 1, 0);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    CHECKF(count(out, "slow_call (a test) has not returned after 0.") == 1, "stderr: %s", out);
    CHECKF(count(out, "s; the advice\n") == 1, "stderr: %s", out);
    CHECKF(count(out, "slow_call (a test) returned after 0.") == 1, "stderr: %s", out);
    CHECK(strstr(out, "has not returned") < strstr(out, "slow_call (a test) returned"));
    CHECK(strstr(out, "quick_call") == NULL);
    CHECK(strstr(out, "many (a test)") == NULL);
    CHECK(strstr(out, "off_call") == NULL);
    return tap_done();
}
