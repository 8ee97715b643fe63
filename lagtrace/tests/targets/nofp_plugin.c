/* A library that cpp_nofp_loop dlopen()s after lagtrace attached (issue
 * #11): built -O2 -fomit-frame-pointer -shared, so only its .eh_frame,
 * loaded when lagtrace sees PCs outside its tables, can unwind it.
 * Build: gcc -O2 -g -fomit-frame-pointer -fPIC -shared -o libnofp_plugin.so nofp_plugin.c
 */
#include <stdint.h>
#include <time.h>

static volatile uint64_t plugin_sink;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((noinline)) uint64_t plugin_inner(uint64_t x)
{
    for (int i = 0; i < 1000; i++)
        x = x * 33 + (uint64_t)i;
    plugin_sink = x;
    return x + 1;
}

__attribute__((noinline)) uint64_t plugin_spin(int ms)
{
    int64_t deadline = mono_ns() + (int64_t)ms * 1000000;
    uint64_t x = 1;
    while (mono_ns() < deadline)
        x = plugin_inner(x);
    return x ^ 3;
}
