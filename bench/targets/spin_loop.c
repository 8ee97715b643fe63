/* Benchmark target: the worst case for lagtrace's per-iteration probes, an
 * epoll "event loop" that does nothing but call epoll_wait(timeout 0) in a
 * tight loop: hundreds of thousands of loop iterations per second.
 *
 * Protocol (stdin is a pipe from the bench): prints "READY <pid>", then
 * idles in epoll_wait(-1) on stdin. Each "go" line starts a spin of SECONDS
 * (argv[1], default 5) with epoll_wait(epfd, ..., 0), after which it prints
 * "DONE <iterations> <elapsed_ns>" and idles again. Exits 0 at EOF on stdin.
 * Build: gcc -O2 -Wall -Wextra -o spin_loop spin_loop.c
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
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
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    int epfd = epoll_create1(0);
    if (epfd < 0) {
        perror("epoll_create1");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = 0};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) < 0) {
        perror("epoll_ctl(stdin)");
        return 1;
    }
    printf("READY %d\n", (int)getpid());
    fflush(stdout);

    char buf[256];
    for (;;) {
        struct epoll_event out[8];
        int n = epoll_wait(epfd, out, 8, -1);
        if (n < 0)
            continue; /* EINTR */
        ssize_t got = read(0, buf, sizeof buf - 1);
        if (got <= 0)
            return 0; /* EOF: the bench is done with us */
        buf[got] = '\0';
        if (strncmp(buf, "go", 2) != 0)
            continue;
        uint64_t iterations = 0;
        int64_t start = now_ns();
        int64_t deadline = start + (int64_t)(seconds * 1e9);
        int64_t now = start;
        while (now < deadline) {
            epoll_wait(epfd, out, 8, 0);
            iterations++;
            if ((iterations & 1023) == 0)
                now = now_ns();
        }
        now = now_ns();
        printf("DONE %llu %lld\n", (unsigned long long)iterations, (long long)(now - start));
        fflush(stdout);
    }
}
