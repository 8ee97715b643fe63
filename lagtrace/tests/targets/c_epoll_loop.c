/* Target for lagtrace's integration tests with native frames: an explicit
 * epoll loop (a 5 ms timerfd plus a signalfd for SIGUSR1/SIGTERM/SIGINT).
 * On SIGUSR1 it blocks itself in hot_spin_ms() -> inner_work(), two noinline
 * named frames a stack walker should show, once per --stalls-ms entry,
 * --gap-ms apart, and writes each stall's CLOCK_REALTIME window to --truth,
 * with the moment the wait before it returned (`woke_ns`).
 *
 * With --poll 1 it polls (epoll_wait with timeout 0) instead of sleeping
 * in its wait: a busy loop whose waits never leave the CPU. --tick-ms sets
 * the timer's period (default 5): with 100, each idle wait sleeps 100 ms.
 *
 * Protocol: prints "READY <pid>", injects nothing until SIGUSR1, then writes
 * {"kind":"stall",...} lines and {"kind":"done"}, prints "DONE", and idles
 * until SIGTERM/SIGINT (exit 0). Labels are "spin-<index>-<ms>ms".
 * Build: gcc -O1 -g -fno-omit-frame-pointer -Wall -Wextra -o c_epoll_loop c_epoll_loop.c
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_STALLS 64

static volatile uint64_t sink; /* keeps inner_work from being optimised out */
static void *volatile frame_seen;

static int64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* gcc -O1 gives a leaf function no frame pointer even with
 * -fno-omit-frame-pointer, and frame-pointer unwinding from inside it would
 * then skip hot_spin_ms; taking the frame address forces a real frame. */
__attribute__((noinline)) void inner_work(void)
{
    frame_seen = __builtin_frame_address(0);
    for (int i = 0; i < 1000; i++)
        sink = sink * 31 + (uint64_t)i;
}

/* Busy-spin on the CPU for `ms` milliseconds of wall time. */
__attribute__((noinline)) void hot_spin_ms(int ms)
{
    int64_t deadline = now_ns(CLOCK_MONOTONIC) + (int64_t)ms * 1000000;
    while (now_ns(CLOCK_MONOTONIC) < deadline)
        inner_work();
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

int main(int argc, char **argv)
{
    int stalls[MAX_STALLS] = {40, 60, 120, 300};
    int nstalls = 4, gap_ms = 250, poll = 0, tick_ms = 5;
    const char *truth_path = NULL;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--truth") == 0) {
            truth_path = argv[i + 1];
        } else if (strcmp(argv[i], "--tick-ms") == 0) {
            tick_ms = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--poll") == 0) {
            poll = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--gap-ms") == 0) {
            gap_ms = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--stalls-ms") == 0) {
            nstalls = 0;
            for (char *tok = strtok(argv[i + 1], ","); tok && nstalls < MAX_STALLS;
                 tok = strtok(NULL, ","))
                stalls[nstalls++] = atoi(tok);
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!truth_path || argc % 2 == 0) {
        fprintf(stderr,
                "usage: %s --truth FILE [--stalls-ms 40,60] [--gap-ms 250] [--poll 1] "
                "[--tick-ms 5]\n",
                argv[0]);
        return 2;
    }
    FILE *truth = fopen(truth_path, "w");
    if (!truth)
        die("fopen truth");

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        die("sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || tfd < 0 || epfd < 0)
        die("signalfd/timerfd/epoll");
    if (tick_ms < 1 || tick_ms > 999) {
        fprintf(stderr, "--tick-ms must be 1..999\n");
        return 2;
    }
    long tick_ns = (long)tick_ms * 1000000;
    struct itimerspec every_tick = {{0, tick_ns}, {0, tick_ns}};
    if (timerfd_settime(tfd, 0, &every_tick, NULL) < 0)
        die("timerfd_settime");
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = sfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.fd = tfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);

    long tid = syscall(SYS_gettid);
    int running = 0, next = 0; /* scenario state: next stall to inject */
    int64_t next_at = 0;        /* CLOCK_MONOTONIC time of the next stall */

    printf("READY %d\n", (int)getpid());
    fflush(stdout);

    for (;;) {
        struct epoll_event events[4];
        int n = epoll_wait(epfd, events, 4, poll ? 0 : -1);
        int64_t woke_ns = now_ns(CLOCK_REALTIME); /* the iteration's start */
        if (n < 0)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (events[i].data.fd == sfd) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) != sizeof si)
                    continue;
                if (si.ssi_signo != SIGUSR1)
                    return 0; /* SIGTERM or SIGINT: clean exit */
                if (!running && next == 0) {
                    running = 1;
                    next_at = now_ns(CLOCK_MONOTONIC); /* first stall on next tick */
                }
                continue;
            }
            uint64_t expirations; /* timer tick: the healthy heartbeat */
            if (read(tfd, &expirations, sizeof expirations) < 0)
                continue;
            if (!running || now_ns(CLOCK_MONOTONIC) < next_at)
                continue;
            int64_t start_ns = now_ns(CLOCK_REALTIME);
            hot_spin_ms(stalls[next]);
            int64_t end_ns = now_ns(CLOCK_REALTIME);
            fprintf(truth,
                    "{\"kind\":\"stall\",\"label\":\"spin-%d-%dms\",\"tid\":%ld,"
                    "\"start_ns\":%lld,\"end_ns\":%lld,\"woke_ns\":%lld}\n",
                    next, stalls[next], tid, (long long)start_ns, (long long)end_ns,
                    (long long)woke_ns);
            fflush(truth);
            next_at = now_ns(CLOCK_MONOTONIC) + (int64_t)gap_ms * 1000000;
            if (++next == nstalls) {
                running = 0;
                fprintf(truth, "{\"kind\":\"done\"}\n");
                fflush(truth);
                printf("DONE\n");
                fflush(stdout);
            }
        }
    }
}
