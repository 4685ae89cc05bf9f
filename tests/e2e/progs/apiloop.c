/* apiloop.c - back-to-back API captures: `apiloop N ms` runs N regions of
 * {tbprof_start(0); ms of work with a step marker; tbprof_stop();} with no
 * pause between them and prints "start <i> <rc>" for each, so a test can
 * check that a region right after a stop is captured, not refused. */
#include <stdio.h>
#include <stdlib.h>

#include "progutil.h"
#include "tbapi.h"

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 3;
    double ms = argc > 2 ? atof(argv[2]) : 5;
    tbapi_init();
    for (int i = 0; i < n; i++) {
        int rc = tb_start(0);
        printf("start %d %d\n", i, rc);
        fflush(stdout);
        tb_step_num(100 + i);
        spin_ms(ms);
        tb_step_num(200 + i);
        tb_stop();
    }
    return 0;
}
