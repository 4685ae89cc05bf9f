/* test_config.c - TBPROF_* parsing: forms accepted, defaults, bad values. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "sampler.h"
#include "tap.h"

/* a fake environment: NULL-terminated name/value pairs */
static const char *lookup(const char *name, void *ud)
{
    const char **kv = ud;
    for (; kv[0]; kv += 2)
        if (!strcmp(kv[0], name))
            return kv[1];
    return NULL;
}

/* The repeats of a repeating window, and where they end. */
static void window_repeats(void)
{
    tb_window w = {.first = 100, .last = 104, .period = 1000}, r;
    CHECK(tb_window_nth(&w, 0, &r) == 0 && r.first == 100 && r.last == 104);
    CHECK(tb_window_nth(&w, 3, &r) == 0 && r.first == 3100 && r.last == 3104);
    CHECK(tb_window_nth(&w, -1, &r) < 0);
    w.count = 3; /* PxK: K windows in all */
    CHECK(tb_window_nth(&w, 2, &r) == 0 && r.first == 2100);
    CHECK(tb_window_nth(&w, 3, &r) < 0);
    /* the first repeat not yet passed at step m: 1100-1104 from 1100 to 1104, 2100 from 1105 */
    w.count = 0;
    CHECK(tb_window_index_from(&w, 104) == 0 && tb_window_index_from(&w, 1) == 0);
    CHECK(tb_window_index_from(&w, 105) == 1 && tb_window_index_from(&w, 1104) == 1);
    CHECK(tb_window_index_from(&w, 1105) == 2);
    tb_window once = {.first = 5, .last = 6};
    CHECK(tb_window_index_from(&once, 50) == 0);
    CHECK(tb_window_nth(&once, 0, &r) == 0 && r.first == 5 && r.last == 6);
    CHECK(tb_window_nth(&once, 1, &r) < 0);
    /* the numbers never overflow: the repeat past INT64_MAX is none */
    tb_window big = {.first = 0, .last = 1, .period = TB_MAX_PERIOD};
    int64_t kmax = (INT64_MAX - 1) / TB_MAX_PERIOD;
    CHECK(tb_window_nth(&big, kmax, &r) == 0 && r.last == 1 + kmax * TB_MAX_PERIOD);
    CHECK(tb_window_nth(&big, kmax + 1, &r) < 0);
}

/* TBPROF_EVERY: "S" or "SxK"; with TBPROF_DURATION and TBPROF_DELAY. */
static void every_forms(void)
{
    double sec = 0;
    int64_t k = -1;
    CHECK(tb_parse_every("600", &sec, &k) == 0 && sec == 600 && k == 0);
    CHECK(tb_parse_every("10m", &sec, &k) == 0 && sec == 600 && k == 0);
    CHECK(tb_parse_every("2.5x4", &sec, &k) == 0 && sec == 2.5 && k == 4);
    CHECK(tb_parse_every("500ms X 3", &sec, &k) == 0 && sec == 0.5 && k == 3);
    const char *bad[] = {"", "0", "x3", "10x0", "10x", "10x-1", "10xx3", "abc", "10 s 3", "-5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECKF(tb_parse_every(bad[i], &sec, &k) < 0, "'%s' accepted", bad[i]);

    tb_log_set_level(TB_LOG_OFF);
    tb_config c;
    /* the first one S in unless TBPROF_DELAY says; duration 10 s by default */
    const char *e1[] = {"TBPROF_EVERY", "60x5", NULL};
    CHECK_EQ_I(tb_config_load(&c, lookup, e1), 0);
    CHECK(c.every_s == 60 && c.every_count == 5 && c.delay_s == 60 && c.duration_s == 10);
    const char *e2[] = {"TBPROF_EVERY", "60", "TBPROF_DELAY", "0", "TBPROF_DURATION", "3", NULL};
    CHECK_EQ_I(tb_config_load(&c, lookup, e2), 0);
    CHECK(c.every_s == 60 && c.every_count == 0 && c.delay_s == 0 && c.duration_s == 3);
    /* not longer than the capture: one warning, no repeat (the window stays) */
    const char *e3[] = {"TBPROF_EVERY", "5", "TBPROF_DURATION", "5", NULL};
    CHECK_EQ_I(tb_config_load(&c, lookup, e3), 1);
    CHECK(c.every_s == 0 && c.duration_s == 5);
    /* a bad TBPROF_DURATION: no time window, so nothing to repeat */
    const char *e4[] = {"TBPROF_EVERY", "60", "TBPROF_DURATION", "soon", NULL};
    CHECK_EQ_I(tb_config_load(&c, lookup, e4), 1);
    CHECK(c.every_s == 0 && c.duration_s == 0);
    tb_log_set_level(TB_LOG_WARN);
}

static void steps_forms(void)
{
    tb_window w[TB_MAX_WINDOWS];
    int n = 0;
    CHECK(tb_parse_steps("10,20", w, TB_MAX_WINDOWS, &n) == 0 && n == 1 && w[0].first == 10 && w[0].last == 20);
    CHECK(tb_parse_steps("10-20", w, TB_MAX_WINDOWS, &n) == 0 && n == 1 && w[0].first == 10 && w[0].last == 20);
    CHECK(tb_parse_steps("5", w, TB_MAX_WINDOWS, &n) == 0 && n == 1 && w[0].first == 5 && w[0].last == 5);
    CHECK(tb_parse_steps(" 1-2 ; 5,7;9 ", w, TB_MAX_WINDOWS, &n) == 0 && n == 3);
    CHECK_EQ_I(w[1].first, 5);
    CHECK_EQ_I(w[1].last, 7);
    CHECK_EQ_I(w[2].first, 9);
    CHECK(tb_parse_steps("0,0", w, TB_MAX_WINDOWS, &n) == 0 && w[0].first == 0);
    /* the last window repeating: "/P", "/PxK" */
    CHECK(tb_parse_steps("100-104/1000", w, TB_MAX_WINDOWS, &n) == 0 && n == 1);
    CHECK(w[0].first == 100 && w[0].last == 104 && w[0].period == 1000 && w[0].count == 0);
    CHECK(tb_parse_steps("3-5; 10,12/10x4 ", w, TB_MAX_WINDOWS, &n) == 0 && n == 2);
    CHECK(w[0].period == 0 && w[1].first == 10 && w[1].last == 12 && w[1].period == 10 && w[1].count == 4);
    CHECK(tb_parse_steps("7/2", w, TB_MAX_WINDOWS, &n) == 0 && w[0].period == 2);
    const char *bad[] = {"", "abc", "20,10", "-1", "1-", "1,2,3", "5-8;7-9", "5-8;1-2", "1;;2", "1.5",
                         "99999999999999999999",
                         /* a repeat no longer than the window, none, x0, not last, junk after */
                         "10-14/5", "10-14/4", "7/1", "10-14/", "10-14/0", "10-14/100x0", "10-14/100x",
                         "1-2/10;50-60", "1-2/10x3x4", "1-2/10 3", "1-2/1000000000001",
                         /* the window's length would overflow int64 (UB before the check) */
                         "0-9223372036854775807/5", "0-9223372036854775807/1000000000000"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECKF(tb_parse_steps(bad[i], w, TB_MAX_WINDOWS, &n) < 0, "'%s' accepted", bad[i]);
    /* more windows than fit */
    char many[400] = "";
    for (int i = 0; i < TB_MAX_WINDOWS + 1; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s%d", i ? ";" : "", i * 3);
    CHECK(tb_parse_steps(many, w, TB_MAX_WINDOWS, &n) < 0);
}

static void other_forms(void)
{
    double d;
    CHECK(tb_parse_seconds("10", &d) == 0 && d == 10);
    CHECK(tb_parse_seconds("2.5s", &d) == 0 && d == 2.5);
    CHECK(tb_parse_seconds("500ms", &d) == 0 && d == 0.5);
    CHECK(tb_parse_seconds("-1", &d) < 0);
    CHECK(tb_parse_seconds("ten", &d) < 0);
    CHECK(tb_parse_seconds("5 parsecs", &d) < 0);
    CHECK(tb_parse_seconds("inf", &d) < 0);
    int b;
    CHECK(tb_parse_bool("on", &b) == 0 && b == 1);
    CHECK(tb_parse_bool("OFF", &b) == 0 && b == 0);
    CHECK(tb_parse_bool("1", &b) == 0 && b == 1);
    CHECK(tb_parse_bool("maybe", &b) < 0);
    int sig;
    CHECK(tb_parse_signal("USR2", &sig) == 0 && sig == SIGUSR2);
    CHECK(tb_parse_signal("SIGUSR1", &sig) == 0 && sig == SIGUSR1);
    CHECK(tb_parse_signal("RTMIN+3", &sig) == 0 && sig == SIGRTMIN + 3);
    CHECK(tb_parse_signal("off", &sig) == 0 && sig == 0);
    CHECK(tb_parse_signal("KILL", &sig) < 0);
    CHECK(tb_parse_signal("SEGV", &sig) < 0);
    CHECK(tb_parse_signal("RTMIN+99", &sig) < 0);
    /* named back as TBPROF_SIGNAL takes them (messages, tbprof_trigger) */
    char nb[24];
    const char *names[] = {"USR1", "USR2", "RTMIN", "RTMIN+3", "RTMIN+15"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        CHECK(tb_parse_signal(names[i], &sig) == 0);
        CHECK_STR(tb_signal_name(sig, nb, sizeof(nb)), names[i]);
    }
}

static void defaults(void)
{
    const char *env[] = {NULL};
    tb_config c;
    CHECK_EQ_I(tb_config_load(&c, lookup, env), 0);
    CHECK_STR(c.logdir, "logs");
    CHECK_EQ_I(c.nwindows, 0);
    CHECK_EQ_I(c.signal, 0);
    CHECK(c.gpu == 1 && c.cpu == 1 && c.trace_json == 1 && c.socket == TB_SOCKET_AUTO && c.pytorch_hook == 0);
    CHECK_EQ_I(c.cupti_teardown, TB_AUTO);
    CHECK_EQ_I(c.cpu_hz, TB_CPU_DEFAULT_HZ);
    CHECK_EQ_I(c.cpu_mode, TB_CPU_STACKCOPY);
    CHECK_EQ_I(c.buffer_mb, 64);
    CHECK_EQ_I(c.max_mb, 512);
    CHECK_EQ_I(c.log_level, TB_LOG_WARN);
    CHECK(c.duration_s == 0 && c.delay_s == 0);
    CHECK(c.run[0] == 0 && c.host[0] == 0 && c.cupti_path[0] == 0);
}

static void good_values(void)
{
    const char *env[] = {"TBPROF_LOGDIR", "/tmp/x", "TBPROF_STEPS", "10-20;50,60", "TBPROF_SIGNAL", "USR2",
                         "TBPROF_GPU", "off", "TBPROF_CPU_HZ", "997", "TBPROF_CPU_MODE", "fp",
                         "TBPROF_BUFFER_MB", "8", "TBPROF_MAX_MB", "0", "TBPROF_RUN", "r1", "TBPROF_HOST", "h1",
                         "TBPROF_TRACE_JSON", "no", "TBPROF_SOCKET", "0", "TBPROF_PYTORCH_HOOK", "1",
                         "TBPROF_CUPTI_PATH", "/opt/cupti/libcupti.so", "TBPROF_DELAY", "3", NULL};
    tb_config c;
    CHECK_EQ_I(tb_config_load(&c, lookup, env), 0);
    CHECK_STR(c.logdir, "/tmp/x");
    CHECK(c.nwindows == 2 && c.windows[0].first == 10 && c.windows[1].last == 60);
    CHECK_EQ_I(c.signal, SIGUSR2);
    CHECK(c.gpu == 0 && c.cpu == 1);
    CHECK_EQ_I(c.cpu_hz, 997);
    CHECK_EQ_I(c.cpu_mode, TB_CPU_FP);
    CHECK(c.buffer_mb == 8 && c.max_mb == 0);
    CHECK_STR(c.run, "r1");
    CHECK_STR(c.host, "h1");
    CHECK(c.trace_json == 0 && c.socket == 0 && c.pytorch_hook == 1);
    CHECK_STR(c.cupti_path, "/opt/cupti/libcupti.so");
    /* DELAY alone: the time window gets the default length */
    CHECK(c.delay_s == 3 && c.duration_s == 10);
    tb_config_set_global(&c);
    CHECK_STR(tb_config_get()->cupti_path, "/opt/cupti/libcupti.so");
}

static void bad_values(void)
{
    tb_log_set_level(TB_LOG_OFF); /* the warnings themselves are checked by the e2e tests */
    const char *env[] = {"TBPROF_STEPS", "20,10", "TBPROF_GPU", "sometimes", "TBPROF_CPU_HZ", "0",
                         "TBPROF_BUFFER_MB", "lots", "TBPROF_RUN", "a/b", "TBPROF_DURATION", "-5",
                         "TBPROF_SIGNAL", "KILL", "TBPROF_LOGDIR", "", NULL};
    tb_config c;
    int w = tb_config_load(&c, lookup, env);
    CHECK_EQ_I(w, 8);
    CHECK_EQ_I(c.nwindows, 0);   /* step capture off */
    CHECK_EQ_I(c.gpu, 0);        /* GPU off */
    CHECK_EQ_I(c.cpu, 0);        /* bad rate: CPU sampling off */
    CHECK_EQ_I(c.buffer_mb, 64); /* default kept */
    CHECK_STR(c.run, "");        /* derived name */
    CHECK(c.duration_s == 0 && c.delay_s == 0);
    CHECK_EQ_I(c.signal, 0);
    CHECK_STR(c.logdir, "");     /* writing off */
    /* TBPROF_LOG itself: a bad value keeps warn */
    const char *env2[] = {"TBPROF_LOG", "loud", NULL};
    CHECK_EQ_I(tb_config_load(&c, lookup, env2), 1);
    CHECK_EQ_I(c.log_level, TB_LOG_WARN);
    const char *env3[] = {"TBPROF_LOG", "debug", NULL};
    CHECK_EQ_I(tb_config_load(&c, lookup, env3), 0);
    CHECK_EQ_I(c.log_level, TB_LOG_DEBUG);
    tb_log_set_level(TB_LOG_OFF);
}

/* TBPROF_NVTX_STEP's /regex/: one whose repeats glibc's regcomp would
 * write out past 1000 pieces is refused before it is compiled (s{1,30000}
 * took regcomp 7 GB and 16 s), however it gets there */
static void costly_regexes(void)
{
    tb_log_set_level(TB_LOG_OFF);
    static const char *const ok[] = {"/^step_([0-9]+)$/", "/(train|eval)_step ([0-9]{1,6})/", "/[]a-z[:digit:]]+_([0-9]+)/",
                                     "/s{1,400}/", "/x*y?z+\\{/", "/a{2}b{3,}c/"};
    static const char *const costly[] = {"/s{1,30000}/", "/s{1,1001}/", "/s++++++++++++++++++++/",
                                         "/((((((((((((((((s)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+/",
                                         "/(a{1,100}){1,100}/", "/s{1,9}{1,9}{1,9}{1,9}/", "/[0-9]{1,99999999999999999999}/",
                                         "/(a*)*b\\1/"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        const char *env[] = {"TBPROF_NVTX_STEP", ok[i], NULL};
        tb_config c;
        CHECKF(tb_config_load(&c, lookup, env) == 0, "%s refused", ok[i]);
        CHECK_STR(c.nvtx_step, ok[i]);
    }
    for (size_t i = 0; i < sizeof(costly) / sizeof(costly[0]); i++) {
        const char *env[] = {"TBPROF_NVTX_STEP", costly[i], NULL};
        tb_config c;
        CHECKF(tb_config_load(&c, lookup, env) == 1, "%s taken", costly[i]);
        CHECK_STR(c.nvtx_step, ""); /* NVTX steps off */
    }
    CHECK_EQ_I(tb_regex_cost("abc", 1000), 3);
    CHECK_EQ_I(tb_regex_cost("a{5}", 1000), 6);
    CHECK_EQ_I(tb_regex_cost("(ab)+", 1000), 7);
    CHECK_EQ_I(tb_regex_cost("s{1,30000}", 1000), 1001); /* (saturates) */
}

static void help_lists_every_variable(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    tb_config_help(f, 1);
    fclose(f);
    const char *names[] = {"TBPROF_LOGDIR", "TBPROF_STEPS", "TBPROF_DURATION", "TBPROF_DELAY", "TBPROF_SIGNAL",
                           "TBPROF_GPU", "TBPROF_CPU", "TBPROF_CPU_HZ", "TBPROF_BUFFER_MB", "TBPROF_MAX_MB",
                           "TBPROF_LOG", "TBPROF_RUN", "TBPROF_HOST", "TBPROF_TRACE_JSON", "TBPROF_SOCKET",
                           "TBPROF_PYTORCH_HOOK", "TBPROF_CUPTI_PATH"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char key[64];
        snprintf(key, sizeof(key), "| `%s` |", names[i]);
        CHECKF(strstr(buf, key) != NULL, "%s missing from help", names[i]);
    }
    CHECK(strncmp(buf, "| variable |", 12) == 0);
    free(buf);
}

/* The "auto | on | off" variables: every spelling, and a bad value falls
 * back to what the table says (the socket off, the teardown auto). */
static void auto_modes(void)
{
    static const struct {
        const char *var, *val;
        int mode, warnings;
    } cases[] = {{"TBPROF_SOCKET", "auto", TB_SOCKET_AUTO, 0},  {"TBPROF_SOCKET", "AUTO", TB_SOCKET_AUTO, 0},
                 {"TBPROF_SOCKET", "on", TB_SOCKET_ON, 0},      {"TBPROF_SOCKET", "1", TB_SOCKET_ON, 0},
                 {"TBPROF_SOCKET", "off", TB_SOCKET_OFF, 0},    {"TBPROF_SOCKET", "no", TB_SOCKET_OFF, 0},
                 {"TBPROF_SOCKET", "sometimes", TB_SOCKET_OFF, 1},
                 {"TBPROF_CUPTI_TEARDOWN", "off", TB_OFF, 0},   {"TBPROF_CUPTI_TEARDOWN", "On", TB_ON, 0},
                 {"TBPROF_CUPTI_TEARDOWN", "auto", TB_AUTO, 0}, {"TBPROF_CUPTI_TEARDOWN", "later", TB_AUTO, 1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *env[] = {cases[i].var, cases[i].val, NULL};
        tb_config c;
        tb_log_set_level(TB_LOG_OFF);
        CHECK_EQ_I(tb_config_load(&c, lookup, env), cases[i].warnings);
        tb_log_set_level(TB_LOG_WARN);
        CHECK_EQ_I(cases[i].var[7] == 'S' ? c.socket : c.cupti_teardown, cases[i].mode);
    }
}

/* Values as they come from YAML, a .env file or a shell line: surrounding
 * spaces and a trailing newline are no part of the word (numbers took them
 * already; "on " was a bad value: that feature off, with a warning). A
 * space inside a word is still one. */
static void words_with_spaces(void)
{
    const char *env[] = {"TBPROF_TRACE_JSON", "off \n", "TBPROF_GPU", " off", "TBPROF_SIGNAL", "USR2 ",
                         "TBPROF_LOG", "debug\n", "TBPROF_SOCKET", " on ", NULL};
    tb_config c;
    tb_log_set_level(TB_LOG_OFF);
    CHECK_EQ_I(tb_config_load(&c, lookup, env), 0);
    tb_log_set_level(TB_LOG_WARN);
    CHECK_EQ_I(c.trace_json, 0);
    CHECK_EQ_I(c.gpu, 0);
    CHECK_EQ_I(c.signal, SIGUSR2);
    CHECK_EQ_I(c.socket, TB_SOCKET_ON);
    int sig = -1;
    CHECK(tb_parse_signal("RTMIN+ 3", &sig) < 0);
    CHECK(tb_parse_signal("RTMIN+-0", &sig) < 0);
    CHECK(tb_parse_signal("RTMIN+3", &sig) == 0 && sig == SIGRTMIN + 3);
    double sec = -1;
    CHECK(tb_parse_seconds("0x10", &sec) < 0); /* strtod's hex: 16 s */
    CHECK(tb_parse_seconds("infinity", &sec) < 0);
    CHECK(tb_parse_seconds(".5", &sec) == 0 && sec == 0.5);
    CHECK(tb_parse_seconds("2.5s", &sec) == 0 && sec == 2.5);
    const char *bad[] = {"TBPROF_TRACE_JSON", "o n", NULL};
    tb_log_set_level(TB_LOG_OFF);
    CHECK_EQ_I(tb_config_load(&c, lookup, bad), 1);
    tb_log_set_level(TB_LOG_WARN);
}

static void rank_forms(void)
{
    tb_rank_range r[TB_MAX_RANK_RANGES];
    int n = -1;
    CHECK(tb_parse_ranks("all", r, TB_MAX_RANK_RANGES, &n) == 0 && n == 0);
    CHECK(tb_parse_ranks(" ALL ", r, TB_MAX_RANK_RANGES, &n) == 0 && n == 0);
    CHECK(tb_parse_ranks("0,8-15,1023", r, TB_MAX_RANK_RANGES, &n) == 0);
    CHECK_EQ_I(n, 3);
    CHECK(r[1].lo == 8 && r[1].hi == 15 && r[2].lo == 1023 && r[2].hi == 1023);
    CHECK(tb_parse_ranks(" 0, 8 - 15 ,1023 ", r, TB_MAX_RANK_RANGES, &n) == 0 && n == 3 && r[1].hi == 15);
    char many[512] = "0";
    for (int i = 1; i < TB_MAX_RANK_RANGES; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), ",%d", i * 8);
    CHECK(tb_parse_ranks(many, r, TB_MAX_RANK_RANGES, &n) == 0 && n == TB_MAX_RANK_RANGES);
    strcat(many, ",9999");
    const char *bad[] = {"", " ", ",", "0,", ",0", "1-", "-1", "3-2", "a", "0;1", "1-2-3", "0 1", "all,3",
                         "99999999999999999999", many};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) { /* refused, the outputs as they were */
        n = 42;
        r[0].lo = r[0].hi = 77;
        CHECK(tb_parse_ranks(bad[i], r, TB_MAX_RANK_RANGES, &n) < 0);
        CHECK(n == 42 && r[0].lo == 77 && r[0].hi == 77);
    }
    /* which processes take the environment's windows */
    const char *env[] = {"TBPROF_RANKS", "0,8-15", NULL};
    tb_config c;
    CHECK_EQ_I(tb_config_load(&c, lookup, env), 0);
    CHECK(tb_ranks_take(&c, 0) && tb_ranks_take(&c, 8) && tb_ranks_take(&c, 15));
    CHECK(!tb_ranks_take(&c, 1) && !tb_ranks_take(&c, 16) && !tb_ranks_take(&c, -1));
    const char *all[] = {NULL};
    CHECK_EQ_I(tb_config_load(&c, lookup, all), 0);
    CHECK(tb_ranks_take(&c, 5) && tb_ranks_take(&c, -1));
    const char *typo[] = {"TBPROF_RANKS", "0-", NULL}; /* warned; no rank (not all, for a typo) */
    CHECK_EQ_I(tb_config_load(&c, lookup, typo), 1);
    CHECK(!tb_ranks_take(&c, 0) && !tb_ranks_take(&c, 7) && !tb_ranks_take(&c, -1));
}

int main(void)
{
    steps_forms();
    rank_forms();
    window_repeats();
    every_forms();
    other_forms();
    defaults();
    good_values();
    auto_modes();
    words_with_spaces();
    bad_values();
    costly_regexes();
    help_lists_every_variable();
    return tap_done();
}
