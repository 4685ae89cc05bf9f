/* cmd.h - the tbprof CLI's subcommands. Each lives in tools/cmd_<name>.c and
 * is listed once in tools/commands.def; main.c dispatches from that table.
 * Exit status: 0 ok, 1 the command ran and found a problem (e.g. a trigger
 * refused), 2 bad usage or unreadable input. */
#ifndef TBPROF_TOOLS_CMD_H
#define TBPROF_TOOLS_CMD_H

#define TB_CMD(name, fn, summary) int fn(int argc, char **argv);
#include "commands.def"
#undef TB_CMD

/* The agent library `tbprof run` preloads (libtbprof.so in ../lib next to
 * this binary, resolved) into lib (PATH_MAX bytes or more): 0, or -1 after
 * saying on stderr why it cannot be preloaded ("tbprof CMD: ..."), e.g. a
 * path with a space or colon, where ld.so splits LD_PRELOAD. */
#include <stddef.h>
int tb_agent_lib(const char *cmd, char *lib, size_t n);

#endif
