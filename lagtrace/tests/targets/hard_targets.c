/* Targets for lagtrace's reliability tests (issue #10): processes that are
 * hard on a tracer rather than on the loop.
 *
 *   --mode flood --threads N    N threads, each an epoll loop whose every
 *                               iteration sleeps 1.2 ms: with --threshold
 *                               1ms, thousands of spans a second.
 *   --mode main-exits --stall-ms M
 *                               a thread runs the epoll loop (a stall of M ms
 *                               every 200 ms) and the main thread calls
 *                               pthread_exit: the leader is a zombie, the
 *                               process lives.
 *
 * Prints "READY <pid>" once set up. Build: gcc -O1 -g -pthread -o hard_targets hard_targets.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(double ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (time_t)(ms / 1000) * 1000) * 1e6)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int timer_epoll(int period_ms)
{
    int ep = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, period_ms * 1000000L}, {0, period_ms * 1000000L}};
    timerfd_settime(tfd, 0, &its, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    return ep;
}

static void drain_timer(int ep, int timeout_ms)
{
    struct epoll_event ev;
    if (epoll_wait(ep, &ev, 1, timeout_ms) == 1) {
        uint64_t n;
        if (read(ev.data.fd, &n, sizeof n) < 0)
            perror("read");
    }
}

/* flood: epoll_wait(0) then 1.2 ms asleep, forever. */
static void *flood_thread(void *arg)
{
    (void)arg;
    int ep = timer_epoll(1000);
    for (;;) {
        drain_timer(ep, 0);
        sleep_ms(1.2);
    }
    return NULL;
}

static int g_stall_ms = 80;

static void *main_exits_loop(void *arg)
{
    (void)arg;
    int ep = timer_epoll(10);
    for (int i = 1;; i++) {
        drain_timer(ep, -1);
        if (i % 20 == 0)
            sleep_ms(g_stall_ms);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *mode = "flood";
    int threads = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--mode"))
            mode = argv[i + 1];
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--stall-ms"))
            g_stall_ms = atoi(argv[i + 1]);
        /* --truth FILE (from the test harness) is accepted and unused. */
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "flood")) {
        for (int i = 0; i < threads; i++) {
            pthread_t t;
            pthread_create(&t, NULL, flood_thread, NULL);
        }
        printf("READY %d\n", getpid());
        for (;;)
            pause();
    }
    if (!strcmp(mode, "main-exits")) {
        pthread_t t;
        pthread_create(&t, NULL, main_exits_loop, NULL);
        printf("READY %d\n", getpid());
        pthread_exit(NULL);
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
