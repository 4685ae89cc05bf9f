/* preload.c - placeholder until the agent lands (issue 4). */
#include "tbprof/tbprof.h"
