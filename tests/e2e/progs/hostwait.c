/* hostwait.c - a host-bound loop with (fake) GPU work, for what `tbprof
 * summary` says the launching thread did while the GPU waited for it
 * (test_tools_real.py).
 *
 *   hostwait [rounds]     (default 8)
 *
 * Starts a capture (tbprof_start), waits until GPU tracing is on, and has
 * the fake libcupti stamp its script at t0 (tbfake_cupti_launch, with
 * TBFAKE_CUPTI_AT_LAUNCH=1). Then `rounds` rounds of ROUND_MS from t0, each
 * a step (tbprof_step at its start): CPU work in prep_batch() until
 * BUSY_MS into the round, then a sleep in wait_batch() until the round
 * ends. The test's script has the round's launch call end 38 ms into it
 * and its kernel run until the round's end. So in each step the GPU waits
 * for the CPU from the step's start to 38 ms: BUSY_MS of it on CPU in
 * prep_batch, the rest asleep. Then tbprof_stop() (the last step ends
 * there) and it prints "done".
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "progutil.h"
#include "tbapi.h"

#define ROUND_MS 40
#define BUSY_MS 20

static volatile double sink;

static int64_t round_at(int64_t t0, int k, int ms)
{
    return t0 + ((int64_t)k * ROUND_MS + ms) * 1000000;
}

/* Pure CPU work until `until` (CLOCK_REALTIME ns, the fake CUPTI's clock). */
__attribute__((noinline, noipa)) void prep_batch(int64_t until)
{
    double x = sink;
    while (now_ns(CLOCK_REALTIME) < until)
        for (int i = 1; i < 2000; i++)
            x += 1.0 / i;
    sink = x;
}

/* Off CPU until `until`. */
__attribute__((noinline, noipa)) void wait_batch(int64_t until)
{
    struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) != 0) {
    }
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 8;
    tbapi_init();
    if (tb_start(0) == 0)
        wait_until(tb_capturing, "tbprof_capturing()");
    wait_until(fake_launch, "GPU tracing (tbfake_cupti_launch)");
    int64_t t0 = now_ns(CLOCK_REALTIME);
    for (int k = 0; k < rounds; k++) {
        tb_step();
        prep_batch(round_at(t0, k, BUSY_MS));
        wait_batch(round_at(t0, k + 1, 0));
    }
    tb_stop();
    printf("done\n");
    return 0;
}
