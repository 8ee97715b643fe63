/* Target for lagtrace's unwinding tests (issue #11): the epoll loop of
 * c_epoll_loop.c, built as C++ with -O2 -fomit-frame-pointer, so no frame
 * pointer links its frames and only .eh_frame can unwind it. A stall runs
 * handle_tick() -> run_stall() -> spin_ms() (three noinline frames, the hot
 * one two calls below the handler) with mix() inlined into spin_ms().
 * With --plugin LIB, the first SIGUSR1 dlopen()s LIB (after lagtrace
 * attached) and stalls run in its plugin_spin() instead.
 *
 * Protocol as c_epoll_loop.c: "READY <pid>", SIGUSR1 starts the stalls,
 * {"kind":"stall",...} lines to --truth, "DONE".
 * Build: g++ -O2 -g -fomit-frame-pointer -o cpp_nofp_loop cpp_nofp_loop.cpp -ldl
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
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
#include <dlfcn.h>

#define MAX_STALLS 64

static volatile uint64_t sink; /* keeps the spin from being optimised out */

static int64_t now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline __attribute__((always_inline)) uint64_t mix(uint64_t x, int i)
{
    return x * 31 + (uint64_t)i;
}

/* The hot function: two calls below the handler. */
extern "C" __attribute__((noinline)) uint64_t spin_ms(int ms)
{
    int64_t deadline = now_ns(CLOCK_MONOTONIC) + (int64_t)ms * 1000000;
    uint64_t x = sink;
    while (now_ns(CLOCK_MONOTONIC) < deadline)
        for (int i = 0; i < 1000; i++)
            x = mix(x, i);
    return x;
}

typedef uint64_t (*spin_fn)(int);
static spin_fn plugin_spin;

/* Not a tail call: the result is used after the call returns. */
extern "C" __attribute__((noinline)) uint64_t run_stall(int ms)
{
    uint64_t r = plugin_spin ? plugin_spin(ms) : spin_ms(ms);
    sink = sink + r;
    return r ^ 1;
}

extern "C" __attribute__((noinline)) void handle_tick(int ms)
{
    sink = sink + run_stall(ms) + 1;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

int main(int argc, char **argv)
{
    int stalls[MAX_STALLS] = {40, 60, 120, 300};
    int nstalls = 4, gap_ms = 250;
    const char *truth_path = NULL, *plugin = NULL;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--truth") == 0) {
            truth_path = argv[i + 1];
        } else if (strcmp(argv[i], "--plugin") == 0) {
            plugin = argv[i + 1];
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
        fprintf(stderr, "usage: %s --truth FILE [--stalls-ms 40,60] [--gap-ms 250] [--plugin LIB]\n", argv[0]);
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
    struct itimerspec every_5ms = {{0, 5000000}, {0, 5000000}};
    if (timerfd_settime(tfd, 0, &every_5ms, NULL) < 0)
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
        int n = epoll_wait(epfd, events, 4, -1);
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
                    if (plugin) {
                        void *h = dlopen(plugin, RTLD_NOW);
                        if (!h || !(plugin_spin = (spin_fn)dlsym(h, "plugin_spin")))
                            die("dlopen plugin");
                    }
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
            handle_tick(stalls[next]);
            int64_t end_ns = now_ns(CLOCK_REALTIME);
            fprintf(truth,
                    "{\"kind\":\"stall\",\"label\":\"spin-%d-%dms\",\"tid\":%ld,"
                    "\"start_ns\":%lld,\"end_ns\":%lld}\n",
                    next, stalls[next], tid, (long long)start_ns, (long long)end_ns);
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
