/* cmd.h - the tbprof CLI's subcommands. Each lives in tools/cmd_<name>.c and
 * is listed once in tools/commands.def; main.c dispatches from that table.
 * Exit status: 0 ok, 1 the command ran and found a problem (e.g. a trigger
 * refused), 2 bad usage or unreadable input. */
#ifndef TBPROF_TOOLS_CMD_H
#define TBPROF_TOOLS_CMD_H

#define TB_CMD(name, fn, summary) int fn(int argc, char **argv);
#include "commands.def"
#undef TB_CMD

#endif
