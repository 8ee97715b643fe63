// Built twice, with -DSPIN=spin_in_libA and -DSPIN=spin_in_libB: the same
// code under two names, so both libraries have the same size and layout and
// load at the same address. Also built with -DSPIN=spin_in_lib for the
// FIFO-over-a-library test.
#include <stdint.h>
#include <time.h>

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

// Spins for `ms` milliseconds (or, from hostile.c's JIT signature, for a
// count of iterations: anything under 1000 is taken as milliseconds).
__attribute__((noinline)) void SPIN(uint64_t ms) {
    if (ms > 1000) {
        for (volatile uint64_t i = 0; i < ms; i++) {
        }
        return;
    }
    // Mostly in this function's own code: a sample's leaf is here.
    uint64_t end = mono_ns() + ms * 1000000ull;
    while (mono_ns() < end) {
        for (volatile int i = 0; i < 100000; i++) {
        }
    }
}
