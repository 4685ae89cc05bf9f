/* clock.c - see clock.h. */
#include "clock.h"

#include <stdatomic.h>

static _Atomic int64_t offset;
static atomic_int calibrated;

int64_t tb_clock_calibrate(void)
{
    int64_t best_win = INT64_MAX, best = 0;
    for (int i = 0; i < 5; i++) {
        int64_t a = tb_mono_ns();
        int64_t r = tb_real_ns();
        int64_t b = tb_mono_ns();
        if (b - a < best_win) {
            best_win = b - a;
            best = r - (a + (b - a) / 2);
        }
    }
    atomic_store(&offset, best);
    atomic_store(&calibrated, 1);
    return best;
}

int64_t tb_clock_offset(void)
{
    if (!atomic_load(&calibrated))
        return tb_clock_calibrate();
    return atomic_load(&offset);
}
