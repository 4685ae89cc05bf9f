/* main.c - `tbprof <command> [args]`: dispatch to tools/cmd_*.c. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"

struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
};

static const struct command commands[] = {
#define TB_CMD(name, fn, summary) {name, fn, summary},
#include "commands.def"
#undef TB_CMD
};

static void usage(FILE *f)
{
    fprintf(f, "usage: tbprof <command> [args]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`tbprof <command> --help` for a command's options.\n");
}

int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("tbprof %s\n", TBPROF_VERSION);
    return 0;
}

/* Every command's last word: what it printed must have reached stdout (a
 * full disk, a closed pipe, /dev/full). rc, or 2 after saying why. */
static int output_written(const char *cmd, int rc)
{
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        int e = errno ? errno : EIO; /* a failed earlier flush left no errno here */
        fprintf(stderr, "tbprof %s: writing output: %s\n", cmd, strerror(e));
        return 2;
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return output_written("--help", argc < 2 ? 2 : 0);
    }
    if (!strcmp(argv[1], "--version"))
        return output_written("--version", cmd_version(0, NULL));
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name))
            return output_written(commands[i].name, commands[i].fn(argc - 1, argv + 1));
    fprintf(stderr, "tbprof: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
