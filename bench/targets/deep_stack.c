/* Benchmark target for the kernel unwinder's cost (issue #11): an epoll
 * loop built without frame pointers whose one long iteration spins at the
 * bottom of a recursion DEPTH frames deep, so every sample walks that many
 * frames through .eh_frame rows.
 *
 * Protocol (stdin is a pipe from the bench): prints "READY <pid>", then
 * idles in epoll_wait(-1) on stdin. Each "go" line recurses DEPTH (argv[1])
 * frames and spins there for SECONDS (argv[2]) inside that one iteration,
 * then prints "DONE". Exits 0 at EOF on stdin.
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -o deep_stack deep_stack.c
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((noinline)) static void spin(double seconds)
{
    int64_t end = now_ns() + (int64_t)(seconds * 1e9);
    uint64_t x = sink;
    while (now_ns() < end)
        for (int i = 0; i < 1000; i++)
            x = x * 31 + (uint64_t)i;
    sink = x;
}

/* Each level keeps a frame (a local array used after the call), so the
 * depth is real and no call becomes a jump. */
__attribute__((noinline)) static uint64_t recurse(int depth, double seconds)
{
    volatile uint64_t pad[2] = {(uint64_t)depth, 0};
    if (depth <= 1)
        spin(seconds);
    else
        pad[1] = recurse(depth - 1, seconds);
    return pad[0] + pad[1];
}

int main(int argc, char **argv)
{
    int depth = argc > 1 ? atoi(argv[1]) : 64;
    double seconds = argc > 2 ? atof(argv[2]) : 3.0;
    int epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = 0};
    if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) {
        perror("epoll");
        return 1;
    }
    printf("READY %d\n", (int)getpid());
    fflush(stdout);
    char line[64];
    for (;;) {
        struct epoll_event out;
        if (epoll_wait(epfd, &out, 1, -1) < 0)
            continue;
        if (!fgets(line, sizeof line, stdin))
            return 0;
        if (strncmp(line, "go", 2) == 0) {
            sink += recurse(depth, seconds);
            printf("DONE\n");
            fflush(stdout);
        }
    }
}
