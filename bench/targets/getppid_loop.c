/* Benchmark probe: what a syscall costs a process lagtrace does NOT trace.
 * Calls getppid(2) through syscall(2) (no libc caching) N times (argv[1],
 * default 2,000,000) and prints "NS_PER_CALL <ns>" from CLOCK_MONOTONIC.
 * Any syscall tracepoint puts every task on the syscall slow path, and the
 * generic sys_enter/sys_exit hooks run their program for it too: this shows
 * how much of that the rest of a host pays, per attach mode.
 * Build: gcc -O2 -Wall -Wextra -o getppid_loop getppid_loop.c
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    if (n <= 0)
        n = 1;
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    int64_t t1 = now_ns();
    printf("NS_PER_CALL %.2f\n", (double)(t1 - t0) / (double)n);
    return 0;
}
