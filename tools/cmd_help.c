/* cmd_help.c - `tbprof help env [--markdown]`: the TBPROF_* table, printed
 * from the same table the agent parses (agent/config.c). */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "config.h"

int cmd_help(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "env")) {
        int md = argc >= 3 && !strcmp(argv[2], "--markdown");
        if (argc >= 3 && !md) {
            fprintf(stderr, "usage: tbprof help env [--markdown]\n");
            return 2;
        }
        tb_config_help(stdout, md);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "--help") && strcmp(argv[1], "-h")) {
        fprintf(stderr, "tbprof help: unknown topic '%s' (topics: env)\n", argv[1]);
        return 2;
    }
    printf("usage: tbprof help env [--markdown]   the TBPROF_* environment variables\n"
           "       tbprof <command> --help         a command's options\n");
    return 0;
}
